"""Naming the port that answered, and the same port on the other scheme, for advice about a URL's scheme.

Shared by the client's transport errors (which a 503 carries to the user) and the start-up probe, so that
both give the same URL to switch to.
"""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

DEFAULT_PORTS = {"http": 80, "https": 443}


def port_said(url: str) -> str:
    """The port that answered, said so that an implied one is seen: ``port 443 (https's default)``."""
    parts = urlsplit(url)
    if parts.port is not None:
        return f"port {parts.port}"
    return f"port {DEFAULT_PORTS[parts.scheme]} ({parts.scheme}'s default)"


def with_scheme(url: str, scheme: str) -> str:
    """``url`` with the other scheme on the port that answered: a URL without a port is on its scheme's
    default, and the other scheme's default (https://reg -> http://reg, 443 -> 80) is another port."""
    parts = urlsplit(url)
    netloc = parts.netloc if parts.port is not None else f"{parts.netloc}:{DEFAULT_PORTS[parts.scheme]}"
    return urlunsplit(parts._replace(scheme=scheme, netloc=netloc))
