"""Answers as indented JSON (`pretty`) or YAML, as kube-apiserver writes them: the renderers' compact
JSON re-encoded, a streamed list as it is written.

See docs/api.md, "Content negotiation".
"""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, AsyncIterator, Iterable
from typing import Any

import pytest
import yaml

from payloadtags.api import formats
from payloadtags.api.negotiation import MediaType, negotiate
from payloadtags.api.render import (
    list_chunks,
    list_envelope,
    render_list,
    render_object,
    rendered_list_chunks,
)
from payloadtags.model import ListMeta, tag_object
from payloadtags.names import TagRef
from tests.unit.test_render import HOST, META, _runs

ACCEPT = {
    "full": "application/{}",
    "table": "application/{};as=Table;v=v1;g=meta.k8s.io",
    "partial": "application/{};as=PartialObjectMetadataList;v=v1;g=meta.k8s.io",
}
REFS = [TagRef("a", "app", f"v{i}") for i in range(7)] + [TagRef("a", "b/c", "latest")]


def _media(form: str, syntax: str) -> MediaType:
    if syntax == "yaml":
        return negotiate(ACCEPT[form].format("yaml"), collection=True)
    return negotiate(ACCEPT[form].format("json") + ";pretty=1", collection=True)


async def _source(chunks: Iterable[bytes]) -> AsyncGenerator[bytes, None]:
    for chunk in chunks:
        yield chunk


def _drained(chunks: AsyncIterator[bytes]) -> list[bytes]:
    """The chunks of an asynchronous generator that never waits (its source is a list)."""

    async def collect() -> list[bytes]:
        return [chunk async for chunk in chunks]

    coroutine = collect()
    try:
        coroutine.send(None)
    except StopIteration as done:
        result: list[bytes] = done.value
        return result
    raise AssertionError("the re-encoding waited on something")


def test_pretty_is_go_marshal_indent() -> None:
    media = negotiate("application/json;pretty=1", collection=False)
    document = render_object(tag_object(HOST, REFS[0]), media)
    text = formats.encode(document, media)
    assert text == json.dumps(document, indent=2).encode() + b"\n"
    assert text.startswith(b'{\n  "apiVersion": "payload-registry.deckhouse.io/v1alpha1",\n  "kind": ')


def test_yaml_is_sorted_block_yaml_without_folding() -> None:
    media = negotiate("application/yaml", collection=False)
    ref = TagRef("a", "app/" + "x" * 200, "v1")
    document = render_object(tag_object(HOST, ref), media)
    text = formats.encode(document, media).decode()
    assert yaml.safe_load(text) == document
    assert text.startswith("apiVersion: payload-registry.deckhouse.io/v1alpha1\nkind: PayloadRepositoryTag\n")
    assert f"  repositoryPath: app/{'x' * 200}\n" in text  # one line, as go-yaml writes it


def test_compact_json_is_the_renderers_text() -> None:
    media = negotiate("application/json", collection=True)
    assert formats.plain(media)
    assert formats.reencode(b'{"a":1}\n', media) == b'{"a":1}\n'


@pytest.mark.parametrize("value", ["true", "1", "t", "T", "TRUE", "True"])
def test_pretty_query_values(value: str) -> None:
    assert formats.wants_pretty({"pretty": [value]})


@pytest.mark.parametrize("value", ["false", "0", "", "yes", "on"])
def test_not_pretty_query_values(value: str) -> None:
    assert not formats.wants_pretty({"pretty": [value]})


@pytest.mark.parametrize("form", list(ACCEPT))
@pytest.mark.parametrize("syntax", ["yaml", "pretty"])
@pytest.mark.parametrize("chunk_items", [1, 3, 500])
@pytest.mark.parametrize("batch_items", [2, 100])
def test_a_streamed_list_is_reencoded_as_the_whole_list(
    form: str, syntax: str, chunk_items: int, batch_items: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(formats, "BATCH_ITEMS", batch_items)
    media = _media(form, syntax)
    shape = media.as_json()
    for meta in (META, ListMeta(resource_version="5")):
        for chosen in (REFS, REFS[:1], []):
            compact = list_chunks(_runs(chosen), meta, shape, HOST, "Metadata", chunk_items)
            head, tail = list_envelope(meta, shape)
            chunks = _drained(formats.reencoded_list(_source(compact), head, tail, media))
            document: Any = render_list([tag_object(HOST, ref) for ref in chosen], meta, shape)
            assert b"".join(chunks) == formats.encode(document, media)
            # Written a batch at a time, not gathered whole.
            assert len(chunks) >= len(chosen) // batch_items
            if syntax == "yaml":
                assert yaml.safe_load(b"".join(chunks)) == document


def test_closing_the_reencoded_list_closes_the_list_it_reads() -> None:
    # write_streamed closes what it writes when the client goes away: the list under it must stop too
    # (its registry reads, the text it shares with other lists).
    media = _media("full", "yaml")
    shape = media.as_json()
    closed = []

    async def source() -> AsyncGenerator[bytes, None]:
        try:
            for chunk in list_chunks(_runs(REFS), META, shape, HOST, "Metadata", 1):
                yield chunk
        finally:
            closed.append(True)

    reencoded = formats.reencoded_list(source(), *list_envelope(META, shape), media)
    first = reencoded.asend(None).send
    try:
        first(None)
    except StopIteration as done:
        assert done.value.startswith(b"apiVersion: ")
    assert not closed
    try:
        reencoded.aclose().send(None)
    except StopIteration:
        pass
    assert closed == [True]


@pytest.mark.parametrize("form", list(ACCEPT))
@pytest.mark.parametrize("syntax", ["yaml", "pretty", "json"])
@pytest.mark.parametrize("chunk_items", [1, 3, 500])
def test_a_list_of_objects_at_hand_in_pieces_is_the_whole_list(
    form: str, syntax: str, chunk_items: int
) -> None:
    # A long deletecollection answer (api/app.py): its deleted tags rendered a chunk at a time, then
    # re-encoded a batch at a time, give the text of the whole list made at once.
    media = (
        _media(form, syntax) if syntax != "json" else negotiate(ACCEPT[form].format("json"), collection=True)
    )
    shape = media.as_json()
    for include in ("Metadata", "Object", "None") if form == "table" else ("Metadata",):
        for chosen in (REFS, REFS[:1], []):
            objects = [tag_object(HOST, ref) for ref in chosen]
            chunks: AsyncGenerator[bytes, None] = rendered_list_chunks(
                objects, META, shape, include, chunk_items
            )
            if not formats.plain(media):
                chunks = formats.reencoded_list(chunks, *list_envelope(META, shape), media)
            pieces = _drained(chunks)
            assert b"".join(pieces) == formats.encode(render_list(objects, META, shape, include), media)
            assert len(pieces) >= len(chosen) // chunk_items
