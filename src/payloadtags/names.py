"""Object names: ``metadata.name`` is the unpadded lowercase base32 of ``<repositoryPath>:<tag>``.

The namespace is not part of the encoded string; it is the repository's first path segment.
"""

from __future__ import annotations

import base64
import functools
import re
from collections.abc import Sequence

import attrs

# The OCI distribution grammar for one path component and for a tag.
_COMPONENT = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*\Z")
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}\Z")
_DNS_LABEL = re.compile(r"[a-z0-9](?:[-a-z0-9]{0,61}[a-z0-9])?\Z")
_NAME_ALPHABET = re.compile(r"[a-z2-7]+\Z")


class InvalidName(ValueError):
    """A string that is not the name of any PayloadRepositoryTag."""


@attrs.frozen(order=True)
class TagRef:
    """One tag of one repository, addressed the way the Kubernetes API addresses it."""

    namespace: str
    repository_path: str
    tag: str

    @property
    def repository(self) -> str:
        """The full registry repository name."""
        return f"{self.namespace}/{self.repository_path}"

    @property
    def name(self) -> str:
        return encode_name(self.repository_path, self.tag)

    @property
    def sort_key(self) -> tuple[str, tuple[str, ...], str]:
        # The registry's catalog compares paths component by component ("a/b" < "a-b"); listing in the
        # same order is what lets a continue token resume the catalog with `last`.
        return (self.namespace, tuple(self.repository_path.split("/")), self.tag)


def _base32(data: bytes) -> str:
    """Lowercase base32 without padding."""
    return base64.b32encode(data).decode("ascii").rstrip("=").lower()


_DIGITS = bytes.maketrans(bytes(range(32)), b"abcdefghijklmnopqrstuvwxyz234567")


def _digit_columns(data: bytes, count: int) -> tuple[int, ...]:
    """The eight digit columns of the base32 of ``data`` (``count`` 5-byte groups): column k holds
    the k-th digit value of every group, one per byte, as one big integer.

    Python 3.11's ``base64.b32encode`` is a Python loop over 5-byte groups, and the names of a list
    are most of the CPU of formatting it. Here the work is done on whole columns at once: the k-th
    bytes of all groups as one big integer, their bits shifted and masked into the digit columns.
    """
    b0, b1, b2, b3, b4 = (int.from_bytes(data[k::5], "big") for k in range(5))
    ones = int.from_bytes(b"\x01" * count, "big")  # a mask value times ones: that mask in every byte
    return (
        b0 >> 3 & ones * 31,
        (b0 & ones * 7) << 2 | b1 >> 6 & ones * 3,
        b1 >> 1 & ones * 31,
        (b1 & ones) << 4 | b2 >> 4 & ones * 15,
        (b2 & ones * 15) << 1 | b3 >> 7 & ones,
        b3 >> 2 & ones * 31,
        (b3 & ones * 3) << 3 | b4 >> 5 & ones * 7,
        b4 & ones * 31,
    )


def _interleave(columns: Sequence[int], count: int) -> bytearray:
    """The digit values of ``count`` groups in text order, from their columns (C-level slices)."""
    digits = bytearray(8 * count)
    for k, column in enumerate(columns):
        digits[k::8] = column.to_bytes(count, "big")
    return digits


def _base32_groups(data: bytes) -> str:
    """Lowercase base32 of ``data``, whose length is a multiple of 5, as ``_base32`` spells it."""
    count = len(data) // 5
    if count == 0:
        return ""
    return _interleave(_digit_columns(data, count), count).translate(_DIGITS).decode("ascii")


# Many names at once (NameEncoder.tails). Each tail (the bytes of a name after the encoder's whole
# groups) is padded with 1 to 5 zero bytes to whole groups, so it has at least one digit of padding
# only; a mark byte per group says how many of its 5 bytes are the tail's (5, and 0 to 4 in its last
# group). In digit column k a group's mark is translated to 0 for a digit of the tail, to _END for
# the first digit after it and to _DROP for the rest, and ORed onto the digit values (which are
# below 32, and 0 where they are padding only). Then one translate spells the digits, turns each
# _END into a separator and deletes each _DROP, and one split gives the tails: no Python step per
# name beyond building the padded text, which is C-level maps too.
_END, _DROP = 32, 64
_OWN_DIGITS = (0, 2, 4, 5, 7, 8)  # digits of a group whose first m bytes are the tail's (m = 0..5)
_MARK_COLUMNS = [
    bytes(0 if k < own else _END if k == own else _DROP for own in _OWN_DIGITS) + bytes(250) for k in range(8)
]
_SPELL = bytearray(_DIGITS)
_SPELL[_END] = ord(",")
_FEW = 4
_MAX_TAIL = 300  # longer tags (the grammar allows 128) take the general path
# Per length of the encoder's rest (0..4), per tag length: the tag's zero padding, and its marks.
_PADDING = [["\0" * (5 - (rest + size) % 5) for size in range(_MAX_TAIL)] for rest in range(5)]
_MARKS = [
    [b"\x05" * ((rest + size) // 5) + bytes(((rest + size) % 5,)) for size in range(_MAX_TAIL)]
    for rest in range(5)
]


# The names of the tags asked for lately (a GET's decode checks its name by encoding it again; a watch
# event names its tag): the same few tags asked for again and again cost a lookup. Lists spell their
# names with `NameEncoder` and never come here. An entry holds its key's strings and the name, about
# 300 bytes: the thousand kept hold about 300 kB. (At 65,536 entries the cache held 15-18 MiB for the
# life of the process once one watch of a big namespace had sent its tags, issue #11; a whole
# namespace's names, a sweep, find none of themselves in it anyway, and one name costs 2 us.)
NAMES_KEPT = 1024


@functools.lru_cache(maxsize=NAMES_KEPT)
def encode_name(repository_path: str, tag: str) -> str:
    return _base32(f"{repository_path}:{tag}".encode())


class NameEncoder:
    """``encode_name`` for many tags of one repository path.

    Base32 encodes each 5-byte group on its own, so the whole groups of ``<repositoryPath>:`` are
    encoded once (``head``), and each tag costs only the encoding of the few bytes after them.
    """

    __slots__ = ("_marks", "_padding", "_rest", "_rest_text", "head")

    def __init__(self, repository_path: str) -> None:
        prefix = f"{repository_path}:".encode()
        cut = len(prefix) - len(prefix) % 5
        self.head = _base32(prefix[:cut])
        self._rest = prefix[cut:]
        self._rest_text = self._rest.decode("latin-1")
        self._padding = _PADDING[len(self._rest)]
        self._marks = _MARKS[len(self._rest)]

    def __call__(self, tag: str) -> str:
        return self.head + _base32(self._rest + tag.encode())

    def many(self, tags: Sequence[str]) -> list[str]:
        """The names of ``tags``."""
        head = self.head
        return [head + tail for tail in self.tails(tags)]

    def tails(self, tags: Sequence[str]) -> list[str]:
        """The names of ``tags`` without ``head``, computed for all of them at once."""
        if len(tags) < _FEW:  # the fixed cost of the column work is more than theirs one by one
            return self._tails_one_by_one(tags)
        sizes = list(map(len, tags))
        rest = self._rest_text
        try:
            if min(sizes) == max(sizes):
                # Tags of one length (as a registry's often are: versions, dates, commits): one
                # padding for all, put after each with the next tag's rest by one join.
                padding = self._padding[sizes[0]]
                padded = rest + (padding + rest).join(tags) + padding
                marks = self._marks[sizes[0]] * len(tags)
            else:
                parts = [rest] * (3 * len(tags))  # rest, tag, its padding; for each tag
                parts[1::3] = tags
                parts[2::3] = map(self._padding.__getitem__, sizes)
                marks = b"".join(map(self._marks.__getitem__, sizes))
                padded = "".join(parts)
        except IndexError:  # a tag longer than the tables
            return self._tails_one_by_one(tags)
        if not padded.isascii():  # lengths in characters are lengths in bytes for ASCII only
            return self._tails_one_by_one(tags)
        data = padded.encode("ascii")
        count = len(marks)
        columns = [
            column | int.from_bytes(marks.translate(table), "big")
            for column, table in zip(_digit_columns(data, count), _MARK_COLUMNS, strict=True)
        ]
        digits = _interleave(columns, count).translate(_SPELL, bytes((_DROP,)))
        return digits.decode("ascii").split(",")[:-1]

    def _tails_one_by_one(self, tags: Sequence[str]) -> list[str]:
        rest = self._rest
        return [_base32(rest + tag.encode()) for tag in tags]


# Base32's digits (a-z, 2-7) as the digits of int(..., 32) (0-9, a-v): the same 5 bits each.
_AS_INT_DIGITS = str.maketrans("abcdefghijklmnopqrstuvwxyz234567", "0123456789abcdefghijklmnopqrstuv")


def decode_name(name: str) -> tuple[str, str]:
    """Return ``(repositoryPath, tag)`` or raise InvalidName."""
    if not name or not _NAME_ALPHABET.match(name):
        raise InvalidName(name)
    # The bytes base64.b32decode gives (its bits, the last group's spare ones dropped), read as one
    # number in C rather than 8 digits at a time in Python. A length b32decode refuses (1, 3 or 6
    # digits past a multiple of 8) is refused below: no bytes spell back to it.
    bits = 5 * len(name)
    size = bits // 8
    raw = (int(name.translate(_AS_INT_DIGITS), 32) >> (bits - 8 * size)).to_bytes(size, "big")
    try:
        text = raw.decode("utf-8")
    except ValueError as exc:
        raise InvalidName(name) from exc
    path, sep, tag = text.rpartition(":")
    if not sep or not is_repository_path(path) or not _TAG.match(tag):
        raise InvalidName(name)
    # Base32 has several spellings of the same bytes when the last group has spare bits; only the
    # canonical one names an object, so that each tag has exactly one name.
    if encode_name(path, tag) != name:
        raise InvalidName(name)
    return path, tag


def is_repository_path(path: str) -> bool:
    return bool(path) and all(_COMPONENT.match(part) for part in path.split("/"))


def is_namespace(name: str) -> bool:
    return bool(_DNS_LABEL.match(name))


def split_repository(repository: str) -> tuple[str, str] | None:
    """``ns/path/...`` → ``(ns, "path/...")``; None when the repository cannot hold objects."""
    namespace, sep, path = repository.partition("/")
    if not sep or not is_namespace(namespace) or not is_repository_path(path):
        return None
    return namespace, path


def ref_from_name(namespace: str, name: str) -> TagRef:
    path, tag = decode_name(name)
    return TagRef(namespace, path, tag)
