"""What payloadtags says when the cluster API refuses its kubeconfig's user, rejects its credentials
or cannot be reached (review-newcomer 2): one line per cause, with what to do, at most once a period
(where every reflector warned on every retry: some thirty raw lines in ten seconds, for ever), and
/readyz's failing check says the cause (where it said "not synced yet", as if a wait would do).

Against the cluster-API double, with the server's intervals on a `Clock` that only the test moves."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.task import Clock, deferLater
from twisted.logger import LogLevel, formatEvent

from payloadtags.kube.diagnosis import PERIOD
from tests.support.kubeapi import KubeApiDouble, eventually
from tests.support.logcapture import collected_logs
from tests.support.pki import Authority
from tests.support.registry_server import free_port

pytestmark = [pytest.mark.registry]

# Guards against a hang only, never a measure of speed: generous for a loaded machine.
HANG_GUARD = 30.0
REFLECTORS = (
    "extension-apiserver-authentication",
    "Role",
    "ClusterRole",
    "RoleBinding",
    "ClusterRoleBinding",
)


def retries(events: list[dict[str, Any]], name: str) -> int:
    """How often the reflector ``name`` failed: said by itself, or at debug once the access log said it."""
    return sum(
        1
        for e in events
        if e.get("log_namespace") == "payloadtags.kube.reflector"
        and e["log_level"] in (LogLevel.debug, LogLevel.warn)
        and e.get("name") == name
    )


def kube_warnings(events: list[dict[str, Any]]) -> list[str]:
    return [
        formatEvent(e)
        for e in events
        if str(e.get("log_namespace", "")).startswith("payloadtags.kube") and e["log_level"] >= LogLevel.warn
    ]


async def failed_each(events: list[dict[str, Any]], times: int) -> None:
    def enough() -> bool:
        return all(retries(events, name) >= times for name in REFLECTORS)

    await eventually(enough, within=HANG_GUARD)


async def readyz_reason(server: Any, events: list[dict[str, Any]]) -> str:
    """The reason of the failing rbac readiness check (withheld from the caller, logged)."""
    assert (await server.client(None).get("/readyz/rbac")).code == 500
    said = [formatEvent(e) for e in events if e.get("log_namespace") == "payloadtags.api.health"]
    assert said, "no readyz failure logged"
    return said[-1]


def unauthorized_kubeconfig(kube_api: KubeApiDouble, tmp_path: Path) -> Path:
    path = kube_api.write_kubeconfig(tmp_path / "badtoken", username="someone", auth="token")
    config = json.loads(path.read_text())
    config["users"][0]["user"]["token"] = "not-a-token-the-api-knows"
    path.write_text(json.dumps(config))
    return path


def unreachable_kubeconfig(kube_api: KubeApiDouble, tmp_path: Path) -> Path:
    path = kube_api.write_kubeconfig(tmp_path / "unreachable")
    config = json.loads(path.read_text())
    config["clusters"][0]["cluster"]["server"] = f"https://127.0.0.1:{free_port()}"
    path.write_text(json.dumps(config))
    return path


async def _warnings_and_reason(make_server: Any, registry: Any, kubeconfig: Path) -> tuple[list[str], str]:
    """A server whose cluster access goes through ``kubeconfig``: its warnings about the cluster API
    once each reflector has failed three times, and the reason /readyz gives then."""
    with collected_logs() as events:
        server = await make_server(
            registry, kubeconfig=str(kubeconfig), authorization_mode="RBAC", monotonic=Clock().seconds
        )
        await failed_each(events, 3)
        lines = kube_warnings(events)
        reason = await readyz_reason(server, events)
    return lines, reason


@pytest_twisted.ensureDeferred
async def test_a_user_without_grants_gets_one_line_per_grant_and_readyz_says_refused(
    make_server, registry, kube_api, tmp_path
):
    kube_api.authorizer = lambda user, info: False  # nobody but system:masters may do anything
    kubeconfig = kube_api.write_kubeconfig(tmp_path / "nobody", username="nobody", groups=())
    clock = Clock()
    with collected_logs() as events:
        server = await make_server(
            registry, kubeconfig=str(kubeconfig), authorization_mode="RBAC", monotonic=clock.seconds
        )
        await failed_each(events, 3)
        lines = kube_warnings(events)
        reason = await readyz_reason(server, events)
        # A period later, each cause is said again, with the count of the refusals it left out.
        clock.advance(PERIOD)
        before = {name: retries(events, name) for name in REFLECTORS}
        await eventually(
            lambda: all(retries(events, name) > before[name] for name in REFLECTORS), within=HANG_GUARD
        )
        again = kube_warnings(events)[len(lines) :]
    prefix = f"the cluster API {kube_api.url} refuses the kubeconfig's user: "
    retry = "payloadtags retries, and is not ready until it can read what it needs"
    assert len(lines) == 2, lines
    (reader,) = [line for line in lines if "configmaps" in line]
    (server_role,) = [line for line in lines if "configmaps" not in line]
    assert reader == (
        f'{prefix}configmaps is forbidden: User "nobody" cannot list resource "configmaps" in API group "" '
        'in the namespace "kube-system" (403); bind it the Role extension-apiserver-authentication-reader '
        "in kube-system (RoleBinding payloadtags:authentication-reader) (manifests/base/rbac-server.yaml, "
        f"docs/install.md); {retry}"
    )
    assert server_role.startswith(prefix), server_role
    assert 'is forbidden: User "nobody" cannot list resource "' in server_role
    assert server_role.endswith(
        "(403); bind it the ClusterRole payloadtags:server (ClusterRoleBinding payloadtags:server) "
        f"(manifests/base/rbac-server.yaml, docs/install.md); {retry}"
    )
    assert not any("Reflector" in line for line in lines)
    assert reason.startswith("readyz check rbac failed: RBAC objects cannot be read: "), reason
    assert "not synced yet" not in reason
    for kind in ("Role", "ClusterRole", "RoleBinding", "ClusterRoleBinding"):
        assert f"{kind}: refused: 403 Forbidden: " in reason, reason
    assert len(again) == 2, again
    assert all(f"more like it in the {PERIOD:.0f}s since the last line)" in line for line in again), again


@pytest_twisted.ensureDeferred
async def test_rejected_credentials_get_one_line_and_readyz_says_rejected(
    make_server, registry, kube_api, tmp_path
):
    kubeconfig = unauthorized_kubeconfig(kube_api, tmp_path)
    lines, reason = await _warnings_and_reason(make_server, registry, kubeconfig)
    assert lines == [
        f"the cluster API {kube_api.url} rejects the credentials of the kubeconfig's user (401 "
        "Unauthorized); check the user's token, client certificate or exec plugin in the kubeconfig; "
        "payloadtags retries, and is not ready until it can read what it needs"
    ]
    assert reason.startswith(
        "readyz check rbac failed: RBAC objects cannot be read: Role: credentials rejected: 401 Unauthorized"
    ), reason


@pytest_twisted.ensureDeferred
async def test_an_unreachable_cluster_api_gets_one_line_and_readyz_says_unreachable(
    make_server, registry, kube_api, tmp_path
):
    kubeconfig = unreachable_kubeconfig(kube_api, tmp_path)
    server_url = json.loads(kubeconfig.read_text())["clusters"][0]["cluster"]["server"]
    lines, reason = await _warnings_and_reason(make_server, registry, kubeconfig)
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"the cluster API {server_url} is unreachable (GET /"), lines
    assert "onnection refused" in lines[0]
    assert lines[0].endswith(
        "; check the cluster's server URL in the kubeconfig (--kubeconfig) and the network path to it; "
        "payloadtags retries, and is not ready until it can read what it needs"
    )
    assert reason.startswith(
        "readyz check rbac failed: RBAC objects cannot be read: Role: unreachable: GET /"
    )


def untrusting_kubeconfig(kube_api: KubeApiDouble, tmp_path: Path) -> Path:
    """A kubeconfig whose certificate-authority is not the CA that signed the cluster API's certificate."""
    path = kube_api.write_kubeconfig(tmp_path / "wrongca")
    other = Authority.create(tmp_path / "other", "not-the-cluster-ca")
    config = json.loads(path.read_text())
    cluster = config["clusters"][0]["cluster"]
    del cluster["certificate-authority-data"]
    cluster["certificate-authority"] = str(other.cert_file)
    path.write_text(json.dumps(config))
    return path


def misnaming_kubeconfig(kube_api: KubeApiDouble, tmp_path: Path) -> Path:
    """A kubeconfig whose tls-server-name is a name the cluster API's certificate does not hold."""
    path = kube_api.write_kubeconfig(tmp_path / "wrongname")
    config = json.loads(path.read_text())
    config["clusters"][0]["cluster"]["tls-server-name"] = "kubernetes.default.svc"
    path.write_text(json.dumps(config))
    return path


@pytest_twisted.ensureDeferred
async def test_an_untrusted_cluster_api_certificate_is_said_with_the_ca_to_fix(
    make_server, registry, kube_api, tmp_path
):
    """r1ops L2: a cluster API whose certificate the kubeconfig's CA does not verify was said as
    "unreachable", with advice to check the server URL and the network; the API is reached, and what
    to fix is the CA (as the registry's line says for its own)."""
    kubeconfig = untrusting_kubeconfig(kube_api, tmp_path)
    lines, reason = await _warnings_and_reason(make_server, registry, kubeconfig)
    assert len(lines) == 1, lines
    assert lines[0].startswith(
        f"the cluster API {kube_api.url} presents a certificate that is not trusted (GET /"
    ), lines
    assert lines[0].endswith(
        "; check that the kubeconfig's certificate-authority (or certificate-authority-data) is the "
        "CA that signed it (the certificate the server presents for tls-server-name, when set), and "
        f"that the certificate has not expired; {NOT_READY}"
    ), lines
    assert "certificate verify failed" in lines[0]
    assert "unreachable" not in lines[0] and "network path" not in lines[0]
    assert reason.startswith(
        "readyz check rbac failed: RBAC objects cannot be read: Role: certificate not trusted: GET /"
    ), reason


@pytest_twisted.ensureDeferred
async def test_a_cluster_api_certificate_for_another_name_is_said_with_the_name_to_fix(
    make_server, registry, kube_api, tmp_path
):
    """r1ops L2: the same for a certificate that does not name the host asked (here tls-server-name):
    no CA fixes that, the name does."""
    kubeconfig = misnaming_kubeconfig(kube_api, tmp_path)
    lines, reason = await _warnings_and_reason(make_server, registry, kubeconfig)
    assert len(lines) == 1, lines
    assert lines[0].startswith(
        f"the cluster API {kube_api.url} presents a certificate that is not for the name asked (GET /"
    ), lines
    assert "kubernetes.default.svc" in lines[0]
    assert lines[0].endswith(
        "; its certificate does not name the host in the kubeconfig's server URL, or its tls-server-name "
        "when set (no CA fixes that): give tls-server-name a name the certificate holds, or correct the "
        f"server URL; {NOT_READY}"
    ), lines
    assert "unreachable" not in lines[0]
    assert reason.startswith(
        "readyz check rbac failed: RBAC objects cannot be read: Role: certificate not for this host: GET /"
    ), reason


CLEANUP = "namespaces (cleanup)"
NOT_READY = "payloadtags retries, and is not ready until it can read what it needs"
STAYS_READY = (
    "payloadtags retries, and stays ready meanwhile with what it last read (the authentication "
    "ConfigMap, RBAC objects): changes made since are not seen until it can read again"
)
CLEANUP_STOPPED = (
    "payloadtags retries, and stays ready, but runs no namespace cleanup until it can read namespaces "
    "(nor does another replica while this one leads): the tags of namespaces deleted meanwhile stay"
)


async def wait_ready(server: Any) -> None:
    """Until /readyz (the manifests' probe: registry excluded) answers 200."""
    for _ in range(int(HANG_GUARD / 0.05)):
        if (await server.client(None).get("/readyz?exclude=registry")).code == 200:
            return
        await deferLater(reactor, 0.05)
    raise AssertionError("not ready")


def cleanup_only_refused(user: Any, info: Any) -> bool:
    """Everything but the namespaces: the cleanup controller's watch is the only one refused."""
    return bool(info.resource.plural != "namespaces")


@pytest.mark.parametrize("cause", ["refused", "rejected", "unreachable"])
@pytest_twisted.ensureDeferred
async def test_the_cleanup_namespace_watch_says_its_cause_and_that_it_stops_the_cleanup(
    make_server, fresh_registry, kube_api, tmp_path, cause
):
    """The namespace watch of the cleanup controller goes through the same log as the server's own
    reflectors, where it warned on each retry ("Reflector namespaces (cleanup): ..."), and says what
    its failure holds back: the namespace cleanup, not readiness (r1ops L1: it said "not ready until
    it can read what it needs" while /readyz stayed 200). A cause it shares with the readiness
    reflectors is one line for each consequence, and a refusal of namespaces alone is one line with
    its grant. Leader election off: this replica leads, and watches the namespaces, at once (a
    registry of its own: the sweep must not see the shared one, though it waits for a namespace list
    that never comes)."""
    if cause == "refused":
        kube_api.authorizer = cleanup_only_refused
        kubeconfig = kube_api.write_kubeconfig(tmp_path / "nobody", username="nobody", groups=())
    elif cause == "rejected":
        kubeconfig = unauthorized_kubeconfig(kube_api, tmp_path)
    else:
        kubeconfig = unreachable_kubeconfig(kube_api, tmp_path)
    server_url = json.loads(kubeconfig.read_text())["clusters"][0]["cluster"]["server"]
    with collected_logs() as events:
        server = await make_server(
            fresh_registry,
            kubeconfig=str(kubeconfig),
            authorization_mode="RBAC",
            namespace_cleanup=True,
            leader_elect=False,
            monotonic=Clock().seconds,
        )
        await eventually(lambda: retries(events, CLEANUP) >= 3, within=HANG_GUARD)
        if cause == "refused":
            # Readiness does not wait for the namespaces (its own reads are allowed).
            await wait_ready(server)
        lines = kube_warnings(events)
    assert not any("Reflector" in line for line in lines), lines
    if cause == "refused":
        assert lines == [
            f"the cluster API {server_url} refuses the kubeconfig's user: namespaces is forbidden: "
            'User "nobody" cannot list resource "namespaces" in API group "" at the cluster scope '
            "(403); bind it the ClusterRole payloadtags:server (ClusterRoleBinding payloadtags:server) "
            f"(manifests/base/rbac-server.yaml, docs/install.md); {CLEANUP_STOPPED}"
        ]
        return
    (cleanup,) = [line for line in lines if line.endswith(CLEANUP_STOPPED)]
    (readiness,) = [line for line in lines if line.endswith(NOT_READY)]
    assert len(lines) == 2, lines
    said = "rejects the credentials" if cause == "rejected" else "is unreachable (GET /"
    assert cleanup.startswith(f"the cluster API {server_url} {said}"), cleanup
    assert readiness.startswith(f"the cluster API {server_url} {said}"), readiness


@pytest_twisted.ensureDeferred
async def test_an_outage_after_a_good_start_says_the_replica_stays_ready(
    make_server, registry, kube_api, kube_kubeconfig
):
    """r1ops L1: the cluster API gone after the reflectors had synced was said "payloadtags retries,
    and is not ready until it can read what it needs", while the replica stays ready (a synced store
    is kept through an outage: docs/configuration.md, "Health endpoints"). The line says so now."""
    with collected_logs() as events:
        server = await make_server(
            registry, kubeconfig=str(kube_kubeconfig), authorization_mode="RBAC", monotonic=Clock().seconds
        )
        await wait_ready(server)
        await kube_api.go_down()
        await failed_each(events, 3)
        lines = kube_warnings(events)
        ready = (await server.client(None).get("/readyz?exclude=registry")).code
    assert ready == 200
    # The watches broken off as it went, then every retry refused: two causes, one consequence.
    assert [line.split(" (")[0] for line in lines] == [
        f"the cluster API {kube_api.url} broke off a request",
        f"the cluster API {kube_api.url} is unreachable",
    ], lines
    assert all(line.endswith(STAYS_READY) for line in lines), lines


def _leases_refused(user: Any, info: Any) -> bool:
    return bool(info.resource.plural != "leases")


@pytest_twisted.ensureDeferred
async def test_a_refused_lease_is_said_with_the_grant_to_fix(make_server, fresh_registry, kube_api, tmp_path):
    # r1cli N1: every other 403 is said with the Role or ClusterRole to bind; a refused Lease was said as
    # the raw 403 only, while no replica ever cleans up and /readyz and /livez stay ok.
    kube_api.authorizer = _leases_refused
    kubeconfig = kube_api.write_kubeconfig(tmp_path / "nolease", username="nolease", groups=())
    with collected_logs() as events:
        await make_server(
            fresh_registry,
            kubeconfig=str(kubeconfig),
            authorization_mode="RBAC",
            namespace_cleanup=True,
            leader_elect_lease_duration=2.0,
            leader_elect_renew_deadline=1.2,
            leader_elect_retry_period=0.25,
            leader_elect_resource_namespace="kube-system",
            namespace_sweep_period=0.0,
            monotonic=Clock().seconds,
        )

        def said() -> list[str]:
            return [
                formatEvent(e)
                for e in events
                if e["log_level"] >= LogLevel.warn and "the lease" in formatEvent(e)
            ]

        await eventually(lambda: bool(said()), within=30.0)
    (line, *_) = said()
    assert "403 Forbidden" in line, line
    assert line.endswith(
        "; bind it the Role payloadtags:leader-election in kube-system (RoleBinding "
        "payloadtags:leader-election), whose resourceNames must hold payloadtags-cleanup "
        "(manifests/base/rbac-server.yaml, docs/troubleshooting.md)"
    ), line
