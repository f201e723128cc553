"""payloadtags: a Kubernetes aggregated API server for the tags of an OCI registry."""

__version__ = "0.1.0"
