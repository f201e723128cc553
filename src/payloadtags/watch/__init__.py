"""Watches of PayloadRepositoryTags: resourceVersions, per-scope event sources, fan-out to watchers."""

from payloadtags.limits import WatchLimits
from payloadtags.watch.hub import TooManyWatches, WatchHub, WatchSlot
from payloadtags.watch.listed import Listed, ListedScopes
from payloadtags.watch.rules import PageDecisions
from payloadtags.watch.source import Event, EventType, ScopeReader, ScopeSource
from payloadtags.watch.versions import ReplicaVersions, parse_version
from payloadtags.watch.watcher import Sink, Watcher

__all__ = [
    "Event",
    "EventType",
    "Listed",
    "ListedScopes",
    "PageDecisions",
    "ReplicaVersions",
    "ScopeReader",
    "ScopeSource",
    "Sink",
    "TooManyWatches",
    "WatchHub",
    "WatchLimits",
    "WatchSlot",
    "Watcher",
    "parse_version",
]
