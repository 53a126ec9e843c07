"""The reference parser against the distribution reference grammar (property-based).

The oracle is the grammar itself (distribution/reference regexp.go, written out below with
ASCII semantics as in Go), not the parser's own regexes. Tried:

- references generated from the grammar (registry hosts with ports, IPv6 literals,
  `localhost`, upper-case hosts, multi-component paths with `.`, `_`, `__`, `---`
  separators, tags up to 128 characters, sha256 and other digest algorithms): each parses,
  keeps its tag and digest, and normalises idempotently (`parse(parse(x).name) == parse(x)`);
- arbitrary text over the reference alphabet plus non-ASCII and whitespace, and single-edit
  mutations (insert / delete / replace a character) of valid references: `parse` either
  returns a reference whose input the grammar accepts, or raises `InvalidReference` — never
  anything else;
- non-string input, and `digest_of_image_id` on arbitrary text.

Found: tags with non-ASCII letters (`nginx:é`, `app:v٣`) were accepted — Python's `\\w` is
Unicode, the grammar's (Go's) is ASCII. Fixed in reference.py; regression examples below.
"""

from __future__ import annotations

import re

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from tote_core.detect.reference import (
    MAX_NAME_LENGTH,
    digest_of_image_id,
    parse,
    parse_normalised,
)
from tote_core.errors import InvalidReference

# --- the grammar (distribution/reference), ASCII like Go's regexp -------------------------
_ALNUM = r"[a-z0-9]+"
_SEP = r"(?:[._]|__|[-]+)"
_PATH_COMPONENT = rf"{_ALNUM}(?:{_SEP}{_ALNUM})*"
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_HOST = rf"(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|\[[a-fA-F0-9:]+\])"
_DOMAIN = rf"{_HOST}(?::[0-9]+)?"
_NAME = rf"(?:{_DOMAIN}/)?{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*"
_TAG = r"[\w][\w.-]{0,127}"
_DIGEST = r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}"
GRAMMAR = re.compile(rf"({_NAME})(?::({_TAG}))?(?:@({_DIGEST}))?", re.ASCII)

FAST = settings(max_examples=100, deadline=2000)  # deadline: a ReDoS would show; load not

# --- generators from the grammar ---------------------------------------------------------
_alnum = st.text("abcdefghijklmnopqrstuvwxyz0123456789", min_size=1, max_size=6)
_sep = st.sampled_from([".", "_", "__", "-", "--", "---"])


@st.composite
def path_component(draw: st.DrawFn) -> str:
    out = draw(_alnum)
    for _ in range(draw(st.integers(0, 2))):
        out += draw(_sep) + draw(_alnum)
    return out


_dns = st.from_regex(r"[a-zA-Z0-9]([a-zA-Z0-9-]{0,6}[a-zA-Z0-9])?", fullmatch=True)
_hosts = st.one_of(
    st.builds(lambda a, b: f"{a}.{b}", _dns, _dns),  # registry.example
    st.just("localhost"),
    # [::1]; a bracketed host without ":" is not taken as a host by the normalisation rule
    # (nor by distribution's splitDomain) and then fails as a path in both.
    st.from_regex(r"\[[a-fA-F0-9]{0,4}:[a-fA-F0-9:]{1,10}\]", fullmatch=True),
    st.from_regex(r"[A-Z][a-zA-Z0-9]{0,6}", fullmatch=True),  # upper case: a host
)
_ports = st.none() | st.integers(0, 65535).map(str) | st.just("00080")
_tags = st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}", fullmatch=True)
_digests = st.one_of(
    st.from_regex(r"sha256:[0-9a-f]{64}", fullmatch=True),
    st.from_regex(r"(sha512|multihash\+base58|b3-x):[0-9a-fA-F]{32,80}", fullmatch=True),
)


@st.composite
def references(draw: st.DrawFn) -> tuple[str, str | None, str | None, str | None]:
    """(text, explicit domain or None, tag, digest) — always valid per the grammar."""
    host = draw(st.none() | _hosts)
    port = draw(_ports) if host else None
    path = draw(st.lists(path_component(), min_size=1, max_size=4))
    if not host and len(path) > 1 and ("." in path[0] or path[0] == "localhost"):
        path[0] = path[0].replace(".", "-") + "x"  # that would be a host, not a path
        if path[0] == "localhostx":
            path[0] = "lh"
    domain = f"{host}:{port}" if host and port is not None else host
    text = "/".join(path) if domain is None else f"{domain}/" + "/".join(path)
    tag = draw(st.none() | _tags)
    digest = draw(st.none() | _digests)
    if tag:
        text += f":{tag}"
    if digest:
        text += f"@{digest}"
    return text, domain, tag, digest


# --- properties --------------------------------------------------------------------------


@FAST
@given(references())
def test_grammar_references_parse_and_normalise_idempotently(
    case: tuple[str, str | None, str | None, str | None],
) -> None:
    text, domain, tag, digest = case
    assert GRAMMAR.fullmatch(text), text  # the generator itself follows the grammar
    try:
        ref = parse(text)
    except InvalidReference as exc:
        # The only grammar-valid inputs refused: names over 255 characters once
        # normalised (docker.io/library/ added), and sha256 digests that are not
        # 64 lowercase hex digits (the canonical form containerd stores).
        msg = str(exc)
        assert "longer than" in msg or "digest" in msg, (text, msg)
        if "longer than" in msg:
            name = text.split("@")[0]
            assert len(name) > MAX_NAME_LENGTH - len("docker.io/library/") - 129
        return
    assert ref.digest == digest
    assert ref.tag == (tag or (None if digest else "latest"))
    if domain and domain not in ("index.docker.io", "registry-1.docker.io"):
        assert ref.domain == domain
    assert str(ref) == ref.name
    again = parse(ref.name)
    assert again == ref  # normalisation is idempotent
    assert parse(again.name).name == ref.name


_alphabet = st.sampled_from([*"abcAZ09._-:/@[]+ ", "é", "٣", "日", "\t", "\n", "\x00"])


@FAST
@given(st.text(_alphabet, max_size=60) | st.text(max_size=40))
@example("nginx:é")
@example("nginx:v٣")
@example("[::1]:5000/app:v1")
@example("a" * 300)
def test_arbitrary_text_parses_only_if_the_grammar_accepts_it(text: str) -> None:
    try:
        ref = parse(text)
    except InvalidReference as exc:
        assert str(exc)  # a readable reason, never an empty message
        return
    assert GRAMMAR.fullmatch(text), f"accepted {text!r} which the grammar rejects"
    assert parse(ref.name) == ref


@FAST
@given(references(), st.data())
def test_single_edits_of_valid_references_fail_only_with_invalid_reference(
    case: tuple[str, str | None, str | None, str | None], data: st.DataObject
) -> None:
    text = case[0]
    i = data.draw(st.integers(0, len(text)))
    ch = data.draw(_alphabet)
    op = data.draw(st.sampled_from(["insert", "delete", "replace"]))
    if op == "insert":
        mutated = text[:i] + ch + text[i:]
    elif op == "delete":
        mutated = text[:i] + text[i + 1:]
    else:
        mutated = text[:i] + ch + text[i + 1:]
    try:
        ref = parse(mutated)
    except InvalidReference:
        return
    assert GRAMMAR.fullmatch(mutated), mutated
    assert parse(ref.name) == ref


@pytest.mark.parametrize("value", [None, b"nginx", 42, ["nginx"]])
def test_non_string_input_is_an_invalid_reference(value: object) -> None:
    with pytest.raises(InvalidReference):
        parse(value)  # type: ignore[arg-type]


@pytest.mark.parametrize("text", ["nginx:é", "nginx:v٣", "nginx:日本", "app:ﬁ"])
def test_non_ascii_tags_are_rejected(text: str) -> None:
    """Regression (issue 12 fuzzing): Python's Unicode \\w let these through."""
    with pytest.raises(InvalidReference, match="malformed tag"):
        parse(text)


@FAST
@given(st.text(max_size=120)
       | st.builds(lambda t: f"x@sha256:{t}", st.text("0123456789abcdefA", max_size=70)))
def test_image_id_digest_never_raises(text: str) -> None:
    got = digest_of_image_id(text)
    assert got is None or re.fullmatch(r"sha256:[0-9a-f]{64}", got)


@FAST
@given(references())
def test_normalised_names_parse_as_written_and_others_are_refused(
    case: tuple[str, str | None, str | None, str | None],
) -> None:
    """`parse_normalised` (image record names, what the agent accepts): every normalised
    name reads back as itself; an input `parse` would rewrite is refused naming the form."""
    text = case[0]
    try:
        ref = parse(text)
    except InvalidReference:
        with pytest.raises(InvalidReference):
            parse_normalised(text)
        return
    assert parse_normalised(ref.name) == ref
    if text == ref.name:
        assert parse_normalised(text) == ref
    elif text == ref.repository:  # untagged, digestless: stays untagged
        untagged = parse_normalised(text)
        assert (untagged.repository, untagged.tag, untagged.digest) == (ref.repository, None,
                                                                        None)
        assert untagged.name == text
    else:
        with pytest.raises(InvalidReference, match=f"normalised form is {re.escape(ref.name)}"):
            parse_normalised(text)
