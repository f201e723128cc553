"""Errors raised by the cluster API client.

Three families, because callers react to them differently:

- `KubeApiError`: the API server answered, with a Kubernetes ``Status`` (a 4xx or 5xx reply, or an
  ``ERROR`` event inside a watch stream). Look at `code` and `reason`.
- `KubeUnavailable`: the server could not be reached or the connection broke (refused, reset, TLS
  failure, a watch stream cut mid-way). Retrying later is the only remedy.
- `KubeTimeout`: the server did not answer in time.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from http import HTTPStatus
from typing import Any

Status = dict[str, Any]

# Reasons the API server uses for each code (apimachinery StatusReason), so that a reply that is
# not a Status (a proxy's plain-text 503, say) still turns into something callers can dispatch on.
_REASONS: Mapping[int, str] = {
    400: "BadRequest",
    401: "Unauthorized",
    403: "Forbidden",
    404: "NotFound",
    405: "MethodNotAllowed",
    406: "NotAcceptable",
    409: "Conflict",
    410: "Expired",
    415: "UnsupportedMediaType",
    422: "Invalid",
    429: "TooManyRequests",
    500: "InternalError",
    503: "ServiceUnavailable",
    504: "Timeout",
}


class KubeError(Exception):
    """Base class of everything the cluster API client raises."""


class KubeApiError(KubeError):
    """The API server answered with a failure `Status`."""

    def __init__(self, status: Status, code: int) -> None:
        self.status = status
        self.code = code
        super().__init__(f"{code} {self.reason}: {self.message}")

    @property
    def reason(self) -> str:
        return str(self.status.get("reason") or "")

    @property
    def message(self) -> str:
        return str(self.status.get("message") or "")

    @property
    def retry_after(self) -> float | None:
        """The server's hint, in seconds, of when to try again (429 and 503 replies)."""
        details = self.status.get("details")
        if isinstance(details, dict):
            value = details.get("retryAfterSeconds")
            if isinstance(value, int | float) and value > 0:
                return float(value)
        return None

    @property
    def expired(self) -> bool:
        """True for 410: the resourceVersion or continue token is too old; a relist is needed."""
        return self.code == 410


class KubeUnavailable(KubeError):
    """The API server could not be reached, or the connection to it broke."""


class KubeUnreachable(KubeUnavailable):
    """A request to the API server failed on the way: refused, reset, TLS or DNS failure."""


class KubeCertificateRejected(KubeUnreachable):
    """The API server was reached, but its TLS certificate failed verification: not signed by a CA
    the client trusts (or expired), or (``wrong_name``) not for the name the client asked for. The
    fix is the CA or the name, not the URL or the network, so it is said apart."""

    def __init__(self, message: str, *, wrong_name: bool = False) -> None:
        super().__init__(message)
        self.wrong_name = wrong_name


class KubeCredentialUnavailable(KubeUnavailable):
    """The kubeconfig's exec plugin could not renew the credential: no request could be sent."""


class KubeStreamLost(KubeUnavailable):
    """A watch stream ended abruptly (not a clean end of the chunked response)."""


class KubeWatchSilent(KubeStreamLost):
    """A watch stream that brought nothing, not even a bookmark, for its idle timeout, and was given
    up. Not a failure of the server by itself: kube-apiserver sends a watch of a resource that does not
    change no bookmark until an etcd progress notification moves its watch cache (etcd's default:
    every 10 minutes), so a healthy cluster's quiet watches go silent. Watched again at once; a new
    watch that then fails is the failure."""


class KubeWatchQuiet(KubeError):
    """Not raised, and not a failure: what a `Reflector` tells its ``on_failure`` when its watches,
    each answered and then silent or ended, have brought nothing, not even a bookmark, for longer
    than a healthy kube-apiserver leaves them so. Either the resource's watch cache is off on the API
    server and nothing changed, or something on the way holds the streams and changes go unseen:
    only the operator can tell which. ``since``: when the last list, event or bookmark came (the
    reflector's clock, epoch seconds on the reactor's); ``quiet_for``: seconds since."""

    def __init__(self, since: float, quiet_for: float) -> None:
        self.since = since
        self.quiet_for = quiet_for
        at = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(since))
        super().__init__(f"no event, not even a bookmark, for {quiet_for:.0f}s, since {at}")


class KubeReplyCutShort(KubeUnavailable):
    """A reply's body ended before its end: the connection broke mid-reply."""


class KubeTokenUnreadable(KubeUnavailable):
    """The token file (a kubeconfig's tokenFile, the pod's service account token) could not be read
    before any token was: no request could be sent."""


class KubeTimeout(KubeError):
    """The API server did not answer within the request timeout."""


class KubeProtocolError(KubeError):
    """The API server sent something that is not valid Kubernetes JSON."""


def make_status(code: int, message: str, reason: str | None = None) -> Status:
    """A failure Status in the API server's shape."""
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason or _REASONS.get(code, "Unknown"),
        "code": code,
    }


def status_from_body(code: int, body: bytes, retry_after: str | None = None) -> Status:
    """Decode the body of a failed reply into a Status, synthesising one when it is not a Status."""
    try:
        decoded = json.loads(body)
    except ValueError:
        decoded = None
    if isinstance(decoded, dict) and decoded.get("kind") == "Status":
        status = decoded
    else:
        text = body.decode("utf-8", "replace").strip()[:500]
        try:
            phrase = HTTPStatus(code).phrase
        except ValueError:
            phrase = "unexpected status"
        status = make_status(code, text or phrase)
    if retry_after and retry_after.isdigit():
        details = status.setdefault("details", {})
        if isinstance(details, dict):
            details.setdefault("retryAfterSeconds", int(retry_after))
    return status
