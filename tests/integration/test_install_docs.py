"""The install pages (docs/install/) say what the chart accepts and does.

Every distribution page carries its Helm values in exactly one ```yaml block. Each block is
rendered with `helm template` (the chart's values.schema.json is enforced by helm, so a
misspelt or mistyped value fails here) and linted with `helm lint --strict`; the rendered
agent must mount the paths the page names, and the index's table must name the same.
Every `helm install` / `helm upgrade` command the pages and the README print is rendered
too, with the local chart standing in for the published one (whose version must be the
chart's). The index must link every page
and the README the index. Finally, what the pages say about Pod Security is put to a real
API server: the agent's pod (host paths, root) is refused under `baseline`, admitted under
`privileged`, and the controller's passes `restricted`.

A failure names the page.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.cluster import versions
from tests.cluster.controlplane import CHART_DIR, REPO_ROOT, ControlPlane

INSTALL_DIR = REPO_ROOT / "docs" / "install"
INDEX = INSTALL_DIR / "README.md"
README = REPO_ROOT / "README.md"
# The distributions the install pages must cover (one page each).
DISTRIBUTIONS = ("kind", "k3s", "rke2", "eks", "gke", "aks", "talos")
PAGES = [INSTALL_DIR / f"{name}.md" for name in DISTRIBUTIONS]
PUBLISHED_CHART = "oci://ghcr.io/tote-dev/charts/tote"
RELEASE_NAMESPACE = "tote-system"
# What helm checks the chart's kubeVersion against (without a cluster it assumes an old one).
KUBE_VERSION = versions.pin("K8S_VERSION")


@dataclass(frozen=True)
class Block:
    lang: str
    body: str
    line: int  # 1-based line of the opening fence


def fenced_blocks(text: str) -> list[Block]:
    """Fenced code blocks, also those indented inside list items (the indent is removed)."""
    blocks: list[Block] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        stripped = lines[i].lstrip()
        if stripped.startswith("```"):
            indent = len(lines[i]) - len(stripped)
            lang, start, body = stripped[3:].strip(), i + 1, []
            i += 1
            while i < len(lines) and lines[i].strip() != "```":
                body.append(lines[i][indent:] if lines[i][:indent].strip() == "" else lines[i])
                i += 1
            if i == len(lines):
                raise AssertionError(f"unclosed ``` fence opened on line {start}")
            blocks.append(Block(lang, "\n".join(body) + "\n", start))
        i += 1
    return blocks


def helm_commands(text: str) -> list[list[str]]:
    """`helm install` / `helm upgrade` commands in the ```sh blocks, as argument lists."""
    commands = []
    for block in fenced_blocks(text):
        if block.lang not in ("sh", "bash", "shell"):
            continue
        for line in block.body.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if words[:2] in (["helm", "install"], ["helm", "upgrade"]):
                commands.append(words)
    return commands


def chart_version() -> str:
    return str(yaml.safe_load((CHART_DIR / "Chart.yaml").read_text())["version"])


class Helm:
    """The built helm with homes of its own (no user config, no repositories)."""

    def __init__(self, binary: Path, home: Path) -> None:
        self.binary = binary
        self.env = {**os.environ, "HELM_CACHE_HOME": str(home / "cache"),
                    "HELM_CONFIG_HOME": str(home / "config"),
                    "HELM_DATA_HOME": str(home / "data")}

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(self.binary), *args], capture_output=True, text=True,
                              env=self.env, timeout=120)


@pytest.fixture(scope="module")
def helm(k8s_bin_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Helm:
    return Helm(k8s_bin_dir / "helm", tmp_path_factory.mktemp("helm-home"))


def page_values(page: Path) -> dict[str, Any]:
    """The page's one ```yaml block, parsed; fails naming the page otherwise."""
    blocks = [b for b in fenced_blocks(page.read_text()) if b.lang == "yaml"]
    assert len(blocks) == 1, (
        f"{page.name}: {len(blocks)} ```yaml blocks (lines "
        f"{[b.line for b in blocks]}); the values belong in exactly one")
    try:
        values = yaml.safe_load(blocks[0].body)
    except yaml.YAMLError as e:
        raise AssertionError(f"{page.name}: the ```yaml block is not YAML: {e}") from e
    assert isinstance(values, dict) and values, f"{page.name}: the ```yaml block holds no values"
    return values


def write_values(page: Path, directory: Path) -> Path:
    """The block as the file the page's commands name (values-<page>.yaml)."""
    path = directory / f"values-{page.stem}.yaml"
    path.write_text(json.dumps(page_values(page)))
    return path


def render(helm: Helm, where: str, *args: str) -> list[dict[str, Any]]:
    res = helm.run("template", "tote", str(CHART_DIR), "--namespace", RELEASE_NAMESPACE,
                   "--kube-version", KUBE_VERSION, *args)
    assert res.returncode == 0, f"{where}: helm template {' '.join(args)}:\n{res.stderr}"
    return [d for d in yaml.safe_load_all(res.stdout) if d]


def agent_daemonset(docs: list[dict[str, Any]]) -> dict[str, Any]:
    (ds,) = [d for d in docs if d["kind"] == "DaemonSet"]
    return ds


def host_paths(ds: dict[str, Any]) -> set[str]:
    return {v["hostPath"]["path"] for v in ds["spec"]["template"]["spec"]["volumes"]
            if "hostPath" in v}


# -- the pages exist and are linked -----------------------------------------------------


def test_every_distribution_has_a_page_and_nothing_else() -> None:
    found = {p.stem for p in INSTALL_DIR.glob("*.md")} - {"README"}
    assert found == set(DISTRIBUTIONS), f"docs/install/ pages: {sorted(found)}"


def _links(text: str) -> set[str]:
    return set(re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text))


def test_index_links_every_page_and_readme_links_index() -> None:
    index_links = _links(INDEX.read_text())
    for page in PAGES:
        assert page.name in index_links, f"docs/install/README.md does not link {page.name}"
    assert "docs/install/README.md" in _links(README.read_text()) or \
        "docs/install/" in _links(README.read_text()), "README.md does not link docs/install/"


def test_index_names_crio_unsupported() -> None:
    text = INDEX.read_text()
    unsupported = text[text.index("## Not supported"):]
    for needle in ("CRI-O", "OpenShift", "containerd"):
        assert needle in unsupported, f"docs/install/README.md 'Not supported' lacks {needle!r}"


def test_index_table_matches_the_pages() -> None:
    """The index's path table says what each page's values say (… is the content store)."""
    rows = {}
    for line in INDEX.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        link = re.search(r"\]\(([a-z0-9]+)\.md\)$", cells[-1]) if len(cells) > 3 else None
        if link:
            content = cells[2].strip("`").replace("…", "io.containerd.content.v1.content")
            rows[link.group(1)] = (cells[1].strip("`"), content)
    assert set(rows) == set(DISTRIBUTIONS), f"docs/install/README.md table rows: {sorted(rows)}"
    for page in PAGES:
        agent = page_values(page).get("agent", {})
        assert rows[page.stem] == (agent.get("containerdSocket"), agent.get("contentRoot")), (
            f"docs/install/README.md's row for {page.name} says {rows[page.stem]}, the page "
            f"{(agent.get('containerdSocket'), agent.get('contentRoot'))}")


def test_readme_has_no_issue_numbers() -> None:
    hits = [line for line in README.read_text().splitlines()
            if re.search(r"\bissues?\s*#?\d", line, re.IGNORECASE)]
    assert not hits, f"README.md mentions issue numbers: {hits}"


# -- each page's values -------------------------------------------------------------------


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.stem)
def test_page_values_render_and_lint(helm: Helm, page: Path, tmp_path: Path) -> None:
    values = page_values(page)
    vf = write_values(page, tmp_path)
    docs = render(helm, page.name, "-f", str(vf))
    lint = helm.run("lint", str(CHART_DIR), "--strict", "--namespace", RELEASE_NAMESPACE,
                    "--kube-version", KUBE_VERSION, "-f", str(vf))
    assert lint.returncode == 0, f"{page.name}: helm lint --strict:\n{lint.stdout}{lint.stderr}"
    # The agent mounts what the page says: the socket's directory and the content store.
    agent = values.get("agent", {})
    paths = host_paths(agent_daemonset(docs))
    if "containerdSocket" in agent:
        assert os.path.dirname(agent["containerdSocket"]) in paths, (
            f"{page.name}: the agent does not mount the directory of "
            f"{agent['containerdSocket']} (hostPaths: {sorted(paths)})")
    if agent.get("contentRoot"):
        assert agent["contentRoot"] in paths, (
            f"{page.name}: the agent does not mount {agent['contentRoot']} "
            f"(hostPaths: {sorted(paths)})")


@pytest.mark.parametrize("doc", [README, INDEX, *PAGES],
                         ids=lambda p: str(p.relative_to(REPO_ROOT)))
def test_printed_helm_commands_render(helm: Helm, doc: Path, tmp_path: Path) -> None:
    """Every `helm install`/`upgrade` a page prints, with the local chart for the published."""
    where = str(doc.relative_to(REPO_ROOT))
    commands = helm_commands(doc.read_text())
    assert commands, f"{where}: no helm install command"
    for words in commands:
        argv, positional = _template_args(where, doc, words, tmp_path)
        assert positional == ["tote", PUBLISHED_CHART], (
            f"{where}: {' '.join(words)}: expected release 'tote' from {PUBLISHED_CHART}")
        render(helm, f"{where}: {' '.join(words)}", *argv)


def _template_args(where: str, doc: Path, words: list[str], tmp_path: Path
                   ) -> tuple[list[str], list[str]]:
    """Translate a printed helm command into `helm template` arguments for the local chart."""
    argv: list[str] = []
    positional: list[str] = []
    version = None
    it = iter(words[2:])
    for word in it:
        flag, eq, inline = word.partition("=")
        if not word.startswith("-"):
            positional.append(word)
        elif flag in ("--create-namespace", "--install", "--wait", "--atomic"):
            pass
        elif flag in ("-n", "--namespace", "-f", "--values", "--set", "--set-string",
                      "--version"):
            value = inline if eq else next(it)
            if flag == "--version":
                version = value
            elif flag in ("-n", "--namespace"):
                assert value == RELEASE_NAMESPACE, f"{where}: namespace {value}"
            elif flag in ("-f", "--values"):
                if value == "values.yaml":  # the generic form: a page's block goes there
                    continue
                assert doc in PAGES and value == f"values-{doc.stem}.yaml", (
                    f"{where}: -f {value}: a page installs with its own values-<page>.yaml")
                argv += ["-f", str(write_values(doc, tmp_path))]
            else:
                argv += [flag, value]
        else:
            raise AssertionError(f"{where}: {' '.join(words)}: flag {word} not understood here")
    assert version == chart_version(), (
        f"{where}: {' '.join(words)}: --version {version}, the chart is {chart_version()}")
    return argv, positional


# -- what the pages say about Pod Security, on a real API server --------------------------


def _pod_from(template: dict[str, Any], name: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "labels": template["metadata"].get("labels", {})},
            "spec": template["spec"]}


@pytest.fixture(scope="module")
def psa_namespaces(control_plane: ControlPlane) -> Iterator[dict[str, str]]:
    """One namespace per enforced Pod Security level; only dry runs happen in them."""
    names = {level: f"install-docs-{level}" for level in ("baseline", "privileged",
                                                           "restricted")}
    for level, ns in names.items():
        control_plane.kubectl("create", "namespace", ns)
        control_plane.kubectl("label", "namespace", ns,
                              f"pod-security.kubernetes.io/enforce={level}")
    try:
        yield names
    finally:
        for ns in names.values():
            # Empty (dry runs only), and no namespace controller here to finalize: do its
            # last step ourselves so nothing is left Terminating.
            control_plane.kubectl("delete", "namespace", ns, "--wait=false", check=False)
            control_plane.kubectl(
                "replace", "--raw", f"/api/v1/namespaces/{ns}/finalize", "-f", "-",
                input=json.dumps({"apiVersion": "v1", "kind": "Namespace",
                                  "metadata": {"name": ns}, "spec": {"finalizers": []}}),
                check=False)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.stem)
def test_pod_security_as_documented(helm: Helm, control_plane: ControlPlane,
                                    psa_namespaces: dict[str, str], page: Path,
                                    tmp_path: Path) -> None:
    """The agent needs `privileged` (host paths, root); the controller passes `restricted`."""
    docs = render(helm, page.name, "-f", str(write_values(page, tmp_path)))
    agent = _pod_from(agent_daemonset(docs)["spec"]["template"], "agent")
    (deployment,) = [d for d in docs if d["kind"] == "Deployment"]
    controller = _pod_from(deployment["spec"]["template"], "controller")

    def dry_run(pod: dict[str, Any], level: str) -> subprocess.CompletedProcess[str]:
        return control_plane.kubectl("create", "--dry-run=server", "-n", psa_namespaces[level],
                                     "-f", "-", input=json.dumps(pod), check=False)

    refused = dry_run(agent, "baseline")
    assert refused.returncode != 0 and "violates PodSecurity" in refused.stderr \
        and "hostPath" in refused.stderr, (
        f"{page.name}: the agent passed baseline, the docs say it needs privileged:\n"
        f"{refused.stdout}{refused.stderr}")
    admitted = dry_run(agent, "privileged")
    assert admitted.returncode == 0, f"{page.name}: agent under privileged:\n{admitted.stderr}"
    restricted = dry_run(controller, "restricted")
    assert restricted.returncode == 0, (
        f"{page.name}: the controller fails restricted:\n{restricted.stderr}")
