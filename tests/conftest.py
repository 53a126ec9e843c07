"""Shared pytest wiring: markers by directory, the real control plane, log tails on failure."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.cluster import versions
from tests.cluster.ci import in_ci, require
from tests.cluster.controller import Controllers
from tests.cluster.controlplane import ControlPlane, binaries_dir, start_control_plane
from tests.cluster.objects import force_delete_namespace

_MARK_BY_DIR = {"integration": pytest.mark.integration, "e2e": pytest.mark.e2e}
_TESTS_DIR = Path(__file__).resolve().parent


def pytest_configure(config: pytest.Config) -> None:
    """Every test and every process it starts uses the pinned containerd (versions.env)."""
    versions.use_containerd()


def pytest_report_header(config: pytest.Config) -> list[str]:
    p = versions.pins()
    ctd = versions.containerd_bin_dir()
    return [
        f"tote harness: kubernetes {p['K8S_VERSION']}, etcd {p['ETCD_VERSION']}, "
        f"containerd {p['CONTAINERD_VERSION']} ({ctd or 'NOT BUILT'}), "
        f"kubelet from {os.environ.get('TOTE_KUBELET_BIN_DIR') or 'the control plane build'}"
    ]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """tests/integration/** → `integration`, tests/e2e/** → `e2e`."""
    for item in items:
        try:
            rel = Path(str(item.path)).resolve().relative_to(_TESTS_DIR)
        except ValueError:
            continue
        mark = _MARK_BY_DIR.get(rel.parts[0]) if rel.parts else None
        if mark is not None:
            item.add_marker(mark)


def require_binaries() -> Path:
    """The built binaries dir; skip (locally) or fail (under CI) when they are absent."""
    d = binaries_dir()
    require(
        d is not None,
        "Kubernetes/etcd/helm binaries are not built; run tests/cluster/build-binaries.sh "
        "(or set TOTE_BIN_DIR, or TOTE_BUILD_BINARIES=1 to build on demand)",
    )
    assert d is not None
    return d


@pytest.fixture(scope="session")
def k8s_bin_dir() -> Path:
    return require_binaries()


@pytest.fixture(scope="session")
def control_plane(
    k8s_bin_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ControlPlane]:
    """etcd + kube-apiserver with tote's CRD and RBAC; one per test session."""
    cp = start_control_plane(tmp_path_factory.mktemp("controlplane"), k8s_bin_dir)
    try:
        yield cp
    finally:
        cp.stop()


@pytest.fixture
def controllers(control_plane: ControlPlane, tmp_path: Path) -> Iterator[Controllers]:
    """The controller factory (tests/cluster/controller.py): `controllers.start(identity,
    *flags)` runs a replica on the session's control plane; all stop after the test."""
    factory = Controllers(control_plane, tmp_path / "controllers")
    try:
        yield factory
    finally:
        factory.stop_all()


@pytest.fixture
def test_namespace(control_plane: ControlPlane) -> Iterator[str]:
    """A fresh namespace opted in with `tote.dev/allow: "true"`, removed afterwards."""
    yield from _opted_in_namespace(control_plane)


@pytest.fixture
def other_namespace(control_plane: ControlPlane) -> Iterator[str]:
    """A second namespace like `test_namespace`, for what must hold across namespaces."""
    yield from _opted_in_namespace(control_plane)


def _opted_in_namespace(control_plane: ControlPlane) -> Iterator[str]:
    name = f"t-{uuid.uuid4().hex[:10]}"
    control_plane.apply(
        {
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {"name": name, "annotations": {"tote.dev/allow": "true"}},
        }
    )
    try:
        yield name
    finally:
        force_delete_namespace(control_plane, name)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """On failure, attach log tails of every fixture value that has a `logs()` method.

    ControlPlane has one; other harness objects (containerd nodes, registries, controller
    processes) get their logs attached the same way by exposing `logs() -> dict[str, str]`.

    Under CI a skip, wherever it comes from, is a failure: `require` already fails there, and
    this catches any other (a plugin's, a new bare one), so "no skip under CI" holds.
    """
    report = yield
    if report.skipped and in_ci() and not hasattr(report, "wasxfail"):
        why = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        why = str(why).removeprefix("Skipped: ")
        report.outcome = "failed"
        report.longrepr = (f"skipped under CI: {why} [CI is set: .ci/install installs "
                           "everything the suite needs, so nothing may skip]")
    if not report.failed:
        return report
    funcargs: dict[str, Any] = getattr(item, "funcargs", {}) or {}
    seen: set[int] = set()
    for fixture_name, value in funcargs.items():
        logs: Callable[[], dict[str, str]] | None = getattr(value, "logs", None)
        if not callable(logs) or id(value) in seen:
            continue
        seen.add(id(value))
        try:
            tails = logs()
        except Exception as exc:  # diagnostics must never hide the real failure
            tails = {"<logs() failed>": repr(exc)}
        for component, text in tails.items():
            if text:
                report.sections.append((f"{fixture_name}: {component} log (tail)", text[-6000:]))
    return report


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """The fault matrix's table (tests/integration/salvage/test_fault_matrix.py and the
    network rows of tests/e2e/test_network_faults.py), once, at the end of the run."""
    from tests.cluster import fault_table

    if fault_table.ROWS:
        terminalreporter.section("fault matrix")
        terminalreporter.write_line(fault_table.markdown())
