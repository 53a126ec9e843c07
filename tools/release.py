"""Release tooling: `python -m tools.release {version,bump,notes,build}`.

`build` makes every artefact of one version into `dist/` and checks that each carries that
version: wheel and sdist (`python -m build`), the chart (`helm package`), the image (the
offline image build, `python -m tests.images.tote_image --out DIR`: the multi-architecture
OCI archive, linux/amd64 + linux/arm64), `SHA256SUMS` and `RELEASE_NOTES.md` (the CHANGELOG
section). The release workflow (.github/workflows/release.yml) runs it on a `v*` tag with
`--tag`, `--push` (the image) and `--push-chart` (the chart, an OCI artefact); `.ci/run` runs
it with `--dry-run`, which builds and checks the same things but pushes nothing, takes the
[Unreleased] notes when the version has no section yet, and skips what this machine cannot
do, saying why (under CI=true only while the image build does not exist).
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import tempfile
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import yaml

from tools import image_check, versioning
from tools.versioning import ROOT, VersionError

IMAGE_MODULE = "tests.images.tote_image"
CHART_DIR = ROOT / "deploy" / "helm" / "tote"
SUMS = "SHA256SUMS"
NOTES = "RELEASE_NOTES.md"
IMAGE_WORK = ".image-build"  # the image build's --out, inside dist/
# The distribution (PyPI name `tote-salvage`; PyPI's `tote` is another project) and the file
# name prefix its wheel and sdist carry.
DISTRIBUTION = "tote-salvage"
WHEEL_PREFIX = "tote_salvage"


class ReleaseError(Exception):
    """A release step failed or an artefact carries the wrong version."""


@dataclass
class Build:
    version: str
    dist: Path
    dry_run: bool
    strict: bool  # CI=true: a check this machine cannot make is a failure, not a skip
    artefacts: list[Path] = field(default_factory=list)
    checks: list[str] = field(default_factory=list)
    image: Path | None = None

    def ok(self, what: str) -> None:
        self.checks.append(f"ok       {what}")
        print(f"[release] ok: {what}", flush=True)

    def skip(self, what: str, why: str) -> None:
        self.checks.append(f"SKIPPED  {what}: {why}")
        print(f"[release] skipped: {what}: {why}", flush=True)


def _run(argv: list[str], *, what: str, timeout: float = 600, cwd: Path = ROOT) -> str:
    try:
        res = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, cwd=cwd)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ReleaseError(f"{what}: {exc}") from exc
    if res.returncode != 0:
        raise ReleaseError(f"{what} failed ({res.returncode}): {' '.join(argv)}\n"
                           f"{res.stdout[-3000:]}{res.stderr[-3000:]}")
    out: str = res.stdout
    return out


def installed_version() -> str:
    """What the installed package's `tote --version` prints, without the program name."""
    script = Path(sys.executable).parent / "tote"
    argv = [str(script)] if script.is_file() else [sys.executable, "-m", "tote_core.cli"]
    out = _run([*argv, "--version"], what="tote --version")
    return out.strip().removeprefix("tote ")


def helm_binary() -> str | None:
    """TOTE_HELM, else the harness' built helm (tests/cluster), else `helm` on PATH."""
    if env := os.environ.get("TOTE_HELM"):
        return env
    from tests.cluster.controlplane import binaries_dir

    d = binaries_dir()
    if d is not None and (d / "helm").is_file():
        return str(d / "helm")
    return shutil.which("helm")


# --------------------------------------------------------------------------- steps


def python_packages(b: Build) -> None:
    """Wheel and sdist from the files git tracks; the wheel, installed alone, reports the version.

    The build runs in a scratch copy, so no stray file gets in and setuptools' by-products
    (build/, tote_salvage.egg-info, whose metadata would shadow the installed one) stay out of
    the tree.
    """
    tracked = _run(["git", "ls-files", "-z"], what="git ls-files (the release is built from "
                   "a git checkout)").split("\0")
    with tempfile.TemporaryDirectory(prefix="tote-src-") as src:
        for rel in filter(None, tracked):
            if (ROOT / rel).is_file():  # a tracked file deleted in the work tree is left out
                (Path(src) / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(ROOT / rel, Path(src) / rel)
        _run([sys.executable, "-m", "build", "--no-isolation", "--sdist", "--wheel",
              "--outdir", str(b.dist), src], what="python -m build")
    wheel = b.dist / f"{WHEEL_PREFIX}-{b.version}-py3-none-any.whl"
    sdist = b.dist / f"{WHEEL_PREFIX}-{b.version}.tar.gz"
    for p in (wheel, sdist):
        if not p.is_file():
            found = sorted(x.name for x in b.dist.iterdir())
            raise ReleaseError(f"python -m build did not write {p.name} (found {found})")
    b.artefacts += [wheel, sdist]
    with tempfile.TemporaryDirectory(prefix="tote-wheel-") as target:
        _run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-compile",
              "--target", target, str(wheel)], what="pip install the wheel")
        probe = ("import sys, tote_core; from tote_core.cli import main; "
                 "print(tote_core.__file__, file=sys.stderr); sys.exit(main(['--version']))")
        env = {**os.environ, "PYTHONPATH": target}
        res = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                             env=env, cwd=target, timeout=120)
    if res.returncode != 0 or not res.stderr.strip().startswith(target):
        raise ReleaseError(f"the wheel's tote did not run from the wheel: {res.stderr.strip()}")
    if res.stdout.strip() != f"tote {b.version}":
        raise ReleaseError(f"the wheel's `tote --version` prints {res.stdout.strip()!r}")
    b.ok(f"wheel and sdist {b.version}; the wheel's `tote --version` = {res.stdout.strip()!r}")


def chart(b: Build) -> None:
    helm = helm_binary()
    if helm is None:
        raise ReleaseError("helm not found (run .ci/install, or set TOTE_HELM)")
    _run([helm, "package", str(CHART_DIR), "--destination", str(b.dist)], what="helm package")
    pkg = b.dist / f"tote-{b.version}.tgz"
    if not pkg.is_file():
        raise ReleaseError(f"helm package did not write {pkg.name}")
    with tarfile.open(pkg) as tar:
        member = tar.extractfile("tote/Chart.yaml")
        meta = yaml.safe_load(member.read()) if member else {}
    got = (str(meta.get("version")), str(meta.get("appVersion")))
    if got != (b.version, b.version):
        raise ReleaseError(f"packaged chart has version/appVersion {got}, want {b.version}")
    b.artefacts.append(pkg)
    b.ok(f"chart {pkg.name}: version = appVersion = {b.version}")


def image(b: Build) -> None:
    """The offline image build, its version label, and `tote --version` inside it."""
    if importlib.util.find_spec(IMAGE_MODULE) is None:
        why = f"{IMAGE_MODULE.replace('.', '/')}.py (the offline image build) does not exist"
        if not b.dry_run:
            raise ReleaseError(f"cannot build the image: {why}")
        b.skip("image build and its `tote --version`", why)
        return
    work = b.dist / IMAGE_WORK
    # `--json`: one object (archive, name, version, digest, sizes) instead of two lines to parse
    out = _run([sys.executable, "-m", IMAGE_MODULE, "--out", str(work), "--json"],
               what="image build", timeout=1800)
    built: Path | None = None
    for line in reversed([ln.strip() for ln in out.splitlines() if ln.strip()]):
        try:
            obj = json.loads(line)
        except ValueError:
            continue
        if isinstance(obj, dict) and isinstance(obj.get("archive"), str):
            # The multi-architecture archive (an image index over every platform) is the
            # release's; the host's single-platform archive only when no other was built.
            built = Path(obj.get("index_archive") or obj["archive"])
            break
    if built is None or not built.is_file():
        raise ReleaseError(f"the image build printed no archive path (output: {out[-500:]!r})")
    archive = b.dist / f"tote-{b.version}-image.oci.tar"
    shutil.move(built, archive)
    shutil.rmtree(work, ignore_errors=True)
    b.artefacts.append(archive)
    b.image = archive
    try:
        image_check.check_label(archive, b.version)
    except image_check.ImageCheckError as exc:
        raise ReleaseError(str(exc)) from exc
    b.ok(f"image {archive.name}: {image_check.VERSION_LABEL} = {b.version}")
    if shutil.which("skopeo"):
        _run(["skopeo", "inspect", f"oci-archive:{archive}"], what="skopeo inspect")
        b.ok("skopeo reads the image archive (what the push copies)")
    elif b.strict or not b.dry_run:
        raise ReleaseError("skopeo not found (run .ci/install)")
    unusable = image_check.containerd_unusable()
    if unusable:
        if b.strict or not b.dry_run:
            raise ReleaseError(f"cannot run the image to check its version: {unusable}")
        b.skip("`tote --version` inside the image", unusable)
        return
    try:
        printed = image_check.run_version(archive)
    except image_check.ImageCheckError as exc:
        raise ReleaseError(str(exc)) from exc
    if printed != f"tote {b.version}":
        raise ReleaseError(f"`tote --version` inside the image prints {printed!r}")
    b.ok(f"`tote --version` inside the image (ctr run) = {printed!r}")


def notes(b: Build) -> None:
    text = (ROOT / versioning.CHANGELOG).read_text()
    body = versioning.changelog_section(text, b.version)
    source = b.version
    if body is None:
        if not b.dry_run:
            raise ReleaseError(f"{versioning.CHANGELOG} has no section for {b.version}")
        body, source = versioning.changelog_section(text, versioning.UNRELEASED), "Unreleased"
        if body is None:
            raise ReleaseError(f"{versioning.CHANGELOG} has neither [{b.version}] nor "
                               f"[{versioning.UNRELEASED}]")
    (b.dist / NOTES).write_text(f"tote {b.version}\n\n{body}")
    b.ok(f"{NOTES} from the CHANGELOG section [{source}] ({len(body.splitlines())} lines)")


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def checksums(b: Build) -> None:
    """Write SHA256SUMS (sha256sum format), then verify it by reading it back."""
    sums = b.dist / SUMS
    sums.write_text("".join(f"{sha256(p)}  {p.name}\n" for p in b.artefacts))
    listed: dict[str, str] = {}
    for line in sums.read_text().splitlines():
        digest, _, name = line.partition("  ")
        listed[name] = digest
    if set(listed) != {p.name for p in b.artefacts}:
        raise ReleaseError(f"{SUMS} lists {sorted(listed)}, not the artefacts")
    # Verified the way a user will: coreutils' sha256sum reading the file back.
    _run(["sha256sum", "--check", "--strict", SUMS], what=f"sha256sum --check {SUMS}",
         cwd=b.dist)
    unlisted = {p.name for p in b.dist.iterdir()} - set(listed) - {SUMS, NOTES}
    if unlisted:
        raise ReleaseError(f"{b.dist} holds files {SUMS} does not list: {sorted(unlisted)}")
    b.ok(f"{SUMS}: {len(listed)} artefacts verified")


def push(b: Build, repository: str) -> None:
    """Copy the image archive to `repository:version` (registry login happened before).

    `--all`: the image index and every platform's manifest, config and layers, so the tag
    names the multi-architecture image (without it skopeo copies the host's platform only).
    """
    dest = f"docker://{repository}:{b.version}"
    argv = ["skopeo", "copy", "--all", "--retry-times", "3", f"oci-archive:{b.image}", dest]
    if b.dry_run:
        b.skip(f"push to {dest}", "dry run (would run: " + " ".join(argv) + ")")
        return
    _run(argv, what="skopeo copy", timeout=1800)
    b.ok(f"image pushed to {dest}")


def push_chart(b: Build, repository: str) -> None:
    """`helm push` of the packaged chart to an OCI repository (`oci://HOST/PATH`; the chart
    lands at PATH/tote:<version>; `helm registry login` happened before)."""
    if not repository.startswith("oci://"):
        raise ReleaseError(f"--push-chart {repository!r}: want oci://HOST/PATH")
    pkg = b.dist / f"tote-{b.version}.tgz"
    helm = helm_binary()
    argv = [helm or "helm", "push", str(pkg), repository]
    if b.dry_run:
        b.skip(f"chart push to {repository}/tote:{b.version}",
               "dry run (would run: " + " ".join(argv) + ")")
        return
    if helm is None:
        raise ReleaseError("helm not found (run .ci/install, or set TOTE_HELM)")
    _run(argv, what="helm push", timeout=600)
    b.ok(f"chart pushed to {repository}/tote:{b.version}")


def build(dist: Path, *, dry_run: bool, tag: str | None, repository: str | None,
          chart_repository: str | None = None) -> Build:
    version = versioning.package_version()
    versioning.parse(version)
    b = Build(version=version, dist=dist, dry_run=dry_run,
              strict=os.environ.get("CI", "").lower() == "true")
    if problems := versioning.mismatches(installed=installed_version()):
        raise ReleaseError("versions disagree: " + "; ".join(problems)
                           + " (reinstall with `pip install -e .` if only the installed differs)")
    b.ok(f"pyproject, chart version/appVersion and installed `tote --version` = {version}")
    if tag is not None and tag != f"v{version}":
        raise ReleaseError(f"tag {tag!r} does not name version {version} (want 'v{version}')")
    if not dry_run and tag is None:
        raise ReleaseError("a release (not --dry-run) needs --tag")
    changelog = (ROOT / versioning.CHANGELOG).read_text()
    if not dry_run and versioning.changelog_section(changelog, version) is None:
        raise ReleaseError(f"{versioning.CHANGELOG} has no section for {version}: a release "
                           "starts with `python -m tools.release bump X.Y.Z` (docs/releasing.md)")
    if dist.exists():  # emptied first, but only if it holds nothing but release outputs
        foreign = [p.name for p in dist.iterdir() if not (
            p.name.startswith(("tote-", WHEEL_PREFIX + "-"))
            or p.name in {SUMS, NOTES, IMAGE_WORK})]
        if foreign:
            raise ReleaseError(f"{dist} holds files a release did not write: {foreign[:5]}")
        shutil.rmtree(dist)
    dist.mkdir(parents=True)
    python_packages(b)
    chart(b)
    image(b)
    notes(b)
    checksums(b)
    if repository:
        if b.image is None:
            raise ReleaseError("no image was built, nothing to push")  # only in a dry run
        push(b, repository)
    if chart_repository:
        push_chart(b, chart_repository)
    return b


# --------------------------------------------------------------------------- commands


def _refresh_install() -> None:
    """Re-install an editable install of this tree, so `tote --version` reads the new version."""
    # The installed dist-info in site-packages, not the tote_salvage.egg-info that setuptools
    # leaves in the tree (found first when the current directory is on sys.path).
    dists = list(metadata.distributions(name=DISTRIBUTION,
                                        path=[sysconfig.get_path("purelib")]))
    if not dists:
        return
    direct = json.loads(dists[0].read_text("direct_url.json") or "{}")
    if not direct.get("dir_info", {}).get("editable") or \
            direct.get("url") != ROOT.as_uri():
        print("[release] the installed tote is not an editable install of this tree; "
              "reinstall it to see the new version")
        return
    # setuptools' egg-info by-product in the tree shadows the installed metadata for any
    # process whose sys.path starts at the checkout (python -m pytest): drop the stale copy.
    shutil.rmtree(ROOT / f"{WHEEL_PREFIX}.egg-info", ignore_errors=True)
    _run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
          "-e", "."], what="pip install -e . (refresh the version metadata)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.release", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("version", help="print the package version (pyproject.toml)")
    p_bump = sub.add_parser("bump", help="set a new version in pyproject, chart and CHANGELOG")
    p_bump.add_argument("new")
    p_bump.add_argument("--date", default=datetime.date.today().isoformat())
    p_notes = sub.add_parser("notes", help="print a CHANGELOG section")
    p_notes.add_argument("name", nargs="?", default=None, help="default: the package version")
    p_build = sub.add_parser("build", help="build and check every artefact into --dist")
    p_build.add_argument("--dist", type=Path, default=ROOT / "dist")
    p_build.add_argument("--dry-run", action="store_true",
                         help="push nothing; Unreleased notes if the version has no section")
    p_build.add_argument("--tag", default=None, help="the git tag, must be v<version>")
    p_build.add_argument("--push", metavar="REPOSITORY", default=None,
                         help="push the image as REPOSITORY:<version> (log in first)")
    p_build.add_argument("--push-chart", metavar="OCI_URL", default=None,
                         help="helm push the chart to OCI_URL (oci://HOST/PATH; log in first)")
    args = parser.parse_args(argv)
    try:
        if args.command == "version":
            print(versioning.package_version())
        elif args.command == "bump":
            plan = versioning.plan_bump(ROOT, args.new, args.date)
            versioning.apply_bump(ROOT, plan)
            print(f"[release] {plan.old} → {plan.new}: {', '.join(plan.files)}")
            _refresh_install()
        elif args.command == "notes":
            name = args.name or versioning.package_version()
            body = versioning.changelog_section((ROOT / versioning.CHANGELOG).read_text(), name)
            if body is None:
                raise ReleaseError(f"{versioning.CHANGELOG} has no section [{name}]")
            sys.stdout.write(body)
        else:
            b = build(args.dist.resolve(), dry_run=args.dry_run, tag=args.tag,
                      repository=args.push, chart_repository=args.push_chart)
            print(f"[release] {b.version}{' (dry run)' if b.dry_run else ''} in {b.dist}:")
            for p in b.artefacts:
                print(f"    {p.name}  {p.stat().st_size} bytes")
            for line in b.checks:
                print(f"    {line}")
    except (ReleaseError, VersionError) as exc:
        print(f"[release] error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
