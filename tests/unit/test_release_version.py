"""One version everywhere: pyproject.toml, the chart, `tote --version`; the bump that keeps it so;
the CHANGELOG section that becomes the release notes; the image's version label."""

from __future__ import annotations

import platform
import re
import shutil
from pathlib import Path

import pytest

import tote_core
from tests.cluster import images
from tools import image_check, versioning
from tools.versioning import CHANGELOG, CHART, PYPROJECT, ROOT, VersionError
from tote_core.cli import main


def test_version_is_consistent(capsys: pytest.CaptureFixture[str]) -> None:
    want = versioning.package_version()
    versioning.parse(want)
    assert versioning.chart_versions() == (want, want)
    assert main(["--version"]) == 0
    assert capsys.readouterr().out == f"tote {want}\n", "reinstall (pip install -e .) after a bump"
    assert tote_core.__version__ == want
    assert versioning.mismatches(installed=tote_core.__version__) == []


def test_changelog_has_unreleased_section() -> None:
    text = (ROOT / CHANGELOG).read_text()
    assert versioning.changelog_section(text, versioning.UNRELEASED) is not None


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A copy of the three files a bump edits, with something under [Unreleased] (right after
    a release the real section is empty)."""
    for rel in (PYPROJECT, CHART, CHANGELOG):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / rel, tmp_path / rel)
    log = tmp_path / CHANGELOG
    if not (versioning.changelog_section(log.read_text(), "Unreleased") or "").strip():
        log.write_text(log.read_text().replace(
            "## [Unreleased]\n", "## [Unreleased]\n\n### Fixed\n\n- a test entry\n", 1))
    return tmp_path


def _next_major(root: Path) -> str:
    return f"{versioning.parse(versioning.package_version(root))[0] + 1}.0.0"


def _texts(root: Path) -> dict[str, str]:
    return {rel: (root / rel).read_text() for rel in (PYPROJECT, CHART, CHANGELOG)}


def test_bump_edits_pyproject_chart_and_changelog(tree: Path) -> None:
    before = _texts(tree)
    unreleased = versioning.changelog_section(before[CHANGELOG], versioning.UNRELEASED)
    old = versioning.package_version(tree)
    new = _next_major(tree)
    plan = versioning.plan_bump(tree, new, "2030-01-02")
    assert _texts(tree) == before, "planning writes nothing"
    versioning.apply_bump(tree, plan)

    assert (plan.old, plan.new) == (old, new)
    assert versioning.package_version(tree) == new
    assert versioning.chart_versions(tree) == (new, new)
    after = _texts(tree)
    assert f"## [Unreleased]\n\n## [{new}] - 2030-01-02\n\n#" in after[CHANGELOG]
    assert versioning.changelog_section(after[CHANGELOG], new) == unreleased
    assert versioning.changelog_section(after[CHANGELOG], versioning.UNRELEASED) == "\n"
    # Nothing else changed: every differing line is one of the version lines.
    for rel in (PYPROJECT, CHART):
        changed = {b for a, b in zip(before[rel].splitlines(), after[rel].splitlines(),
                                     strict=True) if a != b}
        assert changed <= {f'version = "{new}"', f"version: {new}", f'appVersion: "{new}"'}, rel
    # The next release starts from the fresh, empty Unreleased section.
    with pytest.raises(VersionError, match="nothing under"):
        versioning.plan_bump(tree, _next_major(tree), "2030-02-01")


@pytest.mark.parametrize(("new", "date", "error"), [
    ("0.2", "2030-01-01", "not MAJOR.MINOR.PATCH"),
    ("v0.2.0", "2030-01-01", "not MAJOR.MINOR.PATCH"),
    ("0.2.0rc1", "2030-01-01", "not MAJOR.MINOR.PATCH"),
    ("0.2.0-rc.1", "2030-01-01", "not MAJOR.MINOR.PATCH"),
    ("00.2.0", "2030-01-01", "not MAJOR.MINOR.PATCH"),
    ("0.0.1", "2030-01-01", "not above"),  # the current version is at least 0.1.0
    ("current", "2030-01-01", "not above"),
    ("next", "1 Jan 2030", "not YYYY-MM-DD"),
])
def test_bump_refuses_bad_input_and_writes_nothing(
    tree: Path, new: str, date: str, error: str
) -> None:
    before = _texts(tree)
    new = {"current": versioning.package_version(tree), "next": _next_major(tree)}.get(new, new)
    with pytest.raises(VersionError, match=error):
        versioning.plan_bump(tree, new, date)
    assert _texts(tree) == before


def test_bump_refuses_when_the_chart_already_disagrees(tree: Path) -> None:
    chart = tree / CHART
    chart.write_text(chart.read_text().replace("appVersion:", "appVersion: \"7.7.7\"\n#", 1))
    with pytest.raises(VersionError, match=re.escape("appVersion is '7.7.7'")):
        versioning.plan_bump(tree, "99.0.0", "2030-01-01")


def test_changelog_section_bounds() -> None:
    text = ("# Changelog\n\nintro\n\n## [Unreleased]\n\n### Added\n\n- a\n\n"
            "## [0.2.0] - 2030-01-01\n\n### Fixed\n\n- b\n\n"
            "[Unreleased]: https://example.invalid/compare\n")
    assert versioning.changelog_section(text, "Unreleased") == "### Added\n\n- a\n"
    assert versioning.changelog_section(text, "0.2.0") == "### Fixed\n\n- b\n"
    assert versioning.changelog_section(text, "0.3.0") is None
    with pytest.raises(VersionError, match="already has a section"):
        versioning._release_changelog(text, "0.2.0", "2030-01-01")


# --------------------------------------------------------------------------- image label


def _oci_archive(path: Path, labels: dict[str, str] | None, *, as_index: bool) -> Path:
    """A minimal image archive (no layers; `labels` in its config), for the host's
    architecture, optionally under an index whose other entry is linux/s390x."""
    arch = image_check.GOARCH.get(platform.machine(), platform.machine())
    img = images.single_image("tote.test/release:v1", [], arch=arch, labels=labels)
    if as_index:
        other = images.single_image(img.name, [], arch="s390x")
        img = images.index_image(img.name, [other, img])
    return img.write_archive(path)


@pytest.mark.parametrize("as_index", [False, True])
def test_image_version_label(tmp_path: Path, as_index: bool) -> None:
    label = image_check.VERSION_LABEL
    good = _oci_archive(tmp_path / "good.tar", {label: "0.2.0"}, as_index=as_index)
    image_check.check_label(good, "0.2.0")
    wrong = re.escape("label is '0.2.0', want '0.3.0'")
    with pytest.raises(image_check.ImageCheckError, match=wrong):
        image_check.check_label(good, "0.3.0")
    bare = _oci_archive(tmp_path / "bare.tar", None, as_index=as_index)
    with pytest.raises(image_check.ImageCheckError, match=r"has no \S+ label"):
        image_check.check_label(bare, "0.2.0")


def test_image_label_of_a_broken_archive(tmp_path: Path) -> None:
    junk = tmp_path / "junk.tar"
    junk.write_bytes(b"not a tar")
    with pytest.raises(image_check.ImageCheckError, match="not a readable OCI image archive"):
        image_check.image_labels(junk)
