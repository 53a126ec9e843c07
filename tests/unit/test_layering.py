"""The import layering of tote_core and the plugins, checked on the source tree (`ast`).

Contracts (DESIGN.md, issue 13):
- tote_core never imports a plugin package: plugins depend on core, never the reverse (a
  plugin's subcommand is reached through the entry-point group `tote.commands`);
- plugins never import each other (shared wire types live in core);
- tote_core.detect and tote_core.structs are pure: no transport (HTTP, gRPC, WebSocket, TLS
  or socket clients);
- tote_core.components is the top layer (it wires everything together): nothing else in
  core imports it except cli.py, which starts it;
- tote_core.oci (the registry protocol, shared by the registry plugin and the node agent)
  stays below the controller: it never imports tote_core.kube, tote_core.salvage or
  tote_core.reconcile, so the agent does not pull the controller in with it.

Every `import` counts, at module level or inside a function or `TYPE_CHECKING` block, and so
does `importlib.import_module("...")` / `__import__("...")` with a literal name. Generated
code (`_gen/`) is left out.

Tried: the checker itself on small sources that break each rule (relative imports, lazy
imports, import_module), so a contract that silently stops matching fails here too.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PLUGINS = ("tote_containerd", "tote_inheritance", "tote_notify", "tote_registry",
           "tote_sourcepolicy")
TRANSPORT = ("httpx", "httpcore", "h11", "h2", "grpclib", "grpc", "trio_websocket", "wsproto",
             "ssl", "socket", "http", "urllib", "kubernetes", "trio_asyncio")
PURE = ("tote_core.detect", "tote_core.structs")
TOP = "tote_core.components"
OCI = "tote_core.oci"
ABOVE_OCI = ("tote_core.kube", "tote_core.salvage", "tote_core.reconcile")
# The asyncio boundary is one object, made in one module; grpclib's internals are read in one.
BRIDGE = "tote_containerd.agent.asyncio_bridge"
SHIM = "tote_containerd.agent.grpc_shim"
GRPCLIB_PRIVATES = ("_recv_trailing_metadata_done", "_send_request_done", "_cancel_done",
                    "_maybe_raise", "H2Protocol", "_body_repr", "_server_closed_fut")
# Known violations being removed elsewhere, each with who removes it. tote_core/salvage/ is
# split by the lead (issue 13, a later step); its import of the event recorder moves then.
PENDING: dict[tuple[str, str], str] = {}


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT / "plugins" if path.is_relative_to(ROOT / "plugins") else ROOT)
    parts = list(rel.with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports(source: str, module: str, *, package: bool = False) -> Iterator[str]:
    """Every module name `source` (the text of `module`) imports, relative ones resolved."""
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
            # `from pkg import mod` may import a submodule: count pkg.mod too.
            yield from (f"{target}.{alias.name}" for alias in node.names if alias.name != "*")
        elif (isinstance(node, ast.Call) and node.args
              and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)
              and ((isinstance(node.func, ast.Attribute) and node.func.attr == "import_module")
                   or (isinstance(node.func, ast.Name)
                       and node.func.id in {"__import__", "import_module"}))):
            yield node.args[0].value


def _within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def violations(module: str, imported: str) -> list[str]:
    """The contracts `module` importing `imported` breaks."""
    found = []
    top = imported.split(".")[0]
    own = module.split(".")[0]
    if own == "tote_core" and top in PLUGINS:
        found.append("tote_core imports a plugin")
    if own in PLUGINS and top in PLUGINS and top != own:
        found.append("a plugin imports another plugin")
    if any(_within(module, p) for p in PURE) and top in TRANSPORT:
        found.append(f"{module} (pure) imports the transport {top}")
    if _within(imported, TOP) and own == "tote_core" and not _within(module, TOP) \
            and module != "tote_core.cli":
        found.append(f"{module} imports the top layer {TOP}")
    if _within(module, OCI) and any(_within(imported, a) for a in ABOVE_OCI):
        found.append(f"{module} (registry protocol) imports the controller's {imported}")
    if top == "trio_asyncio" and module != BRIDGE:
        found.append(f"{module} imports trio_asyncio outside the asyncio bridge {BRIDGE}")
    return found


def _tree() -> Iterator[tuple[str, Path]]:
    roots = [ROOT / "tote_core", *(ROOT / "plugins" / p for p in PLUGINS)]
    for root in roots:
        assert root.is_dir(), root
        for path in sorted(root.rglob("*.py")):
            if "_gen" not in path.relative_to(root).parts:
                yield _module_name(path), path


def test_the_tree_keeps_its_layers() -> None:
    broken = []
    seen = 0
    for module, path in _tree():
        seen += 1
        text = path.read_text()
        for imported in set(imports(text, module, package=path.name == "__init__.py")):
            for why in violations(module, imported):
                if not any(m == module and _within(imported, i) for m, i in PENDING):
                    broken.append(f"{path.relative_to(ROOT)}: imports {imported}: {why}")
    assert seen > 50, "the walk found too few modules; is ROOT right?"
    assert not broken, "\n".join(broken)


def test_grpclib_internals_are_read_only_in_the_shim() -> None:
    """Names private to grpclib/h2/hyperframe appear in `SHIM` only, where each is checked
    against the supported grpclib versions."""
    found = [f"{path.relative_to(ROOT)}: {name}" for module, path in _tree() if module != SHIM
             for name in GRPCLIB_PRIVATES if name in path.read_text()]
    assert not found, found


def test_pending_exceptions_are_still_needed() -> None:
    """An exception whose module still exists but no longer makes that import is removed
    from PENDING (a module that is gone altogether needs no exception either: remove it)."""
    modules = dict(_tree())
    for module, imported in PENDING:
        if module in modules:
            found = set(imports(modules[module].read_text(), module))
            assert imported in found, f"PENDING {(module, imported)} is no longer needed"


@pytest.mark.parametrize(("module", "source", "package", "want"), [
    ("tote_core.cli", "import tote_containerd.agent", False, "imports a plugin"),
    ("tote_core.cli", "def f():\n    from tote_notify import plugin", False, "imports a plugin"),
    ("tote_core.hooks.host", "import importlib\nimportlib.import_module('tote_registry.x')",
     False, "imports a plugin"),
    ("tote_notify.plugin", "from tote_registry.client import RegistryClient", False,
     "another plugin"),
    ("tote_core.detect.reference", "import httpx", False, "transport httpx"),
    ("tote_core.structs", "from ssl import SSLContext", True, "transport ssl"),
    ("tote_core.detect.detector", "from . import reference\nimport grpclib.client", False,
     "transport grpclib"),
    ("tote_core.reconcile.pods", "from ..components import events", False, "top layer"),
    ("tote_core.status.command", "from tote_core.components.statusfeed import PATH", False,
     "top layer"),
    ("tote_core.oci.client", "from tote_core.kube.client import resource_path", False,
     "registry protocol"),
    ("tote_core.oci", "from ..salvage import planner", True, "registry protocol"),
    ("tote_containerd.connections", "import trio_asyncio", False, "outside the asyncio bridge"),
    ("tote_containerd.agent.client", "from trio_asyncio import aio_as_trio", False,
     "outside the asyncio bridge"),
])
def test_each_rule_catches_what_it_should(module: str, source: str, package: bool,
                                          want: str) -> None:
    found = [why for imported in imports(source, module, package=package)
             for why in violations(module, imported)]
    assert any(want in why for why in found), (source, found)


@pytest.mark.parametrize(("module", "source"), [
    ("tote_containerd.agent.oci", "from tote_core.detect import reference"),
    ("tote_containerd.plugin", "from .agent import client"),
    ("tote_core.components.manager", "from tote_core.components.events import EventRecorder"),
    ("tote_core.cli", "from tote_core.components.manager import Controller"),
    ("tote_core.detect.reference", "import re\nfrom tote_core.errors import InvalidReference"),
    ("tote_core.oci.client", "from tote_core.detect.reference import validate_digest"),
    (BRIDGE, "import trio_asyncio"),
])
def test_allowed_imports_pass(module: str, source: str) -> None:
    assert [v for i in imports(source, module) for v in violations(module, i)] == []
