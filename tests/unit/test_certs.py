"""tote's CA (`tote_core.certs`): what is issued, when it is due, what makes it re-issued."""

from __future__ import annotations

import datetime as dt

from cryptography import x509
from tote_containerd.agent.tls import identity_of

from tote_core import certs

NOW = dt.datetime(2026, 12, 6, 12, 0, tzinfo=dt.UTC)
DAY = dt.timedelta(days=1)


def _cert(pem: bytes) -> x509.Certificate:
    return x509.load_pem_x509_certificate(pem)


def test_issued_identities_are_the_ones_agents_check() -> None:
    ca = certs.new_ca("tote-ca test", NOW)
    for role in ("controller", "agent"):
        leaf = certs.issue(ca, role, NOW, 90 * DAY)
        cert = _cert(leaf.cert)
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        uris = san.get_values_for_type(x509.UniformResourceIdentifier)
        peercert = {"subjectAltName": tuple(("URI", u) for u in uris)}
        assert identity_of(peercert).role == role
        assert certs.leaf_problem(leaf.cert, leaf.key, _cert(ca.cert), NOW) == ""


def test_renewal_is_due_at_two_thirds_of_the_lifetime() -> None:
    ca = certs.new_ca("tote-ca test", NOW)
    leaf = certs.issue(ca, "agent", NOW, 90 * DAY)
    due = certs.renewal_due(_cert(leaf.cert))
    assert NOW + 55 * DAY < due < NOW + 60 * DAY
    assert certs.leaf_problem(leaf.cert, leaf.key, _cert(ca.cert), due - DAY) == ""
    assert "renewal due" in certs.leaf_problem(leaf.cert, leaf.key, _cert(ca.cert), due)


def test_a_short_lifetime_is_not_swallowed_by_the_backdating() -> None:
    ca = certs.new_ca("tote-ca test", NOW)
    cert = _cert(certs.issue(ca, "agent", NOW, dt.timedelta(seconds=60)).cert)
    assert cert.not_valid_before_utc >= NOW - dt.timedelta(seconds=7)
    assert certs.renewal_due(cert) < NOW + dt.timedelta(seconds=45)


def test_what_gets_a_leaf_reissued() -> None:
    ca, other = certs.new_ca("a", NOW), certs.new_ca("b", NOW)
    leaf = certs.issue(ca, "agent", NOW, 90 * DAY)
    stranger = certs.issue(other, "agent", NOW, 90 * DAY)
    assert certs.leaf_problem(stranger.cert, stranger.key, _cert(ca.cert), NOW) == \
        "not issued by the current CA"
    assert certs.leaf_problem(leaf.cert, stranger.key, _cert(ca.cert), NOW) == \
        "key does not match the certificate"
    assert certs.leaf_problem(b"garbage", leaf.key, _cert(ca.cert), NOW).startswith("unreadable")
    hook = certs.issue(ca, "webhook", NOW, 90 * DAY, ["svc.ns.svc", "svc"])
    assert certs.leaf_problem(hook.cert, hook.key, _cert(ca.cert), NOW,
                              ["svc", "svc.ns.svc"]) == ""
    assert "DNS names" in certs.leaf_problem(hook.cert, hook.key, _cert(ca.cert), NOW,
                                             ["other.ns.svc"])
    by_ip = certs.issue(ca, "webhook", NOW, 90 * DAY, ["127.0.0.1"])
    assert certs.leaf_problem(by_ip.cert, by_ip.key, _cert(ca.cert), NOW, ["127.0.0.1"]) == ""


def test_the_trust_bundle_keeps_the_previous_ca_until_it_expires() -> None:
    old = _cert(certs.new_ca("old", NOW - 3000 * DAY).cert)
    new = _cert(certs.new_ca("new", NOW).cert)
    both = certs.bundle([new, old, new], NOW)
    assert [c.subject for c in x509.load_pem_x509_certificates(both)] == \
        [new.subject, old.subject]
    later = NOW + 700 * DAY  # the old CA's ten years are over
    assert [c.subject for c in x509.load_pem_x509_certificates(certs.bundle([new, old], later))] \
        == [new.subject]
