"""The reflector's loop against a scripted fake API, with a Clock for time: no network, no sleeping."""

from __future__ import annotations

import builtins
import random
from collections import deque
from collections.abc import Mapping, Sequence
from typing import Any

import attrs
import pytest
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.task import Clock
from twisted.logger import LogLevel, formatEvent

from payloadtags.kube import Backoff, Reflector, StoreListener, WatchEvent
from payloadtags.kube.diagnosis import PERIOD, ClusterAccessLog
from payloadtags.kube.errors import (
    KubeApiError,
    KubeCertificateRejected,
    KubeCredentialUnavailable,
    KubeReplyCutShort,
    KubeStreamLost,
    KubeTimeout,
    KubeTokenUnreadable,
    KubeUnavailable,
    KubeUnreachable,
    KubeWatchQuiet,
    KubeWatchSilent,
    make_status,
)
from tests.support.logcapture import collected_logs

PATH = "/api/v1/namespaces"
SERVER = "https://cluster.example"


def ns(name: str, rv: int, **labels: str) -> dict[str, Any]:
    return {"metadata": {"name": name, "resourceVersion": str(rv), "labels": labels}}


def page(items: list[dict[str, Any]], rv: int, token: str | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"resourceVersion": str(rv)}
    if token:
        meta["continue"] = token
    return {"kind": "NamespaceList", "apiVersion": "v1", "metadata": meta, "items": items}


def expired() -> KubeApiError:
    return KubeApiError(make_status(410, "too old resource version: 1 (5)", "Expired"), 410)


class FakeStream:
    def __init__(self) -> None:
        self.events: deque[WatchEvent] = deque()
        self.error: Exception | None = None
        self.ended = False
        self.closed = False
        self._waiter: Deferred[None] | None = None

    def push(self, event_type: str, obj: dict[str, Any]) -> None:
        self.events.append(WatchEvent(event_type, obj))
        self._wake()

    def end(self, error: Exception | None = None) -> None:
        self.ended, self.error = True, error
        self._wake()

    def _wake(self) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None:
            waiter.callback(None)

    def __aiter__(self) -> FakeStream:
        return self

    async def __anext__(self) -> WatchEvent:
        while True:
            if self.events:
                return self.events.popleft()
            if self.ended:
                if self.error is not None:
                    raise self.error
                raise StopAsyncIteration
            self._waiter = Deferred(lambda _d: self.close())
            await self._waiter

    def close(self) -> None:
        self.closed = True


class FakeSource:
    """Each list/watch call takes the next scripted reply, or waits until the test adds one."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, str]]] = []
        self._replies: dict[str, deque[Any]] = {"list": deque(), "watch": deque()}
        self._pending: dict[str, Deferred[Any] | None] = {"list": None, "watch": None}
        self.streams: list[FakeStream] = []

    def reply(self, kind: str, value: Any) -> None:
        pending = self._pending[kind]
        if pending is not None:
            self._pending[kind] = None
            pending.callback(value)
        else:
            self._replies[kind].append(value)

    def stream(self) -> FakeStream:
        """Script a watch that opens; returns it so the test can feed it."""
        stream = FakeStream()
        self.reply("watch", stream)
        return stream

    async def _next(self, kind: str, params: Mapping[str, str] | None) -> Any:
        self.calls.append((kind, dict(params or {})))
        if self._replies[kind]:
            value = self._replies[kind].popleft()
        else:
            d: Deferred[Any] = Deferred()
            self._pending[kind] = d
            value = await d
        if isinstance(value, Exception):
            raise value
        if isinstance(value, FakeStream):
            self.streams.append(value)
        return value

    async def list(self, path: str, params: Mapping[str, str] | None = None) -> dict[str, Any]:
        assert path == PATH
        listed: dict[str, Any] = await self._next("list", params)
        return listed

    async def watch(self, path: str, params: Mapping[str, str] | None = None) -> FakeStream:
        assert path == PATH
        stream = await self._next("watch", params)
        assert isinstance(stream, FakeStream)
        return stream

    def of(self, kind: str) -> builtins.list[dict[str, str]]:
        return [params for k, params in self.calls if k == kind]


class Recorder(StoreListener):
    def __init__(self) -> None:
        self.seen: list[tuple[Any, ...]] = []

    def on_add(self, obj: dict[str, Any]) -> None:
        self.seen.append(("add", obj["metadata"]["name"]))

    def on_update(self, old: dict[str, Any], new: dict[str, Any]) -> None:
        self.seen.append(
            (
                "update",
                new["metadata"]["name"],
                old["metadata"]["resourceVersion"],
                new["metadata"]["resourceVersion"],
            )
        )

    def on_delete(self, obj: dict[str, Any]) -> None:
        self.seen.append(("delete", obj["metadata"]["name"]))

    def on_replaced(self, objects: list[dict[str, Any]]) -> None:
        self.seen.append(("replaced", sorted(o["metadata"]["name"] for o in objects)))


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def source() -> FakeSource:
    return FakeSource()


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
def reflector(source: FakeSource, clock: Clock, recorder: Recorder) -> Reflector:
    r = Reflector(
        source,
        PATH,
        clock,
        label_selector="team=a",
        page_size=2,
        backoff=Backoff(initial=1.0, factor=2.0, cap=8.0, jitter=0.0),
        rng=random.Random(3),
    )
    r.add_listener(recorder)
    return r


def synced(reflector: Reflector, source: FakeSource, items: list[dict[str, Any]], rv: int) -> FakeStream:
    """Start the reflector, answer its list with `items` in one page, open its watch."""
    reflector.start()
    source.reply("list", page(items, rv))
    return source.stream()


def test_initial_list_is_paginated_then_watched_from_its_resource_version(
    reflector: Reflector, source: FakeSource, recorder: Recorder
) -> None:
    sync: list[None] = []
    reflector.wait_for_sync().addCallback(sync.append)
    reflector.start()
    assert source.of("list") == [{"labelSelector": "team=a", "limit": "2"}]
    source.reply("list", page([ns("a", 3), ns("b", 4)], 10, token="tok"))
    assert source.of("list")[1] == {"labelSelector": "team=a", "limit": "2", "continue": "tok"}
    assert not reflector.has_synced
    source.reply("list", page([ns("c", 5)], 10))

    assert reflector.has_synced and sync == [None]
    assert reflector.resource_version == "10"
    assert sorted(reflector.keys()) == ["a", "b", "c"]
    # List items come without kind/apiVersion; the store fills them in.
    assert reflector.get("a") == {"kind": "Namespace", "apiVersion": "v1", **ns("a", 3)}
    assert recorder.seen == [("add", "a"), ("add", "b"), ("add", "c"), ("replaced", ["a", "b", "c"])]
    [watch] = source.of("watch")
    assert watch["resourceVersion"] == "10"
    assert watch["allowWatchBookmarks"] == "true"
    assert watch["labelSelector"] == "team=a"
    assert 300 <= int(watch["timeoutSeconds"]) < 600


def test_events_update_the_store_and_bookmarks_only_the_resource_version(
    reflector: Reflector, source: FakeSource, recorder: Recorder
) -> None:
    stream = synced(reflector, source, [ns("a", 3)], 10)
    recorder.seen.clear()
    stream.push("ADDED", ns("b", 11))
    stream.push("MODIFIED", ns("a", 12))
    stream.push("DELETED", ns("b", 13))
    stream.push("BOOKMARK", {"kind": "Namespace", "metadata": {"resourceVersion": "20"}})
    assert recorder.seen == [("add", "b"), ("update", "a", "3", "12"), ("delete", "b")]
    assert reflector.keys() == ["a"]
    assert reflector.resource_version == "20"


def test_a_cleanly_ended_watch_resumes_at_once_from_the_last_resource_version(
    reflector: Reflector, source: FakeSource, clock: Clock
) -> None:
    stream = synced(reflector, source, [], 10)
    stream.push("ADDED", ns("a", 11))
    clock.advance(400)
    stream.end()
    assert stream.closed
    assert [w["resourceVersion"] for w in source.of("watch")] == ["10", "11"]
    assert len(source.of("list")) == 1


def test_a_broken_stream_resumes_after_a_backoff_without_relisting(
    reflector: Reflector, source: FakeSource, clock: Clock, recorder: Recorder
) -> None:
    stream = synced(reflector, source, [ns("a", 3)], 10)
    stream.push("MODIFIED", ns("a", 11))
    stream.end(KubeStreamLost("cut"))
    assert len(source.of("watch")) == 1
    clock.advance(0.99)
    assert len(source.of("watch")) == 1
    clock.advance(0.01)
    assert [w["resourceVersion"] for w in source.of("watch")] == ["10", "11"]
    assert len(source.of("list")) == 1
    recorder.seen.clear()
    source.stream().push("ADDED", ns("b", 12))
    assert recorder.seen == [("add", "b")]


def test_410_relists_at_once_and_reconciles_the_store(
    reflector: Reflector, source: FakeSource, recorder: Recorder
) -> None:
    stream = synced(reflector, source, [ns("a", 3), ns("b", 4), ns("c", 5)], 10)
    recorder.seen.clear()
    stream.end(expired())
    assert len(source.of("list")) == 2
    assert "continue" not in source.of("list")[1]
    # While we were not watching: b changed, c went away, d appeared; a is unchanged.
    source.reply("list", page([ns("a", 3), ns("b", 40)], 50, token="p2"))
    source.reply("list", page([ns("d", 45)], 50))
    assert recorder.seen == [
        ("update", "b", "4", "40"),
        ("add", "d"),
        ("delete", "c"),
        ("replaced", ["a", "b", "d"]),
    ]
    assert source.of("watch")[-1]["resourceVersion"] == "50"


def test_a_410_error_event_ends_the_stream_and_relists(reflector: Reflector, source: FakeSource) -> None:
    stream = synced(reflector, source, [], 10)
    stream.push("ADDED", ns("a", 11))
    stream.end(expired())
    assert stream.closed
    assert len(source.of("list")) == 2


def test_repeated_410_without_progress_backs_off(
    reflector: Reflector, source: FakeSource, clock: Clock
) -> None:
    synced(reflector, source, [], 10).end(expired())
    source.reply("list", page([], 20))
    source.reply("watch", expired())
    # Second 410 in a row with no event in between: wait before listing again.
    assert len(source.of("list")) == 2
    clock.advance(1.0)
    assert len(source.of("list")) == 3


def test_a_410_while_paginating_starts_the_list_over(reflector: Reflector, source: FakeSource) -> None:
    reflector.start()
    source.reply("list", page([ns("a", 1), ns("b", 2)], 5, token="old"))
    source.reply("list", expired())
    assert not reflector.has_synced
    assert source.of("list")[2] == {"labelSelector": "team=a", "limit": "2"}
    source.reply("list", page([ns("a", 1)], 9))
    assert reflector.has_synced and reflector.keys() == ["a"]


def test_failures_back_off_exponentially_up_to_the_cap(
    reflector: Reflector, source: FakeSource, clock: Clock
) -> None:
    reflector.start()
    delays = []
    for _ in range(6):
        calls = len(source.of("list"))
        source.reply("list", KubeUnavailable("connection refused"))
        waited = 0.0
        while len(source.of("list")) == calls:
            clock.advance(0.25)
            waited += 0.25
        delays.append(waited)
    assert delays == [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    source.reply("list", page([], 3))
    assert reflector.has_synced
    # A success alone does not forget the failures: the watch failing at once waits the cap.
    source.reply("watch", KubeUnavailable("refused"))
    clock.advance(7.9)
    assert len(source.of("watch")) == 1
    clock.advance(0.1)
    assert len(source.of("watch")) == 2
    # A watch that then runs normally for a while does.
    stream = source.stream()
    clock.advance(reflector.backoff_reset_after)
    stream.push("BOOKMARK", {"metadata": {"resourceVersion": "4"}})
    stream.end(KubeStreamLost("cut"))
    clock.advance(1.0)
    assert len(source.of("watch")) == 3


class ExpiredAfterEveryList:
    """A cluster API whose watch answers 410 Expired right after every list."""

    def __init__(self) -> None:
        self.lists = 0

    async def list(self, path: str, params: Mapping[str, str] | None = None) -> dict[str, Any]:
        self.lists += 1
        return page([], self.lists)

    async def watch(self, path: str, params: Mapping[str, str] | None = None) -> FakeStream:
        raise expired()


def test_410_after_every_list_backs_off_to_the_cap_instead_of_relisting_in_a_loop(clock: Clock) -> None:
    source = ExpiredAfterEveryList()
    reflector = Reflector(source, PATH, clock, backoff=Backoff(rng=random.Random(1)))
    reflector.start()
    lists_per_minute = []
    for _minute in range(10):
        before = source.lists
        for _ in range(600):
            clock.advance(0.1)
        lists_per_minute.append(source.lists - before)
    # Backoff(): 0.8 s doubling up to 30 s, jittered down by at most half: once at the cap, a list
    # every 15 to 30 s, so at most 4 a minute (it was ~90 a minute, forever).
    assert all(n <= 4 for n in lists_per_minute[2:]), lists_per_minute
    assert sum(lists_per_minute) < 60, lists_per_minute


def test_api_errors_are_retried_and_retry_after_is_honoured(
    reflector: Reflector, source: FakeSource, clock: Clock
) -> None:
    reflector.start()
    status = make_status(429, "slow down", "TooManyRequests")
    status["details"] = {"retryAfterSeconds": 5}
    source.reply("list", KubeApiError(status, 429))
    clock.advance(4.9)
    assert len(source.of("list")) == 1
    clock.advance(0.1)
    assert len(source.of("list")) == 2


def test_a_watch_that_ends_at_once_without_events_counts_as_a_failure(
    reflector: Reflector, source: FakeSource, clock: Clock
) -> None:
    synced(reflector, source, [], 10).end()
    assert len(source.of("watch")) == 1
    clock.advance(1.0)
    assert len(source.of("watch")) == 2


def test_a_failing_listener_does_not_stop_the_others(
    reflector: Reflector, source: FakeSource, recorder: Recorder
) -> None:
    class Broken(StoreListener):
        def on_add(self, obj: dict[str, Any]) -> None:
            raise RuntimeError("bug")

    reflector._listeners.insert(0, Broken())
    stream = synced(reflector, source, [], 10)
    stream.push("ADDED", ns("a", 11))
    assert ("add", "a") in recorder.seen
    assert reflector.keys() == ["a"]
    stream.push("ADDED", ns("b", 12))
    assert reflector.keys() == ["a", "b"]


def test_stop_during_a_watch_closes_the_stream(reflector: Reflector, source: FakeSource) -> None:
    stream = synced(reflector, source, [], 10)
    done: list[None] = []
    Deferred.fromCoroutine(reflector.stop()).addCallback(done.append)
    assert done == [None]
    assert stream.closed
    assert reflector.keys() == []


def test_stop_during_a_backoff_and_before_sync(
    reflector: Reflector, source: FakeSource, clock: Clock
) -> None:
    failures: list[Any] = []
    reflector.wait_for_sync().addErrback(failures.append)
    reflector.start()
    source.reply("list", KubeUnavailable("down"))
    done: list[None] = []
    Deferred.fromCoroutine(reflector.stop()).addCallback(done.append)
    assert done == [None]
    assert failures and failures[0].check(CancelledError)
    assert clock.getDelayedCalls() == []
    clock.advance(100)
    assert len(source.of("list")) == 1


def test_start_twice_is_a_bug(reflector: Reflector, source: FakeSource) -> None:
    reflector.start()
    with pytest.raises(RuntimeError):
        reflector.start()


def _five_reflectors(clock: Clock, access: ClusterAccessLog) -> list[tuple[FakeSource, Reflector]]:
    pairs = []
    for _ in range(5):
        source = FakeSource()
        reflector = Reflector(
            source,
            PATH,
            clock,
            backoff=Backoff(initial=1.0, factor=1.0, cap=1.0, jitter=0.0),
            rng=random.Random(3),
            on_failure=access,
        )
        pairs.append((source, reflector))
    return pairs


def _warnings(events: list[dict[str, Any]]) -> list[str]:
    return [
        formatEvent(e)
        for e in events
        if str(e.get("log_namespace", "")).startswith("payloadtags") and e["log_level"] >= LogLevel.warn
    ]


def _flaps(
    clock: Clock, pairs: list[tuple[FakeSource, Reflector]], causes: Sequence[Exception]
) -> list[FakeStream]:
    """Three flaps, each failing every reflector's watch with each cause in turn; the streams open
    after."""
    streams = [synced(reflector, source, [], 10) for source, reflector in pairs]
    for _ in range(3):
        for cause in causes:
            for stream in streams:
                stream.end(cause)
            clock.advance(1.0)
            streams = [source.stream() for source, _ in pairs]
    return streams


def test_a_flapping_api_is_said_once_per_cause_for_all_reflectors(clock: Clock) -> None:
    # review-ops4 3: only an unreachable API went through the ClusterAccessLog; a broken watch, a
    # reply cut short, a timeout and an exec plugin failing at renewal were warned by each reflector
    # on each retry (30 "watch stream broken" lines in 18 s from five reflectors). Each is now one
    # line per cause for all of them, at most once a period; the reflectors say them at debug.
    access = ClusterAccessLog(SERVER, monotonic=clock.seconds)
    pairs = _five_reflectors(clock, access)
    causes = [
        KubeStreamLost("watch stream broken: Connection to the other side was lost"),
        KubeReplyCutShort("GET /api/v1/namespaces: reply cut short: connection lost"),
        KubeTimeout("GET /api/v1/namespaces: no answer within 30s"),
        KubeCredentialUnavailable("cannot renew the cluster API credential: plugin exited with 1"),
    ]
    with collected_logs() as events:
        streams = _flaps(clock, pairs, causes)
        said = _warnings(events)
        # A broken watch and a reply cut short are one cause: the API, or the way to it, went away.
        assert len(said) == 3, said
        assert said[0].startswith(f"the cluster API {SERVER} broke off a request (watch stream broken")
        assert "no answer within 30s" in said[1] and "does not answer in time" in said[1]
        assert "could not renew its credential" in said[2] and "exec plugin" in said[2]
        assert all(" more like it" not in line for line in said)
        clock.advance(PERIOD)
        for stream in streams:
            stream.end(causes[0])
        again = _warnings(events)[3:]
        assert len(again) == 1 and "(29 more like it in the 72s since the last line)" in again[0], again
    for _, reflector in pairs:
        Deferred.fromCoroutine(reflector.stop())


def test_an_api_behind_a_load_balancer_answering_5xx_or_429_is_said_once_for_all_reflectors(
    clock: Clock,
) -> None:
    # review-ops6 F4: a 503 "no healthy upstream" or 502 of a load balancer while the API server
    # restarts, kube-apiserver's 503 or 429 under load: every reflector warned "API error 503 ..." on
    # every retry (30 lines for three flaps of five reflectors). Now one line, one cause, with what it
    # means, at most once a period; the reflectors say it at debug.
    access = ClusterAccessLog(SERVER, monotonic=clock.seconds)
    pairs = _five_reflectors(clock, access)
    causes = [
        KubeApiError(make_status(503, "no healthy upstream"), 503),
        KubeApiError(make_status(502, "Bad Gateway"), 502),
        KubeApiError(make_status(429, "too many requests, please try again later"), 429),
    ]
    with collected_logs() as events:
        streams = _flaps(clock, pairs, causes)
        said = _warnings(events)
        assert len(said) == 1, said
        assert said[0].startswith(f"the cluster API {SERVER} answers 503 ServiceUnavailable (")
        assert "no healthy upstream" in said[0]
        assert "the API server, or a load balancer in front of it, is unavailable or throttling" in said[0]
        clock.advance(PERIOD)
        for stream in streams:
            stream.end(causes[2])
        again = _warnings(events)[1:]
        assert len(again) == 1 and "answers 429" in again[0] and "(44 more like it in the" in again[0], again
    for _, reflector in pairs:
        Deferred.fromCoroutine(reflector.stop())


def test_an_unreadable_token_file_is_its_own_cause_not_a_broken_connection(clock: Clock) -> None:
    # review-ops6 F5: a token file that cannot be read (before any token was) was said as "the cluster
    # API broke off a request ... a proxy or load balancer cutting connections", and not at all within
    # a minute of a flap's line (the same cause). It is its own cause now, with its own fix.
    access = ClusterAccessLog(SERVER, in_cluster=True, monotonic=clock.seconds)
    pairs = _five_reflectors(clock, access)
    with collected_logs() as events:
        streams = [synced(reflector, source, [], 10) for source, reflector in pairs]
        for stream in streams:
            stream.end(KubeStreamLost("watch stream broken: Connection to the other side was lost"))
        clock.advance(1.0)
        streams = [source.stream() for source, _ in pairs]
        unreadable = KubeTokenUnreadable(
            "cannot read token file /var/run/secrets/kubernetes.io/serviceaccount/token: No such file"
        )
        for stream in streams:
            stream.end(unreadable)
        clock.advance(1.0)
        said = _warnings(events)
        assert len(said) == 2, said
        assert "broke off a request" in said[0]
        assert said[1].startswith(
            f"the cluster API {SERVER} cannot be asked: the pod's service account's token cannot be read "
            "(cannot read token file /var/run/secrets/kubernetes.io/serviceaccount/token: No such file); "
            "check the service account token mounted in the pod"
        )
        assert "proxy or load balancer" not in said[1]
    for _, reflector in pairs:
        Deferred.fromCoroutine(reflector.stop())


def test_the_namespace_watch_says_what_its_failure_holds_back_before_and_after_its_sync(
    clock: Clock,
) -> None:
    # r1ops L1: the cleanup's namespace watch said "is not ready until it can read what it needs",
    # though /readyz never waits for it. Before its first list no namespace cleanup runs; after it,
    # the cleanup goes on with what it read and misses the namespaces deleted since.
    access = ClusterAccessLog(SERVER, monotonic=clock.seconds)
    backoff = Backoff(initial=1.0, factor=1.0, cap=1.0, jitter=0.0)
    unsynced = FakeSource()
    cleanup = access.for_namespace_cleanup()
    never = Reflector(unsynced, PATH, clock, backoff=backoff, on_failure=cleanup)
    lost = FakeSource()
    had = Reflector(lost, PATH, clock, backoff=attrs.evolve(backoff), on_failure=cleanup)
    unreachable = KubeUnreachable("GET /api/v1/namespaces: Connection refused")
    with collected_logs() as events:
        never.start()
        unsynced.reply("list", unreachable)
        synced(had, lost, [], 10).end(unreachable)
        said = _warnings(events)
    assert len(said) == 2, said
    assert said[0].endswith(
        "payloadtags retries, and stays ready, but runs no namespace cleanup until it can read "
        "namespaces (nor does another replica while this one leads): the tags of namespaces deleted "
        "meanwhile stay"
    ), said[0]
    assert said[1].endswith(
        "payloadtags retries, and stays ready; namespace cleanup goes on with the namespaces it last "
        "read, and cleans up none deleted since until it can read namespaces again"
    ), said[1]
    assert not any("not ready" in line for line in said)
    for reflector in (never, had):
        Deferred.fromCoroutine(reflector.stop())


@pytest.mark.parametrize("wrong_name", [False, True], ids=["untrusted", "wrong-name"])
def test_a_rejected_certificate_in_a_pod_names_the_service_account_ca_or_the_address(
    clock: Clock, wrong_name: bool
) -> None:
    # r1ops L2, in a pod: the CA is the service account's ca.crt, and the name KUBERNETES_SERVICE_HOST
    # (no kubeconfig to fix); a proxy intercepting TLS on the way is the usual cause of either.
    access = ClusterAccessLog(SERVER, in_cluster=True, monotonic=clock.seconds)
    error = KubeCertificateRejected("GET /api/v1/namespaces: verify failed", wrong_name=wrong_name)
    with collected_logs() as events:
        assert access(PATH, error) is True
        (said,) = _warnings(events)
    if wrong_name:
        assert said.startswith(f"the cluster API {SERVER} presents a certificate that is not for the name")
        assert "does not name KUBERNETES_SERVICE_HOST (no CA fixes that)" in said
    else:
        assert said.startswith(f"the cluster API {SERVER} presents a certificate that is not trusted")
        assert "the pod's service account CA (/var/run/secrets/kubernetes.io/serviceaccount/ca.crt)" in said
    assert "proxy intercepting TLS" in said
    assert "kubeconfig" not in said and "unreachable" not in said


def _silent() -> KubeWatchSilent:
    return KubeWatchSilent("watch stream silent for 90s, not even a bookmark")


@pytest.mark.parametrize(
    ("rewatch", "said"),
    [
        (KubeUnreachable("GET /api/v1/namespaces: Connection was refused by other side"), "refused"),
        (KubeApiError(make_status(503, "no healthy upstream"), 503), "answers 503"),
    ],
)
def test_a_silent_watch_is_watched_again_at_once_and_a_failing_rewatch_still_backs_off(
    clock: Clock, rewatch: Exception, said: str
) -> None:
    # review r1double L1: a watch cut only for its silence (kube-apiserver sends a quiet resource's
    # watch no bookmark until an etcd progress notification, every 10 minutes by default) is watched
    # again at once from the same resourceVersion: no backoff, nothing said, no last_error. The cut
    # stays for a connection that died unnoticed, and then the new watch fails: that is a failure as
    # any other, said and backed off.
    access = ClusterAccessLog(SERVER, monotonic=clock.seconds)
    source = FakeSource()
    reflector = Reflector(
        source,
        PATH,
        clock,
        backoff=Backoff(initial=1.0, factor=2.0, cap=8.0, jitter=0.0),
        rng=random.Random(3),
        on_failure=access,
    )
    with collected_logs() as events:
        stream = synced(reflector, source, [ns("a", 3)], 10)
        for _ in range(3):
            stream.end(_silent())
            stream = source.stream()
        assert [w["resourceVersion"] for w in source.of("watch")] == ["10"] * 4
        assert _warnings(events) == []
        assert reflector.last_error is None and reflector.backoff.attempts == 0

        stream.end(_silent())
        assert len(source.of("watch")) == 5
        source.reply("watch", rewatch)
        assert reflector.last_error is rewatch and reflector.backoff.attempts == 1
        [line] = _warnings(events)
        assert said in line and SERVER in line
        clock.advance(0.99)
        assert len(source.of("watch")) == 5
        clock.advance(0.01)
        assert [w["resourceVersion"] for w in source.of("watch")] == ["10"] * 6
        assert len(source.of("list")) == 1
        # Silence after it is no failure either, and the backoff goes on from where it was.
        source.stream().end(_silent())
        source.reply("watch", rewatch)
        assert reflector.backoff.attempts == 2
        clock.advance(1.99)
        assert len(source.of("watch")) == 7
        clock.advance(0.01)
        assert len(source.of("watch")) == 8
    Deferred.fromCoroutine(reflector.stop())


def _info(events: list[dict[str, Any]]) -> list[str]:
    return [
        formatEvent(e)
        for e in events
        if str(e.get("log_namespace", "")).startswith("payloadtags") and e["log_level"] == LogLevel.info
    ]


@pytest.mark.parametrize("ended", [_silent, lambda: None], ids=["cut-as-silent", "ended-empty"])
def test_watches_that_bring_nothing_for_15_minutes_are_said_once_then_every_15_until_heard(
    clock: Clock, ended: Any
) -> None:
    # review r2quiet L1: silent watches were watched again every 90 s forever at debug level only,
    # so a path that answers each watch and then holds it (a proxy buffering or hung) left RBAC
    # edits unseen and readiness green without a word. A healthy kube-apiserver leaves a quiet
    # resource's watch without a bookmark for at most about 11 minutes: 15 minutes of nothing, across
    # watches, is said at info through the cluster-access log, then every 15 minutes while it lasts;
    # a bookmark (or an event) ends it. Not a failure: no warning, no backoff, no last_error.
    access = ClusterAccessLog(SERVER, monotonic=clock.seconds)
    source = FakeSource()
    reflector = Reflector(
        source,
        PATH,
        clock,
        backoff=Backoff(initial=1.0, factor=2.0, cap=8.0, jitter=0.0),
        rng=random.Random(3),
        on_failure=access,
    )
    clock.advance(1796670000)  # 2026-12-07 19:00:00 UTC

    def quiet_for(seconds: int, stream: FakeStream) -> FakeStream:
        # A watch ends each 90 s (the client's idle timeout), and is watched again at once.
        for _ in range(seconds // 90):
            clock.advance(90)
            stream.end(ended())
            stream = source.stream()
        return stream

    with collected_logs() as events:
        stream = quiet_for(810, synced(reflector, source, [ns("a", 3)], 10))
        assert _info(events) == []
        stream = quiet_for(90, stream)
        [line] = _info(events)
        assert line.startswith(
            f"the cluster API {SERVER} answers the watches of {PATH}, then sends them nothing (no "
            "event, not even a bookmark, for 900s, since 2026-12-07 19:00:00 UTC); that is normal only "
            "where the API server's watch cache is off for this resource"
        ), line
        assert "a proxy or load balancer holding watch responses" in line
        assert line.endswith("changes made since are not seen until it can read again"), line
        stream = quiet_for(810, stream)
        assert len(_info(events)) == 1
        stream = quiet_for(90, stream)
        assert "for 1800s, since 2026-12-07 19:00:00 UTC" in _info(events)[1]
        # A bookmark ends it: the next line only after 15 minutes more of nothing.
        clock.advance(30)
        stream.push("BOOKMARK", {"metadata": {"resourceVersion": "12"}})
        stream = quiet_for(810, stream)
        assert len(_info(events)) == 2
        stream = quiet_for(90, stream)
        assert "for 900s, since 2026-12-07 19:30:30 UTC" in _info(events)[2]
        assert _warnings(events) == []
    assert reflector.last_error is None and reflector.backoff.attempts == 0
    assert len(source.of("list")) == 1
    assert {w["resourceVersion"] for w in source.of("watch")} == {"10", "12"}
    Deferred.fromCoroutine(reflector.stop())


def test_a_long_quiet_is_said_by_the_reflector_itself_without_an_access_log(
    reflector: Reflector, source: FakeSource, clock: Clock
) -> None:
    reflector.quiet_said_after = 180.0
    with collected_logs() as events:
        stream = synced(reflector, source, [], 10)
        for _ in range(2):
            clock.advance(90)
            stream.end(_silent())
            stream = source.stream()
        [line] = _info(events)
    assert line == (
        f"Reflector {PATH}: watches answered, then nothing: no event, not even a bookmark, for 180s, "
        "since 1970-01-01 00:00:00 UTC"
    )
    assert _warnings(events) == [] and reflector.backoff.attempts == 0
    Deferred.fromCoroutine(reflector.stop())


def test_a_long_quiet_of_the_namespace_watch_says_what_the_cleanup_misses(clock: Clock) -> None:
    access = ClusterAccessLog(SERVER, monotonic=clock.seconds)
    with collected_logs() as events:
        assert access.for_namespace_cleanup()(PATH, KubeWatchQuiet(0.0, 900.0), True) is True
        [line] = _info(events)
    assert line.endswith(
        "if that is it, payloadtags retries, and stays ready; namespace cleanup goes on with the "
        "namespaces it last read, and cleans up none deleted since until it can read namespaces again"
    ), line
    assert _warnings(events) == []
