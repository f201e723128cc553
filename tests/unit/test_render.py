"""Objects, lists, Tables and PartialObjectMetadata.

See docs/api.md, "Content negotiation" and "Objects, lists and tables".
"""

from __future__ import annotations

import json
from typing import Any

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from payloadtags.api import render
from payloadtags.api.errors import ApiError
from payloadtags.api.negotiation import Form, MediaType, negotiate
from payloadtags.api.render import include_object, list_chunks, list_text, render_list, render_object
from payloadtags.inventory import Run, _PageBuilder
from payloadtags.model import ListMeta, TagStatus, tag_object, uid_for
from payloadtags.names import TagRef
from payloadtags.registry.taglist import TagList

HOST = "payload-registry.example.com"
REFS = [
    TagRef("d8-system", "http-echo", "latest"),
    TagRef("d8-system", "test/http-echo", "latest"),
    TagRef("team-b", "test/http-echo2", "latest"),
]
OBJECTS = [tag_object(HOST, ref) for ref in REFS]
META = ListMeta(resource_version="1712345678000000", continue_="next-page")

FULL = MediaType(Form.FULL, "application/json")
TABLE = negotiate("application/json;as=Table;v=v1;g=meta.k8s.io,application/json", collection=True)
TABLE_V1BETA1 = negotiate("application/json;as=Table;v=v1beta1;g=meta.k8s.io", collection=True)
PARTIAL_LIST = negotiate("application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1", collection=True)
PARTIAL = negotiate("application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1", collection=False)


def _wire(body: Any) -> Any:
    """What the client receives: rendering must produce plain JSON."""
    return json.loads(json.dumps(body))


def _meta(ref: TagRef) -> dict[str, str]:
    return {"name": ref.name, "namespace": ref.namespace, "uid": uid_for(ref)}


# -- Table ----------------------------------------------------------------------------------------


def test_table_columns() -> None:
    table = _wire(render_list(OBJECTS, META, TABLE))
    columns = [(c["name"], c["type"], c["format"], c["priority"]) for c in table["columnDefinitions"]]
    assert columns == [
        ("Name", "string", "name", 0),
        ("Repository", "string", "", 0),
        ("Tag", "string", "", 0),
        ("Address", "string", "", 1),
    ]
    assert all(c["description"] for c in table["columnDefinitions"])


def test_table_shape_and_rows() -> None:
    table = _wire(render_list(OBJECTS, META, TABLE))
    assert table["kind"] == "Table"
    assert table["apiVersion"] == "meta.k8s.io/v1"
    assert table["metadata"] == {"resourceVersion": "1712345678000000", "continue": "next-page"}
    assert [row["cells"] for row in table["rows"]] == [
        ["nb2hi4bnmvrwq3z2nrqxizltoq", "http-echo", "latest", f"{HOST}/d8-system/http-echo:latest"],
        [
            "orsxg5bpnb2hi4bnmvrwq3z2nrqxizltoq",
            "test/http-echo",
            "latest",
            f"{HOST}/d8-system/test/http-echo:latest",
        ],
        [
            "orsxg5bpnb2hi4bnmvrwq3zshjwgc5dfon2a",
            "test/http-echo2",
            "latest",
            f"{HOST}/team-b/test/http-echo2:latest",
        ],
    ]


def test_cells_line_up_with_columns() -> None:
    table = _wire(render_list(OBJECTS, META, TABLE))
    assert all(len(row["cells"]) == len(table["columnDefinitions"]) for row in table["rows"])


def test_rows_embed_partial_object_metadata_with_namespace_by_default() -> None:
    # `kubectl get -A` takes the NAMESPACE column from row.object.metadata.namespace.
    table = _wire(render_list(OBJECTS, META, TABLE))
    assert [row["object"] for row in table["rows"]] == [
        {"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata", "metadata": _meta(ref)}
        for ref in REFS
    ]


def test_include_object_metadata_is_explicit_default() -> None:
    assert render_list(OBJECTS, META, TABLE, "Metadata") == render_list(OBJECTS, META, TABLE)


def test_include_object_none_omits_the_object() -> None:
    table = _wire(render_list(OBJECTS, META, TABLE, "None"))
    assert all("object" not in row for row in table["rows"])
    assert [row["cells"][0] for row in table["rows"]] == [ref.name for ref in REFS]


def test_include_object_object_embeds_the_full_object() -> None:
    table = _wire(render_list(OBJECTS, META, TABLE, "Object"))
    first = table["rows"][0]["object"]
    assert first["apiVersion"] == "payload-registry.deckhouse.io/v1alpha1"
    assert first["kind"] == "PayloadRepositoryTag"
    assert first["metadata"] == _meta(REFS[0])
    assert first["spec"] == {
        "repositoryPath": "http-echo",
        "tag": "latest",
        "address": f"{HOST}/d8-system/http-echo:latest",
    }


def test_empty_table_has_rows_not_null() -> None:
    table = _wire(render_list([], ListMeta(resource_version="3"), TABLE))
    assert table["rows"] == []
    assert len(table["columnDefinitions"]) == 4
    assert table["metadata"] == {"resourceVersion": "3"}


def test_v1beta1_table() -> None:
    table = _wire(render_list(OBJECTS, META, TABLE_V1BETA1))
    assert table["apiVersion"] == "meta.k8s.io/v1beta1"
    assert {row["object"]["apiVersion"] for row in table["rows"]} == {"meta.k8s.io/v1beta1"}


def test_single_object_table_has_one_row() -> None:
    table = _wire(
        render_object(OBJECTS[1], negotiate("application/json;as=Table;v=v1;g=meta.k8s.io", collection=False))
    )
    assert table["kind"] == "Table"
    assert table["apiVersion"] == "meta.k8s.io/v1"
    assert len(table["columnDefinitions"]) == 4
    [row] = table["rows"]
    assert row["cells"] == [
        REFS[1].name,
        "test/http-echo",
        "latest",
        f"{HOST}/d8-system/test/http-echo:latest",
    ]
    assert row["object"]["metadata"]["namespace"] == "d8-system"


def test_single_object_table_honours_include_object() -> None:
    assert "object" not in _wire(render_object(OBJECTS[0], TABLE, "None"))["rows"][0]
    assert (
        _wire(render_object(OBJECTS[0], TABLE, "Object"))["rows"][0]["object"]["kind"]
        == "PayloadRepositoryTag"
    )


@pytest.mark.parametrize(
    ("value", "expected"),
    [(None, "Metadata"), ("", "Metadata"), ("Metadata", "Metadata"), ("Object", "Object"), ("None", "None")],
)
def test_include_object_values(value: str | None, expected: str) -> None:
    assert include_object(value) == expected


@pytest.mark.parametrize("value", ["metadata", "object", "none", "All", "true", " Object"])
def test_include_object_invalid_is_400(value: str) -> None:
    with pytest.raises(ApiError) as caught:
        include_object(value)
    assert (caught.value.code, caught.value.reason) == (400, "BadRequest")
    assert value in caught.value.message


# -- PartialObjectMetadata -----------------------------------------------------------------------


def test_partial_object_metadata_list() -> None:
    body = _wire(render_list(OBJECTS, META, PARTIAL_LIST))
    assert body == {
        "apiVersion": "meta.k8s.io/v1",
        "kind": "PartialObjectMetadataList",
        "metadata": {"resourceVersion": "1712345678000000", "continue": "next-page"},
        "items": [
            {"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata", "metadata": _meta(ref)}
            for ref in REFS
        ],
    }


def test_empty_partial_list_has_items_not_null() -> None:
    body = _wire(render_list([], ListMeta(resource_version="9"), PARTIAL_LIST))
    assert body["items"] == []
    assert body["metadata"] == {"resourceVersion": "9"}


def test_partial_object_metadata() -> None:
    status = TagStatus(digest="sha256:abc", manifest={"schemaVersion": 2})
    obj = tag_object(HOST, REFS[0], status)
    assert _wire(render_object(obj, PARTIAL)) == {
        "apiVersion": "meta.k8s.io/v1",
        "kind": "PartialObjectMetadata",
        "metadata": _meta(REFS[0]),
    }


def test_partial_v1beta1() -> None:
    media = negotiate(
        "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1beta1", collection=True
    )
    body = _wire(render_list(OBJECTS[:1], META, media))
    assert body["apiVersion"] == "meta.k8s.io/v1beta1"
    assert body["items"][0]["apiVersion"] == "meta.k8s.io/v1beta1"


# -- full JSON --------------------------------------------------------------------------------------


def test_full_list() -> None:
    body = _wire(render_list(OBJECTS, META, FULL))
    assert body["apiVersion"] == "payload-registry.deckhouse.io/v1alpha1"
    assert body["kind"] == "PayloadRepositoryTagList"
    assert body["metadata"] == {"resourceVersion": "1712345678000000", "continue": "next-page"}
    assert [item["metadata"] for item in body["items"]] == [_meta(ref) for ref in REFS]
    assert {item["kind"] for item in body["items"]} == {"PayloadRepositoryTag"}
    assert {item["apiVersion"] for item in body["items"]} == {"payload-registry.deckhouse.io/v1alpha1"}
    assert [item["spec"]["repositoryPath"] for item in body["items"]] == [ref.repository_path for ref in REFS]


def test_full_list_items_carry_spec_only() -> None:
    body = _wire(render_list(OBJECTS, META, FULL))
    assert all("status" not in item for item in body["items"])


def test_empty_full_list_is_items_empty_never_null() -> None:
    body = _wire(render_list([], ListMeta(resource_version="42"), FULL))
    assert body == {
        "apiVersion": "payload-registry.deckhouse.io/v1alpha1",
        "kind": "PayloadRepositoryTagList",
        "metadata": {"resourceVersion": "42"},
        "items": [],
    }


def test_last_page_has_no_continue() -> None:
    body = _wire(render_list(OBJECTS, ListMeta(resource_version="42"), FULL))
    assert "continue" not in body["metadata"]
    assert body["metadata"]["resourceVersion"] == "42"


def test_full_object_with_status() -> None:
    status = TagStatus(
        digest="sha256:abc",
        media_type="application/vnd.oci.image.manifest.v1+json",
        manifest={"schemaVersion": 2},
        config={"os": "linux"},
    )
    body = _wire(render_object(tag_object(HOST, REFS[1], status), FULL))
    assert body == {
        "apiVersion": "payload-registry.deckhouse.io/v1alpha1",
        "kind": "PayloadRepositoryTag",
        "metadata": _meta(REFS[1]),
        "spec": {
            "repositoryPath": "test/http-echo",
            "tag": "latest",
            "address": f"{HOST}/d8-system/test/http-echo:latest",
        },
        "status": {
            "digest": "sha256:abc",
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "manifest": {"schemaVersion": 2},
            "config": {"os": "linux"},
        },
    }


# -- streamed lists -------------------------------------------------------------------------------

_MEDIA = {
    "full": FULL,
    "table": TABLE,
    "table-v1beta1": TABLE_V1BETA1,
    "partial": PARTIAL_LIST,
}


def _runs(refs: list[TagRef]) -> list[Run]:
    runs: list[Run] = []
    for ref in refs:
        if runs and (runs[-1].namespace, runs[-1].repository_path) == (ref.namespace, ref.repository_path):
            runs[-1] = Run(ref.namespace, ref.repository_path, [*runs[-1].tags, ref.tag])
        else:
            runs.append(Run(ref.namespace, ref.repository_path, [ref.tag]))
    return runs


def _reference(refs: list[TagRef], meta: ListMeta, media: MediaType, include: str) -> bytes:
    """What a list was before it was streamed: objects, the converter, one json.dumps."""
    document = render_list([tag_object(HOST, ref) for ref in refs], meta, media, include)
    return json.dumps(document, separators=(",", ":")).encode() + b"\n"


@pytest.mark.parametrize("media", list(_MEDIA), ids=list(_MEDIA))
@pytest.mark.parametrize("include", ["Metadata", "Object", "None"])
@pytest.mark.parametrize("chunk_items", [1, 2, 500])
def test_streamed_list_equals_rendered_list(media: str, include: str, chunk_items: int) -> None:
    refs = [*REFS, TagRef("team-b", "test/http-echo2", "v2"), TagRef("team-b", "x", "latest")]
    for meta in (META, ListMeta(resource_version="5")):
        for chosen in (refs, refs[:1], []):
            chunks = list(list_chunks(_runs(chosen), meta, _MEDIA[media], HOST, include, chunk_items))
            assert b"".join(chunks) == _reference(chosen, meta, _MEDIA[media], include)
            # A page is written at once: the same text.
            assert list_text(_runs(chosen), meta, _MEDIA[media], HOST, include) == b"".join(chunks)
            # A chunk holds at most chunk_items items (plus the envelope): memory follows the chunk.
            assert len(chunks) >= max(len(chosen) // chunk_items, 1)


@pytest.mark.parametrize("media", list(_MEDIA), ids=list(_MEDIA))
def test_a_page_with_runs_of_no_tag_is_the_page_without_them(media: str) -> None:
    # A page's text is laid from its first run with tags on (render.list_text): runs of no tag before,
    # between and after those, or only such runs, add nothing, as in a streamed list.
    refs = [*REFS, TagRef("team-b", "test/http-echo2", "v2")]
    runs = _runs(refs)
    empty = [Run("team-a", "aaa", ()), Run("team-b", "m", [])]
    expected = _reference(refs, META, _MEDIA[media], "Metadata")
    with_empty = [empty[0], runs[0], empty[1], *runs[1:], Run("team-b", "zzz", ())]
    assert list_text(with_empty, META, _MEDIA[media], HOST) == expected
    assert b"".join(list_chunks(with_empty, META, _MEDIA[media], HOST)) == expected
    assert list_text(empty, META, _MEDIA[media], HOST) == _reference([], META, _MEDIA[media], "Metadata")


@pytest.mark.property
@given(
    tags=st.lists(st.text(min_size=1, max_size=12), min_size=1, max_size=6, unique=True),
    host=st.sampled_from([HOST, 'odd"host\\name', "hôte:5000"]),
)
def test_a_streamed_list_escapes_like_json_dumps(tags: list[str], host: str) -> None:
    # Tag lists come from the registry: whatever it answers is escaped as json.dumps escapes it.
    _assert_escaped_as_json_dumps(tags, host, (FULL, TABLE))


def _assert_escaped_as_json_dumps(tags: list[str], host: str, medias: tuple[MediaType, ...]) -> None:
    refs = [TagRef("ns", "app", tag) for tag in sorted(tags)]
    for media in medias:
        document = render_list([tag_object(host, ref) for ref in refs], META, media, "Metadata")
        expected = json.dumps(document, separators=(",", ":")).encode() + b"\n"
        assert b"".join(list_chunks(_runs(refs), META, media, host)) == expected
        assert list_text(_runs(refs), META, media, host) == expected


@pytest.mark.parametrize("media", list(_MEDIA), ids=list(_MEDIA))
def test_pages_of_one_repository_are_made_with_one_maker_and_the_same_bytes(media: str) -> None:
    # A walk's pages of one tag each show the same repository page after page: its template and
    # names' head are made for the first and taken again (render._maker), each page as rendered whole.
    render._maker.cache_clear()
    refs = [TagRef("ns", "apps/web", f"v{i}") for i in range(6)]
    for ref in refs:
        for host in (HOST, "other.example:5000"):
            document = render_list([tag_object(host, ref)], META, _MEDIA[media], "Object")
            expected = json.dumps(document, separators=(",", ":")).encode() + b"\n"
            assert list_text(_runs([ref]), META, _MEDIA[media], host, "Object") == expected
    assert render._maker.cache_info().misses == 2  # one maker per host: what its text is made of
    assert render._maker.cache_info().hits == 2 * len(refs) - 2


_ODD_TAGS = ["latest", 'quote"d', "back\\slash", "tab\t", "nul\0", "hôte", "snow☃", "", "a" * 300]


@pytest.mark.parametrize("media", list(_MEDIA), ids=list(_MEDIA))
@pytest.mark.parametrize("include", ["Metadata", "Object", "None"])
def test_long_runs_with_odd_tags_are_the_same_bytes_as_rendered_whole(media: str, include: str) -> None:
    # Runs longer than a chunk and than the lengths below which names and uids are made one by one;
    # odd tags (escapes, non-ASCII, empty, over-long) in some chunks, plain ones in others.
    plain = [f"v1.{i}-{'rc' * (i % 4)}" for i in range(1100)]
    refs = [
        *(TagRef("ns", "apps/web", tag) for tag in sorted(plain[:600] + _ODD_TAGS)),
        *(TagRef("ns", "b", tag) for tag in sorted(plain[600:])),
        TagRef("ns", "c", "only"),
    ]
    expected = _reference(refs, META, _MEDIA[media], include)
    assert b"".join(list_chunks(_runs(refs), META, _MEDIA[media], HOST, include)) == expected
    assert list_text(_runs(refs), META, _MEDIA[media], HOST, include) == expected


@pytest.mark.property
@given(
    tags=st.lists(st.text(min_size=1, max_size=12), min_size=16, max_size=40, unique=True),
    host=st.sampled_from([HOST, 'odd"host\\name', "hôte:5000"]),
)
def test_a_long_run_escapes_like_json_dumps(tags: list[str], host: str) -> None:
    # As the test above with more tags: names, uids and escapes are made for the chunk at once.
    _assert_escaped_as_json_dumps(tags, host, (FULL, TABLE, PARTIAL_LIST))


@pytest.mark.property
@given(
    resource_version=st.one_of(st.none(), st.text(max_size=20)),
    continue_=st.one_of(st.none(), st.text(max_size=40)),
    remaining=st.one_of(st.none(), st.integers(min_value=0, max_value=10**12)),
)
def test_a_list_envelope_is_the_converters(
    resource_version: str | None, continue_: str | None, remaining: int | None
) -> None:
    # The metadata of a list is spelled without the converter; it must spell it as the converter does.
    meta = ListMeta(resource_version=resource_version, continue_=continue_, remaining_item_count=remaining)
    for media in _MEDIA.values():
        expected = _reference([], meta, media, "Metadata")
        assert list_text([], meta, media, HOST) == expected


def test_list_metadata_has_the_fields_spelled_without_the_converter() -> None:
    # A field added to ListMeta must be added to the envelope's spelling too.
    assert [field.name for field in attrs.fields(ListMeta)] == [
        "resource_version",
        "continue_",
        "remaining_item_count",
    ]


def test_include_object_invalid_is_worded_as_kube_apiserver() -> None:
    with pytest.raises(ApiError) as caught:
        include_object("bogus")
    assert caught.value.message == (
        'Unable to convert to Table as requested: includeObject: Invalid value: "bogus": '
        "must be 'Metadata', 'Object', 'None', or empty"
    )


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        ("a\x01\u00a0b", '"a\\x01\\u00a0b"'),
        ('q"\\', '"q\\"\\\\"'),
        ("\u00e9\U0001f600", '"\u00e9\U0001f600"'),
    ],
)
def test_include_object_invalid_quotes_as_go(value: str, shown: str) -> None:
    # Go's %q: control and blank characters escaped, printable ones (any script) as they are.
    with pytest.raises(ApiError) as caught:
        include_object(value)
    assert f"Invalid value: {shown}: " in caught.value.message


@pytest.mark.property
@given(
    tags=st.one_of(
        st.lists(st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}", fullmatch=True), max_size=40),
        st.lists(st.text(max_size=12), max_size=40),
    )
)
def test_tags_are_escaped_each_as_json_dumps_spells_it(tags: list[str]) -> None:
    # Tags of the grammar are their own spelling (no string made per tag); any other text, as the
    # registry could answer, is escaped as json.dumps escapes it.
    assert list(render._escaped(tags)) == [json.dumps(tag)[1:-1] for tag in tags]


def test_a_shared_run_takes_its_repositorys_maker_again_in_the_next_list() -> None:
    # Lists of a namespace of many repositories, one after another, each run shared (the server's
    # way): each repository's item maker is made for the first list and taken again by the next,
    # for up to render.MAKERS_KEPT repositories; the text is the same either way.
    render._maker.cache_clear()
    refs = [TagRef("ns", f"app-{i:03d}", f"v{j}") for i in range(100) for j in range(3)]
    runs = [Run(run.namespace, run.repository_path, tuple(run.tags)) for run in _runs(refs)]
    shared = render.SharedText()
    texts = [b"".join(list_chunks(runs, META, FULL, HOST, shared=shared)) for _ in range(2)]
    assert shared.formatted == 200  # each run shared by its list (nobody else's), and let go
    assert texts[0] == texts[1] == _reference(refs, META, FULL, "Metadata")
    assert render._maker.cache_info().misses == 100
    assert render._maker.cache_info().hits == 100


def test_a_page_showing_an_answer_whole_hands_on_the_answer_and_shares_its_text() -> None:
    # A page of a paged list that shows a repository's answer whole (a TagList) runs over the answer
    # itself, not a copy of its tags, as it did over a tuple: lists showing it format it once
    # (review r1tags L1: a TagList's whole slice was a list, which SharedText does not share).
    tags = TagList([f"v{i:05d}" for i in range(600)])
    page = _PageBuilder(1000, None)  # over render.CHUNK_ITEMS: streamed with the shared text
    page.add("team", "app", tags, None)
    runs, more = page.result()
    assert not more and runs[0].tags is tags
    assert render.SharedText().join(runs[0], HOST, _MEDIA["full"], "", 50) is not None
