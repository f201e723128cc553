"""Kubernetes ``Status`` errors with the API server's codes, reasons and wording."""

from __future__ import annotations

from typing import Any

from tests.support.kubeapi.resources import ResourceType


class ApiError(Exception):
    """An error the double answers with; `status` is the Status JSON."""

    def __init__(self, status: dict[str, Any]) -> None:
        super().__init__(status["message"])
        self.status = status

    @property
    def code(self) -> int:
        return int(self.status["code"])

    @property
    def reason(self) -> str:
        return str(self.status["reason"])


def status(code: int, reason: str, message: str, details: dict[str, Any] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
    }
    if details is not None:
        body["details"] = details
    body["code"] = code
    return body


def _details(resource: ResourceType, name: str, kind: str | None = None) -> dict[str, Any]:
    details: dict[str, Any] = {"name": name}
    if resource.group:
        details["group"] = resource.group
    details["kind"] = kind or resource.plural
    return details


def not_found(resource: ResourceType, name: str) -> ApiError:
    return ApiError(
        status(404, "NotFound", f'{resource.qualified} "{name}" not found', _details(resource, name))
    )


def path_not_found() -> ApiError:
    return ApiError(status(404, "NotFound", "the server could not find the requested resource", {}))


def already_exists(resource: ResourceType, name: str) -> ApiError:
    return ApiError(
        status(
            409, "AlreadyExists", f'{resource.qualified} "{name}" already exists', _details(resource, name)
        )
    )


def conflict(resource: ResourceType, name: str, why: str) -> ApiError:
    message = f'Operation cannot be fulfilled on {resource.qualified} "{name}": {why}'
    return ApiError(status(409, "Conflict", message, _details(resource, name)))


STALE_UPDATE = "the object has been modified; please apply your changes to the latest version and try again"


def invalid(resource: ResourceType, name: str, field: str, cause_reason: str, detail: str) -> ApiError:
    # errors.NewInvalid names the kind with its group: ``Lease.coordination.k8s.io "x" is invalid``.
    kind = f"{resource.kind}.{resource.group}" if resource.group else resource.kind
    message = f'{kind} "{name}" is invalid: {field}: {detail}'
    details = _details(resource, name, kind=resource.kind)
    details["causes"] = [{"reason": cause_reason, "message": detail, "field": field}]
    return ApiError(status(422, "Invalid", message, details))


def invalid_options(kind: str, field: str, detail: str) -> ApiError:
    """422 on ListOptions or DeleteOptions (group meta.k8s.io)."""
    return ApiError(
        status(
            422,
            "Invalid",
            f'{kind}.meta.k8s.io "" is invalid: {field}: {detail}',
            {
                "group": "meta.k8s.io",
                "kind": kind,
                "causes": [{"reason": "FieldValueForbidden", "message": detail, "field": field}],
            },
        )
    )


def bad_request(message: str) -> ApiError:
    return ApiError(status(400, "BadRequest", message))


def forbidden(
    resource: ResourceType, name: str, message: str, cause: dict[str, Any] | None = None
) -> ApiError:
    details = _details(resource, name)
    if cause is not None:
        details["causes"] = [cause]
    return ApiError(status(403, "Forbidden", message, details))


def unauthorized() -> ApiError:
    return ApiError(status(401, "Unauthorized", "Unauthorized"))


def method_not_allowed() -> ApiError:
    return ApiError(
        status(405, "MethodNotAllowed", "the server does not allow this method on the requested resource")
    )


def unsupported_media_type(content_type: str) -> ApiError:
    return ApiError(
        status(
            415, "UnsupportedMediaType", f"the body of the request was in an unknown format: {content_type}"
        )
    )


def expired(message: str) -> ApiError:
    return ApiError(status(410, "Expired", message))


def too_old(requested: int, oldest: int) -> ApiError:
    return expired(f"too old resource version: {requested} ({oldest})")


INCONSISTENT_CONTINUE = (
    "The provided continue parameter is too old to display a consistent list result. "
    "You can start a new list without the continue parameter, or use the continue token in this "
    "response to retrieve the remainder of the results. Continuing with the provided token results in "
    "an inconsistent list - objects that were created, modified, or deleted between the time the first "
    "chunk was returned and now may show up in the list."
)


def expired_continue(fresh_token: str) -> ApiError:
    """410 for a continue token whose snapshot is compacted, with a token (in the Status's list
    metadata) that goes on with the rest of the list at the latest resourceVersion."""
    error = expired(INCONSISTENT_CONTINUE)
    error.status["metadata"] = {"continue": fresh_token}
    return error


def too_large(requested: int, current: int) -> ApiError:
    return ApiError(
        status(
            504,
            "Timeout",
            f"Too large resource version: {requested}, current: {current}",
            {
                "causes": [{"reason": "ResourceVersionTooLarge", "message": "Too large resource version"}],
                "retryAfterSeconds": 1,
            },
        )
    )


def internal(message: str) -> ApiError:
    return ApiError(status(500, "InternalError", f"Internal error occurred: {message}"))
