"""Registry failures as Status errors a user can act on: 503/504 for a failing dependency, never 500."""

from __future__ import annotations

from payloadtags.api.errors import ApiError, path_not_found, service_unavailable, timeout
from payloadtags.registry.errors import (
    RegistryAuthFailed,
    RegistryDeleteDisabled,
    RegistryError,
    RegistryNotFound,
    RegistryReadOnly,
    RegistryTimeout,
    RegistryUnavailable,
)


def api_error_for(error: RegistryError) -> ApiError:
    message = str(error)
    match error:
        case RegistryTimeout():
            return timeout(message)
        case RegistryReadOnly():
            return service_unavailable(message, retry_after=getattr(error, "retry_after", 30) or 30)
        case RegistryUnavailable():
            return service_unavailable(message, retry_after=getattr(error, "retry_after", 5) or 5)
        case RegistryDeleteDisabled():
            return ApiError(405, "MethodNotAllowed", message)
        case RegistryAuthFailed():
            return service_unavailable(message, retry_after=30)
        case RegistryNotFound():
            return path_not_found()
        case _:
            return service_unavailable(message, retry_after=5)
