"""Object names: ``metadata.name`` is the unpadded lowercase base32 of ``<repositoryPath>:<tag>``.

The namespace is not part of the encoded string; it is the repository's first path segment.
"""

from __future__ import annotations

import base64
import binascii
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


def _base32_groups(data: bytes) -> str:
    """Lowercase base32 of ``data``, whose length is a multiple of 5, as ``_base32`` spells it.

    Python 3.11's ``base64.b32encode`` is a Python loop over 5-byte groups, and the names of a list
    are most of the CPU of formatting it. Here the work is done on whole columns at once: the k-th
    bytes of all groups as one big integer, their bits shifted and masked into the eight digit columns,
    which are interleaved and mapped to the alphabet with C-level slice assignment and translate.
    """
    count = len(data) // 5
    if count == 0:
        return ""
    b0, b1, b2, b3, b4 = (int.from_bytes(data[k::5], "big") for k in range(5))
    ones = int.from_bytes(b"\x01" * count, "big")  # a mask value times ones: that mask in every byte
    columns = (
        b0 >> 3 & ones * 31,
        (b0 & ones * 7) << 2 | b1 >> 6 & ones * 3,
        b1 >> 1 & ones * 31,
        (b1 & ones) << 4 | b2 >> 4 & ones * 15,
        (b2 & ones * 15) << 1 | b3 >> 7 & ones,
        b3 >> 2 & ones * 31,
        (b3 & ones * 3) << 3 | b4 >> 5 & ones * 7,
        b4 & ones * 31,
    )
    digits = bytearray(8 * count)
    for k, column in enumerate(columns):
        digits[k::8] = column.to_bytes(count, "big")
    return digits.translate(_DIGITS).decode("ascii")


@functools.lru_cache(maxsize=65536)
def encode_name(repository_path: str, tag: str) -> str:
    return _base32(f"{repository_path}:{tag}".encode())


class NameEncoder:
    """``encode_name`` for many tags of one repository path.

    Base32 encodes each 5-byte group on its own, so the whole groups of ``<repositoryPath>:`` are
    encoded once, and each tag costs only the encoding of the few bytes after them.
    """

    __slots__ = ("_head", "_rest")

    def __init__(self, repository_path: str) -> None:
        prefix = f"{repository_path}:".encode()
        cut = len(prefix) - len(prefix) % 5
        self._head = _base32(prefix[:cut])
        self._rest = prefix[cut:]

    def __call__(self, tag: str) -> str:
        return self._head + _base32(self._rest + tag.encode())

    def many(self, tags: Sequence[str]) -> list[str]:
        """The names of ``tags``, with one base32 call for all of them: each tail is padded with zero
        bytes to whole groups, so it starts a group of the joined text and its digits are its own."""
        rest, head = self._rest, self._head
        tails = [rest + tag.encode() for tag in tags]
        joined = b"".join(tail + bytes(-len(tail) % 5) for tail in tails)
        digits = _base32_groups(joined)
        names = []
        start = 0
        for tail in tails:
            size = len(tail)
            names.append(head + digits[start : start + (size * 8 + 4) // 5])
            start += (size + 4) // 5 * 8
        return names


def decode_name(name: str) -> tuple[str, str]:
    """Return ``(repositoryPath, tag)`` or raise InvalidName."""
    if not name or not _NAME_ALPHABET.match(name):
        raise InvalidName(name)
    padded = name.upper() + "=" * (-len(name) % 8)
    try:
        raw = base64.b32decode(padded)
        text = raw.decode("utf-8")
    except (binascii.Error, ValueError) as exc:
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
