"""The cluster API, seen from payloadtags: configuration loading, an async client, reflectors.

The `kubernetes` package is only used (lazily) by `load_cluster_config`, at start-up; everything
that runs on the reactor goes through treq.
"""

from payloadtags.kube.backoff import Backoff
from payloadtags.kube.client import (
    ADDED,
    BOOKMARK,
    DELETED,
    ERROR,
    MERGE_PATCH,
    MODIFIED,
    KubeClient,
    UserInfo,
    WatchEvent,
    WatchStream,
    resource_path,
)
from payloadtags.kube.config import ClusterConfig, ConfigError, in_pod, load_cluster_config
from payloadtags.kube.errors import (
    KubeApiError,
    KubeError,
    KubeProtocolError,
    KubeStreamLost,
    KubeTimeout,
    KubeUnavailable,
    KubeWatchSilent,
    Status,
)
from payloadtags.kube.interface import ClusterClient
from payloadtags.kube.reflector import Reflector, StoreListener, object_key

__all__ = [
    "ADDED",
    "BOOKMARK",
    "DELETED",
    "ERROR",
    "MERGE_PATCH",
    "MODIFIED",
    "Backoff",
    "ClusterClient",
    "ClusterConfig",
    "ConfigError",
    "KubeApiError",
    "KubeClient",
    "KubeError",
    "KubeProtocolError",
    "KubeStreamLost",
    "KubeTimeout",
    "KubeUnavailable",
    "KubeWatchSilent",
    "Reflector",
    "Status",
    "StoreListener",
    "UserInfo",
    "WatchEvent",
    "WatchStream",
    "in_pod",
    "load_cluster_config",
    "object_key",
    "resource_path",
]
