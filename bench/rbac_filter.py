"""Cost of RBAC filtering on a 1,000-tag namespace list, against the same list without authorization.

What it does (all on 127.0.0.1; everything it starts is stopped at the end, also on error or Ctrl-C):

1. starts a real ``docker-registry`` and fills it over its HTTP API with two namespaces of 1,000 tags:
   ``bench`` (100 repositories ``team-KK/svc-J`` with 10 tags each) and ``flat`` (1,000 repositories
   with one tag each, so that every tag has its own repository path);
2. starts the Kubernetes API test double in this process and creates 1,000 rules on
   ``payloadrepositoryaccesses`` in scope of each of those namespaces (ClusterRoles bound cluster-wide
   and per namespace, a Role, rules for other verbs, subjects and resources; see ``rbac_objects``),
   plus 50 rules in other namespaces;
3. runs two ``payloadtags`` servers as subprocesses, configured identically (same registry, same
   kubeconfig, same certificates) except for ``authorization_mode``: ``AlwaysAllow`` (the baseline)
   and ``RBAC``;
4. as two users of the group ``bench-team``, each subject to 850 get patterns (``bench-half``, who
   sees 55 % of ``bench`` and 47 % of ``flat``; ``bench-all``, who also has ``**`` in the binding that
   comes last, so sees everything, the uncovered half only after every other pattern failed, and gets
   the same answer as from AlwaysAllow), interleaves
   ``GET /apis/payload-registry.deckhouse.io/v1alpha1/namespaces/<ns>/payloadrepositorytags``
   (JSON, and Table as ``kubectl get`` asks) on both servers, in two regimes:
     - warm: nothing changes in RBAC, so the server's per-user path matchers stay memoized;
     - cold: before each measured RBAC list an unrelated RoleBinding (another user's, in another
       namespace) is edited, which invalidates every memoized matcher; the list is measured once the
       server has seen the change;
   and reads, per list, the CPU time of each process from /proc and the answering server's GC time
   (the launcher reports it, and the RBAC index generation, on SIGUSR1);
5. checks every answer against the subset computed independently with
   ``payloadtags.access.patterns.match`` over the rules this script created;
6. times the RBAC index itself in this process, on the same objects (rebuild, matcher, matching),
   with two what-ifs for the cold case. ``--what-if-gc-freeze`` makes both servers call gc.freeze()
   once started, a third what-if.

Usage: .venv/bin/python bench/rbac_filter.py [--quick] [--layouts bench,flat] [--reps N]
       [--cold-reps N] [--budget S] [--what-if-gc-freeze] [--json FILE]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import attrs
from treq.client import HTTPClient
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from twisted.web.client import Agent

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "src"))  # this tree's code, also where .venv is another tree's

from list_latency import (  # noqa: E402
    CONCURRENCY,
    TABLE_ACCEPT,
    Filler,
    _ClientTLS,
    _get,
    _Policy,
    _pool,
    cpu_seconds,
    percentile,
    proc_status,
    run_with_registry,
    server_environ,
    stop_process,
    wait_ready,
)
from tests.support.harness import Pki  # noqa: E402
from tests.support.kubeapi import KubeApiDouble  # noqa: E402
from tests.support.kubeapi.resources import (  # noqa: E402
    CLUSTERROLEBINDINGS,
    CLUSTERROLES,
    NAMESPACES,
    ROLEBINDINGS,
    ROLES,
    ResourceType,
)
from tests.support.pki import Issued  # noqa: E402
from tests.support.registry_server import RegistryServer, free_port  # noqa: E402

from payloadtags.access.authn import AUTHENTICATED, UserInfo  # noqa: E402
from payloadtags.access.patterns import PathPattern, match  # noqa: E402
from payloadtags.access.rbac import PathMatcher, RbacAuthorizer, RbacIndex  # noqa: E402

API = "/apis/payload-registry.deckhouse.io/v1alpha1"
ACCESS_GROUP = "payload-registry.deckhouse.io"
ACCESS_RESOURCE = "payloadrepositoryaccesses"
RBAC_API = "rbac.authorization.k8s.io"
TEAM = "bench-team"  # the group (client certificate O) of both benchmark users
USERS = {"half": "bench-half", "all": "bench-all"}
OTHER_NAMESPACES = tuple(f"other-{i}" for i in range(5))
EDITED = ("other-0", "unrelated")  # (namespace, name) of the RoleBinding edited before each cold list
REGISTRY_HOST = "registry.bench.example"


@attrs.frozen
class Layout:
    """One measured namespace: repositories team-KK/svc-J (k < teams, j < services), tags each."""

    teams: int
    services: int
    tags: tuple[str, ...]

    @property
    def size(self) -> int:
        return self.teams * self.services * len(self.tags)


LAYOUTS = {
    "bench": Layout(20, 5, tuple(f"v1.0.{i}" for i in range(10))),  # 100 repositories x 10 tags
    "flat": Layout(100, 10, ("v1",)),  # 1,000 repositories x 1 tag: every tag its own path
}


def repository_paths(namespace: str) -> list[str]:
    layout = LAYOUTS[namespace]
    return [f"team-{k:02d}/svc-{j}" for k in range(layout.teams) for j in range(layout.services)]


# --- the 1,000 rules ---------------------------------------------------------------------------------
#
# Every rule holds one resourceNames pattern. In scope of each measured namespace there are 1,000 rules:
#   100 "visible": get, bound to both users, matching about half of the repositories;
#   750 "bulk": get, bound to both users, matching no repository there (the filter tries them all);
#    50 delete-only rules bound to both users (the wrong verb for a list);
#    50 rules of other subjects: 49 for other users, groups and a ServiceAccount, and one rule "**"
#       bound to bench-all only, in the RoleBinding that comes last;
#    50 rules on other resources or API groups.
# 50 more sit in Roles of other namespaces, bound to both users there (never in scope), and the Role
# with the brace patterns exists in both measured namespaces: the index holds 1,063 rules in all.


def _visible_patterns() -> dict[str, list[str]]:
    teams = range(100)
    pairs = [k for k in teams if k % 4 == 2]
    return {
        "whole team": [f"team-{k:02d}/**" for k in teams if k % 4 == 0],  # 25
        "literal": [f"team-{k:02d}/svc-{j}" for k in teams if k % 4 == 1 for j in (0, 3)],  # 50
        "braces": [  # 13
            f"{{team-{a:02d},team-{b:02d}}}/svc-[01]"
            for a, b in zip(pairs[::2], [*pairs[1::2], 999], strict=True)
        ],
        "one level": [f"team-{k:02d}/*" for k in teams if k % 8 == 7],  # 12
    }


_BULK_FORMS = (
    "proj-{n:03d}/**",
    "*/db-{n}",
    "{{web,api}}-{n}/*",
    "team-{n:02d}/cache-{n}",
    "team-{n:02d}/svc-{d}/internal-*",
    "**/legacy-{n}",
    "team-{big}/**",
    "[x-z]*-{n}/**",
    "team-??/svc-1{n}",
    "team-{n:02d}/{{svc,job}}-{big}*",
)


def _bulk_patterns(count: int = 750) -> list[str]:
    """Patterns that match no repository of the layouts, many of them sharing the team- prefix."""
    forms = len(_BULK_FORMS)
    return [
        _BULK_FORMS[i % forms].format(n=i // forms, d=(i // forms) % 10, big=100 + i // forms)
        for i in range(count)
    ]


def _rule(patterns: list[str], verbs: tuple[str, ...] = ("get",), **overrides: Any) -> dict[str, Any]:
    rule: dict[str, Any] = {"apiGroups": [ACCESS_GROUP], "resources": [ACCESS_RESOURCE], "verbs": list(verbs)}
    rule["resourceNames"] = patterns
    rule.update(overrides)
    return rule


def _subject(kind: str, name: str, namespace: str | None = None) -> dict[str, str]:
    subject = {"kind": kind, "name": name}
    if kind == "ServiceAccount":
        subject["namespace"] = namespace or "default"
    else:
        subject["apiGroup"] = RBAC_API
    return subject


def _binding(name: str, role_kind: str, role: str, subjects: list[dict[str, str]]) -> dict[str, Any]:
    return {
        "metadata": {"name": name},
        "roleRef": {"apiGroup": RBAC_API, "kind": role_kind, "name": role},
        "subjects": subjects,
    }


BOTH_USERS = [_subject("User", USERS["half"]), _subject("User", USERS["all"])]
Created = tuple[ResourceType, dict[str, Any], str | None]


def rbac_objects() -> list[Created]:
    """Namespaces, Roles, ClusterRoles and their bindings, in creation order."""
    visible = _visible_patterns()
    bulk = _bulk_patterns()
    out: list[Created] = [
        (NAMESPACES, {"metadata": {"name": ns}}, None) for ns in (*LAYOUTS, *OTHER_NAMESPACES)
    ]

    def cluster_role(name: str, rules: list[dict[str, Any]]) -> None:
        out.append((CLUSTERROLES, {"metadata": {"name": name}, "rules": rules}, None))

    def cluster_binding(name: str, subjects: list[dict[str, str]]) -> None:
        out.append((CLUSTERROLEBINDINGS, _binding(name, "ClusterRole", name, subjects), None))

    def role_binding(namespace: str, name: str, kind: str, role: str, subjects: list[dict[str, str]]) -> None:
        out.append((ROLEBINDINGS, _binding(name, kind, role, subjects), namespace))

    # Cluster-wide, bound to the group: 400 bulk rules in one big role, the team-level visible rules,
    # the delete-only rules and the rules on other resources.
    team = [_subject("Group", TEAM)]
    cluster_role("payload-bulk", [_rule([p]) for p in bulk[:400]])
    cluster_binding("payload-bulk", team)
    cluster_role("payload-teams", [_rule([p]) for p in visible["whole team"] + visible["one level"]])
    cluster_binding("payload-teams", team)
    cluster_role("payload-deleters", [_rule([f"team-{k:02d}/**"], ("delete",)) for k in range(50)])
    cluster_binding("payload-deleters", team)
    misc = []
    for i in range(50):
        if i % 3 == 0:  # the listed resource itself is not the access resource
            misc.append(_rule(["**"], resources=["payloadrepositorytags"]))
        elif i % 3 == 1:
            misc.append(_rule([f"team-{i:02d}/**"], apiGroups=["apps"]))
        else:
            misc.append(_rule([f"team-{i:02d}/**"], apiGroups=[""], resources=["configmaps"]))
    cluster_role("payload-misc", misc)
    cluster_binding("payload-misc", team)
    # Other subjects: broad patterns that would show everything if they applied.
    broad = ["**", "team-*/**", "*/*", "team-??/svc-?", "{team,proj}-*/**"]
    others = [_rule([broad[i % 5] if i < 5 else f"{broad[i % 5]}{i}"]) for i in range(49)]
    cluster_role("payload-others", others)
    cluster_binding(
        "payload-others",
        [
            _subject("User", "someone-else"),
            _subject("Group", "other-team"),
            _subject("ServiceAccount", "deployer", "other-1"),
        ],
    )
    cluster_role("payload-everything", [_rule(["**"])])
    # Per namespace, bound to the users by name: 350 bulk rules in 25 ClusterRoles of 14, the literal
    # paths (25 ClusterRoles of 2), a Role with the brace patterns, and last the "**" of bench-all.
    for i in range(25):
        cluster_role(f"payload-bulk-{i:02d}", [_rule([p]) for p in bulk[400 + 14 * i : 414 + 14 * i]])
        cluster_role(f"payload-svc-{i:02d}", [_rule([p]) for p in visible["literal"][2 * i : 2 * i + 2]])
    for namespace in LAYOUTS:
        for i in range(25):
            role_binding(namespace, f"bulk-{i:02d}", "ClusterRole", f"payload-bulk-{i:02d}", BOTH_USERS)
        for i in range(25):
            role_binding(namespace, f"svc-{i:02d}", "ClusterRole", f"payload-svc-{i:02d}", BOTH_USERS)
        pairs = {"metadata": {"name": "pairs"}, "rules": [_rule([p]) for p in visible["braces"]]}
        out.append((ROLES, pairs, namespace))
        role_binding(namespace, "pairs", "Role", "pairs", BOTH_USERS)
        role_binding(
            namespace, "zz-everything", "ClusterRole", "payload-everything", [_subject("User", USERS["all"])]
        )
    # Other namespaces: rules bound to the users there, never in scope of the measured namespaces.
    for namespace in OTHER_NAMESPACES:
        rules = [_rule([broad[i % 5] if i < 5 else f"{broad[i % 5]}{i}"]) for i in range(10)]
        out.append((ROLES, {"metadata": {"name": "payload-all"}, "rules": rules}, namespace))
        role_binding(namespace, "payload-all", "Role", "payload-all", BOTH_USERS)
    role_binding(EDITED[0], EDITED[1], "Role", "payload-all", [_subject("User", "someone-else")])
    return out


def applicable_patterns(user: str) -> list[str]:
    """The get patterns that apply to ``user`` in a measured namespace, by construction."""
    patterns = [p for group in _visible_patterns().values() for p in group] + _bulk_patterns()
    if user == USERS["all"]:
        patterns.append("**")
    return patterns


def expected_paths(namespace: str, user: str) -> frozenset[str]:
    """The repositories ``user`` may see, computed with the reference matcher, not the RBAC index."""
    patterns = applicable_patterns(user)
    return frozenset(p for p in repository_paths(namespace) if any(match(q, p) for q in patterns))


def rule_counts() -> dict[str, int]:
    """Rules in scope of one measured namespace, and in the whole cluster."""
    counts: Counter[str] = Counter()
    for resource, obj, namespace in rbac_objects():
        if resource in (ROLES, CLUSTERROLES):
            counts["cluster"] += len(obj["rules"])
            if resource is CLUSTERROLES or namespace == "bench":
                counts["in scope"] += len(obj["rules"])
    return dict(counts)


# --- the servers -------------------------------------------------------------------------------------

# The same server code as `payloadtags serve`, configured from Settings (JSON in argv[1]). On SIGUSR1 it
# writes a snapshot to argv[2]: a sequence number, the RBAC index generation (-1 without an index), and
# the time the cyclic garbage collector has run so far. That is how the benchmark learns that an RBAC
# edit has reached the server, and what GC costs a list; both servers run the same launcher. On SIGUSR2
# it times one full collection and counts the objects the GC tracks (once, at the end). With a third
# argument "freeze" it calls gc.freeze() once started (--what-if-gc-freeze, a suggested fix).
_LAUNCHER = """
import gc, json, os, signal, sys, time
from twisted.internet import defer, task
from payloadtags.logs import begin_logging
from payloadtags.registry import RegistrySettings
from payloadtags.server import start
from payloadtags.settings import Settings

values = json.loads(sys.argv[1])
snapshot_file = sys.argv[2]
settings = Settings(registry=RegistrySettings(**values.pop("registry")), **values)
state = {"seq": 0, "generation": None, "gc_seconds": 0.0, "gc_runs": 0, "gc_full": 0}
gc_started = [0.0]
index = [None]


def on_gc(phase, info):
    if phase == "start":
        gc_started[0] = time.perf_counter()
        return
    state["gc_seconds"] += time.perf_counter() - gc_started[0]
    state["gc_runs"] += 1
    state["gc_full"] += info["generation"] == 2


def snapshot(signum, frame):
    state["seq"] += 1
    state["generation"] = index[0].generation if index[0] is not None else -1
    with open(snapshot_file + ".tmp", "w") as f:
        json.dump(state, f)
    os.replace(snapshot_file + ".tmp", snapshot_file)


def census(signum, frame):
    started = time.perf_counter()
    gc.collect()
    seconds = time.perf_counter() - started
    report = {"tracked": len(gc.get_objects()), "full_collection_seconds": seconds}
    with open(snapshot_file + ".census.tmp", "w") as f:
        json.dump(report, f)
    os.replace(snapshot_file + ".census.tmp", snapshot_file + ".census")


async def main(reactor):
    begin_logging(settings.log_format, settings.verbosity)
    running = await start(reactor, settings)
    reactor.addSystemEventTrigger("before", "shutdown", lambda: defer.Deferred.fromCoroutine(running.stop()))
    authorizer = getattr(running.api.service, "authorizer", None)
    authorizer = getattr(authorizer, "inner", authorizer)
    index[0] = getattr(authorizer, "index", None)
    if sys.argv[3:] == ["freeze"]:  # what-if: start-up objects out of the GC's sight
        gc.collect()
        gc.freeze()
    gc.callbacks.append(on_gc)
    signal.signal(signal.SIGUSR1, snapshot)
    signal.signal(signal.SIGUSR2, census)
    await defer.Deferred()


task.react(lambda reactor: defer.Deferred.fromCoroutine(main(reactor)))
"""


@attrs.define
class Server:
    name: str
    process: subprocess.Popen[bytes]
    url: str
    snapshot_file: Path
    log_file: Path
    _seq: int = 0

    async def snapshot(self, reactor: Any, within: float = 5.0) -> dict[str, Any]:
        """Ask the server for a fresh snapshot (see _LAUNCHER) and wait for it."""
        self._seq += 1
        os.kill(self.process.pid, signal.SIGUSR1)
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            try:
                state: dict[str, Any] = json.loads(self.snapshot_file.read_text())
            except (OSError, ValueError):
                state = {}
            if state.get("seq", 0) >= self._seq and state.get("generation") is not None:
                self._seq = state["seq"]
                return state
            await deferLater(reactor, 0.002, lambda: None)
        raise RuntimeError(f"{self.name} wrote no snapshot within {within}s")

    async def census(self, reactor: Any, within: float = 10.0) -> dict[str, Any]:
        """One timed full collection in the server, and the number of objects its GC tracks."""
        target = self.snapshot_file.with_name(self.snapshot_file.name + ".census")
        os.kill(self.process.pid, signal.SIGUSR2)
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            try:
                census: dict[str, Any] = json.loads(target.read_text())
                return census
            except (OSError, ValueError):
                await deferLater(reactor, 0.01, lambda: None)
        raise RuntimeError(f"{self.name} wrote no census within {within}s")


def start_server(
    work: Path, name: str, mode: str, pki: Pki, registry_url: str, kubeconfig: Path, freeze: bool = False
) -> Server:
    port = free_port()
    values = {
        "registry": {"url": registry_url, "max_connections": CONCURRENCY},
        "registry_host": REGISTRY_HOST,
        "bind_address": "127.0.0.1",
        "secure_port": port,
        "tls_cert_file": str(pki.serving.cert_file),
        "tls_private_key_file": str(pki.serving.key_file),
        "client_ca_file": str(pki.client_ca.cert_file),
        "kubeconfig": str(kubeconfig),
        "authorization_mode": mode,
        "registry_concurrency": CONCURRENCY,
        "shutdown_grace_period": 5.0,
    }
    log_file = work / f"{name}.log"
    snapshot_file = work / f"{name}.snapshot"
    command = [
        str(ROOT / ".venv" / "bin" / "python"),
        "-c",
        _LAUNCHER,
        json.dumps(values),
        str(snapshot_file),
        *(["freeze"] if freeze else []),
    ]
    with log_file.open("wb") as log:
        process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,
            env=server_environ(),  # this tree's src first, also where .venv is another tree's
        )
    return Server(name, process, f"https://127.0.0.1:{port}", snapshot_file, log_file)


# --- the load generator ------------------------------------------------------------------------------

Pairs = frozenset[tuple[str, str]]


class Lister:
    """One user's view of one server, over one kept-alive HTTPS connection (as kube-apiserver keeps)."""

    def __init__(self, reactor: Any, server: Server, pki: Pki, user: Issued) -> None:
        self._reactor = reactor
        self._url = server.url
        self.pool = _pool(reactor, 1)
        creator = _ClientTLS(str(pki.server_ca.cert_file), str(user.cert_file), str(user.key_file))
        self._http = HTTPClient(Agent(reactor, contextFactory=_Policy(creator), pool=self.pool))

    async def list(self, namespace: str, table: bool) -> Pairs:
        headers = {"Accept": TABLE_ACCEPT if table else "application/json"}
        url = f"{self._url}{API}/namespaces/{namespace}/payloadrepositorytags"
        code, _, body = await _get(self._http, self._reactor, url, headers)
        if code != 200:
            raise RuntimeError(f"payloadtags answered {code}: {body[:300]!r}")
        document = json.loads(body)
        if table:
            if document.get("kind") != "Table":
                raise RuntimeError(f"expected a Table, got {document.get('kind')}")
            return frozenset((row["cells"][1], row["cells"][2]) for row in document["rows"])
        return frozenset((item["spec"]["repositoryPath"], item["spec"]["tag"]) for item in document["items"])


@attrs.frozen
class Variant:
    server: str  # "AlwaysAllow" or "RBAC"
    user: str  # a key of USERS
    table: bool

    @property
    def label(self) -> str:
        who = "" if self.server == "AlwaysAllow" else f" {USERS[self.user]}"
        return f"{self.server}{who} {'Table' if self.table else 'JSON'}"


@attrs.define
class Samples:
    wall: list[float] = attrs.Factory(list)
    cpu: dict[str, float] = attrs.Factory(dict)  # seconds summed over the samples, per process
    gc: dict[str, float] = attrs.Factory(dict)  # the answering server's GC, summed over the samples


@attrs.define
class Bench:
    reactor: Any
    listers: dict[tuple[str, str], Lister]  # (server, user key) -> Lister
    expected: dict[tuple[str, str, str], Pairs]  # (namespace, server, user key) -> pairs
    servers: dict[str, Server]  # by mode
    pids: dict[str, int]  # whose CPU time is read: both servers and the registry

    async def timed(self, namespace: str, variant: Variant, into: Samples | None) -> None:
        lister = self.listers[(variant.server, variant.user)]
        server = self.servers[variant.server]
        gc_before = await server.snapshot(self.reactor)
        before = {who: cpu_seconds(pid) for who, pid in self.pids.items()}
        started = time.perf_counter()
        pairs = await lister.list(namespace, variant.table)
        elapsed = time.perf_counter() - started
        after = {who: cpu_seconds(pid) for who, pid in self.pids.items()}
        gc_after = await server.snapshot(self.reactor)
        expected = self.expected[(namespace, variant.server, variant.user)]
        if pairs != expected:
            missing, extra = sorted(expected - pairs)[:5], sorted(pairs - expected)[:5]
            raise RuntimeError(f"{variant.label} on {namespace}: missing {missing}, extra {extra}")
        if gc_after["generation"] != gc_before["generation"]:
            raise RuntimeError(f"RBAC changed during a measured list ({variant.label} on {namespace})")
        if into is not None:
            into.wall.append(elapsed)
            for who in self.pids:
                into.cpu[who] = into.cpu.get(who, 0.0) + after[who] - before[who]
            for key in ("gc_seconds", "gc_runs", "gc_full"):
                into.gc[key] = into.gc.get(key, 0.0) + gc_after[key] - gc_before[key]


async def measure_warm(
    bench: Bench, namespace: str, variants: list[Variant], reps: int, budget: float, min_reps: int = 5
) -> dict[Variant, Samples]:
    for variant in variants:  # connections, the registry's caches, and the RBAC matchers
        for _ in range(2):
            await bench.timed(namespace, variant, None)
    samples = {v: Samples() for v in variants}
    started = time.monotonic()
    for i in range(reps):
        if i >= min_reps and time.monotonic() - started > budget:
            break
        for variant in variants[i % len(variants) :] + variants[: i % len(variants)]:
            await bench.timed(namespace, variant, samples[variant])
    return samples


async def wait_generation(reactor: Any, server: Server, above: int, within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if (await server.snapshot(reactor))["generation"] > above:
            return
        await deferLater(reactor, 0.002, lambda: None)
    raise RuntimeError(f"{server.name} did not see the RBAC edit within {within}s")


async def measure_cold(
    bench: Bench,
    kube: KubeApiDouble,
    rbac: Server,
    namespace: str,
    variants: list[Variant],
    rounds: int,
    budget: float,
    min_rounds: int = 6,
) -> dict[Variant, Samples]:
    """Each round: edit the unrelated RoleBinding, wait until the RBAC server has seen it, then measure
    one RBAC list (cold) and the AlwaysAllow list of the same format, alternating which goes first."""
    samples: dict[Variant, Samples] = {}
    started = time.monotonic()
    for i in range(rounds):
        if i >= min_rounds and time.monotonic() - started > budget:
            break
        cold = variants[i % len(variants)]
        baseline = Variant("AlwaysAllow", "half", cold.table)  # the user does not matter there
        generation = (await rbac.snapshot(bench.reactor))["generation"]
        kube.store.patch(
            ROLEBINDINGS, EDITED[1], {"metadata": {"annotations": {"bench/round": str(i)}}}, EDITED[0]
        )
        await wait_generation(bench.reactor, rbac, generation)
        order = [cold, baseline] if (i // len(variants)) % 2 == 0 else [baseline, cold]
        for variant in order:
            await bench.timed(namespace, variant, samples.setdefault(variant, Samples()))
    return samples


# --- the index alone, in this process ----------------------------------------------------------------


def _index_from(objects: list[Created]) -> RbacIndex:
    kinds = {ROLES: "Role", CLUSTERROLES: "ClusterRole", ROLEBINDINGS: "RoleBinding"}
    kinds[CLUSTERROLEBINDINGS] = "ClusterRoleBinding"
    by_kind: dict[str, list[dict[str, Any]]] = {}
    for resource, obj, namespace in objects:
        if resource in kinds:
            meta = dict(obj["metadata"], **({"namespace": namespace} if namespace else {}))
            by_kind.setdefault(kinds[resource], []).append(dict(obj, metadata=meta))
    index = RbacIndex()
    for kind, items in by_kind.items():
        index.replace(kind, items)
    return index


def _literal_prefix(pattern: str) -> str:
    for i, c in enumerate(pattern):
        if c in "*?[]{}\\":
            return pattern[:i]
    return pattern


def bucketed(patterns: tuple[PathPattern, ...]) -> Callable[[str], bool]:
    """What-if for the cold case: look literal patterns up in a set and try only the patterns whose
    literal prefix (the text before the first metacharacter) starts the path; a pattern matches whole
    paths only, so the answers are the same. Memoized per path like PathMatcher."""
    literals: set[str] = set()
    by_prefix: dict[str, list[PathPattern]] = {}
    for pattern in patterns:
        source = pattern.source.lower()
        prefix = _literal_prefix(source)
        if prefix == source:
            literals.add(source)
        else:
            by_prefix.setdefault(prefix, []).append(pattern)
    lengths = sorted({len(prefix) for prefix in by_prefix})

    memo: dict[str, bool] = {}  # as PathMatcher's

    def search(path: str) -> bool:
        low = path.lower()
        if low in literals:
            return True
        for n in lengths:
            if n > len(low):
                break
            for pattern in by_prefix.get(low[:n], ()):
                if pattern.matches(path):
                    return True
        return False

    def matches(path: str) -> bool:
        known = memo.get(path)
        if known is None:
            known = memo[path] = search(path)
        return known

    return matches


def _breakdown_once(
    objects: list[Created], sources: list[str], namespace: str, user: UserInfo
) -> tuple[dict[str, float], int]:
    """One cold-then-warm pass of the index over the tags of one list, timed piece by piece."""
    layout = LAYOUTS[namespace]
    tags = [p for p in repository_paths(namespace) for _ in layout.tags]  # one entry per tag, in list order
    times: dict[str, float] = {}

    def clock(what: str, fn: Callable[[], Any]) -> Any:
        started = time.perf_counter()
        result = fn()
        times[what] = time.perf_counter() - started
        return result

    index = _index_from(objects)
    clock("rebuild after an RBAC change", index._rebuild)
    clock("… of which compiling the patterns", lambda: [PathPattern.compile(s) for s in sources])
    matcher = clock("matcher for the user", lambda: index.matcher(user, "get", namespace))
    first = clock("first pass over the tags", lambda: [matcher.matches(p) for p in tags])
    kept = PathMatcher(False, matcher.patterns)
    clock("what-if: first pass, compiled patterns kept", lambda: [kept.matches(p) for p in tags])
    fresh = bucketed(tuple(PathPattern.compile(p.source) for p in matcher.patterns))
    bucket = clock("what-if: first pass, prefix buckets", lambda: [fresh(p) for p in tags])
    if bucket != first:
        raise RuntimeError("the prefix-bucket what-if disagrees with the index")
    reflectors = [SimpleNamespace(has_synced=True) for _ in range(4)]
    authorizer = RbacAuthorizer(index, ready=lambda: all(r.has_synced for r in reflectors))
    clock(
        "warm: allowed() for every tag", lambda: [authorizer.allowed(user, "get", namespace, p) for p in tags]
    )
    return times, len(matcher.patterns)


def index_breakdown(reps: int) -> dict[str, dict[str, float]]:
    """Median seconds of the pieces of a list's decisions, per (namespace, user), over ``reps`` runs,
    with the cyclic GC paused (the servers' GC time is measured in the servers)."""
    objects = rbac_objects()
    sources = [
        name
        for resource, obj, _ in objects
        if resource in (ROLES, CLUSTERROLES)
        for rule in obj["rules"]
        for name in rule.get("resourceNames", ())
    ]
    results: dict[str, dict[str, float]] = {}
    for namespace in LAYOUTS:
        for key, name in USERS.items():
            user = UserInfo(name=name, groups=(TEAM, AUTHENTICATED))
            runs = []
            for _ in range(reps):
                gc.collect()
                gc.disable()
                try:
                    runs.append(_breakdown_once(objects, sources, namespace, user))
                finally:
                    gc.enable()
            row = {what: statistics.median(t[what] for t, _ in runs) for what in runs[0][0]}
            row["patterns"] = float(runs[0][1])
            results[f"{namespace} {key}"] = row
    return results


# --- the run -----------------------------------------------------------------------------------------


def _variants(formats: tuple[bool, ...]) -> tuple[list[Variant], list[Variant]]:
    warm = [Variant(s, u, t) for t in formats for s, u in (("AlwaysAllow", "half"), ("RBAC", "half"))]
    warm += [Variant("RBAC", "all", t) for t in formats]
    cold = [Variant("RBAC", "half", False), Variant("RBAC", "all", False)]
    if True in formats:
        cold.append(Variant("RBAC", "half", True))
    return warm, cold


async def run(
    reactor: Any, args: argparse.Namespace, registry: RegistryServer, work: Path, started: list[Any]
) -> dict[str, Any]:
    assert registry.process is not None
    results: dict[str, Any] = {"setup_seconds": {}, "layouts": {}, "rules": rule_counts()}
    begin = time.monotonic()
    kube = KubeApiDouble(reactor, work / "kubeapi")
    kube.start()
    filler = Filler(registry.url)
    reactor.addSystemEventTrigger("before", "shutdown", filler.cancelled.set)
    servers: list[Server] = []
    listers: list[Lister] = []
    try:
        for resource, obj, namespace in rbac_objects():
            kube.store.create(resource, obj, namespace)
        kubeconfig = kube.write_kubeconfig(work / "kubeconfig")
        pki = await deferToThread(Pki.create, work / "pki")
        users = {key: pki.client_ca.client(name, (TEAM,)) for key, name in USERS.items()}

        repositories: list[tuple[str, tuple[str, ...]]] = []
        for namespace in args.layouts:
            layout = LAYOUTS[namespace]
            repositories += [(f"{namespace}/{p}", layout.tags) for p in repository_paths(namespace)]
        await deferToThread(filler.seed, *repositories[0])
        await deferToThread(filler.push_all, repositories[1:])
        results["setup_seconds"]["registry"] = time.monotonic() - begin

        for name, mode in (("allow", "AlwaysAllow"), ("rbac", "RBAC")):
            server = start_server(work, name, mode, pki, registry.url, kubeconfig, args.what_if_gc_freeze)
            servers.append(server)
            started.append(server.process)  # main() stops them too, should the reactor stop first
        for server in servers:
            await deferToThread(
                wait_ready, server.url, str(pki.server_ca.cert_file), server.process, server.log_file
            )
        results["setup_seconds"]["servers ready"] = time.monotonic() - begin

        by_mode = {"AlwaysAllow": servers[0], "RBAC": servers[1]}
        lister_of = {}
        for mode, server in by_mode.items():
            for key in USERS:
                lister_of[(mode, key)] = Lister(reactor, server, pki, users[key])
        listers = list(lister_of.values())
        expected: dict[tuple[str, str, str], Pairs] = {}
        for namespace in args.layouts:
            layout = LAYOUTS[namespace]
            everything = frozenset((p, t) for p in repository_paths(namespace) for t in layout.tags)
            for key, name in USERS.items():
                expected[(namespace, "AlwaysAllow", key)] = everything
                visible = expected_paths(namespace, name)
                expected[(namespace, "RBAC", key)] = frozenset(
                    pair for pair in everything if pair[0] in visible
                )
        pids = {"AlwaysAllow": servers[0].process.pid, "RBAC": servers[1].process.pid}
        pids["registry"] = registry.process.pid
        bench = Bench(reactor, lister_of, expected, by_mode, pids)

        for namespace in args.layouts:
            formats = (False, True) if namespace in args.table_for else (False,)
            warm_variants, cold_variants = _variants(formats)
            reps = args.reps if namespace == "bench" else max(5, args.reps // 2)
            rounds = args.cold_reps * len(cold_variants)
            print(f"# {namespace}: warm, {reps} rounds of {len(warm_variants)} lists", flush=True)
            warm = await measure_warm(bench, namespace, warm_variants, reps, args.budget)
            print(f"# {namespace}: cold, {rounds} rounds", flush=True)
            cold = await measure_cold(bench, kube, servers[1], namespace, cold_variants, rounds, args.budget)
            results["layouts"][namespace] = {
                "visible": {USERS[k]: len(expected[(namespace, "RBAC", k)]) for k in USERS},
                "warm": {v.label: attrs.asdict(s) for v, s in warm.items()},
                "cold": {v.label: attrs.asdict(s) for v, s in cold.items()},
            }
        results["rss_kib"] = {s.name: proc_status(s.process.pid) for s in servers}
        results["census"] = {s.name: await s.census(reactor) for s in servers}
        results["rbac_generation"] = (await servers[1].snapshot(reactor))["generation"]
    finally:
        for lister in listers:
            await lister.pool.closeCachedConnections()
        filler.close()
        for server in servers:
            await deferToThread(stop_process, server.process)
        await kube.stop()
    print("# the RBAC index alone, in this process", flush=True)
    results["index"] = await deferToThread(index_breakdown, args.index_reps)
    return results


# --- the report --------------------------------------------------------------------------------------


def _stats(samples: dict[str, Any], label: str) -> tuple[float, float, float, int]:
    """median, p90 (seconds), server CPU per list (seconds), count."""
    wall = samples[label]["wall"]
    server = "AlwaysAllow" if label.startswith("AlwaysAllow") else "RBAC"
    return (
        statistics.median(wall),
        percentile(wall, 0.9),
        samples[label]["cpu"][server] / len(wall),
        len(wall),
    )


def summarize(results: dict[str, Any]) -> str:
    ms = 1000.0
    rules = results["rules"]
    lines = [
        f"Rules: {rules['in scope']:,} in scope of each measured namespace, "
        f"{rules['cluster']:,} in the cluster.",
        "",
    ]
    for regime in ("warm", "cold"):
        lines += [
            f"{regime.capitalize()} lists (wall median / p90 ms; CPU of the answering server per list ms, "
            "of which its cyclic GC, and its full collections per list; ratio to AlwaysAllow of the same "
            "format: median, p90, CPU):",
            "",
            "| namespace | variant | n | visible tags | median / p90 | server CPU | GC | full GCs "
            "| ratio median | ratio p90 | ratio CPU |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for namespace, data in results["layouts"].items():
            samples = data[regime]
            for label in samples:
                med, p90, cpu, n = _stats(samples, label)
                base = "AlwaysAllow " + label.rsplit(" ", 1)[1]
                bmed, bp90, bcpu, _ = _stats(samples, base)
                user = next((u for u in USERS.values() if u in label), None)
                visible = data["visible"][user] if user else LAYOUTS[namespace].size
                ratio = (
                    f"{med / bmed:.2f} | {p90 / bp90:.2f} | {cpu / bcpu:.2f}"
                    if not label.startswith("AlwaysAllow")
                    else "1 | 1 | 1"
                )
                collected = samples[label]["gc"]
                gc_ms, full = collected["gc_seconds"] / n * ms, collected["gc_full"] / n
                lines.append(
                    f"| {namespace} | {label} | {n} | {visible:,} | {med * ms:.1f} / {p90 * ms:.1f} "
                    f"| {cpu * ms:.1f} | {gc_ms:.1f} | {full:.2f} | {ratio} |"
                )
        lines.append("")
    lines += [
        "The RBAC index alone, in this process, GC paused (median ms; bench: 100 distinct paths, "
        "flat: 1,000):",
        "",
    ]
    rows = list(results["index"].items())
    pieces = [k for k in rows[0][1] if k not in ("patterns", "paths")]
    lines.append("| piece | " + " | ".join(k for k, _ in rows) + " |")
    lines.append("|---|" + "---:|" * len(rows))
    lines.append(
        "| get patterns of the user | " + " | ".join(f"{int(v['patterns'])}" for _, v in rows) + " |"
    )
    for piece in pieces:
        lines.append(f"| {piece} | " + " | ".join(f"{v[piece] * ms:.2f}" for _, v in rows) + " |")
    setup = ", ".join(f"{k} {v:.1f}s" for k, v in results["setup_seconds"].items())
    rss = ", ".join(f"{k} {v['VmHWM'] / 1024:.1f} MiB" for k, v in results["rss_kib"].items())
    census = ", ".join(
        f"{k} {v['tracked']:,} objects, {v['full_collection_seconds'] * ms:.0f} ms"
        for k, v in results["census"].items()
    )
    lines += [
        "",
        f"Server peak RSS (VmHWM): {rss}",
        f"At the end, objects tracked by the GC and one full collection: {census}",
        f"Setup: {setup}; total {results['total_seconds']:.0f}s",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="bench only, fewer repetitions (about a minute)")
    parser.add_argument(
        "--layouts",
        type=lambda s: tuple(x for x in s.split(",") if x),
        help="namespaces to measure: bench (100 repositories x 10 tags), flat (1,000 x 1); default both, "
        "quick bench",
    )
    parser.add_argument("--reps", type=int, help="warm rounds on bench, half on flat (default 30, quick 8)")
    parser.add_argument("--cold-reps", type=int, help="cold lists per variant (default 12, quick 5)")
    parser.add_argument("--budget", type=float, help="seconds per phase at most (default 60, quick 20)")
    parser.add_argument("--index-reps", type=int, help="runs of the in-process breakdown (default 5)")
    parser.add_argument(
        "--table-for",
        type=lambda s: tuple(x for x in s.split(",") if x),
        default=("bench",),
        help="namespaces also listed as Table (default bench)",
    )
    parser.add_argument(
        "--what-if-gc-freeze",
        action="store_true",
        help="both servers call gc.freeze() once started (a suggested fix, not what payloadtags does)",
    )
    parser.add_argument("--json", type=Path, help="also write raw samples and results here")
    args = parser.parse_args(argv)
    args.layouts = args.layouts or (("bench",) if args.quick else tuple(LAYOUTS))
    if unknown := set(args.layouts) - set(LAYOUTS):
        parser.error(f"unknown layouts: {', '.join(sorted(unknown))}")
    args.reps = args.reps or (8 if args.quick else 30)
    args.cold_reps = args.cold_reps or (5 if args.quick else 12)
    args.budget = args.budget or (20.0 if args.quick else 60.0)
    args.index_reps = args.index_reps or (3 if args.quick else 5)
    if shutil.which("docker-registry") is None:
        print("docker-registry is not on PATH (apt-get install -y docker-registry)", file=sys.stderr)
        return 2

    results = run_with_registry(
        "payloadtags-rbac-bench-",
        lambda reactor, registry, work, started: run(reactor, args, registry, work, started),
    )
    if results is None:
        return 130
    print()
    print(f"Machine: {results['machine']}")
    if args.what_if_gc_freeze:
        print("WHAT-IF: both servers called gc.freeze() after start-up")
    print(summarize(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
