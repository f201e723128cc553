"""The opaque ``continue`` token: where the previous page ended, so the next one resumes after it, and
which walk it belongs to (the id under which its tag lists are kept, api/walks.py)."""

from __future__ import annotations

import base64
import binascii
import json
from json.encoder import encode_basestring_ascii as _quote

import attrs

from payloadtags.api.errors import ApiError, bad_request
from payloadtags.api.walks import is_walk_id
from payloadtags.names import TagRef, is_namespace, is_repository_path
from payloadtags.watch import parse_version

_VERSION = 1


@attrs.frozen
class Continuation:
    resource_version: str
    scope: str  # the namespace the list was made in; "" for all namespaces
    last: TagRef
    # Minted by a walk's first page, carried by all its tokens; None in tokens of older replicas.
    walk: str | None = None


def encode(token: Continuation) -> str:
    # The JSON json.dumps(..., separators=(",", ":")) gives for {"v", "rv", "scope", "last"[, "w"]},
    # spelled directly: a token is made for every page.
    last = token.last
    raw = (
        f'{{"v":{_VERSION},"rv":{_quote(token.resource_version)},"scope":{_quote(token.scope)},'
        f'"last":[{_quote(last.namespace)},{_quote(last.repository_path)},{_quote(last.tag)}]'
        + ("}" if token.walk is None else f',"w":{_quote(token.walk)}}}')
    )
    return base64.urlsafe_b64encode(raw.encode("ascii")).decode("ascii").rstrip("=")


def another_list() -> ApiError:
    """The 400 for a token issued for another list than the one it is given to."""
    return bad_request("continue key is not valid: the token was issued for a different list")


def decode(text: str, scope: str) -> Continuation:
    """Decode a token for a list in ``scope``, or raise 400 as kube-apiserver does for a bad token."""
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        data = json.loads(raw)
        ns, path, tag = data["last"]
        resource_version, token_scope = data["rv"], data["scope"]
        walk = data.get("w")
        valid = (
            data["v"] == _VERSION
            and isinstance(resource_version, str)
            and parse_version(resource_version) is not None
            and all(isinstance(x, str) for x in (ns, path, tag))
            and is_namespace(ns)
            and is_repository_path(path)
            and tag
            and (walk is None or is_walk_id(walk))
        )
    except (binascii.Error, ValueError, KeyError, TypeError, UnicodeDecodeError, RecursionError):
        valid = False
    if not valid:
        raise bad_request("continue key is not valid: the token is malformed")
    if token_scope != scope or (scope and ns != scope):
        raise another_list()
    return Continuation(resource_version, scope, TagRef(ns, path, tag), walk)
