"""The version's one source (pyproject.toml) and the files that must repeat it.

`pyproject.toml` `[project] version` is the source. The installed package reads it back
(`tote_core.__version__` via importlib.metadata → `tote --version`); the chart's `version` and
`appVersion` and the CHANGELOG's release heading repeat it, so `bump` edits all three files in
one step and `mismatches` says which of them disagree. The image build labels the image with
the installed package's version.

Versions are plain `MAJOR.MINOR.PATCH`: the one form that is both a valid PEP 440 version
(wheel and sdist names) and a valid SemVer 2 (Helm), spelled identically by both.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = "pyproject.toml"
CHART = "deploy/helm/tote/Chart.yaml"
CHANGELOG = "CHANGELOG.md"

VERSION_RE = re.compile(r"(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)")
UNRELEASED = "Unreleased"
# A Keep a Changelog release heading: "## [0.2.0] - 2026-12-01" or "## [Unreleased]".
HEADING_RE = re.compile(r"^## \[(?P<name>[^\]]+)\](?: - (?P<date>\d{4}-\d{2}-\d{2}))?[ \t]*$", re.M)


class VersionError(Exception):
    """A version, or a file that should carry it, is not what the release needs."""


def parse(version: str) -> tuple[int, int, int]:
    m = VERSION_RE.fullmatch(version)
    if not m:
        raise VersionError(
            f"version {version!r} is not MAJOR.MINOR.PATCH (e.g. 0.2.0); pre-release suffixes "
            "are refused because Python and Helm spell them differently"
        )
    return int(m[1]), int(m[2]), int(m[3])


def package_version(root: Path = ROOT) -> str:
    """The one source: `[project] version` in pyproject.toml."""
    data = tomllib.loads((root / PYPROJECT).read_text())
    value = data.get("project", {}).get("version")
    if not isinstance(value, str):
        raise VersionError(f"{PYPROJECT} has no [project] version string")
    return value


def chart_versions(root: Path = ROOT) -> tuple[str, str]:
    """(version, appVersion) of the chart, as strings."""
    data = yaml.safe_load((root / CHART).read_text()) or {}
    return str(data.get("version", "")), str(data.get("appVersion", ""))


def mismatches(root: Path = ROOT, *, installed: str | None = None) -> list[str]:
    """Every place whose version differs from pyproject.toml's (empty when consistent).

    `installed` is what the installed package reports (`tote --version`), when known.
    """
    want = package_version(root)
    chart, app = chart_versions(root)
    found = {f"{CHART} version": chart, f"{CHART} appVersion": app}
    if installed is not None:
        found["installed package (tote --version)"] = installed
    return [f"{where} is {got!r}, {PYPROJECT} says {want!r}"
            for where, got in found.items() if got != want]


# --------------------------------------------------------------------------- CHANGELOG


def changelog_section(text: str, name: str) -> str | None:
    """The body under `## [name]` (without its heading), or None if there is no such heading."""
    headings = list(HEADING_RE.finditer(text))
    for i, m in enumerate(headings):
        if m["name"] == name:
            end = headings[i + 1].start() if i + 1 < len(headings) else len(text)
            # Link reference definitions ("[0.2.0]: https://…") close the file, not a section.
            body = re.split(r"^\[[^\]]+\]: ", text[m.end():end], maxsplit=1, flags=re.M)[0]
            return body.strip("\n") + "\n"
    return None


def _release_changelog(text: str, new: str, date: str) -> str:
    """Move everything under [Unreleased] to a new `## [new] - date` section."""
    if changelog_section(text, new) is not None:
        raise VersionError(f"{CHANGELOG} already has a section for {new}")
    unreleased = [m for m in HEADING_RE.finditer(text) if m["name"] == UNRELEASED]
    if len(unreleased) != 1:
        raise VersionError(f"{CHANGELOG} needs exactly one '## [{UNRELEASED}]' heading")
    if not (changelog_section(text, UNRELEASED) or "").strip():
        raise VersionError(f"{CHANGELOG}: nothing under [{UNRELEASED}] to release as {new}")
    at = unreleased[0].end()
    return f"{text[:at]}\n\n## [{new}] - {date}{text[at:]}"


# --------------------------------------------------------------------------- bump


def _replace_line(text: str, pattern: str, line: str, where: str) -> str:
    new, count = re.subn(pattern, line, text, flags=re.M)
    if count != 1:
        raise VersionError(f"{where}: expected one line matching {pattern!r}, found {count}")
    return new


@dataclass(frozen=True)
class Bump:
    old: str
    new: str
    files: dict[str, str]  # relative path → new content


def plan_bump(root: Path, new: str, date: str) -> Bump:
    """Every file edit a bump to `new` makes, computed before anything is written."""
    old = package_version(root)
    if parse(new) <= parse(old):
        raise VersionError(f"new version {new} is not above the current {old}")
    if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", date):
        raise VersionError(f"release date {date!r} is not YYYY-MM-DD")
    if problems := mismatches(root):
        raise VersionError("versions disagree before the bump: " + "; ".join(problems))
    pyproject = (root / PYPROJECT).read_text()
    # The first `version = "…"` line is [project]'s (tomllib above proved it is there).
    head, sep, rest = pyproject.partition("[project]")
    if not sep:
        raise VersionError(f"{PYPROJECT} has no [project] table")
    rest = re.sub(r'^version = "[^"]*"$', f'version = "{new}"', rest, count=1, flags=re.M)
    chart = (root / CHART).read_text()
    chart = _replace_line(chart, r"^version: .*$", f"version: {new}", CHART)
    chart = _replace_line(chart, r"^appVersion: .*$", f'appVersion: "{new}"', CHART)
    changelog = _release_changelog((root / CHANGELOG).read_text(), new, date)
    return Bump(old=old, new=new, files={
        PYPROJECT: head + sep + rest, CHART: chart, CHANGELOG: changelog})


def apply_bump(root: Path, bump: Bump) -> None:
    for rel, content in bump.files.items():
        (root / rel).write_text(content)
    if problems := mismatches(root):  # the edits themselves are checked, not assumed
        raise VersionError("after the bump: " + "; ".join(problems))
    if package_version(root) != bump.new:
        raise VersionError(f"{PYPROJECT} still says {package_version(root)} after the bump")
