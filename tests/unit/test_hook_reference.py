"""docs/plugins.md's hook reference is the one tote_core.hooks.reference_doc draws from the specs
(regenerate with `python -m tote_core.hooks.reference_doc --write`), every spec's docstring has
every part the reference shows, each spec's `Built-in:` names exactly the built-in plugins
that implement it, and the page's table of built-in plugins lists each with its flags."""

from __future__ import annotations

import importlib
import inspect
import re
import tomllib
from pathlib import Path

import msgspec
import pluggy
import pytest

from tote_core.hooks import hookspecs, reference_doc
from tote_core.hooks.hookspecs import hookspec

REPO = Path(__file__).resolve().parents[2]


def test_the_plugin_pages_hook_reference_matches_the_specs() -> None:
    text = reference_doc.DOC.read_text()
    start, end = reference_doc.section(text)
    assert text[start:end] == reference_doc.render(), (
        f"docs/plugins.md's hook reference is stale: run `{reference_doc.COMMAND}`")


def test_every_spec_docstring_has_every_part_of_the_template() -> None:
    assert reference_doc.problems() == []
    names = [h.name for h in reference_doc.hooks()]
    assert len(names) >= 15 and "select_source" in names and "transfer" in names
    assert all(h.phase for h in reference_doc.hooks()), "every spec stands under a phase comment"


def test_a_spec_missing_a_part_is_named_with_what_it_lacks() -> None:
    @hookspec(firstresult=True)
    def pick(node: str, digest: str) -> str | None:
        """Pick something.

        :param node: the node.
        :return: a name.

        When called: never.
        Process: controller.
        Sync/async: either.
        Built-in: none.
        """

    with pytest.raises(reference_doc.DocstringError) as caught:
        reference_doc.parse(pick)
    assert str(caught.value) == (
        "hook spec pick: docstring lacks `:param digest:`, `Deadline:`")


def test_a_parsed_spec_keeps_types_as_written_and_the_kind_from_pluggy() -> None:
    hook = reference_doc.parse(hookspecs.select_source)
    assert hook.firstresult is True
    assert hook.params[1][:2] == ("candidates", "list[NodeInfo]")
    assert hook.returns[0] == "list[str] | None"
    assert hook.signature.startswith("def select_source(")
    assert "`--transfer-timeout`" in hook.fields["Deadline"]
    assert reference_doc.parse(hookspecs.on_salvaged).firstresult is False
    rendered = reference_doc.render_hook(hook)
    assert "| *returns* | `list[str] \\| None` |" in rendered  # pipes escaped in tables


def test_builtin_names_skip_parenthesised_asides() -> None:
    text = "`source-policy` (ready, `--zone` first); `agent` wraps it (blobs first)"
    assert reference_doc.builtin_names(text) == ("agent", "source-policy")
    assert reference_doc.builtin_names("none (core does it)") == ()


def _builtin_plugins() -> dict[str, object]:
    """The built-in plugin objects, built as the host builds them, from pyproject.toml's
    entry points (the source, not the installed metadata, which may lag behind)."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    out: dict[str, object] = {}
    for name, value in project["entry-points"]["tote"].items():
        module, _, attr = value.partition(":")
        loaded: object = importlib.import_module(module)
        if attr:
            loaded = getattr(loaded, attr)
        built = isinstance(loaded, type) or inspect.isroutine(loaded)
        out[name] = loaded() if built else loaded  # type: ignore[operator]
    return out


def test_each_specs_built_in_names_the_built_in_plugins_implementing_it() -> None:
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    for name, plugin in _builtin_plugins().items():
        pm.register(plugin, name=name)
    wrong = {}
    for hook in reference_doc.hooks():
        impls = getattr(pm.hook, hook.name).get_hookimpls()
        actual = tuple(sorted({i.plugin_name for i in impls}))
        if hook.builtins != actual:
            wrong[hook.name] = f"docstring says {hook.builtins}, implemented by {actual}"
    assert not wrong, f"fix `Built-in:` in tote_core/hooks/hookspecs.py: {wrong}"


def test_write_rewrites_only_between_the_markers(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    page = tmp_path / "plugins.md"
    page.write_text(f"# Before\n\n{reference_doc.BEGIN}\nold\n{reference_doc.END}\n\nAfter\n")
    assert reference_doc.main(["--write", str(page)]) == 0
    assert page.read_text() == (
        f"# Before\n\n{reference_doc.BEGIN}\n{reference_doc.render()}"
        f"{reference_doc.END}\n\nAfter\n")
    assert reference_doc.main(["--write", str(page)]) == 0
    assert "already current" in capsys.readouterr().out

    page.write_text("# no markers\n")
    assert reference_doc.main(["--write", str(page)]) == 1
    assert "has no hook reference markers" in capsys.readouterr().err


def test_hook_types_keep_their_field_types_defaults_and_comments() -> None:
    by_name = {t.name: t for t in reference_doc.types()}
    request = {f.name: f for f in by_name["TransferRequest"].fields}
    assert request["digest"].type == "str" and request["digest"].default is None
    assert request["max_bytes"].default == "0"
    assert "0 = no limit" in request["max_bytes"].note
    assert by_name["ProgressCallback"].alias == "Callable[[TransferProgress], Awaitable[None]]"
    rendered = reference_doc.render_type(by_name["Incident"])
    assert "| `digest` | `str \\| None` | required | sha256:… once known |" in rendered


def test_the_built_in_plugins_table_lists_every_built_in_and_its_flags() -> None:
    """docs/plugins.md's hand-written table of built-in plugins names each one and every flag
    its settings Struct declares — no more, no fewer."""
    text = reference_doc.DOC.read_text()
    table = text[text.index("## Built-in plugins"):text.index("## Notifications")]
    documented = {}
    for line in table.splitlines():
        cells = line.split(" | ")
        if line.startswith("| `") and len(cells) == 3:
            name = cells[0].removeprefix("| `").removesuffix("`")
            documented[name] = set(re.findall(r"`(--[a-z0-9-]+)`", cells[2]))
    actual = {}
    for name, plugin in _builtin_plugins().items():
        hook = getattr(plugin, "settings_type", None)
        cls = hook() if hook is not None else None
        fields = msgspec.structs.fields(cls) if cls is not None else ()
        actual[name] = {f"--{name}-{f.name.replace('_', '-')}" for f in fields}
    assert documented == actual
