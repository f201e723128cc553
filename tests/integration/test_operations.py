"""Running it for months: metrics, certificate rotation, graceful shutdown, JSON and audit logs."""

from __future__ import annotations

import json
import re
import shutil
from typing import Any

import pytest_twisted
from twisted.internet import defer, task
from twisted.internet.interfaces import IReactorTime
from twisted.internet.threads import deferToThread
from twisted.logger import LogLevel, formatEvent
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from payloadtags.api.health import HealthChecks
from payloadtags.names import encode_name
from tests.support import images
from tests.support.client import ApiClient
from tests.support.faultproxy import ERROR_BEFORE, LATE, FaultProxy
from tests.support.harness import Pki, ServerUnderTest
from tests.support.logcapture import collected_logs
from tests.support.pki import Authority, Issued
from tests.support.process import ServerProcess
from tests.support.raw import Target, exchange, request_bytes
from tests.support.rbac import eventually
from tests.support.registry_server import free_port

B = "/apis/payload-registry.deckhouse.io/v1alpha1"


def collection(namespace: str) -> str:
    return f"{B}/namespaces/{namespace}/payloadrepositorytags"


# --- metrics --------------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_metrics_count_requests_registry_calls_and_decisions(api, registry, repo, pki):
    namespace = repo.split("/", 1)[0]
    images.push_oci_image(registry, repo, "v1")
    admin = api.client(api.pki.admin)
    assert (await admin.get(collection(namespace))).code == 200
    assert (await admin.get(f"{collection(namespace)}/{encode_name('nope', 'x')}")).code == 404
    monitor = pki.client_ca.client("prometheus", ("system:monitoring",))
    reply = await api.client(monitor).get("/metrics")
    assert reply.code == 200
    assert reply.header("content-type").startswith("text/plain")
    text = reply.body.decode()
    assert (
        'payloadtags_apiserver_requests_total{code="200",resource="payloadrepositorytags",verb="list"} 1.0'
        in text
    )
    assert (
        'payloadtags_apiserver_requests_total{code="404",resource="payloadrepositorytags",verb="get"} 1.0'
        in text
    )
    duration = "payloadtags_apiserver_request_duration_seconds_count"
    assert f'{duration}{{resource="payloadrepositorytags",verb="list"}} 1.0' in text
    assert 'payloadtags_registry_operations_total{operation="tags",outcome="ok"}' in text
    assert 'payloadtags_registry_operations_total{operation="manifest",outcome="not_found"} 1.0' in text
    assert 'payloadtags_authorization_decisions_total{decision="allow",verb="get"}' in text


@pytest_twisted.ensureDeferred
async def test_each_request_is_logged_from_verbosity_3_only(make_server, registry, repo):
    namespace = repo.split("/", 1)[0]
    images.push_oci_image(registry, repo, "v1")
    with collected_logs() as events:
        for verbosity in (3, 0):
            server = await make_server(registry, verbosity=verbosity)
            events.clear()
            client = server.client(server.pki.admin)
            assert (await client.get(collection(namespace) + "?limit=1")).code == 200
            # An answer that is an error names its user as well: those are the ones to trace.
            assert (await client.get(collection(namespace) + "?resourceVersionMatch=Bogus")).code == 422
            lines = [
                formatEvent(event)
                for event in events
                if event.get("log_level") == LogLevel.debug and "user=" in event.get("log_format", "")
            ]
            if verbosity:
                assert len(lines) == 2, lines
                assert lines[0].startswith(f"GET {collection(namespace)}?limit=1 200 user=admin ")
                assert lines[1].startswith(
                    f"GET {collection(namespace)}?resourceVersionMatch=Bogus 422 user=admin "
                )
            else:
                assert lines == []


@pytest_twisted.ensureDeferred
async def test_metrics_under_always_allow_need_only_authentication(api, make_server, registry):
    # Like kube-apiserver: AlwaysAllow allows the non-resource URL /metrics to any authenticated caller.
    assert (await api.client(api.pki.admin).get("/metrics")).code == 200
    assert (await api.client(None).get("/metrics")).code == 401
    open_server = await make_server(registry, metrics_anonymous=True)
    assert (await open_server.client(None).get("/metrics")).code == 200


@pytest_twisted.ensureDeferred
async def test_always_allow_paths_decide_which_paths_skip_authentication(make_server, registry):
    server = await make_server(registry, always_allow_paths=("/livez", "/metrics"))
    anonymous = server.client(None)
    assert (await anonymous.get("/livez")).code == 200
    assert (await anonymous.get("/metrics")).code == 200
    assert (await anonymous.get("/readyz")).code == 401
    assert (await anonymous.get("/healthz/ping")).code == 401
    assert (await server.client(server.pki.admin).get("/readyz")).code == 200


@pytest_twisted.ensureDeferred
async def test_a_listed_health_check_or_prefix_is_served_to_anyone_and_nothing_else(make_server, registry):
    # Review r6misc L2: a check's own path (`/healthz/ping`) or a prefix under an endpoint (`/readyz/*`)
    # was accepted and then ignored: an anonymous probe of it was 401. k8s.io/apiserver's path
    # authorizer serves exactly what is listed: neither opens its endpoint nor another check.
    server = await make_server(registry, always_allow_paths=("/healthz/ping", "/readyz/*"))
    anonymous = server.client(None)
    admin = server.client(server.pki.admin)
    served = ("/healthz/ping", "/readyz/ping", "/readyz/registry", "/readyz/p%69ng")
    kept = ("/healthz", "/healthz/log", "/readyz", "/livez", "/livez/ping", "/metrics", "/version")
    codes = {p: (await admin.get(p)).code for p in served + kept}
    assert codes == {**dict.fromkeys(served + kept, 200), "/healthz/log": 404}  # no such check
    codes = {p: (await anonymous.get(p)).code for p in served + kept}
    assert codes == {**dict.fromkeys(served, 200), **dict.fromkeys(kept, 401)}


@pytest_twisted.ensureDeferred
async def test_an_entry_ending_in_a_slash_opens_nothing_and_the_start_says_so(make_server, registry):
    # Review r7misc N4: as k8s.io/apiserver, where `/readyz/` opens the path `/readyz/` alone, which
    # kube-apiserver does not serve. Here a request's trailing '/' is dropped before the match: no
    # request equals the entry. Said once at start, where it was said nowhere.
    with collected_logs() as events:
        server = await make_server(registry, always_allow_paths=("/readyz/", "/healthz/ping/", "/livez"))
    said = [line for e in events if "--authorization-always-allow-paths" in (line := formatEvent(e))]
    assert [line.split(" ends in ")[0] for line in said] == [
        "--authorization-always-allow-paths: the entry '/readyz/'",
        "--authorization-always-allow-paths: the entry '/healthz/ping/'",
    ]
    assert all(e["log_level"] == LogLevel.warn for e in events if formatEvent(e) in said)
    anonymous = server.client(None)
    paths = ("/readyz", "/readyz/", "/readyz/ping", "/healthz/ping", "/healthz/ping/", "/livez", "/livez/")
    codes = {p: (await anonymous.get(p)).code for p in paths}
    # `/livez/` is admitted as `/livez`, then not found, as kube-apiserver serves no `/livez/`.
    assert codes == {**dict.fromkeys(paths, 401), "/livez": 200, "/livez/": 404}


@pytest_twisted.ensureDeferred
async def test_what_the_warning_of_an_entry_ending_in_a_slash_offers_instead_opens_what_it_says(
    make_server, registry
):
    # Review r11misc L1: '/healthz/ping/' was offered '/healthz/ping/*', and '/metrics/' '/metrics/*',
    # which open nothing that answers (nothing is served under a check or /metrics). Each path a
    # warning offers is listed in a second server and asked for, a '*' standing for a check.
    entries = ("/healthz/ping/", "/metrics/", "/readyz//", "/livez/")
    with collected_logs() as events:
        await make_server(registry, always_allow_paths=entries)
    said = [line for e in events if "--authorization-always-allow-paths" in (line := formatEvent(e))]
    offered = [path for line in said for path in re.findall(r"'(/[^']*)'", line.split("; write ")[1])]
    assert offered == ["/healthz/ping", "/metrics", "/readyz", "/readyz/*", "/livez", "/livez/*"], said
    server = await make_server(registry, always_allow_paths=tuple(offered))
    anonymous = server.client(None)
    asked = [path.replace("*", "ping") for path in offered]
    codes = {path: (await anonymous.get(path)).code for path in asked}
    assert codes == dict.fromkeys(asked, 200)


@pytest_twisted.ensureDeferred
async def test_a_check_the_warning_offers_is_one_the_server_has(make_server, registry):
    # Review r13cfg L2: any '/<endpoint>/<name>/' was taken for a check and offered without its '/':
    # '/readyz/etcd' (from a kube-apiserver probe list) then answered 404. Each path offered is listed in
    # a second server and answers anyone 200; each said to open nothing, listed, answers no 200.
    entries = ("/readyz/etcd/", "/livez/log/", "/readyz/registry/", "/livez/ping/", "/readyz/shutdown/")
    with collected_logs() as events:
        first = await make_server(registry, always_allow_paths=entries)
    said = [line for e in events if "--authorization-always-allow-paths" in (line := formatEvent(e))]
    tails = [line.split("so none equals it; ")[1] for line in said]
    offered = [re.findall(r"^write '(/[^']*)' instead$", tail) for tail in tails]
    nothing = [re.findall(r"^'(/[^']*)' would open nothing either", tail) for tail in tails]
    assert offered == [[], [], ["/readyz/registry"], ["/livez/ping"], ["/readyz/shutdown"]], said
    assert nothing == [["/readyz/etcd"], ["/livez/log"], [], [], []], said
    admin = first.client(first.pki.admin)
    assert (await admin.get("/readyz/etcd")).code == (await admin.get("/livez/log")).code == 404
    listed = [path for paths in offered + nothing for path in paths]
    second = await make_server(registry, always_allow_paths=tuple(listed))
    anonymous = second.client(None)
    codes = {path: (await anonymous.get(path)).code for path in listed}
    assert codes == {**dict.fromkeys(listed, 200), "/readyz/etcd": 404, "/livez/log": 404}


@pytest_twisted.ensureDeferred
async def test_admission_reads_a_hash_in_the_path_as_routing_does(make_server, registry):
    # Review r4chan N3: admission dropped a "#..." from the path, routing kept it (as Go keeps it), so
    # an anonymous POST /metrics#x under --metrics-anonymous had its body read, then was not found,
    # and POST /healthz#x was "health endpoints take no request body". Now both are the path a
    # route names nowhere: authentication first, as kube-apiserver.
    server = await make_server(registry, metrics_anonymous=True)
    target = Target(server.running.port, str(server.pki.server_ca.cert_file))
    codes = {}
    for path in ("/metrics", "/metrics#x", "/healthz#x", "/apis#x"):
        raw = request_bytes("POST", path, {"Content-Type": "application/json"}, b"{}")
        codes[path] = (await deferToThread(exchange, target, raw, None)).code
    assert codes == {"/metrics": 405, "/metrics#x": 401, "/healthz#x": 401, "/apis#x": 401}


class _CountedHealth(HealthChecks):
    """The server's own health checks, counting the probes that have reached them."""

    entered = 0

    async def run(self, *args: Any) -> tuple[int, str] | None:
        self.entered += 1
        return await super().run(*args)


@pytest_twisted.ensureDeferred
async def test_a_flood_of_anonymous_readyz_probes_costs_one_registry_request(make_server, reactor, registry):
    # Review-operations F1: each probe used to send its own GET /v2/, unthrottled, taking registry
    # slots from users. Here the registry's answer is held until every probe has reached the server.
    holding = False
    proxy = FaultProxy(
        reactor, registry.url, lambda method, path: LATE if holding and path == "/v2/" else None
    )
    proxy.stall = 600.0
    try:
        server = await make_server(proxy.url)
        if server.running.registry_probe is not None:
            await server.running.registry_probe  # the start-up probe's GET /v2/ is not a probe's
        api = server.running.api
        counted = _CountedHealth(api.health.checks, api.health.monotonic)
        api.health = counted
        holding = True
        anonymous = server.client(None)
        probes = [defer.Deferred.fromCoroutine(anonymous.get(path)) for path in ["/readyz"] * 30]
        probes += [defer.Deferred.fromCoroutine(anonymous.get(path)) for path in ["/readyz?verbose"] * 10]
        probes += [defer.Deferred.fromCoroutine(anonymous.get(path)) for path in ["/readyz/registry"] * 10]

        async def arrived() -> bool:
            return counted.entered == len(probes) and proxy.injected[LATE] >= 1

        assert await eventually(arrived, within=60.0)
        assert proxy.injected[LATE] == 1
        await proxy.stop()  # the held GET /v2/ fails: every probe is told that one outcome
        answers = await defer.gatherResults(probes)
        assert {answer.code for answer in answers} == {500}
    finally:
        await proxy.stop()


@pytest_twisted.ensureDeferred
async def test_readyz_follows_the_registry_a_second_later_even_while_a_check_hangs(
    make_server, reactor, registry
):
    # Review-health2 H1-H3: the server's registry check is reused for a second (the docs' promise, so
    # not REGISTRY_CHECK_TTL: a ttl of 1e9 must fail here) on the clock it is given (monotonic, not the
    # reactor's wall clock), and a probe is never answered by a check that started a second or more
    # before it, even one still waiting for the registry's timeout.
    clock = task.Clock()
    fault: list[str] = []  # the fault of the next GET /v2/, none when empty
    pings = 0  # GET /v2/ that reached the registry's proxy
    waiting: list[defer.Deferred[None]] = []  # fired by the next one

    def decide(method: str, path: str) -> str | None:
        nonlocal pings
        if path != "/v2/":
            return None
        pings += 1
        decided = fault[0] if fault else None
        reached, waiting[:] = list(waiting), []
        for each in reached:
            each.callback(None)  # the test goes on from here: the fault is decided already
        return decided

    proxy = FaultProxy(reactor, registry.url, decide)
    proxy.stall = 600.0
    try:
        server = await make_server(proxy.url, monotonic=clock.seconds)
        if server.running.registry_probe is not None:
            await server.running.registry_probe  # the start-up probe's GET /v2/ is not a probe's
        anonymous = server.client(None)

        async def registry_check() -> int:
            return int((await anonymous.get("/readyz/registry")).code)

        async def checked(answer: int) -> bool:
            before = pings
            code = await registry_check()
            return code == answer and pings == before + 1

        assert await checked(200)
        fault.append(ERROR_BEFORE)  # the registry fails
        assert await registry_check() == 200  # within the ttl: that answer, no request
        clock.advance(1.0)
        assert await checked(500)
        fault.clear()  # back
        clock.advance(1.0)
        assert await checked(200)

        fault.append(LATE)  # the registry hangs, until the client's timeout
        clock.advance(1.0)
        waiting.append(defer.Deferred())
        held = defer.Deferred.fromCoroutine(registry_check())
        await waiting[0]
        fault.clear()  # back, while that check still waits
        clock.advance(1.0)
        assert await checked(200)
        assert not held.called
        await proxy.stop()  # the held GET /v2/ fails now: after the newer check's pass
        assert await held == 500
        assert await registry_check() == 200  # the older check's failure did not replace it
    finally:
        await proxy.stop()


# --- certificate rotation ----------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_serving_certificate_and_client_ca_rotate_without_restart(make_server, registry, tmp_path, pki):
    live = tmp_path / "live"
    live.mkdir()
    first_ca = Authority.create(tmp_path / "first", "serving-first")
    second_ca = Authority.create(tmp_path / "second", "serving-second")
    first, second = first_ca.server(stem="first"), second_ca.server(stem="second")
    shutil.copy(first.cert_file, live / "tls.crt")
    shutil.copy(first.key_file, live / "tls.key")
    client_ca_file = live / "client-ca.crt"
    shutil.copy(pki.client_ca.cert_file, client_ca_file)
    server = await make_server(
        registry,
        tls_cert_file=str(live / "tls.crt"),
        tls_private_key_file=str(live / "tls.key"),
        client_ca_file=str(client_ca_file),
        cert_reload_period=0.1,
    )

    def trusting(ca: Authority, user: Issued) -> ApiClient:
        return ApiClient(server.url, str(ca.cert_file), user)

    async def answers(client: ApiClient) -> bool:
        try:
            return (await client.get("/apis")).code == 200
        except Exception:
            return False

    assert await answers(trusting(first_ca, pki.admin))
    # A Secret update: new key and certificate from another CA.
    shutil.copy(second.key_file, live / "tls.key")
    shutil.copy(second.cert_file, live / "tls.crt")
    assert await eventually(lambda: answers(trusting(second_ca, pki.admin)), within=5) is True
    assert not await answers(trusting(first_ca, pki.admin))

    # The client CA file is replaced: users of the new CA get in, the old CA's no longer do.
    new_clients = Authority.create(tmp_path / "clients-new", "clients-new")
    newcomer = new_clients.client("newcomer", ("admins",))
    shutil.copy(new_clients.cert_file, client_ca_file)

    async def newcomer_accepted() -> bool:
        return (await trusting(second_ca, newcomer).get("/apis")).code == 200

    assert await eventually(newcomer_accepted, within=5) is True
    assert (await trusting(second_ca, pki.admin).get("/apis")).code == 401


@pytest_twisted.ensureDeferred
async def test_a_broken_certificate_update_keeps_the_working_one(
    make_server, registry, tmp_path, pki, reactor
):
    live = tmp_path / "live"
    live.mkdir()
    shutil.copy(pki.serving.cert_file, live / "tls.crt")
    shutil.copy(pki.serving.key_file, live / "tls.key")
    server = await make_server(
        registry,
        tls_cert_file=str(live / "tls.crt"),
        tls_private_key_file=str(live / "tls.key"),
        cert_reload_period=0.1,
    )
    (live / "tls.crt").write_text("not a certificate")
    await task.deferLater(reactor, 0.5, lambda: None)
    assert (await server.client(pki.admin).get("/apis")).code == 200


# --- graceful shutdown, logs ----------------------------------------------------------------------------


class _SlowRegistry(Resource):
    """Just enough of a registry for a list: an empty catalog, answered after a delay."""

    isLeaf = True

    def __init__(self, reactor: IReactorTime, delay: float) -> None:
        super().__init__()
        self.reactor, self.delay = reactor, delay

    def render_GET(self, request: Request) -> bytes | int:
        request.setHeader(b"content-type", b"application/json")
        if request.path == b"/v2/_catalog":

            def answer() -> None:
                request.write(b'{"repositories":[]}')
                request.finish()

            self.reactor.callLater(self.delay, answer)
            return NOT_DONE_YET
        return b"{}"


def serve_args(pki: Pki, registry_url: str, port: int, *extra: str) -> list[str]:
    return [
        *pki.standalone_args(port, registry_url),
        *extra,
    ]


@pytest_twisted.ensureDeferred
async def test_sigterm_fails_readyz_finishes_requests_and_exits_0(reactor, pki):
    fake = reactor.listenTCP(0, Site(_SlowRegistry(reactor, delay=2.0)), interface="127.0.0.1")
    port = free_port()
    process = ServerProcess(
        reactor,
        serve_args(
            pki,
            f"http://127.0.0.1:{fake.getHost().port}",
            port,
            "--shutdown-delay-duration=1s",
            "--shutdown-grace-period=10s",
        ),
    )
    process.start()
    try:
        await process.wait_for_log("serving payload-registry.deckhouse.io/v1alpha1")
        url = f"https://127.0.0.1:{port}"
        admin = ApiClient(url, str(pki.server_ca.cert_file), pki.admin)
        anonymous = ApiClient(url, str(pki.server_ca.cert_file), None)
        assert (await anonymous.get("/readyz")).code == 200
        slow = defer.Deferred.fromCoroutine(admin.get(collection("team")))  # in flight for two seconds
        await task.deferLater(reactor, 0.3, lambda: None)
        process.terminate()
        await process.wait_for_log("shutting down")
        ready = await anonymous.get("/readyz?verbose")
        assert ready.code == 500
        assert "[-]shutdown failed: reason withheld" in ready.body.decode()
        finished = await slow
        assert finished.code == 200
        assert finished.json()["items"] == []
        assert await process.wait() == 0
        assert "stopped" in process.log
    finally:
        await process.kill()
        await fake.stopListening()


@pytest_twisted.ensureDeferred
async def test_json_logs_with_one_audit_line_per_deleted_tag_and_no_secrets(reactor, pki, registry, repo):
    namespace, path = repo.split("/", 1)
    images.push_oci_image(registry, repo, "a")
    digest = images.push_oci_image(registry, repo, "b", seed="b")
    port = free_port()
    secret = "s3cret-registry-password-value"
    process = ServerProcess(
        reactor,
        serve_args(pki, registry.url, port, "--logging-format=json", "--v=3"),
        env={"PAYLOADTAGS_REGISTRY_USERNAME": "robot", "PAYLOADTAGS_REGISTRY_PASSWORD": secret},
    )
    process.start()
    try:
        await process.wait_for_log("serving payload-registry")
        admin = ApiClient(f"https://127.0.0.1:{port}", str(pki.server_ca.cert_file), pki.admin)
        url = f"{collection(namespace)}/{encode_name(path, 'b')}"
        assert (await admin.delete(url, body={"dryRun": ["All"]})).code == 200
        assert (await admin.delete(url)).code == 200
        process.terminate()
        assert await process.wait() == 0
    finally:
        await process.kill()
    records = [json.loads(line) for line in process.log.splitlines() if line.strip()]
    # Shaped like klog's JSON: ts, msg, then v for info lines or err for errors; key/values in lowerCamelCase.
    assert all(isinstance(r["ts"], float) and isinstance(r["msg"], str) for r in records)
    assert all(("v" in r) != ("err" in r) for r in records)
    assert all("_" not in key for r in records for key in r)
    assert any(r["v"] == 3 and r["msg"].startswith("DELETE ") for r in records if "v" in r)
    assert " at 0x" not in process.log
    assert "Starting factory" not in process.log and "Stopping factory" not in process.log
    audit = [r for r in records if r["logger"] == "payloadtags.audit"]
    # The dry run's line names the digest its delete would take, as its answer does (r1kubectl L1).
    assert [(r["dryRun"], r["tag"], r["digest"]) for r in audit] == [
        (True, "b", digest),
        (False, "b", digest),
    ]
    assert audit[1]["user"] == "admin"
    assert audit[1]["namespace"] == namespace
    assert audit[1]["repository"] == repo
    assert secret not in process.log


@pytest_twisted.ensureDeferred
async def test_start_up_logs_the_unused_proxy_variables_and_a_password_without_user_name(
    reactor, pki, registry
):
    # Completed.notices reach the log (review-startup2 F6): removing the logging fails this test.
    port = free_port()
    process = ServerProcess(
        reactor,
        serve_args(pki, registry.url, port),
        env={
            "HTTPS_PROXY": "http://bob:s3cretPW@127.0.0.1:3128",
            "PAYLOADTAGS_REGISTRY_PASSWORD": "tok3n",
        },
    )
    process.start()
    try:
        await process.wait_for_log("serving payload-registry")
        process.terminate()
        assert await process.wait() == 0
    finally:
        await process.kill()
    assert (
        "HTTPS_PROXY set in the environment but not used: payloadtags connects to the cluster API and the "
        "registry directly (docs/configuration.md)" in process.log
    )
    assert (
        "the registry password (or token) is sent with an empty user name: no --registry-username-file or "
        "$PAYLOADTAGS_REGISTRY_USERNAME gives one" in process.log
    )
    assert "s3cretPW" not in process.log and "tok3n" not in process.log


@pytest_twisted.ensureDeferred
async def test_requestheader_ca_file_rotates_without_restart(make_server, registry, tmp_path, pki):
    old_ca = Authority.create(tmp_path / "proxy-old", "proxy-old")
    new_ca = Authority.create(tmp_path / "proxy-new", "proxy-new")
    old_proxy = old_ca.client("front-proxy-client", stem="old-proxy")
    new_proxy = new_ca.client("front-proxy-client", stem="new-proxy")
    ca_file = tmp_path / "requestheader-ca.crt"
    shutil.copy(old_ca.cert_file, ca_file)
    server: ServerUnderTest = await make_server(
        registry,
        requestheader_client_ca_file=str(ca_file),
        requestheader_allowed_names=("front-proxy-client",),
        cert_reload_period=0.1,
    )
    as_root = {"X-Remote-User": "root", "X-Remote-Group": "admins"}

    async def proxied(proxy: Issued) -> int:
        return (await server.client(proxy).get("/apis", headers=as_root)).code

    assert await proxied(old_proxy) == 200
    assert await proxied(new_proxy) == 401
    shutil.copy(new_ca.cert_file, ca_file)

    async def rotated() -> bool:
        return await proxied(new_proxy) == 200

    assert await eventually(rotated, within=5) is True
    assert await proxied(old_proxy) == 401


@pytest_twisted.ensureDeferred
async def test_an_emptied_ca_file_keeps_the_previous_cas(make_server, registry, tmp_path, pki):
    """A CA file truncated before it is written again (or left empty) is a broken update: its CAs in
    force stay, the log says why, and the other CA file still rotates, as with k8s.io/apiserver's
    dynamic CA files."""
    proxy_ca = Authority.create(tmp_path / "proxy", "proxy")
    proxy = proxy_ca.client("front-proxy-client", stem="proxy")
    live = tmp_path / "live"
    live.mkdir()
    shutil.copy(proxy_ca.cert_file, live / "requestheader-ca.crt")
    shutil.copy(pki.client_ca.cert_file, live / "client-ca.crt")
    server: ServerUnderTest = await make_server(
        registry,
        client_ca_file=str(live / "client-ca.crt"),
        requestheader_client_ca_file=str(live / "requestheader-ca.crt"),
        requestheader_allowed_names=("front-proxy-client",),
        cert_reload_period=0.1,
    )
    as_root = {"X-Remote-User": "root", "X-Remote-Group": "admins"}

    async def codes(front: Issued = proxy, user: Issued = pki.admin) -> tuple[int, int]:
        proxied = await server.client(front).get("/apis", headers=as_root)
        return proxied.code, (await server.client(user).get("/apis")).code

    assert await codes() == (200, 200)
    for emptied, what in (
        ("requestheader-ca.crt", "requestheader CA file"),
        ("client-ca.crt", "client CA file"),
    ):
        with collected_logs() as events:
            (live / emptied).write_bytes(b"")

            async def reloaded(prefix: str = f"{what}: ") -> list[str]:
                return [line for e in events if (line := formatEvent(e)).startswith(prefix)]

            outcome = await eventually(reloaded, within=5)
        assert len(outcome) == 1 and outcome[0].endswith("keeping the previous ones"), outcome
        assert f"{emptied}: holds no PEM certificate" in outcome[0]
        assert await codes() == (200, 200)
    # A new client CA loads while the requestheader file is still empty.
    clients = Authority.create(tmp_path / "clients-new", "clients-new")
    newcomer = clients.client("newcomer", ("admins",))
    shutil.copy(clients.cert_file, live / "client-ca.crt")

    async def rotated(front: Issued, user: Issued) -> bool:
        return await codes(front, user) == (200, 200)

    assert await eventually(lambda: rotated(proxy, newcomer), within=5) is True
    assert (await server.client(pki.admin).get("/apis")).code == 401
    other_ca = Authority.create(tmp_path / "proxy-other", "proxy-other")
    other = other_ca.client("front-proxy-client", stem="other-proxy")
    shutil.copy(other_ca.cert_file, live / "requestheader-ca.crt")
    assert await eventually(lambda: rotated(other, newcomer), within=5) is True
    assert (await server.client(proxy).get("/apis", headers=as_root)).code == 401


# --- TLS settings ------------------------------------------------------------------------------------


def _handshake(
    port: int, ca_file: str, maximum: object = None, ciphers: str | None = None
) -> tuple[str, str]:
    import socket
    import ssl

    context = ssl.create_default_context(cafile=ca_file)
    context.check_hostname = False
    if maximum is not None:
        context.maximum_version = maximum  # type: ignore[assignment]
    if ciphers is not None:
        context.set_ciphers(ciphers)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with context.wrap_socket(raw) as tls:
            version, cipher = tls.version(), tls.cipher()
            return str(version), cipher[0] if cipher else ""


@pytest_twisted.ensureDeferred
async def test_tls_min_version_and_cipher_suites(make_server, registry, pki):
    import ssl

    from twisted.internet import threads

    ca = str(pki.server_ca.cert_file)
    strict = await make_server(registry, tls_min_version="VersionTLS13")
    assert (await threads.deferToThread(_handshake, strict.running.port, ca))[0] == "TLSv1.3"
    try:
        await threads.deferToThread(_handshake, strict.running.port, ca, ssl.TLSVersion.TLSv1_2)
    except ssl.SSLError:
        pass
    else:
        raise AssertionError("a TLS 1.2 client was accepted with --tls-min-version=VersionTLS13")
    # The test CA issues ECDSA certificates, so an ECDSA suite is the one that can be chosen.
    chosen = await make_server(registry, tls_cipher_suites=("TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",))
    version, cipher = await threads.deferToThread(_handshake, chosen.running.port, ca, ssl.TLSVersion.TLSv1_2)
    assert (version, cipher) == ("TLSv1.2", "ECDHE-ECDSA-AES256-GCM-SHA384")
    try:
        await threads.deferToThread(
            _handshake, chosen.running.port, ca, ssl.TLSVersion.TLSv1_2, "ECDHE-ECDSA-AES128-GCM-SHA256"
        )
    except ssl.SSLError:
        pass
    else:
        raise AssertionError("a cipher suite outside --tls-cipher-suites was negotiated")
