"""The kustomize trees under manifests/: rendered by the real kubectl, every object checked against the
Kubernetes 1.32 JSON schemas (kubernetes-validate, offline), and the properties a cluster operator relies
on asserted one by one: least-privilege RBAC, the pod's security context, probes, availability, and the
APIService and its TLS wiring.

cert-manager kinds have no schema in kubernetes-validate; a small strict schema of the fields we use
(below) and cross-references to the Deployment stand in for it.
"""

from __future__ import annotations

import copy
import os
import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import kubernetes_validate.utils
import pytest
import yaml

from payloadtags.access.authn import UserInfo
from payloadtags.access.rbac import RbacIndex
from payloadtags.cli import _parser, settings_from
from payloadtags.registry import CARRIED_DELETE_TIMEOUTS
from tests.support.networkpolicy import admission_problems

# Renders and validates the deployment trees with kubectl and the schemas: packaging, not the unit tier.
pytestmark = [pytest.mark.kubectl, pytest.mark.packaging]

ROOT = Path(__file__).resolve().parents[2]
MANIFESTS = ROOT / "manifests"
K8S_VERSION = "1.32.0"

NAMESPACE = "payloadtags-system"
SERVICE_ACCOUNT = "payloadtags"
SERVICE = "payloadtags"
GROUP = "payload-registry.deckhouse.io"
APISERVICE = f"v1alpha1.{GROUP}"
POD_LABELS = {"app.kubernetes.io/name": "payloadtags", "app.kubernetes.io/component": "apiserver"}
CERT_MANAGER = "cert-manager.io/v1"
PROMETHEUS_OPERATOR = "monitoring.coreos.com/v1"  # no schema in kubernetes-validate either

Obj = dict[str, Any]
Mutant = Callable[[list[Obj]], object]


# --- rendering ----------------------------------------------------------------------------------------


def kustomize(tree: str) -> list[Obj]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.fail("kubectl (1.32) must be on PATH: it renders the manifests (kubectl kustomize)")
    result = subprocess.run(
        [kubectl, "kustomize", str(MANIFESTS / tree)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, f"kubectl kustomize manifests/{tree} failed:\n{result.stderr}"
    return [obj for obj in yaml.safe_load_all(result.stdout) if obj]


def examples() -> list[Obj]:
    objects = []
    for path in sorted((MANIFESTS / "examples").glob("*.yaml")):
        objects += [obj for obj in yaml.safe_load_all(path.read_text()) if obj]
    return objects


@pytest.fixture(scope="module")
def base() -> list[Obj]:
    return kustomize("")


@pytest.fixture(scope="module")
def with_cert_manager() -> list[Obj]:
    return kustomize("cert-manager")


def key(obj: Obj) -> tuple[str, str, str]:
    meta = obj["metadata"]
    return obj["kind"], meta.get("namespace", ""), meta["name"]


def one(objects: list[Obj], kind: str, name: str | None = None) -> Obj:
    found = [o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {[key(o) for o in found]}"
    return found[0]


def of_kind(objects: list[Obj], kind: str) -> list[Obj]:
    return [o for o in objects if o["kind"] == kind]


def project_version() -> str:
    return str(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"])


# --- schemas ------------------------------------------------------------------------------------------


def test_kubernetes_validate_has_the_target_version() -> None:
    assert "1.32.0" in kubernetes_validate.utils.all_versions()
    namespace = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "x"}}
    assert kubernetes_validate.validate(namespace, K8S_VERSION, strict=True) == "1.32"


def test_strict_validation_rejects_unknown_fields() -> None:
    # Guards the guard: a misspelt field must fail, not pass silently.
    typo = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "x"}, "spec": {"finalisers": []}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(typo, K8S_VERSION, strict=True)


@pytest.mark.parametrize(
    "tree",
    [
        "",
        "cert-manager",
        "apiservice",
        "cert-manager/apiservice",
        "examples/overlay",
        "examples/overlay/apiservice",
        "examples",
    ],
)
def test_every_object_validates(tree: str) -> None:
    objects = examples() if tree == "examples" else kustomize(tree)
    assert objects
    problems = []
    for obj in objects:
        if obj["apiVersion"] in (CERT_MANAGER, PROMETHEUS_OPERATOR):
            continue  # test_cert_manager_objects_are_well_formed; scripts/check-deploy's install checks
        try:
            kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as error:
            where = ".".join(str(p) for p in error.path)
            problems.append(f"{key(obj)} {where}: {error.message}")
        except kubernetes_validate.SchemaNotFoundError as error:
            problems.append(f"{key(obj)}: {error.message}")
    assert not problems, "\n".join(problems)


# --- what the base installs -----------------------------------------------------------------------------


def test_base_installs_exactly_these_objects(base: list[Obj]) -> None:
    configmaps = of_kind(base, "ConfigMap")
    assert len(configmaps) == 1 and configmaps[0]["metadata"]["name"].startswith("payloadtags-registry-")
    assert sorted(key(o) for o in base if o["kind"] != "ConfigMap") == sorted(
        [
            ("Namespace", "", NAMESPACE),
            ("ServiceAccount", NAMESPACE, SERVICE_ACCOUNT),
            ("ClusterRole", "", "payloadtags:token-reviewer"),
            ("ClusterRoleBinding", "", "payloadtags:token-reviewer"),
            ("RoleBinding", "kube-system", "payloadtags:authentication-reader"),
            ("ClusterRole", "", "payloadtags:server"),
            ("ClusterRoleBinding", "", "payloadtags:server"),
            ("Role", NAMESPACE, "payloadtags:leader-election"),
            ("RoleBinding", NAMESPACE, "payloadtags:leader-election"),
            ("ClusterRole", "", "payloadtags:payloadrepositorytags"),
            ("ClusterRoleBinding", "", "payloadtags:payloadrepositorytags"),
            ("Service", NAMESPACE, SERVICE),
            ("Deployment", NAMESPACE, "payloadtags"),
            ("PodDisruptionBudget", NAMESPACE, "payloadtags"),
            ("ResourceQuota", NAMESPACE, "payloadtags-critical-pods"),
        ]
    )


def test_the_apiservice_is_a_tree_of_its_own(base: list[Obj], with_cert_manager: list[Obj]) -> None:
    # Applied only once the server is ready (scripts/install): an APIService whose service is not ready
    # stalls namespace deletion in the whole cluster.
    assert not of_kind(base, "APIService") and not of_kind(with_cert_manager, "APIService")
    for tree in ("apiservice", "cert-manager/apiservice", "examples/overlay/apiservice"):
        assert [key(o) for o in kustomize(tree)] == [("APIService", "", APISERVICE)], tree


def test_pods_are_system_cluster_critical(pod: Obj) -> None:
    assert pod["priorityClassName"] == "system-cluster-critical"


def test_the_critical_pods_have_a_quota_for_their_priority_class(base: list[Obj], deployment: Obj) -> None:
    # r1ops L3: kube-apiserver can admit pods of a critical priority class only in namespaces with a
    # ResourceQuota covering that class (AdmissionConfiguration `limitedResources`; GKE ships it), and
    # the pods then count against it: far more room than a rollout of many replicas takes with its old
    # pods still terminating (the quota counts them until their grace period ends), so that scaling the
    # Deployment never stalls a rollout on the quota.
    quota = one(base, "ResourceQuota")
    pod = deployment["spec"]["template"]["spec"]
    assert quota["metadata"]["namespace"] == deployment["metadata"]["namespace"] == NAMESPACE
    assert quota["spec"]["scopeSelector"] == {
        "matchExpressions": [
            {"scopeName": "PriorityClass", "operator": "In", "values": [pod["priorityClassName"]]}
        ]
    }
    # Pods only: a quota on cpu or memory would make every pod of the namespace declare them.
    assert list(quota["spec"]["hard"]) == ["pods"] and "scopes" not in quota["spec"]
    replicas = deployment["spec"]["replicas"]
    surge = deployment["spec"]["strategy"]["rollingUpdate"]["maxSurge"]
    assert int(quota["spec"]["hard"]["pods"]) >= 10 * (replicas + surge + replicas + 1)


def test_no_secret_is_shipped(base: list[Obj], with_cert_manager: list[Obj]) -> None:
    # Credentials and keys are created in the cluster (by the operator or cert-manager), never applied
    # from here: a re-apply must not overwrite them with placeholders.
    assert not of_kind(base, "Secret") and not of_kind(with_cert_manager, "Secret")


def test_namespace_enforces_restricted_pod_security(base: list[Obj]) -> None:
    labels = one(base, "Namespace")["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"


def test_every_namespaced_object_is_in_the_server_namespace(base: list[Obj]) -> None:
    cluster_scoped = {"Namespace", "ClusterRole", "ClusterRoleBinding", "APIService"}
    for obj in base:
        kind, namespace, name = key(obj)
        if kind in cluster_scoped:
            assert namespace == "", key(obj)
        elif (kind, name) == ("RoleBinding", "payloadtags:authentication-reader"):
            assert namespace == "kube-system"
        else:
            assert namespace == NAMESPACE, key(obj)


# --- RBAC ---------------------------------------------------------------------------------------------

ROLE_KINDS = ("Role", "ClusterRole")
BINDING_KINDS = ("RoleBinding", "ClusterRoleBinding")
DANGEROUS_VERBS = {"*", "escalate", "bind", "impersonate", "patch", "deletecollection"}


def _rules(role: Obj) -> list[Obj]:
    return [
        {
            "apiGroups": sorted(r.get("apiGroups", [])),
            "resources": sorted(r.get("resources", [])),
            "verbs": sorted(r.get("verbs", [])),
            **({"resourceNames": sorted(r["resourceNames"])} if r.get("resourceNames") else {}),
        }
        for r in role.get("rules", [])
    ]


def _rule(groups: list[str], resources: list[str], verbs: list[str]) -> Obj:
    return {"apiGroups": sorted(groups), "resources": sorted(resources), "verbs": sorted(verbs)}


def _bindings_of_service_account(objects: list[Obj]) -> set[tuple[str, str, str]]:
    """(binding namespace, role kind, role name) of every binding naming our ServiceAccount."""
    found = set()
    for binding in objects:
        if binding["kind"] not in BINDING_KINDS:
            continue
        for subject in binding.get("subjects", []):
            if (subject["kind"], subject.get("namespace"), subject["name"]) == (
                "ServiceAccount",
                NAMESPACE,
                SERVICE_ACCOUNT,
            ):
                ref = binding["roleRef"]
                found.add((binding["metadata"].get("namespace", ""), ref["kind"], ref["name"]))
    return found


def test_server_account_has_exactly_the_expected_bindings(base: list[Obj]) -> None:
    assert _bindings_of_service_account(base) == {
        ("", "ClusterRole", "payloadtags:token-reviewer"),
        ("kube-system", "Role", "extension-apiserver-authentication-reader"),
        ("", "ClusterRole", "payloadtags:server"),
        (NAMESPACE, "Role", "payloadtags:leader-election"),
    }


def test_token_reviewer_role_creates_token_reviews_only(base: list[Obj]) -> None:
    # Not system:auth-delegator: it also grants SubjectAccessReviews, which the server never creates
    # (RBAC is evaluated in-process).
    role = one(base, "ClusterRole", "payloadtags:token-reviewer")
    assert _rules(role) == [_rule(["authentication.k8s.io"], ["tokenreviews"], ["create"])]
    assert "aggregationRule" not in role


def test_the_server_creates_no_subject_access_reviews() -> None:
    # What the token-reviewer role leaves out must stay unused: the only review the code creates is a
    # TokenReview.
    source = "\n".join(path.read_text() for path in (ROOT / "src" / "payloadtags").rglob("*.py"))
    assert "/apis/authentication.k8s.io/v1/tokenreviews" in source
    assert not re.search(r"(?i)subjectaccessreview", source)


def test_server_cluster_role_reads_rbac_objects_and_namespaces(base: list[Obj]) -> None:
    role = one(base, "ClusterRole", "payloadtags:server")
    assert _rules(role) == [
        # RBAC objects: list+watch only (the reflectors of payloadtags.cluster).
        _rule(
            ["rbac.authorization.k8s.io"],
            ["roles", "clusterroles", "rolebindings", "clusterrolebindings"],
            ["list", "watch"],
        ),
        # Namespaces: list+watch, and get for the cleanup's re-check of one namespace before it deletes.
        _rule([""], ["namespaces"], ["get", "list", "watch"]),
    ]
    assert "aggregationRule" not in role


def test_leader_election_role_is_leases_in_own_namespace(base: list[Obj], tmp_path: Path) -> None:
    role = one(base, "Role", "payloadtags:leader-election")
    assert role["metadata"]["namespace"] == NAMESPACE
    # get and update reach only the Lease the server uses, as the Deployment's args set it up;
    # create cannot be limited by name (RBAC sees no name on a create).
    lease = _startup_settings(base, tmp_path).leader_elect_resource_name
    assert lease == "payloadtags-cleanup"
    assert _rules(role) == [
        {**_rule(["coordination.k8s.io"], ["leases"], ["get", "update"]), "resourceNames": [lease]},
        _rule(["coordination.k8s.io"], ["leases"], ["create"]),
    ]


def test_tags_are_available_to_all_authenticated_users(base: list[Obj]) -> None:
    role = one(base, "ClusterRole", "payloadtags:payloadrepositorytags")
    # Exactly the verbs the API serves; access per path is PayloadRepositoryAccess's business.
    assert _rules(role) == [
        _rule([GROUP], ["payloadrepositorytags"], ["get", "list", "watch", "delete", "deletecollection"])
    ]
    binding = one(base, "ClusterRoleBinding", "payloadtags:payloadrepositorytags")
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "ClusterRole",
        "name": "payloadtags:payloadrepositorytags",
    }
    assert binding["subjects"] == [
        {"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": "system:authenticated"}
    ]


def test_no_wildcards_secrets_or_escalation_anywhere(base: list[Obj], with_cert_manager: list[Obj]) -> None:
    for role in [o for o in base + with_cert_manager if o["kind"] in ROLE_KINDS]:
        assert "aggregationRule" not in role, key(role)
        for rule in role.get("rules", []):
            assert "nonResourceURLs" not in rule, key(role)
            for field in ("apiGroups", "resources", "verbs", "resourceNames"):
                assert "*" not in rule.get(field, []), (key(role), field)
            assert not {"secrets", "configmaps", "pods", "serviceaccounts", "serviceaccounts/token"} & set(
                rule["resources"]
            ), key(role)
            allowed_dangerous = (
                {"deletecollection"} if role["metadata"]["name"].endswith("repositorytags") else set()
            )
            assert not (DANGEROUS_VERBS - allowed_dangerous) & set(rule["verbs"]), key(role)


def test_bindings_name_only_our_account_or_all_authenticated(base: list[Obj]) -> None:
    for binding in [o for o in base if o["kind"] in BINDING_KINDS]:
        for subject in binding["subjects"]:
            assert subject in (
                {"kind": "ServiceAccount", "name": SERVICE_ACCOUNT, "namespace": NAMESPACE},
                {"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": "system:authenticated"},
            ), key(binding)
        if binding["roleRef"]["name"] not in ("extension-apiserver-authentication-reader",):
            # Our own roles exist in the base; the built-in one exists in every cluster.
            assert any(
                r["kind"] == binding["roleRef"]["kind"]
                and r["metadata"]["name"] == binding["roleRef"]["name"]
                for r in base
            ), key(binding)


# --- the Deployment -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def deployment(base: list[Obj]) -> Obj:
    return one(base, "Deployment", "payloadtags")


@pytest.fixture(scope="module")
def pod(deployment: Obj) -> Obj:
    spec: Obj = deployment["spec"]["template"]["spec"]
    return spec


@pytest.fixture(scope="module")
def container(pod: Obj) -> Obj:
    only: Obj
    (only,) = pod["containers"]
    assert "initContainers" not in pod and "ephemeralContainers" not in pod
    return only


def _args(container: Obj) -> dict[str, str]:
    parsed = {}
    for arg in container["args"]:
        flag, _, value = arg.partition("=")
        assert flag.startswith("--") and flag not in parsed, arg
        parsed[flag] = value
    return parsed


def test_two_replicas_never_below_two_during_rollout(deployment: Obj) -> None:
    spec = deployment["spec"]
    assert spec["replicas"] == 2
    assert spec["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1},
    }
    assert spec["selector"] == {"matchLabels": POD_LABELS}
    assert POD_LABELS.items() <= spec["template"]["metadata"]["labels"].items()


def test_replicas_are_spread_across_nodes(pod: Obj) -> None:
    by_key = {c["topologyKey"]: c for c in pod["topologySpreadConstraints"]}
    nodes = by_key["kubernetes.io/hostname"]
    assert nodes["whenUnsatisfiable"] == "DoNotSchedule" and nodes["maxSkew"] == 1
    assert nodes["labelSelector"] == {"matchLabels": POD_LABELS}
    # Counted per ReplicaSet, and over schedulable nodes only, so rollouts and drains are not blocked.
    assert nodes["matchLabelKeys"] == ["pod-template-hash"] and nodes["nodeTaintsPolicy"] == "Honor"
    assert by_key["topology.kubernetes.io/zone"]["whenUnsatisfiable"] == "ScheduleAnyway"


def test_pod_runs_as_the_images_non_root_user(pod: Obj) -> None:
    context = pod["securityContext"]
    assert context["runAsNonRoot"] is True
    assert context["seccompProfile"] == {"type": "RuntimeDefault"}
    user = re.search(r"^USER\s+(\d+):(\d+)\s*$", (ROOT / "Dockerfile").read_text(), re.M)
    assert user, "the Dockerfile's USER must be numeric uid:gid"
    assert (context["runAsUser"], context["runAsGroup"]) == (int(user[1]), int(user[2]))
    assert context["runAsUser"] != 0
    for host in ("hostNetwork", "hostPID", "hostIPC", "hostUsers"):
        assert host not in pod, host


def test_container_security_context_is_locked_down(container: Obj) -> None:
    context = container["securityContext"]
    assert context["allowPrivilegeEscalation"] is False
    assert context["readOnlyRootFilesystem"] is True
    assert context["runAsNonRoot"] is True
    assert context.get("privileged", False) is False
    assert context["capabilities"] == {"drop": ["ALL"]}
    assert context["seccompProfile"] == {"type": "RuntimeDefault"}


def test_volumes_are_secrets_and_a_small_tmp(pod: Obj, container: Obj) -> None:
    volumes = {v["name"]: v for v in pod["volumes"]}
    for volume in volumes.values():
        assert set(volume) - {"name"} <= {"secret", "emptyDir", "configMap", "projected"}, volume
    assert volumes["tmp"]["emptyDir"]["sizeLimit"]
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    assert set(mounts) == set(volumes)
    assert mounts["tmp"]["mountPath"] == "/tmp"
    for name in ("tls", "registry-credentials"):
        assert mounts[name]["readOnly"] is True
        assert volumes[name]["secret"]["defaultMode"] == 0o440  # group-readable via fsGroup, no more
    assert pod["securityContext"]["fsGroup"] == pod["securityContext"]["runAsGroup"]


def test_resources_have_requests_and_limits(container: Obj) -> None:
    resources = container["resources"]

    def quantity(text: str) -> float:
        units = {"m": 1e-3, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30}
        for suffix, factor in units.items():
            if text.endswith(suffix):
                return float(text[: -len(suffix)]) * factor
        return float(text)

    for name in ("cpu", "memory"):
        request, limit = quantity(resources["requests"][name]), quantity(resources["limits"][name])
        assert 0 < request <= limit, name
    assert quantity(resources["limits"]["memory"]) >= 256 * 2**20


def test_probes_are_livez_and_readyz_over_https_on_the_named_port(container: Obj) -> None:
    (port,) = container["ports"]
    assert port == {"name": "https", "containerPort": 8443, "protocol": "TCP"}
    assert _args(container)["--secure-port"] == str(port["containerPort"])
    for probe, path in (("livenessProbe", "/livez"), ("readinessProbe", "/readyz?exclude=registry")):
        assert container[probe]["httpGet"] == {"path": path, "port": "https", "scheme": "HTTPS"}, probe
        assert container[probe]["timeoutSeconds"] >= 1


def test_args_name_mounted_files_and_defined_variables(container: Obj, pod: Obj) -> None:
    args = _args(container)
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert args["--authorization-mode"] == "RBAC"
    assert "--kubeconfig" not in args  # in-cluster configuration
    assert volumes["tls"]["secret"]["secretName"] == "payloadtags-tls"
    assert args["--tls-cert-file"] == f"{mounts['tls']}/tls.crt"
    assert args["--tls-private-key-file"] == f"{mounts['tls']}/tls.key"
    assert volumes["registry-credentials"]["secret"]["secretName"] == "payloadtags-registry-credentials"
    assert args["--registry-username-file"] == f"{mounts['registry-credentials']}/username"
    assert args["--registry-password-file"] == f"{mounts['registry-credentials']}/password"
    env = {e["name"] for e in container["env"]}
    for value in args.values():
        for variable in re.findall(r"\$\((\w+)\)", value):
            assert variable in env, variable


def _seconds(text: str) -> float:
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h)", text)
    assert parts and "".join(n + u for n, u in parts) == text, text
    return sum(float(n) * units[u] for n, u in parts)


def test_graceful_shutdown_fits_in_the_termination_grace_period(pod: Obj, container: Obj) -> None:
    args = _args(container)
    # /readyz fails at SIGTERM while the server keeps serving, so the endpoint drains first.
    delay = _seconds(args["--shutdown-delay-duration"])
    assert delay >= 3
    grace = _seconds(args.get("--shutdown-grace-period", "30s"))
    # review r1ops F1: a delete that had begun writing when the grace period ended goes on to its end
    # (usually within CARRIED_DELETE_TIMEOUTS registry timeouts), then the leader releases its Lease (bounded
    # by the renew deadline): the kubelet's SIGKILL at 40s cut such a delete, leaving its tag on a copy.
    carried = CARRIED_DELETE_TIMEOUTS * _seconds(args.get("--registry-timeout", "10s"))
    release = _seconds(args.get("--leader-elect-renew-deadline", "10s"))
    assert pod["terminationGracePeriodSeconds"] > delay + grace + carried + release


def test_args_are_flags_the_server_accepts(container: Obj) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "payloadtags.cli", "serve", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    known = set(re.findall(r"(--[a-z][a-z0-9-]*)", result.stdout))
    assert set(_args(container)) <= known, set(_args(container)) - known


def test_registry_settings_come_from_the_generated_configmap(base: list[Obj], container: Obj) -> None:
    configmap = one(base, "ConfigMap")
    for entry in container["env"]:
        ref = entry.get("valueFrom", {}).get("configMapKeyRef")
        if ref:
            assert ref["name"] == configmap["metadata"]["name"]  # kustomize's hashed name
            assert ref["key"] in configmap["data"]
            assert not ref.get("optional", False)
    assert configmap["data"]["url"].startswith(("http://", "https://"))


def _startup_settings(objects: list[Obj], tmp_path: Path) -> Any:
    """The Settings the rendered container's args give at start-up, its variables expanded as the kubelet
    does; the registry credential files, mounted from a Secret in the cluster, stand in from tmp_path."""
    configmap = one(objects, "ConfigMap")
    pod = one(objects, "Deployment")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    env = {e["name"]: configmap["data"][e["valueFrom"]["configMapKeyRef"]["key"]] for e in container["env"]}
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    for name in ("username", "password"):
        (tmp_path / name).write_text(name)
    args = [
        re.sub(r"\$\((\w+)\)", lambda m: env[m[1]], arg).replace(
            mounts["registry-credentials"], str(tmp_path)
        )
        for arg in container["args"]
    ]
    return settings_from(_parser().parse_args(["serve", *args]))


def test_base_registry_settings_pass_startup_checks_with_host_empty(base: list[Obj], tmp_path: Path) -> None:
    assert one(base, "ConfigMap")["data"]["host"] == ""
    settings = _startup_settings(base, tmp_path)
    assert (settings.registry.url, settings.registry_host) == (
        "https://registry.example.com",
        "registry.example.com",
    )


def test_overlay_setting_only_the_url_passes_startup_checks(tmp_path: Path) -> None:
    objects = _render_overlay(
        tmp_path,
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources:\n- ../manifests\n"
        "configMapGenerator:\n- name: payloadtags-registry\n  namespace: payloadtags-system\n"
        "  behavior: merge\n  literals:\n  - url=https://payload-registry.internal.example:5001\n",
    )
    settings = _startup_settings(objects, tmp_path)
    assert settings.registry_host == "payload-registry.internal.example:5001"


def test_image_tag_is_the_project_version(container: Obj) -> None:
    assert container["image"] == f"payloadtags:{project_version()}"


# --- Service, PDB, APIService --------------------------------------------------------------------------


def test_service_maps_443_to_the_named_port(base: list[Obj]) -> None:
    service = one(base, "Service", SERVICE)
    assert service["spec"]["selector"] == POD_LABELS
    assert service["spec"]["ports"] == [
        {"name": "https", "port": 443, "targetPort": "https", "protocol": "TCP"}
    ]
    assert service["spec"].get("type", "ClusterIP") == "ClusterIP"


def test_disruption_budget_keeps_one_replica(base: list[Obj], deployment: Obj) -> None:
    spec = one(base, "PodDisruptionBudget")["spec"]
    assert spec["selector"] == {"matchLabels": POD_LABELS}
    assert spec["minAvailable"] == 1 < deployment["spec"]["replicas"]
    assert spec["unhealthyPodEvictionPolicy"] == "AlwaysAllow"


def _selects(selector: Obj, labels: dict[str, str]) -> bool:
    # Only matchLabels: a matchExpressions selector would need evaluating, and the trees use none.
    assert set(selector) <= {"matchLabels"}, selector
    wanted: dict[str, str] = selector.get("matchLabels", {})
    return wanted.items() <= labels.items()


def _in_namespaces(monitor: Obj, namespace: str) -> bool:
    chosen = monitor["spec"].get("namespaceSelector", {})
    if chosen.get("any"):
        return True
    return namespace in chosen.get("matchNames", [monitor["metadata"]["namespace"]])


@pytest.mark.parametrize("tree", ["", "cert-manager", "examples/overlay"])
def test_every_monitor_selects_a_rendered_service_or_pod(tree: str) -> None:
    # Prometheus scrapes nothing, silently, when a ServiceMonitor's selector misses the Service's own
    # labels (not its pod selector) or names a port the Service does not have.
    objects = kustomize(tree)
    monitors = of_kind(objects, "ServiceMonitor") + of_kind(objects, "PodMonitor")
    if tree == "examples/overlay":
        assert monitors, "the example overlay carries the monitoring component"
    pods = [(d["metadata"]["namespace"], d["spec"]["template"]) for d in of_kind(objects, "Deployment")]
    for monitor in monitors:
        spec = monitor["spec"]
        if monitor["kind"] == "ServiceMonitor":
            targets = [
                {p["name"] for p in s["spec"]["ports"]}
                for s in of_kind(objects, "Service")
                if _selects(spec["selector"], s["metadata"].get("labels", {}))
                and _in_namespaces(monitor, s["metadata"]["namespace"])
            ]
            wanted = {e["port"] for e in spec["endpoints"]}
        else:
            targets = [
                {p["name"] for c in pod["spec"]["containers"] for p in c.get("ports", [])}
                for namespace, pod in pods
                if _selects(spec["selector"], pod["metadata"]["labels"])
                and _in_namespaces(monitor, namespace)
            ]
            wanted = {e["port"] for e in spec["podMetricsEndpoints"]}
        assert targets, f"{key(monitor)} selects no rendered {monitor['kind'][:-7]}"
        for ports in targets:
            assert wanted <= ports, f"{key(monitor)} scrapes ports {wanted}, the target has {ports}"


def test_prometheus_verifies_the_serving_certificate_before_sending_its_token() -> None:
    # The scraper's ServiceAccount token (often broad read rights) goes only to a peer whose certificate
    # names the Service and chains to the serving CA, which the cert-manager tree's CA Issuer writes into
    # the serving Secret as ca.crt, in the ServiceMonitor's own namespace (review-operations F3).
    objects = kustomize("examples/overlay")
    (monitor,) = of_kind(objects, "ServiceMonitor")
    certificate = one(objects, "Certificate", "payloadtags-serving")
    issuer = one(objects, "Issuer", certificate["spec"]["issuerRef"]["name"])
    assert "ca" in issuer["spec"], "only a CA Issuer writes ca.crt beside tls.crt"
    assert monitor["metadata"]["namespace"] == certificate["metadata"]["namespace"]
    for endpoint in monitor["spec"]["endpoints"]:
        tls = endpoint["tlsConfig"]
        assert not tls.get("insecureSkipVerify"), f"{key(monitor)} skips verification"
        assert tls["ca"] == {"secret": {"name": certificate["spec"]["secretName"], "key": "ca.crt"}}
        assert tls["serverName"] in certificate["spec"]["dnsNames"]


def test_apiservice_points_at_the_service() -> None:
    apiservice = one(kustomize("apiservice"), "APIService", APISERVICE)
    assert apiservice["apiVersion"] == "apiregistration.k8s.io/v1"
    spec = apiservice["spec"]
    assert (spec["group"], spec["version"]) == (GROUP, "v1alpha1")
    assert spec["service"] == {"name": SERVICE, "namespace": NAMESPACE, "port": 443}
    assert 0 < spec["groupPriorityMinimum"] < 16000  # after the built-in groups
    assert spec["versionPriority"] > 0
    # TLS is always verified; the base leaves caBundle to cert-manager or the operator.
    assert "insecureSkipTLSVerify" not in spec and "caBundle" not in spec


# --- cert-manager ---------------------------------------------------------------------------------------

_ISSUER_REF = {
    "type": "object",
    "additionalProperties": False,
    "required": ["name"],
    "properties": {
        "name": {"type": "string"},
        "kind": {"enum": ["Issuer", "ClusterIssuer"]},
        "group": {"const": "cert-manager.io"},
    },
}
_DURATION = {"type": "string", "pattern": r"^([0-9]+(\.[0-9]+)?(h|m|s|ms))+$"}
_META = {
    "type": "object",
    "required": ["name", "namespace"],
    "properties": {"name": {"type": "string"}, "namespace": {"type": "string"}},
}
# The subset of cert-manager v1 that these manifests use, strict about unknown fields.
CERT_MANAGER_SCHEMAS = {
    "Certificate": {
        "type": "object",
        "additionalProperties": False,
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "apiVersion": {"const": CERT_MANAGER},
            "kind": {"const": "Certificate"},
            "metadata": _META,
            "spec": {
                "type": "object",
                "additionalProperties": False,
                "required": ["secretName", "issuerRef"],
                "properties": {
                    "secretName": {"type": "string"},
                    "issuerRef": _ISSUER_REF,
                    "isCA": {"type": "boolean"},
                    "commonName": {"type": "string", "maxLength": 64},
                    "dnsNames": {"type": "array", "items": {"type": "string"}, "minItems": 1},
                    "duration": _DURATION,
                    "renewBefore": _DURATION,
                    "usages": {
                        "type": "array",
                        "items": {
                            "enum": [
                                "server auth",
                                "client auth",
                                "digital signature",
                                "key encipherment",
                                "cert sign",
                            ]
                        },
                    },
                    "privateKey": {
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {
                            "algorithm": {"enum": ["RSA", "ECDSA", "Ed25519"]},
                            "size": {"type": "integer"},
                            "encoding": {"enum": ["PKCS1", "PKCS8"]},
                            "rotationPolicy": {"enum": ["Never", "Always"]},
                        },
                    },
                },
            },
        },
    },
    "Issuer": {
        "type": "object",
        "additionalProperties": False,
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "apiVersion": {"const": CERT_MANAGER},
            "kind": {"const": "Issuer"},
            "metadata": _META,
            "spec": {
                "type": "object",
                "minProperties": 1,
                "maxProperties": 1,
                "properties": {
                    "selfSigned": {"type": "object", "maxProperties": 0},
                    "ca": {
                        "type": "object",
                        "additionalProperties": False,
                        "required": ["secretName"],
                        "properties": {"secretName": {"type": "string"}},
                    },
                },
                "additionalProperties": False,
            },
        },
    },
}


def test_cert_manager_objects_are_well_formed(with_cert_manager: list[Obj]) -> None:
    objects = [o for o in with_cert_manager if o["apiVersion"] == CERT_MANAGER]
    assert sorted(key(o) for o in objects) == sorted(
        [
            ("Issuer", NAMESPACE, "payloadtags-selfsigned"),
            ("Issuer", NAMESPACE, "payloadtags-ca"),
            ("Certificate", NAMESPACE, "payloadtags-ca"),
            ("Certificate", NAMESPACE, "payloadtags-serving"),
        ]
    )
    for obj in objects:
        jsonschema.validate(obj, CERT_MANAGER_SCHEMAS[obj["kind"]])


def test_strict_cert_manager_schema_rejects_unknown_fields(with_cert_manager: list[Obj]) -> None:
    certificate = one(with_cert_manager, "Certificate", "payloadtags-serving")
    typo = {**certificate, "spec": {**certificate["spec"], "dnsName": ["x"]}}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(typo, CERT_MANAGER_SCHEMAS["Certificate"])


def test_serving_certificate_matches_service_deployment_and_apiservice(with_cert_manager: list[Obj]) -> None:
    serving = one(with_cert_manager, "Certificate", "payloadtags-serving")["spec"]
    deployment = one(with_cert_manager, "Deployment", "payloadtags")
    (tls,) = [v for v in deployment["spec"]["template"]["spec"]["volumes"] if v["name"] == "tls"]
    assert serving["secretName"] == tls["secret"]["secretName"]
    # The name kube-apiserver verifies (docs/api.md, "Authentication"), and the usual aliases.
    assert f"{SERVICE}.{NAMESPACE}.svc" in serving["dnsNames"]
    assert f"{SERVICE}.{NAMESPACE}.svc.cluster.local" in serving["dnsNames"]
    assert "server auth" in serving["usages"] and not serving.get("isCA", False)
    annotations = one(kustomize("cert-manager/apiservice"), "APIService", APISERVICE)["metadata"][
        "annotations"
    ]
    assert annotations == {"cert-manager.io/inject-ca-from": f"{NAMESPACE}/payloadtags-serving"}


def test_issuer_chain_resolves_to_a_private_ca(with_cert_manager: list[Obj]) -> None:
    issuers = {o["metadata"]["name"]: o["spec"] for o in of_kind(with_cert_manager, "Issuer")}
    certificates = {o["metadata"]["name"]: o["spec"] for o in of_kind(with_cert_manager, "Certificate")}
    serving_issuer = issuers[certificates["payloadtags-serving"]["issuerRef"]["name"]]
    ca = [c for c in certificates.values() if c["secretName"] == serving_issuer["ca"]["secretName"]]
    assert len(ca) == 1 and ca[0]["isCA"] is True
    assert issuers[ca[0]["issuerRef"]["name"]] == {"selfSigned": {}}
    for certificate in certificates.values():
        assert certificate["issuerRef"].get("kind", "Issuer") == "Issuer"


def test_cert_manager_overlay_only_adds_tls(base: list[Obj], with_cert_manager: list[Obj]) -> None:
    added = [o for o in with_cert_manager if o["apiVersion"] == CERT_MANAGER]
    rest = [o for o in with_cert_manager if o["apiVersion"] != CERT_MANAGER]
    assert len(added) == 4
    for obj in rest:
        assert obj in base, key(obj)
    assert len(rest) == len(base)


# --- examples -------------------------------------------------------------------------------------------


def test_examples_are_not_part_of_the_install(base: list[Obj], with_cert_manager: list[Obj]) -> None:
    installed = {key(o) for o in base + with_cert_manager}
    assert not installed & {key(o) for o in examples()}


def test_example_roles_grant_only_payloadrepositoryaccesses() -> None:
    roles = [o for o in examples() if o["kind"] in ROLE_KINDS]
    assert len(roles) >= 3
    kinds_of_rule = set()
    for role in roles:
        for rule in role["rules"]:
            assert rule["apiGroups"] == [GROUP] and rule["resources"] == ["payloadrepositoryaccesses"], key(
                role
            )
            assert set(rule["verbs"]) <= {"get", "create", "delete"}, key(role)
            kinds_of_rule.add(
                ("patterns" if rule.get("resourceNames") else "whole namespace", "delete" in rule["verbs"])
            )
    # A read-only role with patterns, a delete role, and a whole-namespace role are all shown.
    assert {("patterns", False), ("patterns", True), ("whole namespace", True)} <= kinds_of_rule


def _index(objects: list[Obj]) -> RbacIndex:
    index = RbacIndex()
    for kind in ("Role", "ClusterRole", "RoleBinding", "ClusterRoleBinding"):
        index.replace(kind, of_kind(objects, kind))
    return index


@pytest.mark.parametrize(
    ("user", "verb", "namespace", "path", "allowed"),
    [
        # team-reader.yaml: get on team/** in team-a, through a group
        (UserInfo("bob", groups=("team-a-developers",)), "get", "team-a", "team/app", True),
        (UserInfo("bob", groups=("team-a-developers",)), "get", "team-a", "team/a/b", True),
        (UserInfo("bob", groups=("team-a-developers",)), "get", "team-a", "team", True),
        (UserInfo("bob", groups=("team-a-developers",)), "get", "team-a", "teamx/app", False),
        (UserInfo("bob", groups=("team-a-developers",)), "delete", "team-a", "team/app", False),
        (UserInfo("bob", groups=("team-a-developers",)), "get", "team-b", "team/app", False),
        # ci-cleaner.yaml: get+delete on ci/** and builds/* for a ServiceAccount
        (UserInfo("system:serviceaccount:team-a:ci-cleaner"), "delete", "team-a", "ci/x/y", True),
        (UserInfo("system:serviceaccount:team-a:ci-cleaner"), "delete", "team-a", "builds/nightly", True),
        (UserInfo("system:serviceaccount:team-a:ci-cleaner"), "delete", "team-a", "builds/a/b", False),
        (UserInfo("system:serviceaccount:team-a:ci-cleaner"), "delete", "team-a", "team/app", False),
        # namespace-owner.yaml: every path of team-a
        (UserInfo("alice@example.com"), "delete", "team-a", "any/thing/at/all", True),
        (UserInfo("alice@example.com"), "get", "team-b", "app", False),
        # cluster-auditor.yaml: get everywhere, nothing else
        (UserInfo("carol", groups=("registry-auditors",)), "get", "any-namespace", "x/y", True),
        (UserInfo("carol", groups=("registry-auditors",)), "delete", "any-namespace", "x/y", False),
    ],
)
def test_examples_mean_what_they_say(
    user: UserInfo, verb: str, namespace: str, path: str, allowed: bool
) -> None:
    assert _index(examples()).allowed(user, verb, namespace, path) is allowed


# --- the NetworkPolicy (docs/install.md section 4) --------------------------------------------------------


def _policy(objects: list[Obj]) -> Obj:
    return one(objects, "NetworkPolicy", "payloadtags")


def _rule_of(policy: Obj, index: int) -> Obj:
    rule: Obj = policy["spec"]["ingress"][index]
    return rule


def _mutants() -> dict[str, Mutant]:
    """Ways to open the example's policy wider than documented; each edits the rendered objects in place."""

    def cidr(value: str) -> Mutant:
        return lambda objs: _rule_of(_policy(objs), 0)["from"][0]["ipBlock"].update(cidr=value)

    def add_rule(rule: Obj) -> Mutant:
        return lambda objs: _policy(objs)["spec"]["ingress"].append(rule)

    def peer(index: int, **changes: Any) -> Mutant:
        return lambda objs: _rule_of(_policy(objs), index)["from"][0].update(changes)

    def second_policy(objs: list[Obj]) -> None:
        extra = copy.deepcopy(_policy(objs))
        extra["metadata"]["name"] = "allow-all"
        extra["spec"]["ingress"] = [{}]
        objs.append(extra)

    https = [{"protocol": "TCP", "port": "https"}]
    return {
        # The reviewer's two (review "newcomer", F1): both passed scripts/check-deploy.
        "control plane range 0.0.0.0/0": cidr("0.0.0.0/0"),
        "a rule with from: []": add_rule({"from": [], "ports": https}),
        "control plane range ::/0": cidr("::/0"),
        "a public range": cidr("8.8.8.0/24"),
        "the placeholder range": cidr("192.0.2.0/24"),
        # review r2b L3: each passed, though docs/install.md asks for the control plane nodes' addresses.
        "a whole private block": cidr("10.0.0.0/8"),
        "another whole private block": cidr("172.16.0.0/12"),
        "a private IPv6 block": cidr("fd00::/8"),
        "this network": cidr("0.0.0.0/8"),
        "a rule without from": add_rule({"ports": https}),
        "an empty rule": add_rule({}),
        "an empty peer": add_rule({"from": [{}], "ports": https}),
        "any namespace's prometheus pods": peer(2, namespaceSelector={}),
        "any pod in kube-system": peer(1, podSelector={}),
        "every pod of monitoring": lambda objs: _rule_of(_policy(objs), 2)["from"][0].pop("podSelector"),
        "every port": lambda objs: _rule_of(_policy(objs), 2).pop("ports"),
        "a second policy admitting all": second_policy,
    }


@pytest.fixture(scope="module")
def example_overlay() -> list[Obj]:
    return kustomize("examples/overlay")


def test_example_network_policy_admits_the_documented_sources(example_overlay: list[Obj]) -> None:
    assert admission_problems(example_overlay, POD_LABELS) == []


# review r2b L3: valid ranges were refused for the wrong reason, and an ambiguous one for a false one.
@pytest.mark.parametrize(
    ("value", "said"),
    [
        # RFC 6598's shared address space, where some providers put a control plane: not "every source".
        ("100.64.0.0/24", None),
        ("100.64.0.0/10", "ingress rule 0: ipBlock 100.64.0.0/10 is wider than a /16: docs/install.md asks"),
        ("10.0.0.5/32", None),
        ("fd00:1:2::/48", None),
        (
            "10.0.0.5/24",
            "ingress rule 0: ipBlock 10.0.0.5/24 has bits set after its prefix, which kube-apiserver reads "
            "as 10.0.0.0/24 and calls ambiguous (newer ones refuse it): write 10.0.0.0/24 for the range, "
            "or 10.0.0.5/32 for the one address",
        ),
        (
            "10.0.0.5",
            "ingress rule 0: ipBlock '10.0.0.5' is not an address range (a CIDR such as 10.0.0.0/24)",
        ),
        ("0.0.0.0/0", "ingress rule 0: ipBlock 0.0.0.0/0 admits every source"),
        ("::/0", "ingress rule 0: ipBlock ::/0 admits every source"),
        # review r2f L3: Python reads a netmask, a hostmask and an IPv6 zone; Go's ParseCIDR refuses them.
        *(
            (cidr, f"ingress rule 0: ipBlock {cidr!r} is not an address range")
            for cidr in ("10.1.0.0/255.255.255.0", "10.1.0.0/0.0.0.255", "fd00::%eth0/64", "fe80::%1/64")
        ),
        # review r3misc F2: Go matches an IPv4 source against an IPv4-mapped range by its last 32 bits.
        (
            "::ffff:0.0.0.0/96",
            "ingress rule 0: ipBlock ::ffff:0.0.0.0/96 (the IPv4 range 0.0.0.0/0) admits every",
        ),
        (
            "::ffff:0:0/96",
            "ingress rule 0: ipBlock ::ffff:0:0/96 (the IPv4 range 0.0.0.0/0) admits every source",
        ),
        (
            "::ffff:10.0.0.0/104",
            "ingress rule 0: ipBlock ::ffff:10.0.0.0/104 (the IPv4 range 10.0.0.0/8) is wider",
        ),
        (
            "::ffff:8.8.8.0/120",
            "ingress rule 0: ipBlock ::ffff:8.8.8.0/120 (the IPv4 range 8.8.8.0/24) admits ad",
        ),
        (
            "::ffff:10.0.0.0/120",
            "ingress rule 0: ipBlock ::ffff:10.0.0.0/120 is the IPv4 range 10.0.0.0/24 written as an "
            "IPv4-mapped IPv6 range, which not every NetworkPolicy implementation matches IPv4 sources "
            "against: write 10.0.0.0/24",
        ),
    ],
)
def test_network_policy_check_reads_a_range_as_kubernetes_does(
    example_overlay: list[Obj], value: str, said: str | None
) -> None:
    objects = copy.deepcopy(example_overlay)
    _rule_of(_policy(objects), 0)["from"][0]["ipBlock"]["cidr"] = value
    problems = admission_problems(objects, POD_LABELS)
    if said is None:
        assert problems == []
    else:
        assert problems[0].startswith(said), problems


# review r3misc L3: kube-apiserver refuses an `except` entry that is no range strictly inside the block;
# entries that cover the whole block leave it admitting no address (kube-apiserver cut off).
@pytest.mark.parametrize(
    ("excepted", "said"),
    [
        (["10.0.0.0/25"], None),
        (["10.0.0.0/26", "10.0.0.128/25"], None),
        (["garbage"], "ingress rule 0: ipBlock 10.0.0.0/24: except entry 'garbage' is not a range inside it"),
        (
            ["10.0.0.5"],
            "ingress rule 0: ipBlock 10.0.0.0/24: except entry '10.0.0.5' is not a range inside it",
        ),
        (
            ["192.168.0.0/24"],
            "ingress rule 0: ipBlock 10.0.0.0/24: except entry '192.168.0.0/24' is not a range",
        ),
        (["10.0.0.0/16"], "ingress rule 0: ipBlock 10.0.0.0/24: except entry '10.0.0.0/16' is not a range"),
        # review r4reg N1: kube-apiserver takes these two (even the wider one); refused for another reason.
        (
            ["::ffff:10.0.0.0/120"],
            "ingress rule 0: ipBlock 10.0.0.0/24: except entry '::ffff:10.0.0.0/120' is an IPv4-mapped IPv6 "
            "range, which not every NetworkPolicy implementation matches IPv4 sources against: write "
            "10.0.0.0/24",
        ),
        (
            ["::ffff:10.0.0.0/100"],
            "ingress rule 0: ipBlock 10.0.0.0/24: except entry '::ffff:10.0.0.0/100' is an IPv4-mapped IPv6 "
            "range, which not every NetworkPolicy implementation matches IPv4 sources against",
        ),
        (
            ["fd00::/120"],
            "ingress rule 0: ipBlock 10.0.0.0/24: except entry 'fd00::/120' is not a range inside",
        ),
        (
            ["10.0.0.0/24"],
            "ingress rule 0: ipBlock 10.0.0.0/24: except entry '10.0.0.0/24' is the whole range",
        ),
        (
            ["10.0.0.0/25", "10.0.0.128/26", "10.0.0.192/26"],
            "ingress rule 0: ipBlock 10.0.0.0/24: its except entries cover the whole range, so it admits no",
        ),
        ("10.0.0.0/25", "ingress rule 0: ipBlock 10.0.0.0/24: except must be a list of ranges"),
    ],
)
def test_network_policy_check_reads_an_ip_blocks_except_list(
    example_overlay: list[Obj], excepted: Any, said: str | None
) -> None:
    objects = copy.deepcopy(example_overlay)
    block = _rule_of(_policy(objects), 0)["from"][0]["ipBlock"]
    assert block == {"cidr": "10.0.0.0/24"}  # the example's
    block["except"] = excepted
    problems = admission_problems(objects, POD_LABELS)
    if said is None:
        assert problems == []
    else:
        assert problems[0].startswith(said), problems
        # The range admits no one else: the control plane is not admitted by this policy either.
        if "cover" in said:
            assert (
                problems[-1]
                == "the NetworkPolicy does not admit kube-apiserver from the control plane's range"
            )


@pytest.mark.parametrize("mutant", list(_mutants()))
def test_network_policy_check_refuses_wider_policies(example_overlay: list[Obj], mutant: str) -> None:
    objects = copy.deepcopy(example_overlay)
    _mutants()[mutant](objects)
    assert admission_problems(objects, POD_LABELS) != []


@pytest.mark.packaging  # runs scripts/check-deploy on a copy of the checkout
def test_check_deploy_refuses_a_policy_open_to_every_source(tmp_path: Path) -> None:
    # The reviewer's mutants on the sources, as a user would make them; the script must fail on both.
    for name in ("manifests", "scripts", "tests/support"):
        shutil.copytree(ROOT / name, tmp_path / name)
    shutil.copy(ROOT / "Dockerfile", tmp_path)
    (tmp_path / "tests" / "__init__.py").touch()
    overlay = tmp_path / "manifests/examples/overlay/kustomization.yaml"
    overlay.write_text(overlay.read_text().replace("value: 10.0.0.0/24", "value: 0.0.0.0/0"))
    component = tmp_path / "manifests/components/network-policy/networkpolicy.yaml"
    component.write_text(
        component.read_text() + "  - from: []\n    ports:\n    - protocol: TCP\n      port: https\n"
    )
    env_bin = Path(sys.executable).parent
    result = subprocess.run(
        [str(tmp_path / "scripts" / "check-deploy")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "VENV": str(env_bin.parent)},
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert "ingress rule 0: ipBlock 0.0.0.0/0 admits every source" in result.stderr
    assert "ingress rule 3 has no `from`, so it admits every source" in result.stderr


# --- the CI script ---------------------------------------------------------------------------------------


@pytest.mark.packaging  # renders and validates every tree with kubectl and the schemas
def test_check_deploy_script_passes() -> None:
    env_bin = Path(sys.executable).parent  # the environment running the tests has the tools
    result = subprocess.run(
        [str(ROOT / "scripts" / "check-deploy")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "VENV": str(env_bin.parent)},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "FAIL" not in result.stdout + result.stderr


# --- docs/install.md's overlays ---------------------------------------------------------------------------


def _doc_yaml_blocks() -> list[str]:
    return re.findall(r"```yaml\n(.*?)```", (ROOT / "docs" / "install.md").read_text(), re.S)


def _render_overlay(tmp_path: Path, kustomization: str) -> list[Obj]:
    shutil.copytree(MANIFESTS, tmp_path / "manifests")
    overlay = tmp_path / "my-payloadtags"
    overlay.mkdir()
    (overlay / "kustomization.yaml").write_text(kustomization)
    result = subprocess.run(
        [shutil.which("kubectl") or "kubectl", "kustomize", str(overlay)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    objects = [obj for obj in yaml.safe_load_all(result.stdout) if obj]
    for obj in objects:
        if obj["apiVersion"] not in (CERT_MANAGER, PROMETHEUS_OPERATOR):
            kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
    return objects


def test_install_doc_overlay_sets_image_registry_and_ca(tmp_path: Path) -> None:
    overlay = _doc_yaml_blocks()[0]
    objects = _render_overlay(tmp_path, overlay)
    (container,) = one(objects, "Deployment")["spec"]["template"]["spec"]["containers"]
    image, _, digest = container["image"].partition("@sha256:")
    assert image == "registry.example.com/tools/payloadtags" and re.fullmatch("[0-9a-f]{64}", digest)
    assert _args(container)["--registry-ca-file"] == "/etc/payloadtags/registry/ca.crt"
    configmap = one(objects, "ConfigMap")
    assert configmap["data"] == {
        "url": "https://payload-registry.internal.example:5001",
        "host": "registry.example.com",
    }
    refs = {e["valueFrom"]["configMapKeyRef"]["name"] for e in container["env"] if "valueFrom" in e}
    assert refs == {configmap["metadata"]["name"]}
    assert len(of_kind(objects, "Certificate")) == 2  # built on manifests/cert-manager


def test_install_doc_own_ca_overlay_sets_the_ca_bundle(tmp_path: Path) -> None:
    patch = _doc_yaml_blocks()[2].replace("<output of: base64 -w0 ca.crt>", "Y2EgYnVuZGxl")
    overlay = (
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n"
        "resources:\n- ../manifests/apiservice\n"
        + "\n".join(line for line in patch.splitlines() if not line.startswith("#"))
    )
    objects = _render_overlay(tmp_path, overlay)
    assert one(objects, "APIService")["spec"]["caBundle"] == "Y2EgYnVuZGxl"
    assert not [o for o in objects if o["apiVersion"] == CERT_MANAGER]


def test_install_doc_section_4_appended_to_section_2_keeps_both_patches(tmp_path: Path) -> None:
    # review-newcomer L5: section 4's block had a `patches:` key of its own; appended to section 2's file
    # as the page said, kustomize kept only the last and dropped --registry-ca-file without a word.
    blocks = _doc_yaml_blocks()
    [addition] = [block for block in blocks if "- ../manifests/components/network-policy" in block]
    overlay = blocks[0] + addition
    assert len(re.findall(r"^patches:", overlay, re.M)) == 1, overlay
    objects = _render_overlay(tmp_path, overlay)
    (container,) = one(objects, "Deployment")["spec"]["template"]["spec"]["containers"]
    assert _args(container)["--registry-ca-file"] == "/etc/payloadtags/registry/ca.crt"
    policy = one(objects, "NetworkPolicy")
    assert policy["spec"]["ingress"][0]["from"][0]["ipBlock"]["cidr"] == "10.0.0.0/24"
    assert one(objects, "ServiceMonitor")
