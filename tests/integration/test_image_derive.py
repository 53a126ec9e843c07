"""A tote image with extra plugin wheels (deploy/image/derive.py), built offline.

The test plugin tests/images/plugins/tote-acme is built into a wheel offline (the project's
setuptools, no index), added to the tote image this repository builds (deploy/image/build.py,
cached), and the derived image checked the way a node would use it:

- the tote image's layers are reused byte for byte and exactly one layer is added; the same
  wheels give the same digest; the name, labels and history say what was added;
- its root filesystem unpacked (every layer, in order) and `tote plugins --json` run inside
  it with chroot: the plugin is loaded from its own distribution, enabled, and its settings
  take a flag's value;
- `--from` an existing tote archive gives the same image as deriving from the build, and
  from an archive as skopeo fetches one (tagged, not named) the default name takes its tag;
- both architectures: one plugin layer shared by the platforms, each over its own tote
  layers; `--from` the multi-architecture archive gives the same image index;
- bad input stops the build with one line: a requirement no wheel and not the image meets, a
  version the image does not have, a distribution the image already holds, a wheel for
  another platform; a requirement whose marker excludes the image's platform is ignored.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path
from typing import Any

import pytest

from tests.cluster.ci import require
from tests.images import plugins, tote_image

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def base() -> Any:
    missing = tote_image.missing_tools()
    require(not missing, f"the tote image cannot be built here, missing: {missing}")
    return tote_image.build()


@pytest.fixture(scope="module")
def acme_wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return plugins.build_wheel("tote-acme", tmp_path_factory.mktemp("acme"))


@pytest.fixture(scope="module")
def derived(base: Any, acme_wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    return plugins.derive([acme_wheel], out=tmp_path_factory.mktemp("derived"))


def _layout(archive: Path) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """(index.json's descriptor, manifest, config) of a single-platform archive."""
    with tarfile.open(archive) as tar:
        def blob(name: str) -> Any:
            f = tar.extractfile(name)
            assert f is not None, name
            return json.loads(f.read())
        top = blob("index.json")["manifests"][0]
        man = blob("blobs/sha256/" + top["digest"][7:])
        cfg = blob("blobs/sha256/" + man["config"]["digest"][7:])
    return top, man, cfg


def fake_wheel(d: Path, name: str, version: str = "1.0", *, requires: tuple[str, ...] = (),
               tag: str = "py3-none-any") -> Path:
    """A minimal wheel (one empty module, METADATA with `requires`)."""
    d.mkdir(parents=True, exist_ok=True)
    dist = name.replace("-", "_")
    path = d / f"{dist}-{version}-{tag}.whl"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(f"{dist}/__init__.py", "")
        z.writestr(f"{dist}-{version}.dist-info/METADATA",
                   f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
                   + "".join(f"Requires-Dist: {r}\n" for r in requires))
        z.writestr(f"{dist}-{version}.dist-info/WHEEL",
                   f"Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: {tag}\n")
        z.writestr(f"{dist}-{version}.dist-info/RECORD", "")
    return path


def test_one_layer_added_over_the_tote_image(base: Any, derived: Any, acme_wheel: Path,
                                             tmp_path: Path) -> None:
    top, man, cfg = _layout(derived.archive)
    _, base_man, base_cfg = _layout(base.archive)
    assert top["annotations"]["io.containerd.image.name"] == derived.name
    assert derived.name == f"localhost/tote:{base.version}-plugins"
    assert derived.archive.name == f"tote-{base.version}-plugins-{base.arch}.oci.tar"
    assert man["layers"][:-1] == base_man["layers"], "the tote image's layers are reused"
    assert len(man["layers"]) == len(base_man["layers"]) + 1
    assert cfg["rootfs"]["diff_ids"][:-1] == base_cfg["rootfs"]["diff_ids"]
    assert cfg["config"]["Entrypoint"] == base_cfg["config"]["Entrypoint"]
    assert cfg["config"]["User"] == base_cfg["config"]["User"]
    labels = cfg["config"]["Labels"]
    assert labels["dev.tote.plugins"] == "tote-acme 0.1.0"
    assert labels["org.opencontainers.image.base.name"] == base.name
    assert labels["org.opencontainers.image.base.digest"] == base.digest
    assert "tote-acme 0.1.0" in cfg["history"][-1]["created_by"]
    # deterministic: the same wheel gives the same image
    again = plugins.derive([acme_wheel], out=tmp_path)
    assert again.digest == derived.digest
    # the added layer holds the plugin's files in the image's venv, and nothing else
    with tarfile.open(derived.archive) as outer:
        f = outer.extractfile("blobs/sha256/" + man["layers"][-1]["digest"][7:])
        assert f is not None
        with tarfile.open(fileobj=f, mode="r|gz") as layer:
            files = sorted(m.name for m in layer if m.isfile())
    site = "opt/tote/lib/python3.11/site-packages/"
    assert all(n.startswith(site) for n in files), files
    assert {site + "tote_acme/plugin.py", site + "tote_acme-0.1.0.dist-info/entry_points.txt",
            site + "tote_acme-0.1.0.dist-info/RECORD"} <= set(files)


def _chroot() -> list[str]:
    binary = shutil.which("chroot", path=f"{os.environ.get('PATH', '')}:/usr/sbin:/sbin")
    assert binary is not None, "chroot (coreutils) not found"
    return [binary] if os.geteuid() == 0 else ["unshare", "--map-root-user", binary]


def test_tote_in_the_derived_image_loads_the_plugin(derived: Any, tmp_path: Path) -> None:
    """Every layer unpacked in order, as containerd would; `tote plugins --json` inside."""
    root = tmp_path / "root"
    root.mkdir()
    _, man, _ = _layout(derived.archive)
    with tarfile.open(derived.archive) as outer:
        for layer in man["layers"]:
            # extractfile, not extract(filter=...): Debian 12's Python 3.11.2 predates filter
            member = outer.extractfile("blobs/sha256/" + layer["digest"][7:])
            assert member is not None
            blob = tmp_path / "oci/blobs/sha256" / layer["digest"][7:]
            blob.parent.mkdir(parents=True, exist_ok=True)
            blob.write_bytes(member.read())
            res = subprocess.run(
                ["tar", "-xzf", str(tmp_path / "oci/blobs/sha256" / layer["digest"][7:]), "-C",
                 str(root), "--exclude=./dev/*", "--no-same-owner"],
                capture_output=True, text=True, timeout=300)
            assert res.returncode == 0, res.stderr
    res = subprocess.run(
        [*_chroot(), str(root), "/opt/tote/bin/tote", "plugins", "--json",
         "--acme-greeting=hello from the image", "--acme-events=salvaged,failed"],
        capture_output=True, text=True, timeout=120,
        env={"PATH": "/opt/tote/bin:/usr/bin:/bin", "LANG": "C.UTF-8"})
    assert res.returncode == 0, res.stdout + res.stderr
    rows = {r["name"]: r for r in json.loads(res.stdout)}
    acme = rows["acme"]
    assert (acme["distribution"], acme["version"], acme["enabled"], acme["builtin"]) == (
        "tote-acme", "0.1.0", True, False), acme
    assert {"notify", "settings_type", "configure"} <= set(acme["hooks"])
    settings = {s["name"]: s for s in acme["settings"]}
    assert settings["greeting"]["value"] == "hello from the image"
    assert settings["events"]["value"] == ["salvaged", "failed"]


def test_from_an_existing_archive(base: Any, derived: Any, acme_wheel: Path,
                                  tmp_path: Path) -> None:
    """`--from` the tote archive (what a user fetches from the registry) gives the same image
    as deriving from the build; the command prints the archive and the name."""
    res = subprocess.run(
        [sys.executable, str(plugins.DERIVE_SCRIPT), "--from", str(base.archive),
         "--extra-wheel", str(acme_wheel), "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    archive, name = res.stdout.split()
    assert (Path(archive), name) == (tmp_path / derived.archive.name, derived.name)
    assert _layout(Path(archive))[0]["digest"] == derived.digest


@pytest.mark.parametrize(("wheels", "needle"), [
    ([("acme-x", "1.0", ("acme-helper>=1",), "py3-none-any")],
     "acme_x-1.0-py3-none-any.whl: requires acme-helper>=1, which neither the tote image nor "
     "another --extra-wheel provides"),
    ([("acme-x", "1.0", ("acme-helper>=1",), "py3-none-any"),
      ("acme-helper", "0.5", (), "py3-none-any")],
     "requires acme-helper>=1, but the given wheel is acme-helper 0.5"),
    ([("acme-x", "1.0", ("tote-salvage>=99",), "py3-none-any")],
     "requires tote-salvage>=99, but the tote image has tote-salvage"),
    ([("msgspec", "0.1", (), "py3-none-any")],
     "msgspec-0.1-py3-none-any.whl: msgspec "),  # + the image's version
    ([("acme-x", "1.0", (), "cp311-cp311-win_amd64")], "built for ['win_amd64']"),
], ids=["missing", "too-old", "image-too-old", "already-in-image", "platform"])
def test_bad_wheels_one_line(base: Any, tmp_path: Path,
                             wheels: list[tuple[str, str, tuple[str, ...], str]],
                             needle: str) -> None:
    paths = [fake_wheel(tmp_path, n, v, requires=r, tag=t) for n, v, r, t in wheels]
    argv = [sys.executable, str(plugins.DERIVE_SCRIPT), "--from", str(base.archive),
            "--out", str(tmp_path / "out")]
    for p in paths:
        argv += ["--extra-wheel", str(p)]
    res = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    assert res.returncode == 1, res.stdout + res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("--extra-wheel "), lines
    assert needle in lines[0], lines
    if "msgspec" in needle:
        assert lines[0].endswith("is already in the tote image; drop this wheel (the image's "
                                 "copy is what tote runs with)"), lines
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


def test_requirements_for_other_platforms_and_extras_ignored(base: Any, acme_wheel: Path,
                                                             tmp_path: Path) -> None:
    other = fake_wheel(tmp_path, "acme-y", requires=(
        'pywin32>=300; sys_platform == "win32"', 'acme-docs; extra == "docs"',
        "tote-salvage", "msgspec"))
    img = plugins.derive([acme_wheel, other], base_archive=base.archive, out=tmp_path / "out")
    assert img.plugins == {"tote-acme": "0.1.0", "acme-y": "1.0"}


def test_multi_architecture(acme_wheel: Path, tmp_path: Path) -> None:
    """Both platforms: the pure-Python plugin layer is the same blob on each, every
    platform keeps its own tote layers, and deriving `--from` the tote image's
    multi-architecture archive gives the same image index."""
    missing = tote_image.missing_tools()
    require(not missing, f"the tote image cannot be built here, missing: {missing}")
    for arch in tote_image.all_arches():
        why = tote_image.foreign_unusable(arch)
        require(why is None, why)
    arches = tote_image.all_arches()
    base_all = tote_image.build(arches=arches)
    img = plugins.derive([acme_wheel], arches=arches, out=tmp_path / "a")
    assert img.index_archive is not None and set(img.platforms) == set(arches)
    assert len(set(img.layer_digest.values())) == 1, img.layer_digest
    with tarfile.open(img.index_archive) as tar:
        def blob(digest: str) -> Any:
            f = tar.extractfile("blobs/sha256/" + digest[7:])
            assert f is not None
            return json.loads(f.read())
        f = tar.extractfile("index.json")
        assert f is not None
        index = blob(json.loads(f.read())["manifests"][0]["digest"])
        for desc in index["manifests"]:
            arch = desc["platform"]["architecture"]
            layers = [d["digest"] for d in blob(desc["digest"])["layers"]]
            base_layers = [json.loads((Path(p).parent / "layer.json").read_text())["digest"]
                           for p in base_all.layers[arch]]
            assert layers == [*base_layers, img.layer_digest[arch]], arch
    again = plugins.derive([acme_wheel], base_archive=base_all.index_archive,
                           out=tmp_path / "b")
    assert again.index_digest == img.index_digest


def test_from_an_archive_fetched_with_skopeo(base: Any, acme_wheel: Path,
                                             tmp_path: Path) -> None:
    """What a user has after `skopeo copy docker://ghcr.io/tote-dev/tote:<version>
    oci-archive:FILE:<version>`: an archive that tags the image but does not name it. The
    default name takes the tag; the tote layers are the same."""
    skopeo = shutil.which("skopeo")
    require(skopeo is not None, "skopeo not installed (.ci/install installs it)")
    assert skopeo is not None
    fetched = tmp_path / "fetched.oci.tar"
    res = subprocess.run([skopeo, "copy", f"oci-archive:{base.archive}",
                          f"oci-archive:{fetched}:{base.version}"],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    img = plugins.derive([acme_wheel], base_archive=fetched, out=tmp_path / "out")
    assert img.name == f"localhost/tote:{base.version}-plugins"
    _, man, cfg = _layout(img.archive)
    _, base_man, _ = _layout(base.archive)
    assert [d["digest"] for d in man["layers"][:-1]] == \
        [d["digest"] for d in base_man["layers"]]
    labels = cfg["config"]["Labels"]
    assert "org.opencontainers.image.base.name" not in labels, labels  # not Debian's
    assert labels["org.opencontainers.image.base.digest"] == base.digest
    assert labels["dev.tote.plugins"] == "tote-acme 0.1.0"
