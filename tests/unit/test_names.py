"""Object names: unpadded lowercase base32 of ``<repositoryPath>:<tag>`` (docs/access.md, "Object names")."""

from __future__ import annotations

import base64
import re
import tracemalloc

import pytest
from hypothesis import given
from hypothesis import strategies as st

from payloadtags.names import (
    _TAG,
    InvalidName,
    NameEncoder,
    TagRef,
    _base32_groups,
    decode_name,
    encode_name,
    is_namespace,
    is_repository_path,
    ref_from_name,
    split_repository,
)

# The three names of the seed document, byte for byte.
SEED = [
    ("nb2hi4bnmvrwq3z2nrqxizltoq", "http-echo", "latest"),
    ("orsxg5bpnb2hi4bnmvrwq3z2nrqxizltoq", "test/http-echo", "latest"),
    ("orsxg5bpnb2hi4bnmvrwq3zshjwgc5dfon2a", "test/http-echo2", "latest"),
]


@pytest.mark.parametrize(("name", "path", "tag"), SEED)
def test_seed_names_decode(name: str, path: str, tag: str) -> None:
    assert decode_name(name) == (path, tag)


@pytest.mark.parametrize(("name", "path", "tag"), SEED)
def test_seed_names_encode(name: str, path: str, tag: str) -> None:
    assert encode_name(path, tag) == name


def test_constructed_example_of_the_reference() -> None:
    assert encode_name("app", "v1.2") == "mfyhaotwgexde"
    assert decode_name("mfyhaotwgexde") == ("app", "v1.2")


def test_namespace_is_not_part_of_the_name() -> None:
    assert (
        TagRef("team-a", "app", "v1").name == TagRef("team-b", "app", "v1").name == encode_name("app", "v1")
    )


def test_the_names_of_a_big_namespace_are_not_kept_after_they_are_spelled() -> None:
    """A watch of a namespace of 100,000 tags names each tag in its events (TagRef.name): what the
    names' cache keeps afterwards is bounded by a few hundred kB, not by the namespace (issue #11)."""
    encode_name.cache_clear()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(100_000):
            TagRef("team-a", "app", f"v{i:06d}").name  # noqa: B018 (the tag's text lives only here)
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
        encode_name.cache_clear()
    assert held < 1 << 20


def test_tags_may_hold_uppercase_and_the_name_stays_lowercase() -> None:
    name = encode_name("app", "V1_RC.2-Final")
    assert name == name.lower()
    assert decode_name(name) == ("app", "V1_RC.2-Final")


# -- round trip over the OCI grammar -------------------------------------------------------------
# Written from the distribution spec, not from the module: a path component is lowercase
# alphanumerics separated by one of ".", "_", "__" or a run of "-"; a tag is
# [A-Za-z0-9_][A-Za-z0-9_.-]{0,127}.

_ALNUM = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789", min_size=1, max_size=8)
_SEPARATOR = st.sampled_from([".", "_", "__", "-", "--", "---"])


@st.composite
def components(draw: st.DrawFn) -> str:
    parts = [draw(_ALNUM)]
    for _ in range(draw(st.integers(0, 3))):
        parts += [draw(_SEPARATOR), draw(_ALNUM)]
    return "".join(parts)


repository_paths = st.lists(components(), min_size=1, max_size=4).map("/".join)
tags = st.builds(
    lambda head, tail: head + tail,
    st.sampled_from("ABCXYZabcxyz0189_"),
    st.text(alphabet="ABCXYZabcxyz0189_.-", max_size=127),
)


@pytest.mark.property
@given(repository_paths, tags)
def test_round_trip(path: str, tag: str) -> None:
    name = encode_name(path, tag)
    assert re.fullmatch(r"[a-z2-7]+", name), name
    assert base64.b32decode(name.upper() + "=" * (-len(name) % 8)) == f"{path}:{tag}".encode()
    assert decode_name(name) == (path, tag)
    assert ref_from_name("ns", name) == TagRef("ns", path, tag)


@pytest.mark.property
@given(st.text(max_size=40))
def test_decode_rejects_or_round_trips_any_text(text: str) -> None:
    try:
        path, tag = decode_name(text)
    except InvalidName:
        return
    assert encode_name(path, tag) == text


def _decoded_by_b32decode(name: str) -> tuple[str, str] | None:
    """decode_name as it was with base64.b32decode: the answer, or None for InvalidName."""
    try:
        text = base64.b32decode(name.upper() + "=" * (-len(name) % 8)).decode("utf-8")
    except ValueError:  # binascii.Error too
        return None
    path, sep, tag = text.rpartition(":")
    if not sep or not is_repository_path(path) or not _TAG.match(tag) or encode_name(path, tag) != name:
        return None
    return path, tag


def _decoded(name: str) -> tuple[str, str] | None:
    try:
        return decode_name(name)
    except InvalidName:
        return None


@pytest.mark.property
@given(st.text(alphabet="abcdefghijklmnopqrstuvwxyz234567", min_size=1, max_size=40), repository_paths, tags)
def test_decode_reads_the_bytes_b32decode_reads(text: str, path: str, tag: str) -> None:
    # Any spelling, of every length (those b32decode refuses too), and the names of tags, alone and
    # with a digit more or less.
    name = encode_name(path, tag)
    for spelling in (text, name, name[:-1], name + text[0]):
        assert _decoded(spelling) == _decoded_by_b32decode(spelling)
    assert _decoded(name) == (path, tag)


@pytest.mark.property
@given(st.text(alphabet="abcdefghijklmnopqrstuvwxyz234567", min_size=1, max_size=40))
def test_decode_of_any_base32_spelling_is_canonical_or_rejected(text: str) -> None:
    try:
        path, tag = decode_name(text)
    except InvalidName:
        return
    assert encode_name(path, tag) == text


def test_longest_tag_is_accepted_and_one_more_is_not() -> None:
    assert decode_name(encode_name("app", "a" * 128)) == ("app", "a" * 128)
    with pytest.raises(InvalidName):
        decode_name(encode_name("app", "a" * 129))


# -- invalid names --------------------------------------------------------------------------------


def _non_canonical(name: str) -> str:
    """The same bytes with a spare low bit of the last base32 character set."""
    alphabet = "abcdefghijklmnopqrstuvwxyz234567"
    last = alphabet.index(name[-1])
    assert last % 2 == 0, "pick a name whose last character has a clear spare bit"
    return name[:-1] + alphabet[last + 1]


def test_non_canonical_spelling_is_rejected() -> None:
    name = encode_name("a", "b")  # 3 bytes: 5 characters, one spare bit
    other = _non_canonical(name)
    pad = "=" * (-len(other) % 8)
    # Both spellings decode to the same bytes; only one of them may name the object.
    assert base64.b32decode(other.upper() + pad) == base64.b32decode(name.upper() + pad) == b"a:b"
    assert decode_name(name) == ("a", "b")
    with pytest.raises(InvalidName):
        decode_name(other)


def test_non_canonical_spelling_of_a_seed_name_is_rejected() -> None:
    name = "orsxg5bpnb2hi4bnmvrwq3zshjwgc5dfon2a"  # 22 bytes: 36 characters, 4 spare bits
    other = _non_canonical(name)
    assert base64.b32decode(other.upper() + "====") == b"test/http-echo2:latest"
    with pytest.raises(InvalidName):
        decode_name(other)


def _b32(raw: bytes) -> str:
    return base64.b32encode(raw).decode().rstrip("=").lower()


@pytest.mark.parametrize(
    "name",
    [
        pytest.param("", id="empty"),
        pytest.param("NB2HI4BNMVRWQ3Z2NRQXIZLTOQ", id="uppercase"),
        pytest.param("nb2hi4bnmvrwq3z2nrqxizltoQ", id="one-uppercase-letter"),
        pytest.param("me5ge===", id="padding"),
        pytest.param("me5ge=", id="partial-padding"),
        pytest.param("nb2hi4bn0vrwq3z2nrqxizltoq", id="digit-0-outside-alphabet"),
        pytest.param("nb2hi4bn1vrwq3z2nrqxizltoq", id="digit-1-outside-alphabet"),
        pytest.param("nb2hi4bn8vrwq3z2nrqxizltoq", id="digit-8-outside-alphabet"),
        pytest.param("nb2hi4bn-vrwq3z2nrqxizltoq", id="dash"),
        pytest.param("nb2hi4bnmvrwq3z2nrqxizltoq\n", id="trailing-newline"),
        pytest.param(" nb2hi4bnmvrwq3z2nrqxizltoq", id="leading-space"),
        pytest.param("a", id="length-1-mod-8"),
        pytest.param("abc", id="length-3-mod-8"),
        pytest.param("abcdef", id="length-6-mod-8"),
        pytest.param("nb2hi4bnmvrwq3z2nrqxizltoqa", id="seed-plus-one-char"),
        pytest.param(_b32(b"\xff\xfe:latest"), id="not-utf8"),
        pytest.param(_b32(b"http-echo"), id="no-colon"),
        pytest.param(_b32(b":latest"), id="empty-path"),
        pytest.param(_b32(b"app:"), id="empty-tag"),
        pytest.param(_b32(b"App:v1"), id="uppercase-path"),
        pytest.param(_b32(b"/app:v1"), id="leading-slash"),
        pytest.param(_b32(b"app/:v1"), id="trailing-slash"),
        pytest.param(_b32(b"a//b:v1"), id="empty-component"),
        pytest.param(_b32(b"-app:v1"), id="component-starts-with-separator"),
        pytest.param(_b32(b"app-:v1"), id="component-ends-with-separator"),
        pytest.param(_b32(b"a..b:v1"), id="double-dot"),
        pytest.param(_b32(b"a___b:v1"), id="triple-underscore"),
        pytest.param(_b32(b"a._b:v1"), id="mixed-separators"),
        pytest.param(_b32(b"a b:v1"), id="space-in-path"),
        pytest.param(_b32(b"app:.v1"), id="tag-starts-with-dot"),
        pytest.param(_b32(b"app:-v1"), id="tag-starts-with-dash"),
        pytest.param(_b32(b"app:v 1"), id="space-in-tag"),
        pytest.param(_b32(b"app:v1/x"), id="slash-in-tag"),
        pytest.param(_b32(b"app:v1:x"), id="colon-in-tag"),
        pytest.param(_b32(b"app:" + b"a" * 129), id="tag-too-long"),
        pytest.param(_b32("app:v\u00e9".encode()), id="non-ascii-tag"),
    ],
)
def test_invalid_names_raise_invalid_name(name: str) -> None:
    with pytest.raises(InvalidName):
        decode_name(name)
    with pytest.raises(InvalidName):
        ref_from_name("ns", name)


def test_invalid_name_is_a_value_error() -> None:
    assert issubclass(InvalidName, ValueError)


# -- repository paths, namespaces and split_repository ------------------------------------------


@pytest.mark.parametrize(
    "path", ["app", "test/http-echo", "a/b/c/d", "a.b", "a_b", "a__b", "a-b", "a---b", "0", "a1/2b"]
)
def test_valid_repository_paths(path: str) -> None:
    assert is_repository_path(path)


@pytest.mark.parametrize(
    "path", ["", "/", "App", "a/", "/a", "a//b", "a..b", "_a", "a_", "a:b", "a b", "a/-b"]
)
def test_invalid_repository_paths(path: str) -> None:
    assert not is_repository_path(path)


@pytest.mark.parametrize("name", ["d8-system", "a", "ns1", "a" * 63, "0abc"])
def test_valid_namespaces(name: str) -> None:
    assert is_namespace(name)


@pytest.mark.parametrize("name", ["", "A", "Team", "-a", "a-", "a.b", "a_b", "a" * 64, "a/b", "a\n"])
def test_invalid_namespaces(name: str) -> None:
    assert not is_namespace(name)


@pytest.mark.parametrize(
    ("repository", "expected"),
    [
        ("d8-system/http-echo", ("d8-system", "http-echo")),
        ("d8-system/test/http-echo", ("d8-system", "test/http-echo")),
        ("ns/a/b/c", ("ns", "a/b/c")),
        ("n" * 63 + "/app", ("n" * 63, "app")),
    ],
)
def test_split_repository_at_the_first_slash(repository: str, expected: tuple[str, str]) -> None:
    assert split_repository(repository) == expected


@pytest.mark.parametrize(
    "repository",
    [
        pytest.param("foo", id="namespace-only"),
        pytest.param("foo/", id="namespace-and-empty-path"),
        pytest.param("", id="empty"),
        pytest.param("/app", id="empty-namespace"),
        pytest.param("Team/app", id="uppercase-namespace"),
        pytest.param("my.ns/app", id="dotted-namespace"),
        pytest.param("my_ns/app", id="underscore-namespace"),
        pytest.param("-ns/app", id="namespace-starts-with-dash"),
        pytest.param("n" * 64 + "/app", id="namespace-too-long"),
        pytest.param("ns/App", id="invalid-path"),
        pytest.param("ns//app", id="empty-component"),
    ],
)
def test_split_repository_rejects(repository: str) -> None:
    assert split_repository(repository) is None


# -- TagRef -----------------------------------------------------------------------------------------


def test_tag_ref_properties() -> None:
    ref = TagRef("d8-system", "test/http-echo", "latest")
    assert ref.repository == "d8-system/test/http-echo"
    assert ref.name == "orsxg5bpnb2hi4bnmvrwq3z2nrqxizltoq"
    assert ref_from_name("d8-system", ref.name) == ref


def test_tag_ref_sort_key_compares_paths_component_by_component() -> None:
    # Plain string order puts "a-b" before "a/b" ('-' < '/'); the registry's catalog does not.
    refs = [
        TagRef("ns", "a-b", "v1"),
        TagRef("ns", "a/b", "v1"),
        TagRef("ns", "a", "v2"),
        TagRef("ns", "a", "v1"),
    ]
    assert [(r.repository_path, r.tag) for r in sorted(refs, key=lambda r: r.sort_key)] == [
        ("a", "v1"),
        ("a", "v2"),
        ("a/b", "v1"),
        ("a-b", "v1"),
    ]
    assert TagRef("a", "z", "z").sort_key < TagRef("b", "a", "a").sort_key


def test_tag_ref_is_frozen_and_hashable() -> None:
    ref = TagRef("ns", "app", "v1")
    assert {ref, TagRef("ns", "app", "v1")} == {ref}
    with pytest.raises(AttributeError):
        ref.tag = "v2"  # type: ignore[misc]


@pytest.mark.property
@given(
    path=st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789._-/", min_size=1, max_size=40),
    tags=st.lists(st.text(alphabet="ABCXYZabcxyz0123456789_.-", min_size=1, max_size=30), max_size=5),
)
def test_a_name_encoder_spells_names_as_encode_name_does(path: str, tags: list[str]) -> None:
    # Every prefix length modulo 5 is covered: the encoder splits the path at a 5-byte group boundary.
    encoder = NameEncoder(path)
    for tag in tags:
        expected = base64.b32encode(f"{path}:{tag}".encode()).decode().rstrip("=").lower()
        assert encoder(tag) == encode_name(path, tag) == expected


@pytest.mark.property
@given(
    path=st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789._-/", min_size=1, max_size=40),
    tags=st.lists(st.text(min_size=1, max_size=30), max_size=8),
)
def test_names_of_many_tags_at_once_are_each_tags_name(path: str, tags: list[str]) -> None:
    assert NameEncoder(path).many(tags) == [encode_name(path, tag) for tag in tags]


@pytest.mark.property
@given(
    path=st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789._-/", min_size=1, max_size=40),
    tags=st.lists(
        st.one_of(
            st.text(alphabet="ABCXYZabcxyz0123456789_.-", min_size=1, max_size=40),
            st.text(min_size=0, max_size=12),  # what a registry could answer: any text, even ""
            st.text(alphabet="ab", min_size=290, max_size=320),  # longer than the grammar allows
        ),
        min_size=4,
        max_size=60,
    ),
)
def test_names_of_a_chunk_spelled_column_by_column_are_each_tags_name(path: str, tags: list[str]) -> None:
    # Four tags and more are encoded together (every tail length modulo 5 next to every other),
    # fewer one by one; either way each name is the standard library's base32 of its text.
    encoder = NameEncoder(path)
    expected = [base64.b32encode(f"{path}:{tag}".encode()).decode().rstrip("=").lower() for tag in tags]
    assert encoder.many(tags) == expected
    assert [encoder.head + tail for tail in encoder.tails(tuple(tags))] == expected


def test_names_of_a_chunk_of_every_tail_length() -> None:
    tags = [f"t{'x' * size}" for size in range(0, 140)]
    for path in ("a", "ab", "abc", "abcd", "abcde"):  # every length of the encoder's rest
        assert NameEncoder(path).many(tags) == [encode_name(path, tag) for tag in tags]


@pytest.mark.property
@given(data=st.binary(max_size=400).map(lambda data: data[: len(data) - len(data) % 5]))
def test_base32_of_whole_groups_is_the_standard_librarys(data: bytes) -> None:
    assert _base32_groups(data) == base64.b32encode(data).decode().lower()


def test_base32_of_whole_groups_covers_every_digit_in_every_column() -> None:
    # Each of the 32 digit values in each of the 8 positions of a group, and long inputs.
    data = bytes(range(256)) * 5 + bytes(255 - b for b in range(256)) * 5
    assert _base32_groups(data) == base64.b32encode(data).decode().lower()
    assert _base32_groups(b"") == ""


# A tag of the registry's grammar of exactly ``size`` characters (1 to 128).
def _grammar_tags_of(size: int) -> st.SearchStrategy[str]:
    return st.from_regex(rf"[A-Za-z0-9_][A-Za-z0-9_.-]{{{size - 1}}}", fullmatch=True)


@pytest.mark.property
@given(
    path=st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789._-/", min_size=1, max_size=40),
    size=st.one_of(st.sampled_from([1, 2, 3, 4, 5, 6, 9, 10, 11, 127, 128]), st.integers(1, 128)),
    data=st.data(),
)
def test_names_of_a_chunk_of_tags_of_one_length_are_each_tags_name(
    path: str, size: int, data: st.DataObject
) -> None:
    # Tags of one length take the way that pads them all alike; the names are the same as the
    # standard library's base32, and as those of the same tags spelled one by one.
    tags = data.draw(st.lists(_grammar_tags_of(size), min_size=4, max_size=40))
    encoder = NameEncoder(path)
    expected = [base64.b32encode(f"{path}:{tag}".encode()).decode().rstrip("=").lower() for tag in tags]
    assert encoder.many(tags) == expected
    assert [encoder.head + tail for tail in encoder.tails(tuple(tags))] == expected


def test_names_of_a_chunk_of_tags_of_one_length_at_every_length() -> None:
    # Every tail length the tables hold and beyond them, every length of the encoder's rest, and a
    # chunk of one length that is not ASCII (lengths in characters are not lengths in bytes).
    for path in ("a", "ab", "abc", "abcd", "abcde"):
        encoder = NameEncoder(path)
        for size in (*range(0, 140), 299, 300, 301):
            tags = [format(i, "x").rjust(size, "t")[-size:] if size else "" for i in range(9)]
            assert encoder.many(tags) == [encode_name(path, tag) for tag in tags], (path, size)
        tags = [f"é{i}" for i in range(9)]
        assert encoder.many(tags) == [encode_name(path, tag) for tag in tags]
