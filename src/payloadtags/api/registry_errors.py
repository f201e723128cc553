"""Registry failures as Status errors a user can act on: 503/504 for a failing dependency, never 500.

A write that went unanswered (``RegistryError.unanswered``: a timeout, a connection closed after the
request went out, a gateway's 5xx) may still be carried out after the answer. It is a 504 with no
Retry-After, as a timeout is: client-go repeats a 5xx with Retry-After by itself, and a repeated
delete would then succeed before the first attempt's late write brings the tag back.
"""

from __future__ import annotations

from payloadtags.api.errors import ApiError, path_not_found, service_unavailable, timeout
from payloadtags.registry.errors import (
    RegistryConflict,
    RegistryError,
    RegistryNotFound,
    RegistryReadOnly,
    RegistryTimeout,
    RegistryUnavailable,
)

# client-go retries a 5xx that carries Retry-After up to ten times, sleeping that long before each try,
# so kubectl would hang for minutes on the registry's own estimate; one second rides over a blip and
# then shows the user the message. Failures a retry cannot fix carry no Retry-After at all.
CLIENT_RETRY_AFTER = 1


def api_error_for(error: RegistryError) -> ApiError:
    message = str(error)
    if error.unanswered:
        return timeout(message)
    match error:
        case RegistryTimeout():
            return timeout(message)
        case RegistryReadOnly() | RegistryUnavailable():
            return service_unavailable(message, retry_after=CLIENT_RETRY_AFTER)
        case RegistryConflict():
            return ApiError(409, "Conflict", message)
        case RegistryNotFound():
            return path_not_found()
        case _:
            # Rejected credentials, deletes turned off in the registry (RegistryDeleteDisabled: not a
            # 405, which would say that the resource has no delete verb, and discovery lists it),
            # unexpected answers: the operator has to act, retrying will not help.
            return service_unavailable(message, retry_after=None)
