"""`tote doctor`'s row logic, pure: check results → rows, exit status, JSON and table.

The checks that talk to the API server and agents are tested on the harness
(tests/integration/salvage/test_status_doctor.py); here each decision is pinned from inputs
built of the real types (NodeHealth, Check, Lease/readyz JSON as the API server and the
controller send them, certificates made with `cryptography`).
"""

from __future__ import annotations

import datetime as dt
import io
import json

import msgspec
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tote_core import __version__
from tote_core.doctor import checks
from tote_core.doctor.checks import Check, Target
from tote_core.doctor.command import exit_code, render_table, to_json
from tote_core.hooks.types import NodeHealth

NOW = dt.datetime(2030, 6, 1, 12, 0, tzinfo=dt.UTC)
T = Target(namespace="tote-system", lease="tote-controller")


def _pem(cn: str, not_after: dt.datetime) -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(1)
            .not_valid_before(NOW - dt.timedelta(days=400)).not_valid_after(not_after)
            .sign(key, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.PEM)


def _lease(holder: str | None, renewed_ago: float | None, duration: int = 15) -> dict[str, object]:
    spec: dict[str, object] = {"leaseDurationSeconds": duration}
    if holder is not None:
        spec["holderIdentity"] = holder
    if renewed_ago is not None:
        when = NOW - dt.timedelta(seconds=renewed_ago)
        spec["renewTime"] = when.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "spec": spec}


# --- leader -------------------------------------------------------------------------------

def test_leader_renewed_within_its_duration_is_ok() -> None:
    row = checks.leader_row(_lease("ctl-a", 4), T, NOW)
    assert (row.check, row.status, row.subject) == ("leader", "ok", "tote-controller")
    assert "ctl-a" in row.detail and "renewed 4s ago" in row.detail


@pytest.mark.parametrize(("lease", "says"), [
    (_lease("ctl-a", 16, duration=15), "renewed 16s ago"),  # expired: the holder is gone
    (_lease(None, 2), "holder none"),  # released
    (_lease("ctl-a", None), "renewed never"),
])
def test_leader_without_a_current_holder_fails(lease: dict[str, object], says: str) -> None:
    row = checks.leader_row(lease, T, NOW)
    assert row.status == "fail" and "no current leader" in row.detail and says in row.detail


# --- ready --------------------------------------------------------------------------------

def test_ready_synced_is_ok_and_reports_the_version() -> None:
    body = json.dumps({"synced": True, "leader": True, "identity": "ctl-a",
                       "version": "9.9.9"}).encode()
    row, version = checks.ready_row(200, body, "http://127.0.0.1:8081")
    assert row.status == "ok" and "ctl-a" in row.detail and "leader=True" in row.detail
    assert row.subject == "http://127.0.0.1:8081" and version == "9.9.9"


def test_ready_not_synced_fails_but_still_reports_the_version() -> None:
    body = json.dumps({"synced": False, "version": "9.9.9"}).encode()
    row, version = checks.ready_row(503, body, "svc")
    assert row.status == "fail" and "HTTP 503" in row.detail and version == "9.9.9"


@pytest.mark.parametrize("body", [b"<html>bad gateway</html>", b"[1, 2]", b""])
def test_ready_answer_that_is_not_an_object_fails_with_the_body(body: bytes) -> None:
    row, version = checks.ready_row(200, body, "svc")
    assert row.status == "fail" and version is None
    assert "HTTP 200" in row.detail


# --- agents -------------------------------------------------------------------------------

def test_agent_healthy_with_layers_kept_is_ok() -> None:
    h = NodeHealth(node="n1", reachable=True, endpoint="127.0.0.2:7443", containerd_ok=True,
                   containerd_version="2.4.2", layers_discarded=False, images_sampled=5)
    row = checks.agent_row("n1", h)
    assert (row.check, row.subject, row.status) == ("agent", "n1", "ok")
    assert row.detail == ("127.0.0.2:7443 mTLS ok; containerd 2.4.2; "
                          "layers kept (5 images sampled)")


def test_agent_with_discarded_layers_is_a_snapshot_mode_source() -> None:
    h = NodeHealth(node="n1", reachable=True, containerd_ok=True, layers_discarded=True)
    row = checks.agent_row("n1", h)
    assert row.status == "ok" and "discard_unpacked_layers=true" in row.detail
    assert "snapshot mode" in row.detail


def test_agent_with_discarded_layers_and_snapshot_salvage_off_is_a_warning() -> None:
    h = NodeHealth(node="n1", reachable=True, containerd_ok=True, layers_discarded=True)
    row = checks.agent_row("n1", h, snapshot_salvage=False)
    assert row.status == "warn" and "cannot be a salvage source" in row.detail


def test_agent_with_nothing_to_sample_is_ok() -> None:
    h = NodeHealth(node="n1", reachable=True, containerd_ok=True, layers_discarded=None)
    row = checks.agent_row("n1", h)
    assert row.status == "ok" and "no images to sample" in row.detail


@pytest.mark.parametrize(("health", "says"), [
    (NodeHealth(node="n3", reachable=False, error="connection refused"), "connection refused"),
    (NodeHealth(node="n3", reachable=False), "unreachable"),
    (NodeHealth(node="n3", reachable=True, containerd_ok=False, error="socket gone"),
     "containerd unhealthy: socket gone"),
    (None, "containerd plugin disabled, or it failed"),
])
def test_agent_failures_name_the_reason(health: NodeHealth | None, says: str) -> None:
    row = checks.agent_row("n3", health)
    assert row.status == "fail" and row.subject == "n3" and says in row.detail


# --- certificates -------------------------------------------------------------------------

def test_certificates_ok_warn_and_expired_in_one_bundle() -> None:
    bundle = (_pem("long", NOW + dt.timedelta(days=90))
              + _pem("short", NOW + dt.timedelta(days=29, hours=5))
              + _pem("dead", NOW - dt.timedelta(minutes=1)))
    ok, warn, dead = checks.cert_rows("ca.crt", bundle, NOW)
    assert ok.status == "ok" and "CN=long" in ok.detail and "(90d)" in ok.detail
    assert warn.status == "warn" and "CN=short expires in 29d 5h" in warn.detail
    assert dead.status == "fail" and "CN=dead EXPIRED" in dead.detail
    assert {r.subject for r in (ok, warn, dead)} == {"ca.crt"}


def test_thirty_days_left_is_no_longer_a_warning() -> None:
    (row,) = checks.cert_rows("c", _pem("edge", NOW + dt.timedelta(days=30)), NOW)
    assert row.status == "ok"


def test_garbage_certificate_fails_instead_of_raising() -> None:
    (row,) = checks.cert_rows("tls.crt", b"-----BEGIN CERTIFICATE-----\nnope\n", NOW)
    assert row.status == "fail" and "not a PEM certificate" in row.detail


# --- version skew -------------------------------------------------------------------------

def test_version_skew() -> None:
    (same,) = checks.version_skew(__version__)
    (other,) = checks.version_skew("0.0.0-other")
    (unknown,) = checks.version_skew(None)
    assert same.status == "ok"
    assert other.status == "warn" and "0.0.0-other" in other.detail
    assert unknown.status == "warn" and "unknown" in unknown.detail


# --- exit status, JSON, table -------------------------------------------------------------

ROWS = [
    Check(check="crd", status="ok", detail="established, serving v1alpha1",
          subject="salvagerecords.tote.dev"),
    Check(check="certificate", status="warn", detail="CN=x expires in 3d 0h", subject="ca"),
    Check(check="agent", status="fail", detail="connection refused", subject="n3"),
]


def test_exit_status_fails_only_on_a_failed_row() -> None:
    assert exit_code(ROWS) == 1
    assert exit_code(ROWS[:2]) == 0  # a warning alone does not fail
    assert exit_code([]) == 0


def test_json_is_one_array_of_rows_that_decodes_back() -> None:
    text = to_json(ROWS)
    assert "\n" not in text
    assert json.loads(text)[2] == {"check": "agent", "status": "fail",
                                   "detail": "connection refused", "subject": "n3"}
    assert msgspec.json.decode(text, type=list[Check]) == ROWS


def test_table_shows_every_row_and_the_tally() -> None:
    out = io.StringIO()
    render_table(ROWS, out)
    text = out.getvalue()
    for r in ROWS:
        assert r.check in text and r.subject in text and r.status.upper() in text
    assert "connection refused" in text
    assert text.rstrip().splitlines()[-1] == "1 failed, 1 warnings, 1 ok"
