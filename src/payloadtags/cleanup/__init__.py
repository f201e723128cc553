"""Namespace cleanup: when a namespace is deleted, everything under ``<namespace>/`` leaves the registry.

Three paths converge, all idempotent: the namespace controller's deletecollection (served by the
API), the watch loop on Namespaces with its cascades, and the sweep. See docs/namespace-cleanup.md.
"""

from payloadtags.cleanup.cascade import Aborted, Cascade, CascadeResult, Contents, Unconfirmed
from payloadtags.cleanup.controller import CleanupController, CleanupOptions
from payloadtags.cleanup.leader import (
    DEFAULT_LEASE_DURATION,
    DEFAULT_LEASE_NAME,
    DEFAULT_RENEW_DEADLINE,
    DEFAULT_RETRY_PERIOD,
    LeaderElectionOptions,
    LeaderElector,
    default_identity,
    default_lease_namespace,
)
from payloadtags.cleanup.metrics import CleanupMetrics
from payloadtags.cleanup.sweep import Sweep, SweepResult, namespace_state
from payloadtags.cleanup.watcher import NamespaceTriggers, NamespaceView

__all__ = [
    "DEFAULT_LEASE_DURATION",
    "DEFAULT_LEASE_NAME",
    "DEFAULT_RENEW_DEADLINE",
    "DEFAULT_RETRY_PERIOD",
    "Aborted",
    "Cascade",
    "CascadeResult",
    "CleanupController",
    "CleanupMetrics",
    "CleanupOptions",
    "Contents",
    "LeaderElectionOptions",
    "LeaderElector",
    "NamespaceTriggers",
    "NamespaceView",
    "Sweep",
    "SweepResult",
    "Unconfirmed",
    "default_identity",
    "default_lease_namespace",
    "namespace_state",
]
