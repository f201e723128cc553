"""An in-process Kubernetes API test double (see `server.KubeApiDouble`)."""

from tests.support.kubeapi import resources
from tests.support.kubeapi.kubeconfig import write_kubeconfig
from tests.support.kubeapi.server import KubeApiDouble, RequestInfo, RequestRecord, User
from tests.support.kubeapi.statuses import ApiError
from tests.support.kubeapi.store import Event, ObjectStore
from tests.support.kubeapi.waiting import eventually

__all__ = [
    "ApiError",
    "Event",
    "KubeApiDouble",
    "ObjectStore",
    "RequestInfo",
    "RequestRecord",
    "User",
    "eventually",
    "resources",
    "write_kubeconfig",
]
