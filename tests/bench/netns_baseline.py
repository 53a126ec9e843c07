"""The baseline for transfers between the e2e cluster's nodes: a plain TCP copy of the same
number of bytes from one node's network namespace to another's, over the same bridge, in the
same run — so a salvage's throughput is read as a fraction of what the path itself carries.

The receiver (in the target node's namespace) times from the first byte to the last; the
sender writes one 1 MiB buffer of random bytes over and over (no disk, no hashing).
"""

from __future__ import annotations

import subprocess
import sys
import time

from tests.cluster.netns import NodeNet

PORT = 47001
_RECEIVER = """
import socket, sys, time
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2]))); s.listen(1)
print("ready", flush=True)
c, _ = s.accept()
buf = bytearray(1 << 20); n = 0; t0 = None
while True:
    k = c.recv_into(buf)
    if not k:
        break
    if t0 is None:
        t0 = time.monotonic()
    n += k
print(n, time.monotonic() - t0, flush=True)
"""
_SENDER = """
import os, socket, sys
n = int(sys.argv[3]); chunk = os.urandom(1 << 20)
c = socket.create_connection((sys.argv[1], int(sys.argv[2])))
while n > 0:
    c.sendall(chunk[:min(n, len(chunk))]); n -= len(chunk)
c.close()
"""


def tcp_copy(src: NodeNet, dst: NodeNet, nbytes: int) -> float:
    """Bytes per second of one TCP stream carrying `nbytes` from `src` to `dst`."""
    recv = subprocess.Popen([*dst.exec_prefix, sys.executable, "-c", _RECEIVER, dst.ip,
                             str(PORT)], stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert recv.stdout is not None
        if recv.stdout.readline().strip() != "ready":
            raise RuntimeError("the receiver did not start")
        subprocess.run([*src.exec_prefix, sys.executable, "-c", _SENDER, dst.ip, str(PORT),
                        str(nbytes)], check=True, timeout=600)  # fmt: skip
        got, seconds = recv.stdout.readline().split()
        recv.wait(timeout=30)
    finally:
        if recv.poll() is None:
            recv.kill()
            recv.wait()
    if int(got) != nbytes:
        raise RuntimeError(f"received {got} of {nbytes} bytes")
    return nbytes / max(float(seconds), time.get_clock_info("monotonic").resolution)
