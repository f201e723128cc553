"""Objects, lists, Tables and PartialObjectMetadata for the negotiated media type."""

from __future__ import annotations

import functools
import json
import math
from bisect import bisect_right
from collections.abc import AsyncGenerator, Callable, Generator, Iterable, Iterator, Sequence
from contextlib import closing
from json.encoder import encode_basestring_ascii as _quote
from typing import Any, TypeVar

from payloadtags.api.errors import bad_request
from payloadtags.api.negotiation import Form, MediaType
from payloadtags.api.selectors import go_quote
from payloadtags.inventory import Run, Runs
from payloadtags.model import (
    GROUP_VERSION,
    KIND,
    ListMeta,
    PartialObjectMetadata,
    PartialObjectMetadataList,
    PayloadRepositoryTag,
    PayloadRepositoryTagList,
    Table,
    TableColumnDefinition,
    TableRow,
    to_json,
    uid_prefix,
    uids_of,
)
from payloadtags.names import NameEncoder
from payloadtags.registry.taglist import TagList

COLUMNS = [
    TableColumnDefinition(
        name="Name",
        type="string",
        format="name",
        description="Name must be unique within a namespace: the unpadded base32 of <repositoryPath>:<tag>.",
        priority=0,
    ),
    TableColumnDefinition(
        name="Repository",
        type="string",
        format="",
        description="Path to the repository within the namespace.",
        priority=0,
    ),
    TableColumnDefinition(name="Tag", type="string", format="", description="Tag name.", priority=0),
    TableColumnDefinition(
        name="Address",
        type="string",
        format="",
        description="Full address of the tag, usable for pull.",
        priority=1,
    ),
]

INCLUDE_OBJECT = ("Metadata", "Object", "None")


def include_object(value: str | None) -> str:
    if value is None or value == "":
        return "Metadata"
    if value not in INCLUDE_OBJECT:
        # kube-apiserver's words: ValidateTableOptions' field.Invalid, under the Table conversion's prefix.
        raise bad_request(
            f"Unable to convert to Table as requested: includeObject: Invalid value: {go_quote(value)}: "
            "must be 'Metadata', 'Object', 'None', or empty"
        )
    return value


def row(obj: PayloadRepositoryTag, media: MediaType, include: str) -> TableRow:
    embedded: dict[str, Any] | None
    if include == "None":
        embedded = None
    elif include == "Object":
        embedded = to_json(obj)
    else:
        embedded = to_json(PartialObjectMetadata(api_version=media.meta_api_version, metadata=obj.metadata))
    return TableRow(
        cells=[obj.metadata.name, obj.spec.repository_path, obj.spec.tag, obj.spec.address], object=embedded
    )


def render_list(
    items: list[PayloadRepositoryTag], meta: ListMeta, media: MediaType, include: str = "Metadata"
) -> Any:
    if media.form is Form.TABLE:
        rows = [row(obj, media, include) for obj in items]
        return to_json(
            Table(api_version=media.meta_api_version, metadata=meta, column_definitions=COLUMNS, rows=rows)
        )
    if media.form is Form.PARTIAL:
        partial = [
            PartialObjectMetadata(api_version=media.meta_api_version, metadata=o.metadata) for o in items
        ]
        return to_json(
            PartialObjectMetadataList(api_version=media.meta_api_version, metadata=meta, items=partial)
        )
    return to_json(PayloadRepositoryTagList(metadata=meta, items=items))


def render_object(obj: PayloadRepositoryTag, media: MediaType, include: str = "Metadata") -> Any:
    if media.form is Form.TABLE:
        return to_json(
            Table(
                api_version=media.meta_api_version,
                metadata=ListMeta(),
                column_definitions=COLUMNS,
                rows=[row(obj, media, include)],
            )
        )
    if media.form is Form.PARTIAL:
        return to_json(PartialObjectMetadata(api_version=media.meta_api_version, metadata=obj.metadata))
    return to_json(obj)


# -- lists, streamed --------------------------------------------------------------------------------
#
# A list is written a chunk of items at a time, each chunk formatted straight from the tags of a run:
# no objects, no converter, one copy of the text. The result is byte for byte what json.dumps of
# render_list's document gives (tests compare the two); render_list stays for small lists.

CHUNK_ITEMS = 500

_Made = TypeVar("_Made")  # what an `_ItemMaker` makes of a chunk: its items, or their text


def _envelope(meta: ListMeta, media: MediaType) -> tuple[bytes, bytes]:
    """The list's text before its first item and after its last one."""
    head, tail = _envelope_str(meta, media)
    return head.encode(), tail.encode()


def _envelope_str(meta: ListMeta, media: MediaType) -> tuple[str, str]:
    """`_envelope` before it is encoded."""
    before, after = _envelope_text(media.form, media.meta_api_version)
    return f"{before}{_list_meta_json(meta)}{after}", "]}\n"


def list_envelope(meta: ListMeta, media: MediaType) -> tuple[bytes, bytes]:
    """A list's text before its first item and after its last one (api/formats.py re-encodes it)."""
    return _envelope(meta, media)


@functools.lru_cache(maxsize=16)
def _envelope_text(form: Form, meta_api_version: str) -> tuple[str, str]:
    """A list's text around its metadata, up to its items, made once per form by the converter."""
    meta = ListMeta()
    if form is Form.TABLE:
        document = to_json(
            Table(api_version=meta_api_version, metadata=meta, column_definitions=COLUMNS, rows=[])
        )
    elif form is Form.PARTIAL:
        document = to_json(PartialObjectMetadataList(api_version=meta_api_version, metadata=meta, items=[]))
    else:
        document = to_json(PayloadRepositoryTagList(metadata=meta, items=[]))
    text = json.dumps(document, separators=(",", ":"))
    assert text.endswith("[]}"), text  # the items (rows) are the document's last field
    before, empty, after = text[:-2].partition('"metadata":{}')
    assert empty, text
    return before + '"metadata":', after


def _list_meta_json(meta: ListMeta) -> str:
    """``json.dumps(to_json(meta))``, without the converter (once per page)."""
    fields = []
    if meta.resource_version is not None:
        fields.append(f'"resourceVersion":{_quote(meta.resource_version)}')
    if meta.continue_ is not None:
        fields.append(f'"continue":{_quote(meta.continue_)}')
    if meta.remaining_item_count is not None:
        fields.append(f'"remainingItemCount":{int(meta.remaining_item_count)}')
    return "{" + ",".join(fields) + "}"


# An item is its form's constant text with four fields in between: a run's items are made a chunk
# at a time by laying the constants and the fields' columns into one list of pieces (C-level slice
# assignments), joining it once and splitting it at a separator no JSON text of ours holds (the
# quoted strings are ASCII, with control characters escaped), instead of formatting item by item.
_NAME, _UID, _TAG = range(3)  # a name without its run's head, a uid, a tag escaped without quotes
_SEPARATOR = "\0"
_QUOTED_SEPARATOR = _quote(_SEPARATOR)[1:-1]
Template = list["str | int"]


def _template(run: Run, head: str, registry_host: str, media: MediaType, include: str) -> Template:
    """The pieces of an item of ``run`` in ``media``: constant text and field numbers, alternating."""
    ns_json, path_json = _quote(run.namespace), _quote(run.repository_path)
    address = _quote(f"{registry_host}/{run.namespace}/{run.repository_path}:")[:-1]
    metadata: Template = [f'{{"name":"{head}', _NAME, f'","namespace":{ns_json},"uid":"', _UID, '"}']
    partial: Template = [
        f'{{"apiVersion":{_quote(media.meta_api_version)},"kind":"PartialObjectMetadata","metadata":',
        *metadata,
        "}",
    ]
    full: Template = [
        f'{{"apiVersion":{_quote(GROUP_VERSION)},"kind":{_quote(KIND)},"metadata":',
        *metadata,
        f',"spec":{{"repositoryPath":{path_json},"tag":"',
        _TAG,
        f'","address":{address}',
        _TAG,
        '"}}',
    ]
    if media.form is Form.FULL:
        return full
    if media.form is Form.PARTIAL:
        return partial
    row: Template = ['{"cells":["' + head, _NAME, f'",{path_json},"', _TAG, f'",{address}', _TAG, '"]']
    if include == "None":
        return [*row, "}"]
    return [*row, ',"object":', *(full if include == "Object" else partial), "}"]


def _merged(template: Template) -> tuple[list[str], list[tuple[int, int]]]:
    """The template as one list of pieces (fields as "") and where each field goes in it."""
    pieces: list[str] = []
    fields: list[tuple[int, int]] = []
    for piece in template:
        if isinstance(piece, int):
            fields.append((len(pieces), piece))
            pieces.append("")
        elif pieces and not (fields and fields[-1][0] == len(pieces) - 1):
            pieces[-1] += piece  # after constant text
        else:
            pieces.append(piece)
    # An item starts and ends with constant text, which `_ItemMaker` puts a comma before or a
    # separator after.
    assert not fields or (fields[0][0] > 0 and fields[-1][0] < len(pieces) - 1), template
    return pieces, fields


def _escaped(tags: Sequence[str]) -> Sequence[str]:
    """The tags as JSON strings spell them, without their quotes.

    Tags of the registry's grammar need no escape, and are their own spelling: one escape of all of
    them together, no longer than the text, says so, and no string is made per tag. Otherwise one
    escape of all of them, split where the separators went: exact when the separators are the only
    escapes (a tag with a quote, a backslash, a control character or a non-ASCII character, never
    seen from a registry, is escaped on its own)."""
    plain = "".join(tags)
    if len(_quote(plain)) == len(plain) + 2:  # each escape lengthens the text
        return tags
    text = _quote(_SEPARATOR.join(tags))
    if text.count("\\") == len(tags) - 1:
        return text[1:-1].split(_QUOTED_SEPARATOR)
    return [quoted[1:-1] for quoted in map(_quote, tags)]


def _items(run: Run, registry_host: str, media: MediaType, include: str) -> Iterator[str]:
    for chunk in _in_chunks(_ItemMaker.items, run, registry_host, media, include):
        yield from chunk


# A walk's pages of a few tags each show the same repository page after page: its item maker (the
# template, the names' encoder, the uids' prefix) is made once for them, not on every page (about a
# tenth of a one-tag page's own CPU); so are the runs of lists of a namespace one after another (about
# 6 us a repository, a third of a run of 10 tags). Makers hold only text made from their key, 1-2.5 kB
# each: enough are kept for the repositories of a few lists of a namespace of 100 (about 600 kB).
MAKERS_KEPT = 256


@functools.lru_cache(maxsize=MAKERS_KEPT)
def _maker(
    namespace: str, repository_path: str, registry_host: str, media: MediaType, include: str
) -> _ItemMaker:
    return _ItemMaker(Run(namespace, repository_path, ()), registry_host, media, include)


def forget_makers() -> None:
    """Drops the item makers kept (quiet.WhenQuiet)."""
    _maker.cache_clear()


def _in_chunks(
    make: Callable[[_ItemMaker, Sequence[str]], _Made],
    run: Run,
    registry_host: str,
    media: MediaType,
    include: str,
) -> Iterator[_Made]:
    """``make`` of each ``CHUNK_ITEMS`` of ``run``'s tags, with one `_ItemMaker` for the run."""
    tags = run.tags
    if not tags:
        return
    maker = _maker(run.namespace, run.repository_path, registry_host, media, include)
    for start in range(0, len(tags), CHUNK_ITEMS):
        yield make(maker, tags[start : start + CHUNK_ITEMS])


class _ItemMaker:
    """Makes the items of one run in one form from a slice of its tags at a time: its template, names'
    encoder and uids' prefix made once."""

    def __init__(self, run: Run, registry_host: str, media: MediaType, include: str) -> None:
        self._name_of = NameEncoder(run.repository_path)
        self._prefix = uid_prefix(run.namespace, run.repository_path)
        template = _template(run, self._name_of.head, registry_host, media, include)
        pieces, self._fields = _merged(template)
        # Each item followed by a separator, to split the chunk's text into items; or preceded by a
        # comma, a shared block's or a page's text, joined once without splitting it and joining the
        # items again. The same pieces, so the fields' places are the same.
        self._pieces = [*pieces[:-1], pieces[-1] + _SEPARATOR]
        self._block_pieces = ["," + pieces[0], *pieces[1:]]
        self._needed = {field for _, field in self._fields}

    def items(self, tags: Sequence[str]) -> list[str]:
        """The items of ``tags``."""
        return "".join(self.laid(tags, self._pieces)).split(_SEPARATOR)[:-1]

    def block(self, tags: Sequence[str]) -> bytes:
        """The items of ``tags`` as one text, each after a comma."""
        return "".join(self.block_pieces(tags)).encode()

    def block_pieces(self, tags: Sequence[str]) -> list[str]:
        """`block`'s pieces, not joined yet; the first is constant text (`_merged`)."""
        return self.laid(tags, self._block_pieces)

    def laid(self, tags: Sequence[str], pieces: list[str]) -> list[str]:
        """``pieces`` once per tag, each tag's fields in their places (C-level slice assignments)."""
        # Memory bounded by the slice: its names (one base32 call), uids and quoted tags.
        columns = {
            _NAME: self._name_of.tails(tags),
            _UID: uids_of(self._prefix, tags) if _UID in self._needed else [],
            _TAG: _escaped(tags) if _TAG in self._needed else [],
        }
        width = len(pieces)
        laid = pieces * len(tags)
        for offset, field in self._fields:
            laid[offset::width] = columns[field]
        return laid


# -- a run shown by several lists at once ----------------------------------------------------------
#
# Lists in flight together (ten kubectl's at once) read a repository once (registry.coalesce) and get
# one answer, the same object, for it; lists that came after that read went out read it again and get
# another answer, most often equal to the first. A run that is a registry answer whole (a tuple or a
# `TagList`: no selector made a list of its own) is the same text in every list of the same form that
# shows equal tags: it is formatted once, in blocks of ``chunk_items`` items, and each list takes the
# blocks as it writes them. Whether a caller may see the repository was decided before its run
# existed, and the text is made from the tags alone, so sharing a run's text shares nothing a caller
# could not see.
# What is kept lives as long as a list is in the run: a block while a list in it has still to take
# it, and at most ``max_blocks`` of them (those most lists still need; a list that comes to a block
# no longer kept formats it again, and keeps it for the lists behind it); with one list in it, the
# block it is writing only. A list stays in the runs it finished until it makes the chunk after next
# (`ListText`): a list alone holds the text of its last two chunks at most.

SHARED_BLOCKS = 8

_Key = tuple[str, str, str, MediaType, str, int]
_WHOLE = (tuple, TagList)  # a registry answer whole, immutable


class SharedText:
    """The text of runs several lists are writing at once, formatted once for all of them.

    ``formatted`` counts the blocks formatted (once for all, or again for a list that came to one
    no longer kept), ``taken`` the blocks a list took that another list had formatted: what the tests
    look at."""

    def __init__(self, max_blocks: int = SHARED_BLOCKS) -> None:
        self.max_blocks = max_blocks
        self._runs: dict[_Key, list[_SharedRun]] = {}  # runs of equal tags are one; unequal ones apart
        self.formatted = 0
        self.taken = 0

    def __len__(self) -> int:
        """Runs being shared now."""
        return sum(len(runs) for runs in self._runs.values())

    @property
    def held(self) -> int:
        """Blocks kept now, over every run."""
        return sum(len(shared.blocks) for runs in self._runs.values() for shared in runs)

    def join(
        self, run: Run, registry_host: str, media: MediaType, include: str, chunk_items: int
    ) -> _Place | None:
        """A list's place in the shared text of ``run`` (or of a run of equal tags being written now);
        None when the run is not a registry answer whole (only an immutable answer is shared)."""
        if type(run.tags) not in _WHOLE or not run.tags:
            return None
        key = (run.namespace, run.repository_path, registry_host, media, include, chunk_items)
        runs = self._runs.setdefault(key, [])
        for shared in runs:
            # The same coalesced answer, or an equal one read again (tuples of str, or a TagList's
            # blocks, compare in C, and unequal ones most often at their lengths).
            if shared.tags is run.tags or shared.tags == run.tags:
                return shared.join()
        shared = _SharedRun(self, key, run, registry_host, media, include, chunk_items)
        runs.append(shared)
        return shared.join()

    def _end(self, shared: _SharedRun) -> None:
        runs = self._runs[shared.key]
        runs.remove(shared)
        if not runs:
            del self._runs[shared.key]


class _SharedRun:
    def __init__(
        self,
        owner: SharedText,
        key: _Key,
        run: Run,
        registry_host: str,
        media: MediaType,
        include: str,
        chunk_items: int,
    ) -> None:
        self.owner, self.key = owner, key
        # A tuple or a TagList already: the same object (a TagList made into a tuple would make a str
        # of every tag at once).
        self.tags: Sequence[str] = run.tags if isinstance(run.tags, TagList) else tuple(run.tags)
        self.chunk_items = chunk_items
        self.count = -(-len(self.tags) // chunk_items)
        self.blocks: dict[int, bytes] = {}  # block index -> its items, each after a comma
        self.last = -1  # the block formatted last
        self._maker = _maker(run.namespace, run.repository_path, registry_host, media, include)
        self.places: list[_Place] = []

    def join(self) -> _Place:
        place = _Place(self)
        self.places.append(place)
        return place

    def block(self, place: _Place, index: int) -> bytes:
        text = self.blocks.get(index)
        if text is not None:
            self.owner.taken += 1
        else:
            # The first list to come to it, or the first since it was dropped: kept for the others.
            start = index * self.chunk_items
            text = self._maker.block(self.tags[start : start + self.chunk_items])
            self.blocks[index] = text
            self.last = index
            self.owner.formatted += 1
        place.at = index + 1
        self._trim()
        return text

    def leave(self, place: _Place) -> None:
        self.places.remove(place)
        if not self.places:
            self.blocks.clear()
            self.owner._end(self)
        else:
            self._trim()

    def _trim(self) -> None:
        # Kept: what a list in the run has still to take, and the block formatted last (the lists
        # that join in the same reactor turn, as those of one coalesced read do, take it too); past
        # ``max_blocks``, those a list comes to soonest (the fewest blocks ahead of the nearest list
        # behind them), then those more lists need.
        blocks = self.blocks
        lowest = min(place.at for place in self.places)
        for index in [i for i in blocks if i < lowest and i != self.last]:
            del blocks[index]
        if len(blocks) > self.owner.max_blocks:
            ats = sorted(place.at for place in self.places)

            def need(index: int) -> tuple[float, int]:
                behind = bisect_right(ats, index)  # the lists that have still to take it
                return (index - ats[behind - 1] if behind else math.inf), -behind

            for index in sorted(blocks, key=need)[self.owner.max_blocks :]:
                del blocks[index]


class _Place:
    """Where one list is in a shared run."""

    def __init__(self, shared: _SharedRun) -> None:
        self.shared = shared
        self.at = 0  # the next block it takes
        self.left = False

    @property
    def count(self) -> int:
        return self.shared.count

    def items_in(self, index: int) -> int:
        return min(self.shared.chunk_items, len(self.shared.tags) - index * self.shared.chunk_items)

    def block(self, index: int) -> bytes:
        return self.shared.block(self, index)

    def leave(self) -> None:
        if not self.left:
            self.left = True
            self.shared.leave(self)


class ListText:
    """A list document made a run at a time: ``add`` gives the chunks each run completes, ``end`` the
    rest. Their concatenation is the document, however the runs arrive. With ``shared``, a run that
    other lists are writing at the same time is formatted once for all of them."""

    def __init__(
        self,
        meta: ListMeta,
        media: MediaType,
        registry_host: str,
        include: str = "Metadata",
        chunk_items: int = CHUNK_ITEMS,
        shared: SharedText | None = None,
    ) -> None:
        self._head, self._tail = _envelope(meta, media)
        self._media, self._host, self._include, self._chunk_items = media, registry_host, include, chunk_items
        self._shared = shared
        self._pending: list[str] = []  # items not encoded yet
        self._done: list[bytes] = []  # encoded items (shared blocks), each part after a comma
        self._done_items = 0
        self._first = True
        # Shared runs this list has written to the end, in the chunk being made and in the one made
        # before it: it stays in them until it makes the chunk after, so that the lists that come to
        # them in the same reactor turn (a list passes many small runs in one chunk) still find
        # their text. What it keeps so is the text of two chunks at most.
        self._passed: list[_Place] = []
        self._releasing: list[_Place] = []

    def add(self, run: Run) -> Generator[bytes, None, None]:
        """Formats ``run`` lazily, a chunk of about ``chunk_items`` items per step."""
        place = None
        if self._shared is not None:
            place = self._shared.join(run, self._host, self._media, self._include, self._chunk_items)
        if place is None:
            room = self._chunk_items - self._done_items
            for item in _items(run, self._host, self._media, self._include):
                self._pending.append(item)
                if len(self._pending) >= room:
                    yield self._take()
                    room = self._chunk_items
            return
        passed = False
        try:
            for index in range(place.count):
                if self._pending:
                    self._done.append(("," + ",".join(self._pending)).encode())
                    self._done_items += len(self._pending)
                    self._pending = []
                self._done.append(place.block(index))
                self._done_items += place.items_in(index)
                if self._done_items >= self._chunk_items:
                    yield self._take()
            passed = True
            self._passed.append(place)
        finally:
            if not passed:
                # Stopped in the run (the client went away, the deadline passed): the others go on
                # without this list, and what only it still needed is let go.
                place.leave()

    def close(self) -> None:
        """Lets go of the shared runs this list is still in: once it has ended, or stopped early."""
        places = self._releasing + self._passed
        self._releasing, self._passed = [], []
        for place in places:
            place.leave()

    def end(self) -> bytes:
        if self._first:
            return self._take() + self._tail
        return (self._take() if self._pending or self._done else b"") + self._tail

    def _take(self) -> bytes:
        if self._releasing or self._passed:
            releasing, self._releasing, self._passed = self._releasing, self._passed, []
            for place in releasing:
                place.leave()
        if not self._done:
            text = ",".join(self._pending).encode()
            self._pending = []
            if self._first:
                self._first = False
                return self._head + text
            return b"," + text
        parts = self._done
        if self._pending:
            parts.append(("," + ",".join(self._pending)).encode())
        self._pending, self._done, self._done_items = [], [], 0
        body = b"".join(parts)  # one part (a shared block) is taken as it is, not copied
        if self._first:
            self._first = False
            return b"".join((self._head, memoryview(body)[1:]))
        return body


def list_text(
    runs: Iterable[Run], meta: ListMeta, media: MediaType, registry_host: str, include: str = "Metadata"
) -> bytes:
    """The whole list document at once, as `list_chunks` gives it in pieces: for a short list (a
    page), with no chunk bookkeeping per item and fewer copies of the text."""
    head, tail = _envelope_str(meta, media)
    # Each chunk's items laid as pieces, a comma before each (`_ItemMaker.block_pieces`): not split
    # into 500 strings and joined again, nor passed one by one through a generator. The pieces of the
    # whole page, its envelope's among them (only the first comma goes), are joined once and encoded:
    # joining each chunk's text and then the page's copied the page's text once more (about 20 µs a
    # page of 500 in a walk, 5 % of its formatting: what a page's tags cost more than a list's).
    laid: list[str] | None = None
    for run in runs:
        for pieces in _in_chunks(_ItemMaker.block_pieces, run, registry_host, media, include):
            if laid is None:
                laid = pieces
                laid[0] = head + laid[0][1:]
            else:
                laid += pieces
    if laid is None:
        return (head + tail).encode()
    laid.append(tail)
    return "".join(laid).encode()


async def rendered_list_chunks(
    items: Sequence[PayloadRepositoryTag],
    meta: ListMeta,
    media: MediaType,
    include: str = "Metadata",
    chunk_items: int = CHUNK_ITEMS,
) -> AsyncGenerator[bytes, None]:
    """`render_list`'s document in `list_chunks`' pieces (the head, items each after a comma, the
    tail), ``chunk_items`` objects at a time, each piece made when asked: for a list whose objects are
    at hand (a deletecollection's deleted tags), written as a whole list is, a piece per reactor turn,
    with the text of one piece held at a time."""
    head, tail = _envelope(meta, media)
    key = "rows" if media.form is Form.TABLE else "items"
    if not items:
        yield head + tail
    for start in range(0, len(items), chunk_items):
        document = render_list(list(items[start : start + chunk_items]), meta, media, include)
        text = ",".join(json.dumps(item, separators=(",", ":")) for item in document[key]).encode()
        last = start + chunk_items >= len(items)
        yield b"".join((head if start == 0 else b",", text, tail if last else b""))


def list_chunks(
    runs: Iterable[Run],
    meta: ListMeta,
    media: MediaType,
    registry_host: str,
    include: str = "Metadata",
    chunk_items: int = CHUNK_ITEMS,
    shared: SharedText | None = None,
) -> Generator[bytes, None, None]:
    """The list document in pieces of about ``chunk_items`` items, ending with a newline."""
    text = ListText(meta, media, registry_host, include, chunk_items, shared)
    try:
        for run in runs:
            with closing(text.add(run)) as chunks:
                yield from chunks
        yield text.end()
    finally:
        text.close()


async def streamed_list_chunks(
    runs: Runs,
    meta: ListMeta,
    media: MediaType,
    registry_host: str,
    include: str = "Metadata",
    chunk_items: int = CHUNK_ITEMS,
    shared: SharedText | None = None,
) -> AsyncGenerator[bytes, None]:
    """As `list_chunks`, formatting each run as it arrives; the runs are stopped when this stops
    early (the client went away, the deadline passed)."""
    text = ListText(meta, media, registry_host, include, chunk_items, shared)
    try:
        while (run := await runs.next()) is not None:
            # Closed here, not when collected: a list stopped in a shared run leaves it at once.
            with closing(text.add(run)) as chunks:
                for chunk in chunks:
                    yield chunk
        yield text.end()
    finally:
        text.close()
        runs.stop()
