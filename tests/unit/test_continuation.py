"""The opaque ``continue`` token (docs/api.md, "List options"): round trip, and 400 for anything malformed."""

from __future__ import annotations

import base64
import json
import re
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from payloadtags.api import continuation
from payloadtags.api.continuation import DECODED_MAX, Continuation, another_list, decode, encode
from payloadtags.api.errors import ApiError
from payloadtags.names import TagRef

TOKEN = Continuation("1712345678000000", "team-a", TagRef("team-a", "test/http-echo", "v1.2"))


def _raw(data: Any) -> str:
    """A token with arbitrary content, spelled the way encode() spells tokens."""
    return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")


def _good(**changes: Any) -> dict[str, Any]:
    data = {"v": 1, "rv": "5", "scope": "ns", "last": ["ns", "app", "v1"]}
    data.update(changes)
    return data


def _bad(text: str, scope: str) -> ApiError:
    with pytest.raises(ApiError) as caught:
        decode(text, scope)
    assert (caught.value.code, caught.value.reason) == (400, "BadRequest")
    assert caught.value.message.startswith("continue key is not valid")
    return caught.value


def test_round_trip() -> None:
    assert decode(encode(TOKEN), "team-a") == TOKEN


def test_round_trip_for_all_namespaces() -> None:
    token = Continuation("7", "", TagRef("zeta", "a/b", "latest"))
    assert decode(encode(token), "") == token


def test_token_is_url_safe_and_unpadded() -> None:
    text = encode(TOKEN)
    assert re.fullmatch(r"[A-Za-z0-9_-]+", text), text


def test_the_hand_built_spelling_is_understood() -> None:
    # Guards the wire format: tokens issued by an older replica of the same version must still decode.
    assert decode(_raw(_good()), "ns") == Continuation("5", "ns", TagRef("ns", "app", "v1"))


_component = st.from_regex(r"[a-z0-9]{1,5}([._-][a-z0-9]{1,5}){0,2}", fullmatch=True)


@pytest.mark.property
@given(
    rv=st.integers(1, 2**64 - 1).map(str),
    namespace=st.from_regex(r"[a-z0-9]([-a-z0-9]{0,10}[a-z0-9])?", fullmatch=True),
    path=st.lists(_component, min_size=1, max_size=3).map("/".join),
    tag=st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,20}", fullmatch=True),
    all_namespaces=st.booleans(),
)
def test_round_trip_property(rv: str, namespace: str, path: str, tag: str, all_namespaces: bool) -> None:
    scope = "" if all_namespaces else namespace
    token = Continuation(rv, scope, TagRef(namespace, path, tag))
    assert decode(encode(token), scope) == token


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("", id="empty"),
        pytest.param("garbage", id="garbage"),
        pytest.param("!!!!", id="not-base64"),
        pytest.param("abcde", id="bad-base64-length"),
        pytest.param("%%%%%%%%", id="percent"),
        pytest.param(base64.urlsafe_b64encode(b"\xff\xfe\xfd").decode(), id="not-utf8"),
        pytest.param(_raw("a string"), id="json-string"),
        pytest.param(_raw([1, 2, 3]), id="json-array"),
        pytest.param(_raw(None), id="json-null"),
        pytest.param(_raw(5), id="json-number"),
        pytest.param(_raw({}), id="empty-object"),
        pytest.param(_raw(_good(v=2)), id="wrong-version"),
        pytest.param(_raw(_good(v=0)), id="version-zero"),
        pytest.param(_raw(_good(v="1")), id="version-string"),
        pytest.param(_raw({k: v for k, v in _good().items() if k != "v"}), id="no-version"),
        pytest.param(_raw({k: v for k, v in _good().items() if k != "rv"}), id="no-resource-version"),
        pytest.param(_raw({k: v for k, v in _good().items() if k != "scope"}), id="no-scope"),
        pytest.param(_raw({k: v for k, v in _good().items() if k != "last"}), id="no-last"),
        pytest.param(_raw(_good(rv=5)), id="rv-number"),
        pytest.param(_raw(_good(rv="")), id="rv-empty"),
        pytest.param(_raw(_good(rv="-1")), id="rv-negative"),
        pytest.param(_raw(_good(rv="abc")), id="rv-letters"),
        pytest.param(_raw(_good(rv="\u00b2")), id="rv-superscript-digit"),
        pytest.param(_raw(_good(rv="\u0661")), id="rv-arabic-digit"),
        # Beyond what kube-apiserver parses as a resourceVersion (uint64), and past int()'s 4300 digits.
        pytest.param(_raw(_good(rv="18446744073709551616")), id="rv-beyond-uint64"),
        pytest.param(_raw(_good(rv="9" * 5000)), id="rv-5000-digits"),
        # A version spelled otherwise than a list's is spelled: the list would echo it as its own.
        pytest.param(_raw(_good(rv="007")), id="rv-leading-zero"),
        # "v" is exactly the number 1: true and 1.0 compare equal to it.
        pytest.param(_raw(_good(v=True)), id="version-true"),
        pytest.param(_raw(_good(v=1.0)), id="version-float"),
        pytest.param(_raw(_good(last=["ns", "app"])), id="last-too-short"),
        pytest.param(_raw(_good(last=["ns", "app", "v1", "x"])), id="last-too-long"),
        pytest.param(_raw(_good(last="ns/app:v1")), id="last-string"),
        pytest.param(_raw(_good(last={"ns": 1})), id="last-object"),
        pytest.param(_raw(_good(last=["ns", "app", 1])), id="tag-number"),
        pytest.param(_raw(_good(last=["ns", "app", ""])), id="empty-tag"),
        pytest.param(_raw(_good(last=["ns", "", "v1"])), id="empty-path"),
        pytest.param(_raw(_good(last=["ns", "App", "v1"])), id="bad-path"),
        pytest.param(_raw(_good(last=["NS", "app", "v1"])), id="bad-namespace"),
        pytest.param(_raw(_good(last=[None, "app", "v1"])), id="namespace-null"),
        # A repository name over the registry's bound (255 characters): no page hands it out, and the
        # registry client refuses to read it (a 404, not the 400 of any malformed token).
        pytest.param(_raw(_good(last=["ns", "a" * 253, "v1"])), id="repository-256-characters"),
        pytest.param(_raw(_good(last=["ns", "/".join(["a"] * 130), "v1"])), id="repository-262-characters"),
    ],
)
def test_malformed_tokens_are_400(text: str) -> None:
    assert _bad(text, "ns").message == "continue key is not valid: the token is malformed"


# Tags outside the registry's tag grammar that a registry may list all the same (ECR's reach 300
# characters; the registry client hands out every tag listed but "" and lone surrogates): a page may
# end on one, and its token must take the walk on (docs/api.md, "List options").
OUTSIDE_THE_GRAMMAR = [
    "a/b",
    "a\0",
    "a b",
    ".a",
    "-a",
    "a\n",
    "a+b",
    "t" * 129,
    "t" * 300,
    "t" * 6000,
    "\u00e9",
]


@pytest.mark.parametrize("tag", OUTSIDE_THE_GRAMMAR)
def test_a_tag_outside_the_grammar_is_a_good_token(tag: str) -> None:
    token = Continuation("5", "ns", TagRef("ns", "app", tag))
    assert decode(_raw(_good(last=["ns", "app", tag])), "ns") == token
    text = encode(token)
    for _ in range(2):  # kept as made, then decoded again
        assert decode(text, "ns") == token
        continuation._decoded.clear()


def test_a_tag_of_128_characters_is_a_good_token() -> None:
    token = Continuation("5", "ns", TagRef("ns", "app", "_" + "t" * 126 + "."))
    assert decode(_raw(_good(last=["ns", "app", token.last.tag])), "ns") == token
    assert decode(encode(token), "ns") == token


@pytest.mark.parametrize("rv", ["0", "00"])
def test_a_token_of_resource_version_0_is_400_as_kube_apiserver_words_it(rv: str) -> None:
    # kube-apiserver's storage.ErrInvalidStartRV; a list answered at "0" handed out tokens of "0".
    text = _raw(_good(rv=rv))
    for _ in range(2):  # decoded, then from the cache
        error = _bad(text, "ns")
        assert error.message == (
            "continue key is not valid: incorrect encoded start resourceVersion (version meta.k8s.io/v1)"
        )
    assert _bad(encode(Continuation(rv, "ns", TagRef("ns", "app", "v1"))), "ns").message == error.message


def test_a_repository_of_255_characters_is_a_good_token() -> None:
    token = Continuation("5", "ns", TagRef("ns", "a" * 252, "v1"))
    assert len(token.last.repository) == 255
    assert decode(_raw(_good(last=["ns", "a" * 252, "v1"])), "ns") == token
    assert decode(encode(token), "ns") == token


def test_truncated_token_is_400() -> None:
    text = encode(TOKEN)
    _bad(text[: len(text) // 2], "team-a")


def test_token_for_another_namespace_is_400() -> None:
    error = _bad(encode(TOKEN), "team-b")
    assert "different list" in error.message


def test_namespaced_token_used_for_all_namespaces_is_400() -> None:
    _bad(encode(TOKEN), "")


def test_all_namespaces_token_used_in_a_namespace_is_400() -> None:
    token = Continuation("7", "", TagRef("team-a", "app", "v1"))
    _bad(encode(token), "team-a")


def test_forged_token_whose_last_item_leaves_the_namespace_is_400() -> None:
    # The scope says team-a but the resume point is in team-b: following it would list team-b.
    _bad(_raw(_good(scope="team-a", last=["team-b", "app", "v1"])), "team-a")


@pytest.mark.parametrize("scope", [None, 1, ["ns"]])
def test_scope_of_the_wrong_type_is_400(scope: Any) -> None:
    _bad(_raw(_good(scope=scope)), "ns")


@pytest.mark.property
@given(
    resource_version=st.text(max_size=20),
    scope=st.text(max_size=12),
    last=st.tuples(st.text(max_size=12), st.text(max_size=12), st.text(max_size=12)),
    walk=st.one_of(st.none(), st.text(max_size=24)),
)
def test_a_token_is_spelled_as_json_dumps_spells_it(
    resource_version: str, scope: str, last: tuple[str, str, str], walk: str | None
) -> None:
    # Tokens are spelled without json.dumps (one per page): byte for byte its spelling, so tokens of
    # replicas that still use it and of this one are the same text.
    data: dict[str, Any] = {"v": 1, "rv": resource_version, "scope": scope, "last": list(last)}
    if walk is not None:
        data["w"] = walk
    raw = json.dumps(data, separators=(",", ":")).encode()
    expected = base64.urlsafe_b64encode(raw).decode().rstrip("=")
    assert encode(Continuation(resource_version, scope, TagRef(*last), walk)) == expected


# -- the cache of decoded tokens (each page of a walk decodes its token) ----------------------------------


def test_a_token_decoded_again_for_another_list_is_still_400() -> None:
    # The cache keeps what the text decodes to, not whether it suited the list it was first given to.
    text = encode(TOKEN)
    assert decode(text, "team-a") == TOKEN
    assert _bad(text, "team-b").message == another_list().message
    assert _bad(text, "").message == another_list().message
    assert decode(text, "team-a") == TOKEN


def test_decoded_tokens_are_kept_by_their_exact_text() -> None:
    first = encode(TOKEN)
    walk = "walk-b" + "x" * 10  # a walk id is 16 characters
    other = Continuation("1712345678000000", "team-a", TagRef("team-a", "test/http-echo", "v1.3"), walk)
    second = encode(other)
    assert decode(first, "team-a") == TOKEN
    assert decode(second, "team-a") == other
    assert decode(first, "team-a") == TOKEN
    # Spellings that decode to the same bytes (Go's decoding skips line breaks) are different keys,
    # each decoded by itself.
    assert decode(first + "\n", "team-a") == TOKEN
    assert first + "\n" in continuation._decoded


def test_a_malformed_token_is_400_every_time() -> None:
    for _ in range(3):
        _bad("garbage", "ns")
    # A token whose text is a kept one's with a character changed decodes (or fails) on its own.
    text = encode(TOKEN)
    _bad(text[:-1] + ("A" if text[-1] != "A" else "B") + "!", "team-a")


def test_the_cache_of_decoded_tokens_is_bounded() -> None:
    tokens = [
        Continuation(str(n + 1), "ns", TagRef("ns", "app", f"v{n}"), "w" * 16) for n in range(2 * DECODED_MAX)
    ]
    texts = [encode(token) for token in tokens]
    continuation._decoded.clear()
    for token, text in zip(tokens, texts, strict=True):
        assert decode(text, "ns") == token
    assert len(continuation._decoded) == DECODED_MAX
    # The most recently decoded are the ones kept.
    assert texts[-1] in continuation._decoded
    assert texts[0] not in continuation._decoded
    # Those dropped decode as before.
    assert decode(texts[0], "ns") == tokens[0]


def test_a_long_token_is_decoded_and_not_kept() -> None:
    # Longer than any token this server hands out (a field it does not read makes it so).
    long_text = _raw(_good(pad="x" * continuation.DECODED_TEXT_MAX))
    assert decode(long_text, "ns") == Continuation("5", "ns", TagRef("ns", "app", "v1"))
    assert long_text not in continuation._decoded


def test_a_token_is_kept_as_it_is_made_and_decodes_as_its_text_does() -> None:
    text = encode(TOKEN)
    assert continuation._decoded[text] == ("1712345678000000", "team-a", TOKEN.last, None)
    assert decode(text, "team-a") == TOKEN
    continuation._decoded.clear()
    assert decode(text, "team-a") == TOKEN


@pytest.mark.parametrize(
    "token",
    [
        pytest.param(Continuation("5", "NS", TagRef("NS", "app", "v1")), id="namespace"),
        pytest.param(Continuation("5", "ns", TagRef("ns", "App", "v1")), id="path"),
        pytest.param(Continuation("5", "ns", TagRef("ns", "app", "")), id="tag"),
        pytest.param(Continuation("05", "ns", TagRef("ns", "app", "v1")), id="resourceVersion-leading-zero"),
        pytest.param(Continuation("x", "ns", TagRef("ns", "app", "v1")), id="resourceVersion"),
        pytest.param(Continuation("5", "ns", TagRef("ns", "app", "v1"), "not a walk"), id="walk"),
        pytest.param(Continuation("5", "ns", TagRef("ns", "a" * 253, "v1")), id="repository-length"),
    ],
)
def test_a_token_made_of_what_decoding_refuses_is_refused_kept_or_not(token: Continuation) -> None:
    text = encode(token)
    _bad(text, token.scope)
    continuation._decoded.clear()
    _bad(text, token.scope)


@pytest.mark.parametrize("tag", ["\ud800x", "a\udfff", "\udc80\udc80"])
def test_a_forged_token_whose_tag_holds_a_lone_surrogate_is_400_malformed(tag: str) -> None:
    # JSON can spell a lone surrogate (\ud800); the decoded strings were copied for the caller through
    # strict UTF-8 once (a 500 on list, Table and deletecollection). No text UTF-8 carries: malformed.
    text = _raw(_good(last=["ns", "app", tag]))
    for _ in range(2):  # decoded, then from the cache
        assert _bad(text, "ns").message == "continue key is not valid: the token is malformed"
    _bad(encode(Continuation("5", "ns", TagRef("ns", "app", tag))), "ns")


def test_a_walks_next_token_is_checked_for_its_tag_and_refused_as_before(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A walk's tokens differ by their tag within a repository: its resourceVersion, scope, walk id,
    # namespace and path were checked on every page (issue #11). Now once, while they are remembered;
    # a tag the decode would refuse is refused all the same.
    checked: list[object] = []
    refused = continuation._refused

    def counted(*fields: object) -> object:
        checked.append(fields[3])
        return refused(*fields)

    monkeypatch.setattr(continuation, "_refused", counted)
    walk = "walk-id-12345678"  # 16 characters, as every walk id
    tokens = [Continuation("7", "ns", TagRef("ns", "app", f"v{n}"), walk) for n in range(5)]
    texts = [encode(token) for token in tokens]
    assert len(checked) == 1  # the first
    for token, text in zip(tokens, texts, strict=True):
        continuation._decoded.pop(text)  # decoded as made: the kept fields are the text's
        assert decode(text, "ns") == token
    for tag in ("", "\ud800x"):
        _bad(encode(Continuation("7", "ns", TagRef("ns", "app", tag), walk)), "ns")
    # What is remembered is in strings of its own: no walk's, no request's.
    parts = continuation._parts[("7", "ns", "ns", "app", walk)]
    assert parts.walk is not walk and parts.path is not tokens[0].last.repository_path


def test_the_parts_remembered_are_bounded() -> None:
    for number in range(continuation.PARTS_MAX + 10):
        encode(Continuation("7", "ns", TagRef("ns", f"app{number}", "v1")))
    assert len(continuation._parts) == continuation.PARTS_MAX
    assert ("7", "ns", "ns", "app0", None) not in continuation._parts


# Tokens whose text holds "_" ("v?>") and "-" ("v>?>"), and whose base64 is padded ("==" and "="); one
# of a multiple of four characters ("v1"), which Python's lenient decoding takes with junk added.
_UNDERSCORE = Continuation("5", "ns", TagRef("ns", "app", "v?>"))
_DASH = Continuation("5", "ns", TagRef("ns", "app", "v>?>"))
_WHOLE = Continuation("5", "ns", TagRef("ns", "app", "v1"))


@pytest.mark.parametrize(
    ("token", "respell"),
    [
        pytest.param(_UNDERSCORE, lambda text: text + "==", id="padded"),
        pytest.param(_DASH, lambda text: text + "=", id="padded-once"),
        pytest.param(_UNDERSCORE, lambda text: text.replace("_", "/"), id="standard-slash"),
        pytest.param(_DASH, lambda text: text.replace("-", "+"), id="standard-plus"),
        pytest.param(_WHOLE, lambda text: text + " ", id="trailing-space"),
        pytest.param(_WHOLE, lambda text: text + "!", id="trailing-junk"),
        pytest.param(_WHOLE, lambda text: text[:8] + "." + text[8:], id="junk-inside"),
        pytest.param(_UNDERSCORE, lambda text: text + "!", id="trailing-junk-of-another-length"),
    ],
)
def test_base64_that_go_refuses_is_400_malformed(token: Continuation, respell: Any) -> None:
    # kube-apiserver decodes a token with Go's base64.RawURLEncoding: the URL-safe alphabet only, no
    # padding, nothing else; the same text here is the same 400, not the page the token would give.
    text = encode(token)
    assert decode(text, "ns") == token
    for _ in range(2):  # decoded, then from the cache
        assert _bad(respell(text), "ns").message == "continue key is not valid: the token is malformed"


def test_line_breaks_in_a_token_are_skipped_as_go_skips_them() -> None:
    # Go's base64 decoder ignores "\r" and "\n" wherever they are: kube-apiserver takes such a token.
    text = encode(_UNDERSCORE)
    assert decode(text[:10] + "\r\n" + text[10:] + "\n", "ns") == _UNDERSCORE
