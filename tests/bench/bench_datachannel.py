"""Benchmark: the fast-path data channel server, as shipped (trio accepts; a worker thread
per connection pumps a blocking TLS socket) next to the same protocol served entirely in
trio (`trio.SSLStream`, file reads in worker threads) — the choice issue 12 asked to measure.

One server process serves one blob file (page cache warm) over mTLS on 127.0.0.1; this
process downloads it `--streams` times in parallel with the agent's own client
(`data_channel_receive.download`, blocking, in threads) and throws the bytes away. Reported:
MB/s over the whole download and CPU seconds per GiB of the server process and of this client.

Run: `python -m tests.bench.bench_datachannel [--size-mib 1024] [--streams 4]`
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(REPO), str(REPO / "plugins")]

import trio  # noqa: E402

from tests.cluster.procs import cpu_seconds  # noqa: E402

MiB = 1024 * 1024
GiB = 1024 * MiB


async def _serve_trio(port_file: Path, blob: Path, size: int, cert: str, key: str,
                      ca: str) -> None:
    """The alternative: TLS in trio (SSLStream over a trio socket stream)."""
    from tote_containerd.agent import data_channel, tls

    ctx = tls.data_server_context(cert, key, ca)

    async def handler(stream: trio.SocketStream) -> None:
        ssl_stream = trio.SSLStream(stream, ctx, server_side=True)
        try:
            await ssl_stream.do_handshake()
            buf = b""
            while b"\n" not in buf:
                buf += await ssl_stream.receive_some(4096)
            req = json.loads(buf)
            await ssl_stream.send_all(json.dumps(
                {"ok": True, "offset": req["offset"], "end": size, "size": size}).encode()
                + b"\n")
            with blob.open("rb", buffering=0) as f:
                while True:
                    data = await trio.to_thread.run_sync(f.read, data_channel.CHUNK)
                    if not data:
                        break
                    await ssl_stream.send_all(data)
        finally:
            await trio.aclose_forcefully(ssl_stream)

    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    await trio.Path(port_file).write_text(str(listeners[0].socket.getsockname()[1]))
    await trio.serve_listeners(handler, listeners)


async def _serve_thread(port_file: Path, blob: Path, size: int, cert: str, key: str,
                        ca: str) -> None:
    """As shipped: `data_channel.DataServer`, every request authorised for `blob`."""
    from tote_containerd.agent import data_channel, tls

    from tote_core.httpserver import listen_socket

    async def authorise(session: str, digest: str, offset: int, length: int,
                        caller: object) -> tuple[Path, int, int, int]:
        return blob, offset, size, size

    server = data_channel.DataServer(authorise, tls.data_server_context(cert, key, ca))
    async with trio.open_nursery() as nursery:
        port = await nursery.start(server.run, listen_socket("127.0.0.1", 0))
        await trio.Path(port_file).write_text(str(port))


def serve(mode: str, port_file: str, blob: str, cert: str, key: str, ca: str) -> None:
    fn = _serve_trio if mode == "trio" else _serve_thread
    trio.run(fn, Path(port_file), Path(blob), Path(blob).stat().st_size, cert, key, ca)


def run(mode: str, d: Path, blob: Path, streams: int) -> tuple[float, float, float]:
    from tote_containerd.agent import data_channel_receive, tls

    from tests.cluster.pki import make_pki

    pki = make_pki(d / "pki")
    ag = pki.agent
    port_file = d / f"port-{mode}"
    port_file.unlink(missing_ok=True)  # from an earlier round
    server = subprocess.Popen([sys.executable, __file__, "--serve", mode, str(port_file),
                               str(blob), ag.cert, ag.key, ag.ca], start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while not port_file.exists() or not port_file.read_text():
            if time.monotonic() > deadline or server.poll() is not None:
                raise RuntimeError("server did not start")
            time.sleep(0.05)
        port = int(port_file.read_text())
        ctx = tls.client_context(ag.cert, ag.key, ag.ca)
        size = blob.stat().st_size
        errors: list[BaseException] = []

        def one() -> None:
            try:
                data_channel_receive.download(
                    "127.0.0.1", port, ctx, session="s", digest="sha256:x", offset=0,
                    size=size, sink=lambda mv: None, on_bytes=lambda n: None,
                    stop=threading.Event())
            except BaseException as exc:  # reported below
                errors.append(exc)

        s0, c0, t0 = cpu_seconds(server.pid), time.process_time(), time.monotonic()
        threads = [threading.Thread(target=one) for _ in range(streams)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.monotonic() - t0
        s1, c1 = cpu_seconds(server.pid), time.process_time()
        if errors:
            raise errors[0]
        gib = size * streams / GiB
        return size * streams / wall / 1e6, (s1 - s0) / gib, (c1 - c0) / gib
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--serve":
        serve(*sys.argv[2:8])
        return
    ap = argparse.ArgumentParser()
    ap.add_argument("--size-mib", type=int, default=1024, help="bytes per stream")
    ap.add_argument("--streams", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    d = Path(tempfile.mkdtemp(prefix="tote-dc-"))
    blob = d / "blob"
    with blob.open("wb") as f:
        for _ in range(args.size_mib // 4):
            f.write(os.urandom(4 * MiB))
    try:
        print(f"load average {os.getloadavg()}")
        print("| server | MB/s | server CPU-s/GiB | client CPU-s/GiB |\n|---|---|---|---|")
        for _ in range(args.rounds):
            for mode in ("thread", "trio"):
                mbps, srv, cli = run(mode, d, blob, args.streams)
                label = ("blocking TLS socket per worker thread (shipped)" if mode == "thread"
                         else "trio.SSLStream in the event loop")
                print(f"| {label} | {mbps:.1f} | {srv:.2f} | {cli:.2f} |", flush=True)
    finally:
        for p in sorted(d.rglob("*"), reverse=True):
            p.unlink() if p.is_file() else p.rmdir()
        d.rmdir()


if __name__ == "__main__":
    main()
