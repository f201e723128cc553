"""Client for the OCI distribution API of the registry whose tags payloadtags serves."""

from .client import (
    ACCEPT_MANIFESTS,
    DELETE_NONCE_ANNOTATION,
    REPAIR_ANNOTATION,
    RegistryClient,
    RegistrySettings,
)
from .coalesce import asking
from .content import (
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
    INDEX_MEDIA_TYPES,
    MANIFEST_MEDIA_TYPES,
    OCI_INDEX,
    OCI_MANIFEST,
    CatalogPage,
    Manifest,
    is_valid_digest,
    is_valid_repository,
    is_valid_tag,
)
from .errors import (
    RegistryAuthFailed,
    RegistryConflict,
    RegistryDeleteDisabled,
    RegistryError,
    RegistryInvalidName,
    RegistryNotFound,
    RegistryProtocolError,
    RegistryReadOnly,
    RegistrySchema1Disabled,
    RegistryTimeout,
    RegistryUnavailable,
)
from .interface import Before, Catalog, Check, Registry
from .queue import RepositoryQueue

__all__ = [
    "ACCEPT_MANIFESTS",
    "DELETE_NONCE_ANNOTATION",
    "DOCKER_MANIFEST",
    "DOCKER_MANIFEST_LIST",
    "INDEX_MEDIA_TYPES",
    "MANIFEST_MEDIA_TYPES",
    "OCI_INDEX",
    "OCI_MANIFEST",
    "REPAIR_ANNOTATION",
    "Before",
    "Catalog",
    "CatalogPage",
    "Check",
    "Manifest",
    "Registry",
    "RegistryAuthFailed",
    "RegistryClient",
    "RegistryConflict",
    "RegistryDeleteDisabled",
    "RegistryError",
    "RegistryInvalidName",
    "RegistryNotFound",
    "RegistryProtocolError",
    "RegistryReadOnly",
    "RegistrySchema1Disabled",
    "RegistrySettings",
    "RegistryTimeout",
    "RegistryUnavailable",
    "RepositoryQueue",
    "asking",
    "is_valid_digest",
    "is_valid_repository",
    "is_valid_tag",
]
