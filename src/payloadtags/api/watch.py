"""The watch verb over HTTP: its options, its event lines, the response as a watcher's sink.

One JSON object per line (``{"type":…,"object":…}``), written as the events happen on a chunked 200
response. The event objects have the form the list has for the same Accept header (full object,
PartialObjectMetadata, or a one-row Table), with the event's resourceVersion in their metadata.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs
from twisted.web.server import Request

from payloadtags.api.errors import bad_request
from payloadtags.api.negotiation import Form, MediaType
from payloadtags.api.options import (
    Query,
    decode_list_query,
    first,
    flag,
    invalid_options,
    invalid_value,
    watch_errors,
)
from payloadtags.api.render import COLUMNS, row
from payloadtags.api.selectors import FieldSelector, LabelSelector, known_fields, tag_filter
from payloadtags.model import (
    GROUP_VERSION,
    KIND,
    ListMeta,
    PartialObjectMetadata,
    Table,
    tag_object,
    to_json,
)
from payloadtags.names import InvalidName, TagRef, decode_name, is_namespace
from payloadtags.watch import Event, parse_version
from payloadtags.watch.watcher import event_line, expired_line

INITIAL_EVENTS_END = "k8s.io/initial-events-end"


def is_watch(query: Query) -> bool:
    return bool(flag(query, "watch"))


@attrs.frozen
class WatchOptions:
    labels: LabelSelector
    fields: FieldSelector
    resource_version: str
    timeout_seconds: int | None
    bookmarks: bool
    send_initial_events: bool | None

    def accept(self) -> Callable[[TagRef], bool]:
        return tag_filter(self.labels, self.fields) or (lambda ref: True)

    def pinned_repository(self, namespace: str | None) -> str | None:
        """The repository of the one tag the field selector pins (a single-object watch: its
        ``metadata.name``, and in an all-namespaces watch its ``metadata.namespace`` too), if any."""
        name = self.fields.required("metadata.name")
        pinned = self.fields.required("metadata.namespace")
        if name is None or not self.labels.matches({}):
            return None
        if namespace is None:
            namespace = pinned
        elif pinned is not None and pinned != namespace:
            return None  # nothing matches
        if namespace is None or not is_namespace(namespace):
            return None
        try:
            path, _ = decode_name(name)
        except InvalidName:
            return None
        return f"{namespace}/{path}"


def watch_options(query: Query) -> WatchOptions:
    """The options of a watch, checked in kube-apiserver's order: the query decoded as any ListOptions
    (400: limit too, which a watch does not use, and the selectors parsed), validated (422, every error
    found), the field selector's field names (400), then what payloadtags refuses of a watch and its
    storage would (400: continue, a resourceVersion that is no number)."""
    timeout, _, labels, fields = decode_list_query(query)
    resource_version = first(query, "resourceVersion") or ""
    match = first(query, "resourceVersionMatch") or None
    send_initial = flag(query, "sendInitialEvents")
    bookmarks = bool(flag(query, "allowWatchBookmarks"))
    continue_ = first(query, "continue") or None
    errors = watch_errors(match, send_initial, continue_)
    if send_initial and not bookmarks:
        # payloadtags' own check (docs/watch.md): kube-apiserver does not make it, so as not to break
        # older clients; the end of the initial events is a bookmark, which this client did not allow.
        errors.append(
            invalid_value(
                "sendInitialEvents", "true", "sendInitialEvents requires setting allowWatchBookmarks to true"
            )
        )
    if errors:
        raise invalid_options("ListOptions", errors)
    fields = known_fields(fields)
    if continue_:
        raise bad_request(
            "continue is not supported for watch: start the watch from the list's resourceVersion"
        )
    if resource_version and parse_version(resource_version) is None:
        raise bad_request(f'invalid resource version "{resource_version}"')
    return WatchOptions(
        labels=labels,
        fields=fields,
        resource_version=resource_version,
        # A negative one is kept: as kube-apiserver's timer of a negative duration, it has fired already
        # (the stream ends at once); 0 is none, as there (the server's default).
        timeout_seconds=timeout or None,
        bookmarks=bookmarks,
        send_initial_events=send_initial,
    )


@attrs.frozen(cache_hash=True)
class EventRenderer:
    """Event lines in the negotiated form. Equal renderers make the same lines (the watchers of a scope
    share them): the replica's sequence formats every resourceVersion."""

    media: MediaType
    include: str
    registry_host: str
    format_version: Callable[[int], str] = attrs.field(eq=False)
    # Whether a Table event carries the column definitions: the first event of a watch only
    # (`Watcher.render_after`).
    columns: bool = True

    def event(self, event: Event) -> bytes:
        obj = tag_object(self.registry_host, event.ref)
        obj.metadata.resource_version = self.format_version(event.sequence)
        body: Any
        if self.media.form is Form.TABLE:
            body = to_json(
                Table(
                    api_version=self.media.meta_api_version,
                    metadata=ListMeta(resource_version=obj.metadata.resource_version),
                    column_definitions=COLUMNS if self.columns else [],
                    rows=[row(obj, self.media, self.include)],
                )
            )
        elif self.media.form is Form.PARTIAL:
            body = to_json(
                PartialObjectMetadata(api_version=self.media.meta_api_version, metadata=obj.metadata)
            )
        else:
            body = to_json(obj)
        return event_line(event.type.value, body)

    def bookmark(self, sequence: int, initial_events_end: bool) -> bytes:
        metadata: dict[str, Any] = {"resourceVersion": self.format_version(sequence)}
        if initial_events_end:
            metadata["annotations"] = {INITIAL_EVENTS_END: "true"}
        if self.media.form is Form.TABLE:
            body: dict[str, Any] = {
                "kind": "Table",
                "apiVersion": self.media.meta_api_version,
                "metadata": metadata,
                "columnDefinitions": [],
                "rows": [],
            }
        elif self.media.form is Form.PARTIAL:
            body = {
                "kind": "PartialObjectMetadata",
                "apiVersion": self.media.meta_api_version,
                "metadata": metadata,
            }
        else:
            body = {"kind": KIND, "apiVersion": GROUP_VERSION, "metadata": metadata}
        return event_line("BOOKMARK", body)


def expired(resource_version: str) -> bytes:
    """The ERROR event for a resourceVersion this replica cannot serve a watch from."""
    return expired_line(
        f"too old resource version: {resource_version} "
        "(not retained by this server, or issued by another replica or an earlier run; relist)"
    )


@attrs.define
class ResponseSink:
    """A watcher's lines on the HTTP response."""

    request: Request

    def write(self, data: bytes) -> None:
        self.request.write(data)

    def close(self) -> None:
        """The handler returns once the watcher is done, and the response completes then."""

    def abort(self) -> None:
        transport = self.request.channel.transport if self.request.channel is not None else None
        abort = getattr(transport, "abortConnection", None)
        if abort is not None:
            abort()
        elif transport is not None:
            transport.loseConnection()


__all__ = [
    "EventRenderer",
    "ResponseSink",
    "WatchOptions",
    "expired",
    "is_watch",
    "watch_options",
]
