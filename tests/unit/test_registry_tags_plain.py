"""A tags/list answer read without json.loads (`client._plain_tags`) answers exactly what json.loads'
path answers (`_nameable`, then `_sorted_once`), for any body: the bodies distribution writes, and
bodies built to miss the plain path (spacing, escapes, other keys, empty or doubled tags, lone
surrogates, broken JSON)."""

from __future__ import annotations

import itertools
import json
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from twisted.internet.defer import Deferred
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure

from payloadtags.registry import RegistryClient, RegistrySettings
from payloadtags.registry.client import _plain_tags
from payloadtags.registry.errors import RegistryProtocolError
from payloadtags.registry.taglist import TagList
from payloadtags.validators import utf8_encodable
from tests.unit.test_registry_cancellation import REGISTRY, Agent, _Response, track

GRAMMAR = st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,8}", fullmatch=True)
# Tags outside the plain path: empty, a lone surrogate, characters JSON escapes, spaces, non-ASCII.
ODD = st.sampled_from(["", "\udfff", 'a"b', "a\\b", "a\nb", "\u00e9", " a", "a,b", '","', "\x7f"])
# Half the lists only of the grammar's tags (perhaps one twice), so that plain bodies are many.
TAGS = st.lists(GRAMMAR, max_size=30) | st.lists(GRAMMAR | ODD, max_size=30)
NAMES = st.one_of(st.from_regex(r"[a-z0-9]+(/[a-z0-9]+)?", fullmatch=True), st.text(max_size=5))


def distribution(name: str, tags: list[str]) -> bytes:
    """A body as distribution writes it (Go's encoder: compact, a newline after it)."""
    return json.dumps({"name": name, "tags": tags}, separators=(",", ":")).encode() + b"\n"


@st.composite
def bodies(draw: st.DrawFn) -> bytes:
    name, tags = draw(NAMES), draw(TAGS)
    document: dict[str, Any] = {"name": name, "tags": tags}
    written = draw(
        st.sampled_from(
            [
                distribution(name, tags),
                distribution(name, tags)[:-1],
                json.dumps(document).encode(),  # spaced
                json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode(
                    "utf-8", "surrogatepass"
                ),
                json.dumps({"tags": tags, "name": name}, separators=(",", ":")).encode(),
                json.dumps({**document, "x": ["a"]}, separators=(",", ":")).encode(),
                json.dumps({"name": name, "tags": None}, separators=(",", ":")).encode(),
                json.dumps({"name": name}, separators=(",", ":")).encode(),
                b" " + distribution(name, tags),
                distribution(name, tags) + b" \n",
            ]
        )
    )
    # Bytes put in, taken out or changed: broken JSON, and JSON the plain path must not take.
    edits = draw(
        st.lists(
            st.tuples(
                st.integers(0, 10_000), st.sampled_from(list(b'",[]{}\\ \n:ab\xc3')), st.integers(0, 2)
            ),
            max_size=3,
        )
        | st.just([])
    )
    body = bytearray(written)
    for at, byte, how in edits:
        at %= len(body) + 1
        if how == 0:
            body[at:at] = bytes([byte])
        elif how == 1:
            del body[at : at + 1]
        else:
            body[at : at + 1] = bytes([byte])
    return bytes(body)


def through_json(body: bytes) -> tuple[str, ...] | None:
    """What json.loads' path answers (`RegistryClient._tags`), None where it refuses the body."""
    try:
        document = json.loads(body)
    except (ValueError, RecursionError):
        return None
    if not isinstance(document, dict):
        return None
    tags = document.get("tags") or []
    if type(tags) is not list or not all(type(tag) is str for tag in tags):
        return None
    return tuple(sorted({tag for tag in tags if tag and utf8_encodable(tag)}))


@given(bodies())
@example(b'{"name":"a","tags":["]}\n')
@example(b'{"name":"a","tags":[""]}\n')
@example(b'{"name":"a","tags":["b","","c"]}\n')
@example(b'{"name":"a","tags":["b",","c"]}\n')
@example(b'{"name":"a","tags":["b","b"]}\n')
@example(b'{"name":"a","tags":["b"],"tags":["c"]}\n')
@example(b'{"name":"a","tags":["b","tags":["c"]}\n')
# A quote with no comma by it (json.loads refuses), and a name ending in a backslash that escapes its
# quote (review r1tags L2: the quote count, and the name's characters, each keep one from a plain read).
@example(b'{"name":"a","tags":["a""b"]}')
@example(b'{"name":"a","tags":["a",""b"]}')
@example(b'{"name":"a","tags":["a"],"b"]}')
@example(b'{"name":"\\","tags":["a"]}')
@example(b'{"name":"a\\"","tags":["b"]}')
@example(b'{"name":"\\u0061","tags":["a"]}')
# A backslash in a tag: an escape json.loads reads as another tag, or that ends none.
@example(b'{"name":"a","tags":["a\\\\b"]}')
@example(b'{"name":"a","tags":["a\\","b"]}')
# Commas and quotes placed otherwise, empty tags, bytes after the end.
@example(b'{"name":"a","tags":["a",","b"]}')
@example(b'{"name":"a","tags":["a,","b"]}')
@example(b'{"name":"a","tags":[","]}')
@example(b'{"name":"a","tags":["",","]}')
@example(b'{"name":"a","tags":["a","",""]}')
@example(b'{"name":"a","tags":["a"]}"]}')
@example(b'{"name":"a","tags":["a","b"]}}')
@example(b'{"name":"a","tags":["a","b"]}\n\n')
def test_a_plain_read_answers_what_json_loads_path_answers(body: bytes) -> None:
    plain = _plain_tags(body)
    if plain is not None:
        assert isinstance(plain, TagList)
        assert plain == through_json(body)


@given(
    NAMES.filter(lambda name: '"' not in name and "\\" not in name and name.isprintable() and name.isascii()),
    st.lists(GRAMMAR, min_size=1, max_size=300, unique=True),
)
def test_distributions_answer_of_tags_in_the_grammar_is_read_plainly(name: str, tags: list[str]) -> None:
    plain = _plain_tags(distribution(name, tags))
    assert plain is not None and plain == tuple(sorted(tags))


@given(bodies())
def test_the_client_answers_a_body_as_json_loads_path_does(body: bytes) -> None:
    settings = RegistrySettings(url=REGISTRY, timeout=10)
    agent = Agent(lambda method, url: _Response(200, {"Content-Type": "application/json"}, body))
    client = RegistryClient(MemoryReactorClock(), settings, agent=agent)
    [answer] = track(Deferred.fromCoroutine(client.tags("team/app")))
    expected = through_json(body)
    if expected is None:
        assert isinstance(answer, Failure) and answer.check(RegistryProtocolError), answer
    else:
        assert answer == expected


@given(st.lists(st.lists(GRAMMAR, max_size=6), min_size=1, max_size=4))
@example([["a", "b"], ["c"]])
def test_an_answer_over_link_pages_of_plain_bodies_is_every_pages_tags(pages: list[list[str]]) -> None:
    # Every page as distribution writes it, all but the last with a Link to the next: the answer is all
    # the pages' tags, not the first's or the last's (review r1tags L2: no test read a Link-paged
    # answer, and reading a later page plainly, or the first one plainly despite its Link, passed).
    def answer(method: str, url: str) -> _Response:
        at = int(url.rsplit("last=p", 1)[1]) if "last=p" in url else 0
        headers = {"Content-Type": "application/json"}
        if at + 1 < len(pages):
            headers["Link"] = f'</v2/team/app/tags/list?n=6&last=p{at + 1}>; rel="next"'
        return _Response(200, headers, distribution("team/app", pages[at]))

    settings = RegistrySettings(url=REGISTRY, timeout=10)
    client = RegistryClient(MemoryReactorClock(), settings, agent=Agent(answer))
    [got] = track(Deferred.fromCoroutine(client.tags("team/app")))
    assert isinstance(got, TagList) and got == tuple(sorted({tag for page in pages for tag in page}))


@pytest.mark.slow
def test_every_short_array_is_read_as_json_loads_reads_it() -> None:
    # Every body of distribution's head and up to 6 bytes of JSON's array syntax after it (1.2 million
    # bodies, about 40 of them plain): a plain read answers json.loads' path or leaves the body to it.
    alphabet = [b"a", b"b", b'"', b",", b"]", b"}", b"\n", b" ", b"\\"]
    plain = 0
    for head in (b'{"name":"r","tags":["', b'{"name":"","tags":["'):
        for size in range(7):
            for parts in itertools.product(alphabet, repeat=size):
                body = head + b"".join(parts)
                read = _plain_tags(body)
                if read is not None:
                    plain += 1
                    assert read == through_json(body), body
    assert plain >= 40
