"""Kubernetes ``Status`` errors: every failure this server reports is one of these."""

from __future__ import annotations

from typing import Any

from payloadtags.model import GROUP, KIND, QUALIFIED_RESOURCE, RESOURCE, Status, StatusDetails


class ApiError(Exception):
    """Raised anywhere below a handler; the handler wrapper turns it into a Status reply."""

    def __init__(
        self,
        code: int,
        reason: str,
        message: str,
        details: StatusDetails | None = None,
        retry_after: int | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.details = details
        self.retry_after = retry_after

    def status(self) -> Status:
        return Status(
            status="Failure", code=self.code, reason=self.reason, message=self.message, details=self.details
        )


def _resource_details(name: str | None = None, **more: Any) -> StatusDetails:
    return StatusDetails(name=name or None, group=GROUP, kind=RESOURCE, **more)


def not_found(name: str) -> ApiError:
    return ApiError(404, "NotFound", f'{QUALIFIED_RESOURCE} "{name}" not found', _resource_details(name))


def path_not_found() -> ApiError:
    return ApiError(404, "NotFound", "the server could not find the requested resource", StatusDetails())


def method_not_allowed(verb: str) -> ApiError:
    return ApiError(
        405,
        "MethodNotAllowed",
        f'{verb} is not supported on resources of kind "{QUALIFIED_RESOURCE}"',
        _resource_details(),
    )


def path_method_not_allowed() -> ApiError:
    """A method a path that is not the resource's does not serve (go-restful's wording)."""
    return ApiError(
        405,
        "MethodNotAllowed",
        "the server does not allow this method on the requested resource",
        StatusDetails(),
    )


def cluster_wide_delete_collection_not_allowed() -> ApiError:
    return ApiError(
        405,
        "MethodNotAllowed",
        "deletecollection across all namespaces is not supported on resources of kind "
        f'"{QUALIFIED_RESOURCE}": delete the tags of one namespace at a time (DELETE on '
        f"namespaces/NAMESPACE/{RESOURCE}), or each tag by name",
        _resource_details(),
    )


def bad_request(message: str) -> ApiError:
    return ApiError(400, "BadRequest", message)


def invalid(kind: str, group: str, causes: list[dict[str, str]]) -> ApiError:
    """A 422 for ``kind`` in ``group`` as kube-apiserver's errors.NewInvalid makes it of a field.ErrorList
    (no name, as for ListOptions and DeleteOptions): a cause per field error, and the message of their
    aggregate, each ``field: body`` once, alone or as a bracketed list."""
    errors = list(dict.fromkeys(f"{c['field']}: {c['message']}" for c in causes))
    aggregate = errors[0] if len(errors) == 1 else "[" + ", ".join(errors) + "]"
    return ApiError(
        422,
        "Invalid",
        f'{kind}.{group} "" is invalid: {aggregate}',
        StatusDetails(group=group, kind=kind, causes=causes),
    )


def unauthorized(message: str = "Unauthorized") -> ApiError:
    return ApiError(401, "Unauthorized", message)


def forbidden(message: str, name: str | None = None) -> ApiError:
    return ApiError(403, "Forbidden", message, _resource_details(name))


def impersonation_refused() -> ApiError:
    """403 for a request that asks to act as someone else: payloadtags does not check the `impersonate`
    verb (it asks the cluster API no access question), and answering with the caller's own rights
    would do other than asked."""
    return forbidden(
        "payloadtags does not impersonate: this request carries Impersonate-* headers (kubectl --as, "
        "--as-group, --as-uid); send it as the user itself, or use kubectl --as through the Kubernetes "
        "API server, which applies impersonation and removes those headers before it forwards"
    )


def namespace_forbidden(namespace: str) -> ApiError:
    """The standalone server's answer to ``GET /api/v1/namespaces/<namespace>``: kube-apiserver's code
    and reason for a user who may not get namespaces (kubectl reads only those), and a message that
    says what is true, not an RBAC denial an operator might go and grant a Role for."""
    return ApiError(
        403,
        "Forbidden",
        f'namespaces "{namespace}" is forbidden: standalone payloadtags serves no namespaces (it has no '
        "cluster API; kubectl asks for the namespace after an object's NotFound)",
        StatusDetails(name=namespace, kind="namespaces"),
    )


def conflict(name: str, message: str) -> ApiError:
    return ApiError(
        409,
        "Conflict",
        f'Operation cannot be fulfilled on {QUALIFIED_RESOURCE} "{name}": {message}',
        _resource_details(name),
    )


def precondition_failed(name: str, message: str) -> ApiError:
    """A DeleteOptions precondition that does not hold, as kube-apiserver's delete path answers it
    (rest.BeforeDelete, before storage): its conflict names the kind as the resource."""
    return ApiError(
        409,
        "Conflict",
        f'Operation cannot be fulfilled on {KIND}.{GROUP} "{name}": {message}',
        StatusDetails(name=name, group=GROUP, kind=KIND),
    )


def not_acceptable(
    accept: str, *, collection: bool = True, watch: bool = False, forms: list[str] | None = None
) -> ApiError:
    """What this request could have been answered in, as kube-apiserver words it (its streaming media
    types for a watch: JSON only here, no YAML stream), and the forms by ``as=`` it serves (``forms``:
    a watch's, from the table negotiation serves them by)."""
    table = "application/json;as=Table;v=v1;g=meta.k8s.io"
    if watch:
        partial = "application/json;as=PartialObjectMetadata;v=v1;g=meta.k8s.io"
        accepted = ["application/json;stream=watch", *(forms if forms is not None else [table, partial])]
    else:
        kind = "PartialObjectMetadataList" if collection else "PartialObjectMetadata"
        partial = f"application/json;as={kind};v=v1;g=meta.k8s.io"
        accepted = ["application/json", "application/yaml", table, partial]
    return ApiError(
        406,
        "NotAcceptable",
        f"only the following media types are accepted: {', '.join(accepted)} (requested: {accept})",
    )


def unsupported_media_type(content_type: str) -> ApiError:
    return ApiError(
        415, "UnsupportedMediaType", f'the body of the request was in an unknown format: "{content_type}"'
    )


def service_unavailable(message: str, retry_after: int | None = 1) -> ApiError:
    details = StatusDetails(retry_after_seconds=retry_after) if retry_after is not None else None
    return ApiError(503, "ServiceUnavailable", message, details, retry_after=retry_after)


def timeout(message: str) -> ApiError:
    # No Retry-After: client-go would repeat the slow request up to ten times.
    return ApiError(504, "Timeout", f"Timeout: {message}")


# The code requests are counted with whose client went away before their answer: nginx's "client
# closed request" (kube-apiserver counts them as 500s, kubernetes/kubernetes#139256).
CLIENT_CLOSED_REQUEST = 499


def did_not_complete(seconds: float, more: str = "") -> ApiError:
    """A request past its deadline (``seconds`` after it came), in kube-apiserver's words; ``more``:
    what else its client should know."""
    return timeout(f"the request did not complete within {seconds:g}s{more}")


def list_resource_version_expired() -> ApiError:
    """A list at exactly a resourceVersion this server can no longer serve (kube-apiserver's words)."""
    return ApiError(410, "Expired", "The resourceVersion for the provided list is too old.")


def resource_version_too_large(requested: str, current: str) -> ApiError:
    """A resourceVersion this server has not reached (kube-apiserver's "too large resource version")."""
    cause = {"reason": "ResourceVersionTooLarge", "message": "Too large resource version"}
    # storage.NewTooLargeResourceVersionError is a timeout with retryAfterSeconds 1 (and so Retry-After:
    # 1): client-go's rest client tries again a second later, by when this replica may have reached it.
    return ApiError(
        504,
        "Timeout",
        f"Timeout: Too large resource version: {requested}, current: {current}",
        StatusDetails(causes=[cause], retry_after_seconds=1),
        retry_after=1,
    )


def too_many_requests(
    retry_after: int = 1, message: str = "Too many requests, please try again later."
) -> ApiError:
    return ApiError(
        429,
        "TooManyRequests",
        message,
        StatusDetails(retry_after_seconds=retry_after),
        retry_after=retry_after,
    )


def internal(message: str) -> ApiError:
    return ApiError(500, "InternalError", f"Internal error occurred: {message}")


def access_denied(user: str, verb: str, namespace: str, name: str | None, path: str | None) -> ApiError:
    """403 in kube-apiserver's wording, with the PayloadRepositoryAccess reason appended."""
    subject = f'{QUALIFIED_RESOURCE} "{name}"' if name else QUALIFIED_RESOURCE
    where = f'in the namespace "{namespace}"' if namespace else "at the cluster scope"
    message = f'{subject} is forbidden: User "{user}" cannot {verb} resource "{RESOURCE}" '
    message += f'in API group "{GROUP}" {where}'
    if path is not None:
        access_verb = "delete" if verb in ("delete", "deletecollection") else "get"
        message += f': no PayloadRepositoryAccess rule allows "{access_verb}" on repository path "{path}"'
    return forbidden(message, name)
