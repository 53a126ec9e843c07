"""The test tree's own rules, checked on its source (`ast`), as test_layering does for the package.

1. One way to skip. A test that needs something this machine may lack (a tool, a built
   binary, root, a kernel feature) calls `tests.cluster.ci.require(ok, why)`: a skip here, a
   failure under CI, so a CI machine that lost a dependency cannot pass. Nothing else in
   tests/ may skip: no `pytest.skip`, `pytest.mark.skip`/`skipif`, `pytest.importorskip`,
   `unittest.skip*`/`SkipTest` outside tests/cluster/ci.py. (tests/conftest.py also turns any
   skip that still happens under CI into a failure.)
2. Imports run one way, harness ← suites. The harness is tests/cluster, tests/images and the
   files at the top of tests/ (conftest.py, matrix.py); the suites are tests/unit,
   tests/integration, tests/e2e and tests/bench. The harness imports no suite; a suite imports
   the harness and itself, never another suite (no unit → integration, no e2e → integration,
   no demo → e2e); tools/ imports only the harness. A suite's shared pieces that another suite
   wants belong in the harness.

3. One way to start each kind of thing. A test controller is made only by the controller
   factory (`ControllerProcess(...)` is called in tests/cluster/controller.py alone; tests use
   the `controllers` fixture or `Controllers`); a containerd daemon is started only by
   `tests/cluster/containerd_node.start_containerd` (called only in the harness and tools/:
   suites use `containerd_env` / `Env.add_node`); test images are built only by
   tests/cluster/images.py (nothing else in tests/ defines a layer, config or manifest
   builder of its own: no `umoci`, no `_platform_manifest`-style helper outside it).

Every `import` counts, at module level or inside a function. Tried: the checkers themselves on
small sources that break each rule, so a rule that silently stops matching fails here too.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TESTS = ROOT / "tests"
SUITES = ("unit", "integration", "e2e", "bench")
HARNESS = ("cluster", "images")
REQUIRE_HOME = "tests/cluster/ci.py"  # the one place that may call pytest.skip
SKIP_NAMES = {"skip", "skipif", "importorskip", "SkipTest", "skipIf", "skipUnless"}
SKIP_MODULES = {"pytest", "unittest", "_pytest"}
# Bare skips in files another change owns right now, each to become `require(...)`; an entry
# whose file no longer has that many is removed (test_pending_skips_are_still_there).
PENDING_SKIPS: dict[str, int] = {}


# --------------------------------------------------------------------------- skips


def _root_name(node: ast.expr) -> str | None:
    while isinstance(node, ast.Attribute):
        node = node.value
    return node.id if isinstance(node, ast.Name) else None


def bare_skips(source: str) -> list[int]:
    """Line numbers where `source` skips other than through `require` (see the docstring)."""
    lines = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Attribute):
            names, root = {node.attr}, _root_name(node)
        elif isinstance(node, ast.ImportFrom):
            names, root = {a.name for a in node.names}, (node.module or "").split(".")[0]
        else:
            continue
        if names & SKIP_NAMES and root in SKIP_MODULES:
            lines.add(node.lineno)
    return sorted(lines)


def _rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def _sources(*dirs: Path) -> Iterator[Path]:
    for d in dirs:
        assert d.is_dir(), d
        yield from sorted(p for p in d.rglob("*.py") if "__pycache__" not in p.parts)


def test_no_skip_outside_require() -> None:
    broken = []
    seen = 0
    for path in _sources(TESTS):
        seen += 1
        rel = _rel(path)
        if rel == REQUIRE_HOME:
            continue
        found = bare_skips(path.read_text())
        if found and len(found) > PENDING_SKIPS.get(rel, 0):
            broken += [f"{rel}:{n}" for n in found]
    assert seen > 100, "the walk found too few files; is ROOT right?"
    assert not broken, (
        "skip only through tests.cluster.ci.require(ok, why) (a failure under CI): "
        + ", ".join(broken)
    )


def test_pending_skips_are_still_there() -> None:
    for rel, count in PENDING_SKIPS.items():
        path = ROOT / rel
        have = len(bare_skips(path.read_text())) if path.exists() else 0
        assert have >= count, f"{rel} has {have} bare skips now: lower PENDING_SKIPS[{rel!r}]"


@pytest.mark.parametrize("source", [
    "import pytest\npytest.skip('x')\n",
    "import pytest\n@pytest.mark.skip(reason='x')\ndef test(): pass\n",
    "import pytest\npytestmark = pytest.mark.skipif(True, reason='x')\n",
    "import pytest\nyaml = pytest.importorskip('yaml')\n",
    "import pytest\nraise pytest.skip.Exception('x')\n",
    "from pytest import skip\n",
    "import unittest\n@unittest.skipIf(True, 'x')\nclass T(unittest.TestCase): pass\n",
    "from unittest import SkipTest\n",
    "def f():\n    import pytest\n    pytest.skip('late')\n",
])
def test_skip_checker_sees_each_form(source: str) -> None:
    assert bare_skips(source)


@pytest.mark.parametrize("source", [
    "from tests.cluster.ci import require\nrequire(True, 'x')\n",
    "b.skip('release step', 'dry run')\n",  # someone else's method named skip
    "x = 'pytest.skip(1)'\n",  # text, not code
])
def test_skip_checker_leaves_the_rest(source: str) -> None:
    assert not bare_skips(source)


# --------------------------------------------------------------------------- imports


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports(source: str, module: str, *, package: bool = False) -> Iterator[str]:
    """Every module name `source` (the text of `module`) imports, relative ones resolved;
    `from pkg import name` also counts `pkg.name` (it may be a submodule)."""
    base = module.split(".") if package else module.split(".")[:-1]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = base[:len(base) - (node.level - 1)]
                target = ".".join([*anchor, *([node.module] if node.module else [])])
            else:
                target = node.module or ""
            yield target
            yield from (f"{target}.{alias.name}" for alias in node.names if alias.name != "*")


def part_of(module: str) -> str | None:
    """`tests.<suite>` for a suite's module, "harness" for the harness, None outside tests."""
    parts = module.split(".")
    if parts[0] != "tests":
        return None
    if len(parts) > 2 and parts[1] in SUITES:
        return f"tests.{parts[1]}"
    if len(parts) == 2 and parts[1] in SUITES:  # the package itself, e.g. `from tests import e2e`
        return f"tests.{parts[1]}"
    return "harness"


def violation(module: str, imported: str) -> str | None:
    """Why `module` may not import `imported` (None when it may)."""
    target = part_of(imported)
    if target is None or target == "harness":
        return None
    own = part_of(module)
    if own == target:
        return None
    who = {None: "tools/", "harness": "the harness"}.get(own, own)
    return f"{who} imports the suite {target} (shared pieces belong in tests/cluster)"


def _checked_modules() -> Iterator[tuple[str, Path]]:
    for path in _sources(TESTS, ROOT / "tools"):
        yield _module_name(path), path


def test_imports_run_one_way() -> None:
    broken = []
    seen = 0
    for module, path in _checked_modules():
        seen += 1
        for imported in sorted(set(imports(path.read_text(), module,
                                           package=path.name == "__init__.py"))):
            if why := violation(module, imported):
                broken.append(f"{_rel(path)}: imports {imported}: {why}")
    assert seen > 100, "the walk found too few modules; is ROOT right?"
    assert not broken, "\n".join(broken)


@pytest.mark.parametrize(("module", "source"), [
    ("tests.unit.test_x", "from tests.integration.containerd.certs import make_pki\n"),
    ("tests.e2e.test_x", "from tests.integration.salvage import fault_table\n"),
    ("tests.cluster.demo", "from tests.e2e.salvage_env import namespace\n"),
    ("tests.conftest", "def f():\n    from tests.integration.salvage import fault_table\n"),
    ("tests.bench.bench_x", "from tests.e2e import tote_install\n"),
    ("tests.integration.test_x", "from ..e2e import conftest\n"),
    ("tools.image_check", "import tests.integration.containerd.nodes\n"),
])
def test_import_checker_sees_each_wrong_way(module: str, source: str) -> None:
    assert any(violation(module, i) for i in imports(source, module))


@pytest.mark.parametrize(("module", "source"), [
    ("tests.unit.test_x", "from tests.unit.test_tlsfiles import _pem\n"),
    ("tests.integration.test_x", "from tests.integration.test_helm import Helm\n"),
    ("tests.e2e.test_x", "from tests.cluster import tote_install\n"),
    ("tests.cluster.demo", "from tests.cluster.salvage_env import namespace\n"),
    ("tools.image_check", "from tests.cluster.containerd_env import start_node\n"),
    ("tests.bench.bench_x", "from tests.cluster.images import layered_image\n"),
])
def test_import_checker_allows_harness_and_own_suite(module: str, source: str) -> None:
    assert not any(violation(module, i) for i in imports(source, module))


# --------------------------------------------------------------------------- one way to start


# name called → the files (relative to ROOT) or folders ending in "/" that may call it
ONLY_CALLED_IN = {
    "ControllerProcess": ("tests/cluster/controller.py",),
    "start_containerd": ("tests/cluster/",),
}
IMAGE_BUILDER = "tests/cluster/images.py"
# What writing an image by hand looks like: an image tool, or a config/manifest document built
# as a dict literal with the keys only an image writer needs.
IMAGE_TOOL = "umoci"
IMAGE_KEYS = {"rootfs", "diff_ids"}


def calls(source: str) -> Iterator[tuple[str, int]]:
    """Every call of a plain or attribute name in `source`: (name, line)."""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call):
            f = node.func
            name = f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) \
                else None
            if name:
                yield name, node.lineno


def hand_made_image(source: str) -> list[int]:
    """Lines where `source` runs an image tool or writes an image config's rootfs/diff_ids."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Constant) and node.value == IMAGE_TOOL:
            found.add(node.lineno)
        elif isinstance(node, ast.Dict):
            keys = {k.value for k in node.keys if isinstance(k, ast.Constant)}
            if keys & IMAGE_KEYS:
                found.add(node.lineno)
    return sorted(found)


def test_one_way_to_start_controllers_containerd_and_images() -> None:
    broken = []
    for path in _sources(TESTS):
        rel = _rel(path)
        source = path.read_text()
        for name, line in calls(source):
            allowed = ONLY_CALLED_IN.get(name)
            if allowed and not any(rel == a or (a.endswith("/") and rel.startswith(a))
                                   for a in allowed):
                broken.append(f"{rel}:{line}: calls {name} (only {', '.join(allowed)} may)")
        if rel not in (IMAGE_BUILDER, _rel(Path(__file__))):  # this file names the tool
            broken += [f"{rel}:{n}: builds an image by hand (use {IMAGE_BUILDER})"
                       for n in hand_made_image(source)]
    assert not broken, "\n".join(broken)


@pytest.mark.parametrize("source", [
    "ctl = ControllerProcess(cp, d, identity='x').start()\n",
    "from tests.cluster import containerd_node\ncontainerd_node.start_containerd(g, d, name='n')\n",
])
def test_call_checker_sees_a_hand_made_start(source: str) -> None:
    assert any(name in ONLY_CALLED_IN for name, _ in calls(source))


@pytest.mark.parametrize("source", [
    "subprocess.run(['umoci', 'init', '--layout', 'l'])\n",
    "config = {'architecture': 'amd64', 'rootfs': {'type': 'layers', 'diff_ids': []}}\n",
])
def test_image_checker_sees_a_hand_made_image(source: str) -> None:
    assert hand_made_image(source)


def test_image_checker_leaves_reading_alone() -> None:
    assert not hand_made_image("ids = config['rootfs']['diff_ids']\n")
