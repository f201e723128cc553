"""The text of an answer in its negotiated syntax: compact JSON, indented JSON (`pretty`) or YAML.

The renderers (api/render.py) make compact JSON only, the form nearly every client asks for. The
other two are made from it here, as kube-apiserver makes them from the object: indented JSON as Go's
``json.MarshalIndent(obj, "", "  ")``, YAML as sigs.k8s.io/yaml's ``JSONToYAML`` (keys sorted, block
style). A streamed list is re-encoded as it is written, a batch of items at a time, so it keeps its
bounded memory (docs/api.md, "Content negotiation").
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncGenerator
from typing import Any

import yaml

from payloadtags.api.negotiation import Form, MediaType
from payloadtags.api.options import Query, first

# libyaml's emitter when the wheel has it (it does on the image's platforms): several times faster.
_BASE_DUMPER: Any = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
# Items re-encoded between two writes: PyYAML and indented JSON are pure-Python-slow, and the reactor
# must not stall on a chunk of 500 items at once.
BATCH_ITEMS = 100
# No folding of long strings: go-yaml does not fold them either, and a folded name is hard to copy.
_WIDTH = 1 << 30
_PLACE = "payloadtags-items-go-here"  # stands for a list's items while its envelope is encoded
_TRUE = ("1", "t", "T", "TRUE", "true", "True")  # Go's strconv.ParseBool; anything else is false


# A string written plain: it starts with an ASCII letter, holds only letters, digits and `._/@-`, and
# its runs of those are joined by one space or `:` (never `: `, ` #`, a trailing space or colon). PyYAML
# quotes by its own YAML 1.1 resolver, which reads `1e3`, `0o755`, `08` and `y` as strings; go-yaml
# (kubectl, through sigs.k8s.io/yaml) reads them as 1000, 493, 8 and true, YAML 1.2 parsers the first
# two as numbers. Every resolver's numbers, timestamps, sexagesimals and `.inf`/`.nan` begin with a
# digit, a sign or a dot, and its other special scalars are the words below or punctuation: so a
# string of this shape that is not one of those words is a string to all of them.
_PLAIN = re.compile(r"[A-Za-z][A-Za-z0-9._/@-]*(?:[ :][A-Za-z0-9._/@-]+)*")
# YAML 1.1's booleans (go-yaml v2 has y/n, yes/no, on/off, true/false) and nulls, in any case, though
# only some spellings are special: a case a resolver may add costs only a pair of quotes.
_WORDS = frozenset(("y", "n", "yes", "no", "on", "off", "true", "false", "null"))


def _plain_to_every_reader(text: str) -> bool:
    return _PLAIN.fullmatch(text) is not None and text.lower() not in _WORDS


# A lone surrogate (a JSON `\ud800` escape without its pair, which a manifest may hold) cannot be
# written as YAML text; Go's JSON decoder reads it as U+FFFD, and so does the YAML answer.
_SURROGATE = re.compile("[\ud800-\udfff]")


def _represent_str(dumper: Any, text: str) -> Any:
    text = _SURROGATE.sub("\ufffd", text)
    # Keys too: a key `08` would come back from go-yaml as the number 8 (written "8" by sigs.k8s.io/yaml).
    # Double quotes, as go-yaml quotes such a string; None leaves the style to the emitter (plain).
    style = None if _plain_to_every_reader(text) else '"'
    return dumper.represent_scalar("tag:yaml.org,2002:str", text, style=style)


class _Dumper(_BASE_DUMPER):
    """The safe dumper, with strings quoted unless every YAML reader reads them as strings."""


_Dumper.add_representer(str, _represent_str)
_DUMPER: Any = _Dumper


def wants_pretty(query: Query) -> bool:
    """The `pretty` query parameter as kube-apiserver reads it (a value it cannot parse is false)."""
    value = first(query, "pretty")
    return value is not None and value in _TRUE


def plain(media: MediaType) -> bool:
    """Whether ``media``'s text is the renderers' own (compact JSON): nothing to re-encode."""
    return not (media.yaml or media.pretty)


def _yaml(document: Any) -> str:
    text: str = yaml.dump(
        document, Dumper=_DUMPER, default_flow_style=False, sort_keys=True, width=_WIDTH, allow_unicode=True
    )
    return text


def _pretty(document: Any) -> str:
    return json.dumps(document, indent=2)


def encode(document: Any, media: MediaType) -> bytes:
    """``document`` in ``media``'s syntax."""
    if media.yaml:
        return _yaml(document).encode()
    if media.pretty:
        return _pretty(document).encode() + b"\n"
    return json.dumps(document, separators=(",", ":")).encode() + b"\n"


def reencode(body: bytes, media: MediaType) -> bytes:
    """A compact JSON answer in ``media``'s syntax."""
    return body if plain(media) else encode(json.loads(body), media)


class _ListText:
    """A list's text around its items, and its items, in one syntax."""

    def __init__(self, envelope: Any, key: str, media: MediaType) -> None:
        self.media = media
        self.empty = encode(envelope, media)
        marked = {**envelope, key: _PLACE}
        if media.yaml:
            before, _, after = _yaml(marked).partition(f"{key}: {_PLACE}\n")
            self.before, self.after = f"{before}{key}:\n".encode(), after.encode()
        else:
            before, _, after = _pretty(marked).partition(f'"{_PLACE}"')
            self.before, self.after = f"{before}[\n".encode(), f"\n  ]{after}\n".encode()

    def items(self, items: list[Any], first: bool) -> bytes:
        if self.media.yaml:
            return _yaml(items).encode()
        text = ",\n".join("    " + _pretty(item).replace("\n", "\n    ") for item in items)
        return (text if first else ",\n" + text).encode()


async def reencoded_list(
    chunks: AsyncGenerator[bytes, None], head: bytes, tail: bytes, media: MediaType
) -> AsyncGenerator[bytes, None]:
    """A streamed list's compact JSON chunks (``head``, items each after a comma, ``tail``: each chunk
    holds whole items, api/render.ListText) as ``media``'s text, a batch of items per chunk.

    The same text as `encode` of the whole list: its envelope's fields around the items keep their
    places (YAML sorts them; the items or rows sort after apiVersion, so the envelope's head is
    known before the first item)."""
    envelope = json.loads(head + tail)
    key = "rows" if media.form is Form.TABLE else "items"
    text = _ListText(envelope, key, media)
    started, written = False, 0
    try:
        async for chunk in chunks:
            part = bytes(chunk)
            if not started:
                started = True
                part = part[len(head) :]
            elif part.startswith(b","):
                part = part[1:]
            last = part.endswith(tail)
            if last:
                part = part[: len(part) - len(tail)]
            items = json.loads(b"[" + part + b"]")
            for start in range(0, len(items), BATCH_ITEMS):
                batch = text.items(items[start : start + BATCH_ITEMS], written == 0)
                yield (text.before + batch) if written == 0 else batch
                written += 1
            if last:
                yield text.after if written else text.empty
    finally:
        # Closed with this one (the client went away, the deadline passed): the list's own generator
        # stops its registry reads and leaves the text it shares with other lists at once.
        await chunks.aclose()


__all__ = ["BATCH_ITEMS", "encode", "plain", "reencode", "reencoded_list", "wants_pretty"]
