"""Saying what is wrong with the cluster API access, once for every reflector: refused credentials
(401), refused access (403), an unreachable server, a server certificate that does not verify,
requests broken off (a watch stream lost, a reply cut short), requests unanswered in time, an API
server (or its load balancer) answering 502, 503, 504 or 429, an exec plugin that cannot renew the
credential, a token file that cannot be read; and, at info (not a failure), watches answered and
then sent nothing for far longer than a healthy API server leaves them so.

Each reflector retries on its own (`Reflector`), and a kubeconfig whose user lacks its grants fails
every one of them on every retry: a raw warning each gave some thirty lines in ten seconds, none
saying what to do. These causes are said instead in one line each, with the fix, at most once per
period (with the count left out since), and `cause` gives the words /readyz shows. A flapping API
fails every reflector's watch at once, on every flap: that is one cause too.

Each line ends with what the failure holds back, which is not the same for every reflector: /readyz
waits for the first list of the authentication ConfigMap and the RBAC objects, but not for a relist
(a synced store is kept, and served from, through an outage), and never for the cleanup's namespace
watch, whose failure stops the namespace cleanup instead. A line saying "not ready" where the replica
stays ready sends the operator after a readiness problem there is not.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import attrs
from twisted.logger import Logger

from payloadtags.kube.config import SERVICE_ACCOUNT_DIR, ClusterConfig
from payloadtags.kube.errors import (
    KubeApiError,
    KubeCertificateRejected,
    KubeCredentialUnavailable,
    KubeError,
    KubeReplyCutShort,
    KubeStreamLost,
    KubeTimeout,
    KubeTokenUnreadable,
    KubeUnreachable,
    KubeWatchQuiet,
)
from payloadtags.onceper import OncePerPeriod
from payloadtags.validators import without_userinfo

log = Logger()

# A line for each cause at most this often: a lasting refusal is still said, without filling the log.
PERIOD = 60.0

RBAC_FILE = "manifests/base/rbac-server.yaml"


@attrs.frozen
class Stake:
    """What a reflector's failure holds back, said at the end of its line: ``waiting`` while its store
    has not synced yet, ``synced`` once it has (it keeps what it read). ``key`` tells the lines apart:
    one cause that holds back two things is two lines, each with its own consequence."""

    key: str
    waiting: str
    synced: str

    def said(self, synced: bool) -> tuple[str, str]:
        return (f"{self.key} synced", self.synced) if synced else (self.key, self.waiting)


# The authentication ConfigMap and the RBAC objects: /readyz waits for their first list only.
READINESS = Stake(
    "readiness",
    waiting="payloadtags retries, and is not ready until it can read what it needs",
    synced="payloadtags retries, and stays ready meanwhile with what it last read (the authentication "
    "ConfigMap, RBAC objects): changes made since are not seen until it can read again",
)
# The cleanup controller's namespace watch (the leader's): not a readiness input.
NAMESPACE_CLEANUP = Stake(
    "namespace cleanup",
    waiting="payloadtags retries, and stays ready, but runs no namespace cleanup until it can read "
    "namespaces (nor does another replica while this one leads): the tags of namespaces deleted "
    "meanwhile stay",
    synced="payloadtags retries, and stays ready; namespace cleanup goes on with the namespaces it "
    "last read, and cleans up none deleted since until it can read namespaces again",
)

# The cluster API's answers that say it (or what stands in front of it) cannot serve now: a gateway's
# 502/504, an unavailable or shedding 503, a throttling 429.
_UNAVAILABLE_CODES = frozenset({429, 502, 503, 504})


def cause(error: BaseException) -> str:
    """What a failure of the cluster API means, as /readyz says it: refused, rejected, unreachable."""
    if isinstance(error, KubeApiError) and error.code == 403:
        return f"refused: {error}"
    if isinstance(error, KubeApiError) and error.code == 401:
        return f"credentials rejected: {error}"
    if isinstance(error, KubeCertificateRejected):
        return f"certificate {'not for this host' if error.wrong_name else 'not trusted'}: {error}"
    if isinstance(error, KubeUnreachable):
        return f"unreachable: {error}"
    return str(error)


def _grant(path: str) -> str:
    """The grant that lets payloadtags read ``path`` (docs/install.md, "RBAC")."""
    if "/configmaps" in path:
        return (
            "bind it the Role extension-apiserver-authentication-reader in kube-system (RoleBinding "
            "payloadtags:authentication-reader)"
        )
    return "bind it the ClusterRole payloadtags:server (ClusterRoleBinding payloadtags:server)"


@attrs.define
class ClusterAccessLog:
    """Logs the cluster API's refusals, unreachability and broken or unanswered requests with what to
    do, rate-limited per cause.

    ``server``: the cluster API's URL as messages show it; ``in_cluster``: the credentials are the
    pod's service account's, not a kubeconfig's. Timed on ``monotonic``, as the registry's failure
    lines are: a wall clock stepped back would keep every line out for as long as the step."""

    server: str
    in_cluster: bool = False
    monotonic: Callable[[], float] = time.monotonic
    period: float = PERIOD
    _once: OncePerPeriod[str] = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self._once = OncePerPeriod(self.period, self.monotonic)

    def __call__(self, path: str, error: KubeError, synced: bool = False) -> bool:
        """Say ``error`` of a request for ``path`` (a readiness input's, ``synced`` once its store has
        synced) when it is one of the causes said here; True then (its caller says nothing more),
        False for any other failure (its caller says it)."""
        return self._say(path, error, READINESS.said(synced))

    def for_namespace_cleanup(self) -> Callable[[str, KubeError, bool], bool]:
        """The same log for the cleanup controller's namespace watch, whose lines say what its
        failure really holds back: the namespace cleanup, not readiness."""
        return lambda path, error, synced: self._say(path, error, NAMESPACE_CLEANUP.said(synced))

    def _say(self, path: str, error: KubeError, stake: tuple[str, str]) -> bool:
        if isinstance(error, KubeWatchQuiet):
            # Not a failure, and normal where the resource's watch cache is off: info, as often as the
            # reflector tells it (`Reflector.quiet_said_after`), one line per resource.
            log.info("{line}", line=self._quiet(path, error, stake[1]))
            return True
        said = self._line(path, error, stake[1])
        if said is None:
            return False
        key, line = said
        again = self._once(f"{key}; {stake[0]}")
        if again is not None:
            # Counted since the last line: the period, or longer when the failures had stopped.
            log.warn("{line}{more}", line=line, more=again.more())
        return True

    def _line(self, path: str, error: KubeError, retries: str) -> tuple[str, str] | None:
        user = "the pod's service account" if self.in_cluster else "the kubeconfig's user"
        if isinstance(error, KubeApiError) and error.code == 403:
            grant = _grant(path)
            return (
                f"403 {grant}",
                f"the cluster API {self.server} refuses {user}: {error.message or error} (403); "
                f"{grant} ({RBAC_FILE}, docs/install.md); {retries}",
            )
        if isinstance(error, KubeApiError) and error.code == 401:
            check = (
                "check the service account token mounted in the pod"
                if self.in_cluster
                else "check the user's token, client certificate or exec plugin in the kubeconfig"
            )
            return (
                "401",
                f"the cluster API {self.server} rejects the credentials of {user} "
                f"(401 {error.reason or 'Unauthorized'}); {check}; {retries}",
            )
        if isinstance(error, KubeCertificateRejected):
            return self._certificate(error, retries)
        if isinstance(error, KubeUnreachable):
            check = (
                "check KUBERNETES_SERVICE_HOST/PORT and the network path from the pod"
                if self.in_cluster
                else "check the cluster's server URL in the kubeconfig (--kubeconfig) and the network "
                "path to it"
            )
            return (
                "unreachable",
                f"the cluster API {self.server} is unreachable ({error}); {check}; {retries}",
            )
        if isinstance(error, KubeCredentialUnavailable):
            return (
                "credential",
                f"the cluster API {self.server} cannot be asked: {user} could not renew its credential "
                f"({error}); check the exec plugin in the kubeconfig (run its command as payloadtags "
                f"does, with the same environment); {retries}",
            )
        if isinstance(error, KubeTokenUnreadable):
            check = (
                "check the service account token mounted in the pod (its projected volume)"
                if self.in_cluster
                else "check the tokenFile the kubeconfig's user names, and that it is mounted and readable"
            )
            return (
                "token file",
                f"the cluster API {self.server} cannot be asked: {user}'s token cannot be read "
                f"({error}); {check}; {retries}",
            )
        if isinstance(error, KubeApiError) and error.code in _UNAVAILABLE_CODES:
            # An API server restarting behind a load balancer (502, 503 "no healthy upstream"), or
            # kube-apiserver's own 503 or 429 (API Priority and Fairness) under load: like a flap,
            # every reflector meets it at once, on every retry; one cause for all of them.
            return (
                "unavailable",
                f"the cluster API {self.server} answers {error.code} {error.reason or ''}".rstrip()
                + f" ({error.message or error}): the API server, or a load balancer in front of it, "
                f"is unavailable or throttling; check the API server (its load, restarts) and what "
                f"sits in front of it; {retries}",
            )
        if isinstance(error, KubeStreamLost | KubeReplyCutShort):
            # A watch stream lost, a reply cut short: the API (or a proxy or load balancer on the
            # way) went away mid-request, as an API server restarting or flapping does.
            return (
                "interrupted",
                f"the cluster API {self.server} broke off a request ({error}); check that the API "
                f"server is up and what sits on the network path to it (a proxy or load balancer "
                f"cutting connections); {retries}",
            )
        if isinstance(error, KubeTimeout):
            return (
                "timeout",
                f"the cluster API {self.server} does not answer in time ({error}); check the API "
                f"server's load and the network path to it (a firewall dropping packets); {retries}",
            )
        return None

    def _quiet(self, path: str, quiet: KubeWatchQuiet, retries: str) -> str:
        return (
            f"the cluster API {self.server} answers the watches of {path}, then sends them nothing "
            f"({quiet}); that is normal only where the API server's watch cache is off for this "
            f"resource (--watch-cache=false, or 0 for it in --watch-cache-sizes) and nothing changed "
            f"it; "
            f"otherwise check what sits on the network path to the API server (a proxy or load "
            f"balancer holding watch responses); if that is it, {retries}"
        )

    def _certificate(self, error: KubeCertificateRejected, retries: str) -> tuple[str, str]:
        # Something answered at the URL, over the network: what to fix is the CA or the name, as the
        # registry's line says for its own (registry_diagnosis). In a pod, a proxy intercepting TLS
        # on the way shows this too.
        if error.wrong_name:
            check = (
                "the certificate the API server presents does not name KUBERNETES_SERVICE_HOST (no CA "
                "fixes that): check what answers on that address (a proxy intercepting TLS)"
                if self.in_cluster
                else "its certificate does not name the host in the kubeconfig's server URL, or its "
                "tls-server-name when set (no CA fixes that): give tls-server-name a name the "
                "certificate holds, or correct the server URL"
            )
            return (
                "certificate name",
                f"the cluster API {self.server} presents a certificate that is not for the name asked "
                f"({error}); {check}; {retries}",
            )
        check = (
            f"check that the pod's service account CA ({SERVICE_ACCOUNT_DIR}/ca.crt) signed it: a "
            "proxy intercepting TLS on the way presents another certificate"
            if self.in_cluster
            else "check that the kubeconfig's certificate-authority (or certificate-authority-data) is "
            "the CA that signed it (the certificate the server presents for tls-server-name, when set), "
            "and that the certificate has not expired"
        )
        return (
            "certificate",
            f"the cluster API {self.server} presents a certificate that is not trusted ({error}); "
            f"{check}; {retries}",
        )


def access_log(cluster: ClusterConfig, monotonic: Callable[[], float] = time.monotonic) -> ClusterAccessLog:
    """The `ClusterAccessLog` of ``cluster``, naming its server without credentials."""
    return ClusterAccessLog(without_userinfo(cluster.server), cluster.in_cluster, monotonic)
