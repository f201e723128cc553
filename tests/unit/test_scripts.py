"""scripts/install and scripts/uninstall as a user runs them: from their own directory, with the overlay
of docs/install.md section 2 beside a copy of manifests/. A stand-in kubectl records each call, the
directory it was made from and what it read on stdin; it hands `kustomize` to the real kubectl and
answers the rest as kubectl 1.32 answers for a cluster the test describes: the kinds it serves (a
delete of an object of another kind fails as kubectl's does), and answers of its own for calls that
match a pattern, in turn, poll after poll. `date` and `sleep` are stand-ins on a clock the test reads,
so the scripts' waits take no time. scripts/check-deploy drives the same scripts with a plainer one."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs
import pytest
import yaml

# Renders the trees with the real kubectl: packaging, not the unit tier.
pytestmark = [pytest.mark.kubectl, pytest.mark.packaging]

ROOT = Path(__file__).resolve().parents[2]
APISERVICE = "apiservice/v1alpha1.payload-registry.deckhouse.io"
GENERATED_BY = "payload-registry.deckhouse.io/generated-by=payloadtags-registry"
Call = tuple[Path, list[str]]  # the directory kubectl ran in, its arguments
Answer = tuple[str, str, int]  # what kubectl prints on stdout, on stderr, and its exit status
# A call whose arguments (joined by spaces) match the pattern gets the answers in turn, the last one
# again and again.
Rule = tuple[str, list[Answer]]

STUB = """#!{python} -S
import json, os, re, sys
args = sys.argv[1:]
line = " ".join(args)
stdin = sys.stdin.read() if "-f" in args and args[args.index("-f") + 1:][:1] == ["-"] else ""
clock = int(open(os.environ["STUB_CLOCK"]).read())
with open(os.environ["STUB_LOG"], "a") as log:
    log.write(json.dumps([os.getcwd(), args, stdin, clock]) + "\\n")
kubectl = os.environ["REAL_KUBECTL"]
if args[0] == "kustomize":
    os.execv(kubectl, [kubectl, *args])
cluster = json.load(open(os.environ["STUB_CLUSTER"]))
counts = json.load(open(os.environ["STUB_COUNTS"]))
for index, (pattern, answers) in enumerate(cluster["rules"]):
    if re.search(pattern, line):
        turn = counts.get(str(index), 0)
        counts[str(index)] = turn + 1
        json.dump(counts, open(os.environ["STUB_COUNTS"], "w"))
        out, err, status = answers[min(turn, len(answers) - 1)]
        sys.stdout.write(out)
        sys.stderr.write(err)
        sys.exit(status)
if args[0] == "delete" and args[1] in ("-k", "-f"):
    import site, subprocess
    site.main()
    import yaml
    # kubectl deletes what it can map and fails on the objects of kinds the cluster does not serve.
    source = "STDIN" if args[2] == "-" else os.path.abspath(args[2])
    text = stdin if args[2] == "-" else subprocess.run(
        [kubectl, "kustomize", args[2]], capture_output=True, text=True, check=True
    ).stdout
    objects = [o for o in yaml.safe_load_all(text) if o]
    unserved = [o for o in objects if f"{{o['apiVersion']}} {{o['kind']}}" not in cluster["served"]]
    for o in unserved:
        meta = o["metadata"]
        where = f' namespace: "{{meta["namespace"]}}"' if "namespace" in meta else ""
        version = o["apiVersion"]
        print(f'error: resource mapping not found for name: "{{meta["name"]}}"{{where}} from "{{source}}": '
              f'no matches for kind "{{o["kind"]}}" in version "{{version}}"', file=sys.stderr)
        print("ensure CRDs are installed first", file=sys.stderr)
    sys.exit(1 if unserved else 0)
sys.exit(0)
"""
CLOCK_STUBS = {
    "date": '#!/bin/sh\n[ "$1" = +%s ] || exit 2\ncat "$STUB_CLOCK"\n',
    "sleep": '#!/bin/sh\necho $(( $(cat "$STUB_CLOCK") + $1 )) >"$STUB_CLOCK"\n',
}
START = 1_000_000  # the stand-in clock's time when a script starts

# (resource, short names, apiVersion, namespaced, kind) as `kubectl api-resources` lists them.
KUBERNETES = [
    ("configmaps", "cm", "v1", "true", "ConfigMap"),
    ("namespaces", "ns", "v1", "false", "Namespace"),
    ("pods", "po", "v1", "true", "Pod"),
    ("resourcequotas", "quota", "v1", "true", "ResourceQuota"),
    ("serviceaccounts", "sa", "v1", "true", "ServiceAccount"),
    ("services", "svc", "v1", "true", "Service"),
    ("apiservices", "", "apiregistration.k8s.io/v1", "false", "APIService"),
    ("deployments", "deploy", "apps/v1", "true", "Deployment"),
    ("networkpolicies", "netpol", "networking.k8s.io/v1", "true", "NetworkPolicy"),
    ("poddisruptionbudgets", "pdb", "policy/v1", "true", "PodDisruptionBudget"),
    ("clusterrolebindings", "", "rbac.authorization.k8s.io/v1", "false", "ClusterRoleBinding"),
    ("clusterroles", "", "rbac.authorization.k8s.io/v1", "false", "ClusterRole"),
    ("rolebindings", "", "rbac.authorization.k8s.io/v1", "true", "RoleBinding"),
    ("roles", "", "rbac.authorization.k8s.io/v1", "true", "Role"),
]
CERT_MANAGER = [
    ("certificates", "cert,certs", "cert-manager.io/v1", "true", "Certificate"),
    ("clusterissuers", "", "cert-manager.io/v1", "false", "ClusterIssuer"),
    ("issuers", "", "cert-manager.io/v1", "true", "Issuer"),
]
PROMETHEUS_OPERATOR = [("servicemonitors", "smon", "monitoring.coreos.com/v1", "true", "ServiceMonitor")]
ResourceRow = tuple[str, str, str, str, str]

CONDITION = r"^get apiservice/\S+ --request-timeout=\d+s -o jsonpath=.*\.status}"
RAW = r"^get --raw /apis/payload-registry\.deckhouse\.io/v1alpha1 --request-timeout=\d+s$"
RESOURCE_LIST = json.dumps(
    {
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": "payload-registry.deckhouse.io/v1alpha1",
        "resources": [{"name": "payloadrepositorytags", "namespaced": True, "kind": "PayloadRepositoryTag"}],
    }
)
# kube-apiserver's answer for a group whose APIService is not Available or whose server it cannot reach.
UNAVAILABLE: Answer = (
    "",
    "Error from server (ServiceUnavailable): the server is currently unable to handle the request\n",
    1,
)


def available(ca: str = "Q0EgMQ==") -> Answer:
    """The APIService's Available status and caBundle, as the scripts' jsonpath prints them."""
    return (f"True {ca}", "", 0)


def api_resources(rows: Sequence[ResourceRow]) -> Answer:
    """`kubectl api-resources --no-headers`: columns padded, SHORTNAMES blank where there are none. Like
    kubectl, it lists each group's preferred version only: here the first of the group in `rows`."""
    preferred: dict[str, str] = {}
    for row in rows:
        preferred.setdefault(row[2].rpartition("/")[0], row[2])
    rows = [row for row in rows if preferred[row[2].rpartition("/")[0]] == row[2]]
    widths = [max(len(row[i]) for row in rows) + 3 for i in range(4)]
    lines = [
        "".join(cell.ljust(width) for cell, width in zip(row[:4], widths, strict=True)) + row[4]
        for row in rows
    ]
    return ("\n".join(sorted(lines)) + "\n", "", 0)


def api_versions(rows: Sequence[ResourceRow]) -> Answer:
    """`kubectl api-versions`: every group/version served, preferred or not, sorted."""
    return ("".join(f"{version}\n" for version in sorted({row[2] for row in rows})), "", 0)


@attrs.frozen
class Run:
    result: subprocess.CompletedProcess[str]
    calls: list[Call]
    stdin: list[str]  # what each call read on stdin
    times: list[int]  # the stand-in clock at each call, from the script's start
    elapsed: int  # the stand-in clock at the end

    def words(self) -> list[str]:
        """The calls, each as one string."""
        return [" ".join(words) for _, words in self.calls]

    def stdin_of(self, pattern: str) -> list[dict[str, Any]]:
        """The objects the first call that matches read on stdin."""
        return [o for o in yaml.safe_load_all(self.stdin[self.called(pattern)[0]]) if o]

    def called(self, pattern: str) -> list[int]:
        """The indexes in words() of the calls that match."""
        return [i for i, line in enumerate(self.words()) if re.search(pattern, line)]


def _yaml_block(title: str) -> str:
    """The docs/install.md yaml block whose first line is `# <title>`."""
    for block in re.findall(r"```yaml\n(.*?)```", (ROOT / "docs" / "install.md").read_text(), re.S):
        if block.startswith(f"# {title}\n"):
            return str(block)
    raise AssertionError(f"docs/install.md has no yaml block for {title}")


@pytest.fixture
def own_repository(tmp_path: Path) -> Path:
    """docs/install.md section 2's layout: my-payloadtags/ next to a copy of manifests/."""
    repository = tmp_path / "ops"
    shutil.copytree(ROOT / "manifests", repository / "manifests")
    for tree in ("my-payloadtags", "my-payloadtags/apiservice"):
        (repository / tree).mkdir()
        (repository / tree / "kustomization.yaml").write_text(_yaml_block(f"{tree}/kustomization.yaml"))
    return repository


def _kubectl() -> str:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.fail("kubectl (1.32) must be on PATH: the scripts render the trees with it")
    return kubectl


def _render(tree: Path) -> list[dict[str, Any]]:
    out = subprocess.run(
        [_kubectl(), "kustomize", str(tree)], capture_output=True, text=True, check=True
    ).stdout
    return [o for o in yaml.safe_load_all(out) if o]


def _run(
    script: str,
    cwd: Path,
    tmp_path: Path,
    *args: str,
    rules: Sequence[Rule] = (),
    served: Sequence[ResourceRow] = (*KUBERNETES, *CERT_MANAGER, *PROMETHEUS_OPERATOR),
    env: dict[str, str] | None = None,
    settle: str | None = "4s",
) -> Run:
    """Runs the script against a cluster that serves `served` and answers as `rules` say, then as a
    healthy cluster: the APIService Available, the group answering through kube-apiserver. SETTLE is
    `settle` (None: the script's default), TIMEOUT the script's default unless `env` says."""
    stubs = tmp_path / "stubs"
    stubs.mkdir(exist_ok=True)
    (stubs / "kubectl").write_text(STUB.format(python=sys.executable))
    for name, text in CLOCK_STUBS.items():
        (stubs / name).write_text(text)
    for stub in stubs.iterdir():
        stub.chmod(0o755)
    state = {name: tmp_path / f"stub-{name}" for name in ("log", "cluster", "counts", "clock")}
    state["log"].write_text("")
    state["counts"].write_text("{}")
    state["clock"].write_text(str(START))
    healthy: list[Rule] = [
        (CONDITION, [available()]),
        (RAW, [(RESOURCE_LIST, "", 0)]),
        (r"^api-resources", [api_resources(served)]),
        (r"^api-versions$", [api_versions(served)]),
    ]
    state["cluster"].write_text(
        json.dumps({"rules": [*rules, *healthy], "served": [f"{row[2]} {row[4]}" for row in served]})
    )
    environment = {name: value for name, value in os.environ.items() if name not in ("TIMEOUT", "SETTLE")}
    environment.update(
        PATH=f"{stubs}:{os.environ['PATH']}",
        KUBECTL=str(stubs / "kubectl"),
        REAL_KUBECTL=_kubectl(),
        **{f"STUB_{name.upper()}": str(path) for name, path in state.items()},
    )
    if settle is not None:
        environment["SETTLE"] = settle
    environment.update(env or {})
    result = subprocess.run(
        [str(ROOT / "scripts" / script), *args],
        cwd=cwd,
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    entries = [json.loads(line) for line in state["log"].read_text().splitlines()]
    return Run(
        result=result,
        calls=[(Path(where), words) for where, words, _, _ in entries],
        stdin=[stdin for _, _, stdin, _ in entries],
        times=[clock - START for _, _, _, clock in entries],
        elapsed=int(state["clock"].read_text()) - START,
    )


def _trees(calls: list[Call], verb: str) -> list[Path]:
    """The trees of the `VERB -k TREE` calls, resolved from the directory kubectl was run in."""
    return [(where / words[2]).resolve() for where, words in calls if words[:2] == [verb, "-k"]]


def _rendered(calls: list[Call]) -> list[Path]:
    """The trees of the `kustomize TREE` calls, resolved from the directory kubectl was run in."""
    return [(where / words[1]).resolve() for where, words in calls if words[0] == "kustomize"]


# --- scripts/install ---------------------------------------------------------------------------------


def test_install_takes_a_relative_overlay_from_the_callers_directory(
    own_repository: Path, tmp_path: Path
) -> None:
    run = _run("install", own_repository, tmp_path, "my-payloadtags")
    assert run.result.returncode == 0, run.result.stderr
    overlay = own_repository / "my-payloadtags"
    assert _trees(run.calls, "apply") == [overlay, overlay / "apiservice"]


def test_install_takes_an_absolute_overlay_from_anywhere(own_repository: Path, tmp_path: Path) -> None:
    overlay = own_repository / "my-payloadtags"
    run = _run("install", tmp_path, tmp_path, str(overlay), str(overlay / "apiservice"))
    assert run.result.returncode == 0, run.result.stderr
    assert _trees(run.calls, "apply") == [overlay, overlay / "apiservice"]


def test_install_default_is_the_checkouts_tree_and_its_placeholders_are_refused(tmp_path: Path) -> None:
    run = _run("install", tmp_path, tmp_path)
    assert run.result.returncode == 1
    assert "the registry URL is still the placeholder" in run.result.stderr
    assert [(where / words[1]).resolve() for where, words in run.calls] == [
        ROOT / "manifests" / "cert-manager"
    ]
    assert run.calls[0][1][0] == "kustomize"


def test_install_checks_the_group_answers_for_settle_seconds(own_repository: Path, tmp_path: Path) -> None:
    run = _run("install", own_repository, tmp_path, "my-payloadtags", settle=None)
    assert run.result.returncode == 0, run.result.stderr
    words = run.words()
    (applied,) = run.called(r"^apply -k my-payloadtags/apiservice$")
    polls = run.called(RAW)
    # Every 2 s from the apply on, the condition and then the group, for the default SETTLE of 40 s.
    assert polls and min(polls) > applied
    assert [run.times[i] for i in run.called(CONDITION)] == list(range(0, 41, 2))
    assert len(polls) == 21 and run.elapsed == 40
    assert not [w for w in words if w.startswith("wait ")]
    assert "payloadtags is installed and v1alpha1.payload-registry.deckhouse.io answers" in run.result.stderr


def test_upgrade_with_a_stale_available_condition_is_not_called_installed(
    own_repository: Path, tmp_path: Path
) -> None:
    # review fixmanifests F1: the APIService was Available from the previous install, so `kubectl wait`
    # returned at once; kube-apiserver's proxy, on the new caBundle, fails the group a moment later.
    run = _run(
        "install",
        own_repository,
        tmp_path,
        "my-payloadtags",
        rules=[(RAW, [(RESOURCE_LIST, "", 0), UNAVAILABLE])],
        env={"TIMEOUT": "20s"},
    )
    assert run.result.returncode == 1, run.result.stderr
    words = run.words()
    assert words[-1] == f"delete {APISERVICE} --ignore-not-found"
    assert "is installed" not in run.result.stderr
    assert "the server is currently unable to handle the request" in run.result.stderr
    assert "did not keep answering through kube-apiserver for 4s within 20s" in run.result.stderr
    assert run.elapsed == 20  # polled to the end of TIMEOUT: it may come back, say once cert-manager injects


def test_upgrade_is_refused_when_kube_apiserver_rechecks_and_finds_the_group_gone(
    own_repository: Path, tmp_path: Path
) -> None:
    # A NetworkPolicy that keeps kube-apiserver out: connections it had stay up until the aggregator's
    # periodic check (every 30 s) opens a new one and marks the APIService unavailable.
    stale = [available()] * 15 + [("False ", "", 0)]
    run = _run(
        "install",
        own_repository,
        tmp_path,
        "my-payloadtags",
        rules=[(CONDITION, stale)],
        env={"TIMEOUT": "50s"},
        settle=None,
    )
    assert run.result.returncode == 1, run.result.stderr
    assert run.words()[-1] == f"delete {APISERVICE} --ignore-not-found"
    assert "last: the APIService is not Available (False)" in run.result.stderr
    assert run.elapsed == 50


def test_install_counts_settle_from_the_caBundle_that_answers(own_repository: Path, tmp_path: Path) -> None:
    # cert-manager's injector sets the caBundle a while after the apply, and may set it again.
    answers = [
        ("False ", "", 0),
        (" ", "", 0),
        available("Q0EgMQ=="),
        ("True Q0EgMQ==", "Warning: kubectl's warnings go to stderr, apart from what the script reads\n", 0),
        available("Q0EgMg=="),
    ]
    run = _run(
        "install",
        own_repository,
        tmp_path,
        "my-payloadtags",
        rules=[(CONDITION, answers)],
        env={"SETTLE": "10s"},
    )
    assert run.result.returncode == 0, run.result.stderr
    # polls at 0, 2 (not Available), 4, 6 (one caBundle), 8 (the other): 10 s from 8 on.
    assert run.elapsed == 18
    late = _run(
        "install",
        own_repository,
        tmp_path,
        "my-payloadtags",
        rules=[(CONDITION, answers)],
        env={"SETTLE": "10s", "TIMEOUT": "12s"},
    )
    assert late.result.returncode == 1
    assert "last: it answered at every check for 4s, not yet 10s." in late.result.stderr
    assert late.words()[-1] == f"delete {APISERVICE} --ignore-not-found"


def test_install_polls_the_group_only_when_the_apiservice_is_available(
    own_repository: Path, tmp_path: Path
) -> None:
    run = _run(
        "install",
        own_repository,
        tmp_path,
        "my-payloadtags",
        rules=[(CONDITION, [("", "", 0)])],
        env={"TIMEOUT": "5s", "SETTLE": "0"},
    )
    assert run.result.returncode == 1
    assert not run.called(RAW)
    assert "last: the APIService is not Available (no condition yet)" in run.result.stderr
    assert run.elapsed == 5


def test_install_refuses_a_settle_not_shorter_than_timeout(own_repository: Path, tmp_path: Path) -> None:
    # kubectl refuses "90" (a Go duration needs its unit), so the script does too, before applying anything.
    for env in (
        {"TIMEOUT": "40s"},
        {"TIMEOUT": "1m", "SETTLE": "1m"},
        {"TIMEOUT": "5 minutes"},
        {"TIMEOUT": "90"},
    ):
        run = _run("install", own_repository, tmp_path, "my-payloadtags", env=env, settle=None)
        assert run.result.returncode == 1, env
        assert run.calls == [], env
        assert "nothing was applied" in run.result.stderr
    run = _run(
        "install", own_repository, tmp_path, "my-payloadtags", env={"TIMEOUT": "1m30s", "SETTLE": "4s"}
    )
    assert run.result.returncode == 0, run.result.stderr
    assert run.elapsed == 4


def test_install_takes_timeout_and_settle_as_kubectl_takes_durations(
    own_repository: Path, tmp_path: Path
) -> None:
    # review r2fixmanifests N5: 1.5m, 500ms or 2m0.5s, which kubectl takes, were refused.
    for timeout, settle, elapsed in (("1.5m", "500ms", 2), ("2m0.5s", "1.5s", 2), ("300s", ".1m", 6)):
        run = _run(
            "install", own_repository, tmp_path, "my-payloadtags", env={"TIMEOUT": timeout}, settle=settle
        )
        assert run.result.returncode == 0, run.result.stderr
        assert run.elapsed == elapsed, (timeout, settle)
        assert (
            f"-n payloadtags-system rollout status deployment/payloadtags --timeout={timeout}" in run.words()
        )


def test_install_check_ends_about_timeout_after_it_began(own_repository: Path, tmp_path: Path) -> None:
    # review r2fixmanifests N6: each call waited up to 10 s however little of TIMEOUT was left.
    run = _run(
        "install",
        own_repository,
        tmp_path,
        "my-payloadtags",
        rules=[(RAW, [UNAVAILABLE])],
        env={"TIMEOUT": "13s"},
    )
    assert run.result.returncode == 1
    waits = [
        (run.times[i], int(re.findall(r"--request-timeout=(\d+)s", run.words()[i])[0]))
        for i in run.called(r"--request-timeout=")
    ]
    assert waits[0] == (0, 10)
    assert all(wait == max(1, min(10, 13 - time)) for time, wait in waits), waits
    assert waits[-1] == (13, 1)


def test_install_removes_the_auth_delegator_binding_once_the_new_server_runs(
    own_repository: Path, tmp_path: Path
) -> None:
    # review fixmanifests L1: earlier manifests bound the built-in system:auth-delegator.
    run = _run("install", own_repository, tmp_path, "my-payloadtags")
    assert run.result.returncode == 0, run.result.stderr
    (removed,) = run.called(r"^delete clusterrolebinding payloadtags:auth-delegator --ignore-not-found$")
    (apiservice,) = run.called(r"^apply -k my-payloadtags/apiservice$")
    assert apiservice < max(run.called(RAW)) < removed
    failed = _run(
        "install", own_repository, tmp_path, "my-payloadtags", rules=[(r"rollout status", [("", "", 1)])]
    )
    assert failed.result.returncode == 1
    assert not failed.called(r"^delete ")


def test_install_deletes_nothing_of_earlier_installs_when_the_group_check_fails(
    own_repository: Path, tmp_path: Path
) -> None:
    # review r2fixmanifests N1: the previous revision's registry ConfigMap was pruned before the check, so
    # `kubectl rollout undo` after a failed install started pods that could not find it.
    run = _run(
        "install",
        own_repository,
        tmp_path,
        "my-payloadtags",
        rules=[
            (
                rf"^-n payloadtags-system get configmap -l {GENERATED_BY} ",
                [("payloadtags-registry-prev", "", 0)],
            ),
            (RAW, [UNAVAILABLE]),
        ],
        env={"TIMEOUT": "10s"},
    )
    assert run.result.returncode == 1
    assert [w for w in run.words() if w.startswith(("delete", "-n payloadtags-system delete"))] == [
        f"delete {APISERVICE} --ignore-not-found"
    ]


def test_install_deletes_the_registry_configmaps_of_earlier_installs_only(
    own_repository: Path, tmp_path: Path
) -> None:
    # review fixmanifests L2: each registry change left its payloadtags-registry-<hash> behind.
    (current,) = [
        o["metadata"]["name"] for o in _render(own_repository / "my-payloadtags") if o["kind"] == "ConfigMap"
    ]
    listed = f"payloadtags-registry-old1 {current} payloadtags-registry-old2 payloadtags-registry-pinned"
    run = _run(
        "install",
        own_repository,
        tmp_path,
        "my-payloadtags",
        rules=[
            (rf"^-n payloadtags-system get configmap -l {GENERATED_BY} ", [(listed, "", 0)]),
            # The Deployment refers to one more (a user's hand edit, say): it stays.
            (
                r"^-n payloadtags-system get deployment/payloadtags ",
                [(f"{current} {current} payloadtags-registry-pinned", "", 0)],
            ),
        ],
    )
    assert run.result.returncode == 0, run.result.stderr
    deleted = [w.split()[4] for w in run.words() if w.startswith("-n payloadtags-system delete configmap ")]
    assert deleted == ["payloadtags-registry-old1", "payloadtags-registry-old2"]
    assert min(run.called(r"delete configmap")) > max(run.called(RAW))
    assert "deleted the ConfigMap payloadtags-registry-old1" in run.result.stderr


def test_install_leaves_configmaps_alone_when_the_tree_has_none_with_the_label(
    own_repository: Path, tmp_path: Path
) -> None:
    overlay = own_repository / "my-payloadtags" / "kustomization.yaml"
    overlay.write_text(
        overlay.read_text()
        + "- target: {kind: ConfigMap, name: payloadtags-registry}\n  patch: |-\n    - op: remove\n"
        + "      path: /metadata/labels/payload-registry.deckhouse.io~1generated-by\n"
    )
    assert not [
        o
        for o in _render(own_repository / "my-payloadtags")
        if o["kind"] == "ConfigMap" and len(o["metadata"]["labels"]) > 2
    ]
    run = _run(
        "install",
        own_repository,
        tmp_path,
        "my-payloadtags",
        rules=[(r"get configmap -l ", [("payloadtags-registry-old1", "", 0)])],
    )
    assert run.result.returncode == 0, run.result.stderr
    assert not run.called(r"configmap")
    assert "were left alone" in run.result.stderr


def test_install_says_so_when_a_leftover_cannot_be_deleted(own_repository: Path, tmp_path: Path) -> None:
    forbidden = (
        "",
        "Error from server (Forbidden): clusterrolebindings.rbac.authorization.k8s.io"
        ' "payloadtags:auth-delegator" is forbidden: User "ci" cannot delete resource\n',
        1,
    )
    run = _run(
        "install",
        own_repository,
        tmp_path,
        "my-payloadtags",
        rules=[(r"delete clusterrolebinding", [forbidden])],
    )
    # The APIService is still applied and checked; the exit status says something is left to do.
    assert run.result.returncode == 1
    assert run.called(RAW)
    assert "answers, but what earlier installs left could not all be" in run.result.stderr


# --- scripts/uninstall -------------------------------------------------------------------------------


def test_uninstall_takes_a_relative_overlay_from_the_callers_directory(
    own_repository: Path, tmp_path: Path
) -> None:
    run = _run("uninstall", own_repository, tmp_path, "my-payloadtags")
    assert run.result.returncode == 0, run.result.stderr
    assert _rendered(run.calls) == [own_repository / "my-payloadtags"]
    kinds = [o["kind"] for o in run.stdin_of(r"^delete -f -")]
    assert kinds == [o["kind"] for o in _render(own_repository / "my-payloadtags")]


def test_uninstall_default_is_the_checkouts_tree(tmp_path: Path) -> None:
    run = _run("uninstall", tmp_path, tmp_path)
    assert run.result.returncode == 0, run.result.stderr
    assert _rendered(run.calls) == [ROOT / "manifests" / "cert-manager"]


def test_uninstall_ends_the_pods_before_anything_else_goes(own_repository: Path, tmp_path: Path) -> None:
    # review fixmanifests N1: the server ran on while its RBAC went, and saw its own namespace deleted.
    run = _run("uninstall", own_repository, tmp_path, "my-payloadtags")
    assert run.result.returncode == 0, run.result.stderr
    assert run.words()[1:] == [
        f"delete {APISERVICE} --ignore-not-found --wait",
        "-n payloadtags-system delete deployment/payloadtags --ignore-not-found --cascade=foreground --wait"
        " --timeout=300s",
        "api-versions",
        "api-resources --no-headers",
        "delete -f - --ignore-not-found --wait",
        "delete clusterrolebinding payloadtags:auth-delegator --ignore-not-found",
    ]
    stuck = _run(
        "uninstall",
        own_repository,
        tmp_path,
        "my-payloadtags",
        rules=[(r"delete deployment", [("", "error: timed out waiting for the condition\n", 1)])],
    )
    assert stuck.result.returncode == 1
    assert stuck.words()[-1].startswith("-n payloadtags-system delete deployment/payloadtags")
    assert "the Deployment's pods did not end within 300s" in stuck.result.stderr


def test_uninstall_skips_the_kinds_whose_crds_are_gone(own_repository: Path, tmp_path: Path) -> None:
    # review fixmanifests L3: with cert-manager or the Prometheus Operator removed first, kubectl failed on
    # their kinds ("no matches for kind") and uninstall exited 1, though nothing of them was left.
    # The example overlay: cert-manager's certificates and the monitoring component's ServiceMonitor.
    example = "manifests/examples/overlay"
    run = _run("uninstall", own_repository, tmp_path, example, served=KUBERNETES)
    assert run.result.returncode == 0, run.result.stderr
    deleted = run.stdin_of(r"^delete -f -")
    rendered = _render(own_repository / example)
    gone = {"Certificate", "Issuer", "ServiceMonitor"}
    assert [o for o in rendered if o["kind"] not in gone] == deleted
    assert "the cluster no longer serves these kinds" in run.result.stderr
    assert "  Certificate payloadtags-serving (cert-manager.io/v1)\n" in run.result.stderr
    assert "  ServiceMonitor payloadtags (monitoring.coreos.com/v1)\n" in run.result.stderr
    assert run.words()[-1] == "delete clusterrolebinding payloadtags:auth-delegator --ignore-not-found"


def test_uninstall_deletes_an_object_of_a_served_version_that_is_not_the_preferred_one(
    own_repository: Path, tmp_path: Path
) -> None:
    # review r2fixmanifests L1: api-resources lists each group's preferred version only, so an overlay's
    # HorizontalPodAutoscaler in autoscaling/v1 (preferred: autoscaling/v2) was skipped as if its CRD were
    # gone, and left in the cluster.
    overlay = own_repository / "my-payloadtags"
    (overlay / "hpa.yaml").write_text(
        "apiVersion: autoscaling/v1\nkind: HorizontalPodAutoscaler\nmetadata:\n  name: payloadtags\n"
        "  namespace: payloadtags-system\nspec:\n  scaleTargetRef: {apiVersion: apps/v1, kind: Deployment,"
        " name: payloadtags}\n  maxReplicas: 4\n"
    )
    kustomization = overlay / "kustomization.yaml"
    kustomization.write_text(kustomization.read_text().replace("resources:\n", "resources:\n- hpa.yaml\n", 1))
    autoscaling = [
        ("horizontalpodautoscalers", "hpa", f"autoscaling/{version}", "true", "HorizontalPodAutoscaler")
        for version in ("v2", "v1")
    ]
    run = _run(
        "uninstall",
        own_repository,
        tmp_path,
        "my-payloadtags",
        served=[*KUBERNETES, *CERT_MANAGER, *PROMETHEUS_OPERATOR, *autoscaling],
    )
    assert run.result.returncode == 0, run.result.stderr
    assert "no longer serves" not in run.result.stderr
    assert "HorizontalPodAutoscaler" in [o["kind"] for o in run.stdin_of(r"^delete -f -")]
    # A kind gone from a group whose preferred version is still served (one CRD of several removed).
    run = _run(
        "uninstall",
        own_repository,
        tmp_path,
        "manifests/examples/overlay",
        served=[*KUBERNETES, *CERT_MANAGER[1:], *PROMETHEUS_OPERATOR],
    )
    assert run.result.returncode == 0, run.result.stderr
    assert "  Certificate payloadtags-serving (cert-manager.io/v1)\n" in run.result.stderr
    assert "Issuer" in [o["kind"] for o in run.stdin_of(r"^delete -f -")]


def test_uninstall_takes_a_group_whose_discovery_failed_as_served(
    own_repository: Path, tmp_path: Path
) -> None:
    # kubectl api-resources lists what it could and exits 1 naming the groups it could not list.
    listing, _, _ = api_resources(KUBERNETES + CERT_MANAGER)
    partial = (
        listing,
        "error: unable to retrieve the complete list of server APIs: monitoring.coreos.com/v1: the server is"
        " currently unable to handle the request, metrics.k8s.io/v1beta1: stale GroupVersion discovery\n",
        1,
    )
    example = "manifests/examples/overlay"
    run = _run(
        "uninstall",
        own_repository,
        tmp_path,
        example,
        served=KUBERNETES + CERT_MANAGER,
        rules=[(r"^api-resources", [partial])],
    )
    assert run.result.returncode == 1  # kubectl's delete of the ServiceMonitor failed: not hidden
    assert 'no matches for kind "ServiceMonitor" in version "monitoring.coreos.com/v1"' in run.result.stderr
    deleted = [o["kind"] for o in run.stdin_of(r"^delete -f -")]
    assert "ServiceMonitor" in deleted and "Certificate" in deleted
    # review r2fixmanifests N4: a failed group is named exactly, not found inside another's name
    # (cert-manager.io/v1 in acme.cert-manager.io/v1, v1 in any .../v1).
    acme = (
        api_resources(KUBERNETES + PROMETHEUS_OPERATOR)[0],
        "error: unable to retrieve the complete list of server APIs: acme.cert-manager.io/v1: the"
        " server is currently unable to handle the request, custom.example.com/v1: stale GroupVersion"
        " discovery\n",
        1,
    )
    run = _run(
        "uninstall",
        own_repository,
        tmp_path,
        example,
        served=KUBERNETES + PROMETHEUS_OPERATOR,
        rules=[(r"^api-resources", [acme])],
    )
    assert run.result.returncode == 0, run.result.stderr
    assert "  Certificate payloadtags-serving (cert-manager.io/v1)\n" in run.result.stderr
    assert "Certificate" not in [o["kind"] for o in run.stdin_of(r"^delete -f -")]


def test_uninstall_still_fails_on_a_real_failure(own_repository: Path, tmp_path: Path) -> None:
    forbidden = (
        "",
        "Error from server (Forbidden): roles.rbac.authorization.k8s.io"
        ' "payloadtags:leader-election" is forbidden\n',
        1,
    )
    run = _run(
        "uninstall",
        own_repository,
        tmp_path,
        "my-payloadtags",
        served=KUBERNETES,
        rules=[(r"^delete -f -", [forbidden])],
    )
    assert run.result.returncode == 1
    assert "payloadtags is removed" not in run.result.stderr
    unreachable = ("", "couldn't get current server API group list: connection refused\n", 1)
    run = _run(
        "uninstall", own_repository, tmp_path, "my-payloadtags", rules=[(r"^api-resources", [unreachable])]
    )
    assert run.result.returncode == 1
    assert "connection refused" in run.result.stderr
    assert not run.called(r"^delete -f -")
    unreachable = (
        "",
        'error: couldn\'t get available api versions from server: Get "https://127.0.0.1:6443/api?timeout=32s":'
        " dial tcp 127.0.0.1:6443: connect: connection refused\n",
        1,
    )
    run = _run(
        "uninstall", own_repository, tmp_path, "my-payloadtags", rules=[(r"^api-versions$", [unreachable])]
    )
    assert run.result.returncode == 1
    assert "connect: connection refused" in run.result.stderr
    assert "did not list the cluster's API versions" in run.result.stderr
    assert not run.called(r"^delete -f -")


def test_demo_says_what_it_installs_before_setup_runs(tmp_path: Path) -> None:
    # review-newcomer N1: scripts/setup takes minutes on a fresh machine; the demo said nothing first.
    (tmp_path / "scripts").mkdir()
    shutil.copy2(ROOT / "scripts" / "demo", tmp_path / "scripts" / "demo")
    (tmp_path / ".venv" / "bin").mkdir(parents=True)
    for stub, text in (("scripts/setup", "echo SETUP\n"), (".venv/bin/python", 'echo "DEMO $*"\n')):
        (tmp_path / stub).write_text("#!/bin/sh\n" + text)
        (tmp_path / stub).chmod(0o755)
    result = subprocess.run(
        [str(tmp_path / "scripts" / "demo")], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "demo: installing what it needs (docker-registry from apt, .venv from requirements.lock): "
        "a few minutes on a fresh machine, seconds once done",
        "SETUP",
        "DEMO scripts/demo.py",
    ]


# --- scripts/setup on a fresh Debian 12 --------------------------------------------------------------

# The system python3 as a fresh Debian has it before python3-venv: no ensurepip. It logs every call.
FRESH_PYTHON = """#!/bin/sh
printf '%s\\n' "$*" >>"$STUBS/python3.log"
case "$*" in *"import ensurepip"*) [ -e "$STUBS/python3-venv" ] || exit 1 ;; esac
exec /usr/bin/python3 "$@"
"""
APT_GET = """#!/bin/sh
printf '%s\\n' "$*" >>"$STUBS/apt-get.log"
case "$*" in install*python3-venv*) : >"$STUBS/python3-venv" ;; esac
"""
DPKG = """#!/bin/sh
echo "python3.11-minimal: $2"
"""


def test_setup_without_uv_installs_python3_venv_and_leaves_the_system_python_alone(tmp_path: Path) -> None:
    # Debian's python3 is externally managed (PEP 668) and may have no pip: setup must neither pip
    # install into it nor need it, but make .venv with the venv module and bring uv into .venv.
    if shutil.which("uv", path="/usr/bin:/bin"):
        pytest.fail("this test needs a PATH without uv: /usr/bin or /bin has one")
    stubs = tmp_path / "stubs"
    stubs.mkdir()
    for name, text in (("python3", FRESH_PYTHON), ("apt-get", APT_GET), ("dpkg", DPKG)):
        (stubs / name).write_text(text)
        (stubs / name).chmod(0o755)
    for tool in ("kubectl", "docker-registry"):
        found = shutil.which(tool)
        assert found, f"{tool} must be on PATH"
        (stubs / tool).symlink_to(found)
    # The project as a clone has it, with a lock of uv alone: the install of every package is uv's
    # business, and the bootstrap of uv is what this test is about.
    tree = tmp_path / "clone"
    shutil.copytree(ROOT / "src", tree / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    (tree / "scripts").mkdir()
    shutil.copy2(ROOT / "scripts" / "setup", tree / "scripts" / "setup")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, tree / name)
    (uv_pin,) = [
        line for line in (ROOT / "requirements.lock").read_text().splitlines() if line.startswith("uv==")
    ]
    (tree / "requirements.lock").write_text(uv_pin + "\n")
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHON", "UV")}
    env.update(PATH=f"{stubs}:/usr/bin:/bin", STUBS=str(stubs))

    def setup() -> list[str]:
        result = subprocess.run(
            [str(tree / "scripts" / "setup")],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        return [line for line in result.stdout.splitlines() if line.startswith("setup: ")]

    # It says what it does in its long steps (review-newcomer N1: minutes without a word).
    assert setup() == [
        "setup: installing python3-venv from apt",
        "setup: making .venv (a virtual environment for payloadtags and its tests)",
        "setup: installing the packages of requirements.lock and payloadtags into .venv",
    ]
    assert (stubs / "apt-get.log").read_text().splitlines() == [
        "update -qq",
        "install -y -qq python3-venv",
    ]
    system_python = (stubs / "python3.log").read_text().splitlines()
    assert "-m venv .venv" in system_python
    assert not [call for call in system_python if call.startswith("-m pip")], system_python
    version = subprocess.run(
        [tree / ".venv" / "bin" / "uv", "--version"], capture_output=True, text=True, check=True, timeout=60
    )
    assert version.stdout.split()[:2] == ["uv", uv_pin.removeprefix("uv==")]
    subprocess.run([tree / ".venv" / "bin" / "python", "-c", "import payloadtags"], check=True, timeout=60)

    # Again: with the uv now in .venv, and nothing more from apt.
    assert setup() == ["setup: installing the packages of requirements.lock and payloadtags into .venv"]
    assert len((stubs / "apt-get.log").read_text().splitlines()) == 2
