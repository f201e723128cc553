"""Errors of the registry client.

Every message names the registry (its URL without credentials) and says what the user can do, because
the API layer passes it on to kubectl users as the Status message. It is redacted and cut when the
error is made (`redaction.in_message`), as it may quote what the registry said.
"""

from __future__ import annotations

from .redaction import in_message


class RegistryError(Exception):
    """Base of every error the registry client raises.

    ``unanswered``: the request went out and no answer came (a timeout, a connection lost on the
    way; for a write, a gateway's 5xx in front of the registry): the registry may still carry it out
    later, after the client has moved on.

    ``lasting``: a retry meets the same answer (deletes turned off, credentials rejected or granting
    too little, an answer this client does not understand, a 501): someone has to act first, so its
    caller is not told to retry (no Retry-After). Never for an unanswered write (`unanswered` wins:
    it may still land).

    ``certain``: of the lasting, one a retry meets again whatever anyone does meanwhile short of
    changing the registry (deletes turned off in it, a 501 or 505): a removal stops passing on it at
    once. Not a refusal of access or credentials (a grant may still be rolling out: the next pass
    may not meet it), nor an answer this client does not understand (a proxy's 408 or 425).

    ``stalled``: a namespace's removal ended without progress of its own, whatever ended it (stopped
    on a registry that does not serve now: read-only mode during garbage collection, a 5xx such as a
    storage refusing deletes; its budget, spent passing or waiting for the leader's pass): a retry at
    once likely meets the same, so its caller is not told to retry at once (no Retry-After: client-go
    would repeat it up to ten times by itself) and is told to retry later. Never with ``unanswered``
    (a write that may still land)."""

    unanswered: bool = False
    lasting: bool = False
    certain: bool = False
    stalled: bool = False

    def __init__(self, message: str) -> None:
        # The one place every message passes: a registry's echo of a credential in it is replaced,
        # and a text quoted whole is cut, whichever site forgot it (review r2redact F1).
        message = in_message(message)
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class RegistryUnavailable(RegistryError):
    """The registry cannot be reached or failed (connection refused/reset, DNS, TLS, 429, 5xx).

    ``elsewhere``: the failure is at another server the registry sent the client to (its token service,
    where it redirected a read), whose URL the registry gives, not --registry-url."""

    elsewhere: bool = False

    def __init__(self, message: str, retry_after: int = 5) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class RegistryTimeout(RegistryError):
    """A request took longer than the configured timeout and was cancelled."""

    unanswered = True

    def __init__(self, message: str, retry_after: int = 5) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class RegistryReadOnly(RegistryError):
    """The registry is in read-only (maintenance) mode, usually while garbage collection runs."""

    def __init__(self, message: str, retry_after: int = 60) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class RegistryDeleteDisabled(RegistryError):
    """The registry's storage has deletes turned off (``storage.delete.enabled: false``)."""

    lasting = True
    certain = True


class RegistrySchema1Disabled(RegistryDeleteDisabled):
    """The registry takes no pushes of signed Docker schema 1 manifests (distribution's default,
    ``compatibility.schema1.enabled: false``), so one tag of such a manifest cannot be deleted: that
    pushes a copy of it. A delete that is not possible with this configuration, as when deletes are
    turned off."""


class RegistryNotFound(RegistryError):
    """The repository, manifest, blob or tag does not exist. ``code`` is the registry's error code."""

    def __init__(self, message: str, code: str = "NOT_FOUND") -> None:
        super().__init__(message)
        self.code = code


class RegistryInvalidName(RegistryNotFound):
    """A repository name, tag or digest that the registry grammar does not allow.

    Raised before any request. It is a RegistryNotFound because such a thing cannot exist in the
    registry; ``code`` is NAME_INVALID, TAG_INVALID or DIGEST_INVALID as the registry would say.
    """


class RegistryConflict(RegistryError):
    """A tag changed under a write that was conditional on it: payloadtags gave up instead of
    overwriting. ``current`` is the digest the tag points at now (None: it is gone or dangling)."""

    def __init__(self, message: str, current: str | None = None) -> None:
        super().__init__(message)
        self.current = current


class RegistryAuthFailed(RegistryError):
    """The registry or its token service rejected the credentials, or they grant too little.

    ``denied``: the latter, access to what was asked is refused (a registry's 403, a token without
    the scope asked for: ``insufficient_scope``); granting it helps, where new credentials would not.
    False when the credentials are rejected or missing."""

    lasting = True

    def __init__(self, message: str, denied: bool = False) -> None:
        super().__init__(message)
        self.denied = denied


class RegistryProtocolError(RegistryError):
    """The registry answered something this client does not expect (bad JSON, status, oversize body)."""

    lasting = True


__all__ = [
    "RegistryAuthFailed",
    "RegistryConflict",
    "RegistryDeleteDisabled",
    "RegistryError",
    "RegistryInvalidName",
    "RegistryNotFound",
    "RegistryProtocolError",
    "RegistryReadOnly",
    "RegistrySchema1Disabled",
    "RegistryTimeout",
    "RegistryUnavailable",
]
