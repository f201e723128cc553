"""A client that does not read a huge response holds a bounded part of it in the server's memory.

A namespace of 20,000 tags (a list of more than 8 MB, more than the kernel's socket buffers take: at most
4 MB here, so a server that did not pause would hold megabytes) is
asked for by a client whose receive window is 4 kB and that does not read for two seconds. Meanwhile
the bytes the server holds for its connections outside the kernel (what Twisted's TCP transport has
not handed to the socket yet) are sampled every 20 ms: they must stay under one chunk of the list and
the transport's own buffer, far below the response's size. Then the client reads everything, and gets
the whole list: the server paused, it did not cut.
"""

from __future__ import annotations

import json
import ssl
import time
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import task
from twisted.internet.threads import deferToThread
from zope.interface import directlyProvides, providedBy

from payloadtags.http.channel import GuardedTLS
from payloadtags.watch.watcher import Watcher
from tests.support import images
from tests.support.harness import Pki, start_server
from tests.support.logcapture import collected_logs
from tests.support.raw import Reply, Target, read_reply, request_bytes

B = "/apis/payload-registry.deckhouse.io/v1alpha1"
TAGS = 20_000
BOUND = 1 << 20  # one chunk of 500 items and Twisted's 64 kB, with room to spare
TABLE = "application/json;as=Table;v=v1;g=meta.k8s.io"


def many_tags(registry: Any, repository: str, count: int) -> None:
    """``count`` tags on one image, written straight into the registry's storage (as its filesystem
    driver lays tags out) because pushing them one by one over HTTP takes minutes."""
    digest = images.push_oci_image(registry, repository, "v000000")
    tags = Path(registry.root) / "docker/registry/v2/repositories" / repository / "_manifests/tags"
    for i in range(1, count):  # the tag's current link is all that listing and reading it need
        link = tags / f"v{i:06d}" / "current"
        link.mkdir(parents=True)
        (link / "link").write_text(digest)


def unsent_bytes(wrapper: Any) -> int:
    """What the server holds for one connection outside the kernel: Twisted's TCP write buffer."""
    tcp = getattr(wrapper.transport, "transport", None)
    if tcp is None:
        return 0
    return len(getattr(tcp, "dataBuffer", b"")) + int(getattr(tcp, "_tempDataLen", 0))


class Largest:
    """The largest unsent buffer of any connection, sampled every 20 ms on the reactor."""

    def __init__(self, api: Any, reactor: Any) -> None:
        self.api = api
        self.value = 0
        self.loop = task.LoopingCall(self.sample)
        self.loop.clock = reactor

    def sample(self) -> None:
        connections = self.api.running.connections.protocols
        self.value = max([self.value, *(unsent_bytes(w) for w in connections)])

    def __enter__(self) -> Largest:
        self.loop.start(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.loop.stop()


@pytest.fixture(scope="module")
def big_namespace(registry: Any) -> str:
    """One namespace for the module's tests: filling it takes seconds."""
    many_tags(registry, "big-output/app", TAGS)
    return "big-output"


@pytest.mark.parametrize(
    "accept", ["application/json", pytest.param(TABLE, marks=pytest.mark.slow)]
)  # the same paced writer: Table in the slow tier
@pytest_twisted.ensureDeferred
async def test_a_client_that_does_not_read_a_huge_list_holds_one_chunk(
    api: Any, reactor: Any, big_namespace: str, accept: str
) -> None:
    t = Target(api.running.port, str(api.pki.server_ca.cert_file))
    path = f"{B}/namespaces/{big_namespace}/payloadrepositorytags"

    def slow_reader() -> tuple[Reply, int]:
        with t.connect(api.pki.admin, timeout=60, receive_buffer=4096) as sock:
            sock.sendall(request_bytes("GET", path, {"Accept": accept}))
            time.sleep(2.0)  # not reading: the server must stop producing
            reply = read_reply(sock)
            return reply, len(reply.body)

    with Largest(api, reactor) as largest:
        reply, size = await deferToThread(slow_reader)
    assert reply.code == 200, reply.body[:300]
    document = json.loads(reply.body)
    rows = document["rows"] if accept == TABLE else document["items"]
    assert len(rows) == TAGS  # the whole list, once read
    assert size > 5 * BOUND
    assert largest.value < BOUND, (largest.value, size)


@pytest_twisted.ensureDeferred
async def test_a_watch_that_is_not_read_is_paced_and_holds_little(
    api: Any, reactor: Any, big_namespace: str
) -> None:
    """A watch starting with the 20,000 tags (initial events) to a client that does not read for two
    seconds: the server writes them as the client takes them, never holding more than a little."""
    t = Target(api.running.port, str(api.pki.server_ca.cert_file))
    path = f"{B}/namespaces/{big_namespace}/payloadrepositorytags?watch=true&sendInitialEvents=true"
    path += "&resourceVersionMatch=NotOlderThan&allowWatchBookmarks=true"
    end = b"k8s.io/initial-events-end"

    def slow_reader() -> tuple[int, int]:
        with t.connect(api.pki.admin, timeout=60, receive_buffer=4096) as sock:
            sock.sendall(request_bytes("GET", path))
            time.sleep(2.0)
            data = bytearray()
            while end not in data[-4096:]:
                chunk = sock.recv(1 << 16)
                assert chunk, "the watch was cut"
                data += chunk
            return data.count(b'"type":"ADDED"'), len(data)

    with Largest(api, reactor) as largest:
        added, size = await deferToThread(slow_reader)
    assert added == TAGS
    assert size > 6 * BOUND
    assert largest.value < BOUND, (largest.value, size)


@pytest_twisted.ensureDeferred
async def test_a_failure_in_a_watchs_opening_written_as_a_slow_client_reads_is_the_watchs_error(
    api: Any, reactor: Any, big_namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The rest of a watch's opening to a client that reads slowly is written when the transport
    resumes the watcher. A render bug there (injected: the first line rendered after the transport
    paused the watcher) ends the watch counted as an error, its stream cut before the initial events
    end; it is not raised into Twisted, which dropped the connection as "client gone" (review
    r10watch L2)."""
    paused: set[int] = set()
    pause, line = Watcher.pauseProducing, Watcher._line

    def noted(watcher: Watcher) -> None:
        paused.add(id(watcher))
        pause(watcher)

    def failing(watcher: Watcher, event: Any, rendered: Any = None) -> bytes:
        if id(watcher) in paused and not watcher.paused:
            raise ValueError("a render bug")
        return line(watcher, event, rendered)

    monkeypatch.setattr(Watcher, "pauseProducing", noted)
    monkeypatch.setattr(Watcher, "_line", failing)
    client = api.client(api.pki.admin)

    async def ended(reason: str) -> float:
        text = (await client.get("/metrics")).body.decode()
        start = f'payloadtags_watches_ended_total{{reason="{reason}"}} '
        return sum(float(row.rsplit(" ", 1)[1]) for row in text.splitlines() if row.startswith(start))

    errors, gone = await ended("error"), await ended("client gone")
    t = Target(api.running.port, str(api.pki.server_ca.cert_file))
    path = f"{B}/namespaces/{big_namespace}/payloadrepositorytags?watch=true&sendInitialEvents=true"
    path += "&resourceVersionMatch=NotOlderThan&allowWatchBookmarks=true"

    def slow_reader() -> bytes:
        with t.connect(api.pki.admin, timeout=60, receive_buffer=4096) as sock:
            sock.sendall(request_bytes("GET", path))
            time.sleep(1.0)  # not reading: the transport pauses the watcher
            data = bytearray()
            try:
                while chunk := sock.recv(1 << 16):
                    data += chunk
            except (ConnectionResetError, ssl.SSLError):
                pass  # the stream cut
            return bytes(data)

    with collected_logs() as logged:
        data = await deferToThread(slow_reader)
    assert paused and b'"type":"ADDED"' in data and b"k8s.io/initial-events-end" not in data
    assert (await ended("error"), await ended("client gone")) == (errors + 1, gone)
    failures = [event for event in logged if "log_failure" in event]
    assert [event["log_format"] for event in failures] == ["writing a watch's stream failed; dropping it"]


class _Recording:
    """The reactor, noting each call scheduled on it: a reactor of the test's own, as a test with a fake
    clock gives the server."""

    def __init__(self, reactor: Any) -> None:
        self._reactor = reactor
        self.scheduled: list[Any] = []
        directlyProvides(self, providedBy(reactor))

    def callLater(self, delay: float, f: Any, *args: Any, **kwargs: Any) -> Any:
        self.scheduled.append(f)
        return self._reactor.callLater(delay, f, *args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._reactor, name)


@pytest_twisted.ensureDeferred
async def test_the_tls_layer_holds_writes_for_the_turn_on_the_reactor_the_server_was_given(
    reactor: Any, pki: Pki, registry: Any
) -> None:
    """The server's TLS layer sends what a response writes over a turn at the turn's end, a call
    scheduled on its factory's clock: that is the reactor start() was given, not Twisted's global one,
    so a test's clock drives it as it drives the rest of the server."""
    recording = _Recording(reactor)
    server = await start_server(recording, pki, registry.url)
    try:
        response = await server.client(pki.admin).get(f"{B}/namespaces/tls-clock/payloadrepositorytags")
        assert response.code == 200
    finally:
        await server.stop()
    assert any(isinstance(getattr(f, "__self__", None), GuardedTLS) for f in recording.scheduled)
