"""The opaque ``continue`` token: where the previous page ended, so the next one resumes after it, and
which walk it belongs to (the id under which its tag lists are kept, api/walks.py)."""

from __future__ import annotations

import binascii
import json
import re
from collections import OrderedDict
from json.encoder import encode_basestring_ascii as _quote

import attrs

from payloadtags.api.errors import ApiError, bad_request
from payloadtags.api.walks import is_walk_id
from payloadtags.names import TagRef, is_namespace, is_repository_path
from payloadtags.registry.content import MAX_REPOSITORY_LENGTH
from payloadtags.validators import unpadded_urlsafe_b64decode, utf8_encodable, without_line_ends
from payloadtags.watch import parse_version

_VERSION = 1

# Decoded tokens, by their exact text. Each page of a walk decodes the token the page before handed
# out: a token is kept here as it is made (what it decodes to is known then), and a retry or a dry
# run followed by the same deletecollection gives a token again. A token decodes to the same fields
# whoever gives it (it carries no identity; every check that depends on the caller or the list is
# made after the decode, on each request), so one cache serves every request. Bounded in entries and
# in the length of a token it keeps (a token made here is at most about 800 characters: a namespace,
# a repository path, a tag and a walk id); the least recently used dropped first.
DECODED_MAX = 256
DECODED_TEXT_MAX = 1024


@attrs.frozen
class Continuation:
    resource_version: str
    scope: str  # the namespace the list was made in; "" for all namespaces
    last: TagRef
    # Minted by a walk's first page, carried by all its tokens; None in tokens of older replicas.
    walk: str | None = None


def encode(token: Continuation) -> str:
    last = token.last
    tag = last.tag
    parts = _parts.get(
        (token.resource_version, token.scope, last.namespace, last.repository_path, token.walk)
    )
    if parts is None:
        parts = _Parts.of(token)
        # What decoding the text gives (the spelling round-trips: test_continuation), checked as
        # decoding checks it, so that a token made of names the decode would refuse is refused all the
        # same.
        refused = _refused(token.resource_version, last.namespace, last.repository_path, tag, token.walk)
        if refused is None:
            parts.remember()
    elif _good_tag(tag):
        refused = None
    else:
        refused = _MALFORMED
    raw = parts.head + _quote(tag) + parts.tail
    text = binascii.b2a_base64(raw.encode("ascii"), newline=False).translate(_URL_SAFE).decode("ascii")
    text = text.rstrip("=")
    _keep(
        text,
        refused
        if refused is not None
        else (
            parts.resource_version,
            parts.scope,
            TagRef(parts.namespace, parts.path, _own(tag)),
            parts.walk,
        ),
    )
    return text


_URL_SAFE = bytes.maketrans(b"+/", b"-_")  # base64.urlsafe_b64encode's


@attrs.frozen
class _Parts:
    """A token's fields besides its tag, in strings of their own (`_own`), and its text around the
    tag: the JSON json.dumps(..., separators=(",", ":")) gives for {"v", "rv", "scope", "last"[, "w"]},
    spelled directly (a token is made for every page)."""

    resource_version: str
    scope: str
    namespace: str
    path: str
    walk: str | None
    head: str
    tail: str

    @classmethod
    def of(cls, token: Continuation) -> _Parts:
        last = token.last
        return cls(
            _own(token.resource_version),
            _own(token.scope),
            _own(last.namespace),
            _own(last.repository_path),
            None if token.walk is None else _own(token.walk),
            f'{{"v":{_VERSION},"rv":{_quote(token.resource_version)},"scope":{_quote(token.scope)},'
            f'"last":[{_quote(last.namespace)},{_quote(last.repository_path)},',
            "]}" if token.walk is None else f'],"w":{_quote(token.walk)}}}',
        )

    def remember(self) -> None:
        _parts[(self.resource_version, self.scope, self.namespace, self.path, self.walk)] = self
        if len(_parts) > PARTS_MAX:
            del _parts[next(iter(_parts))]


# The parts of the tokens made lately, found valid (`_refused`): the same on every page of a walk
# (its resourceVersion, scope and walk id) and within one repository (its namespace and path), so
# that a walk's next token is spelled, checked and copied for its tag alone (issue #11). Keyed by
# their own strings: a walk's are not held here either. A few kB each at most; the oldest dropped
# first.
PARTS_MAX = 64
_parts: dict[tuple[str, str, str, str, str | None], _Parts] = {}


def another_list() -> ApiError:
    """The 400 for a token issued for another list than the one it is given to."""
    return bad_request("continue key is not valid: the token was issued for a different list")


def decode(text: str, scope: str) -> Continuation:
    """Decode a token for a list in ``scope``, or raise 400 as kube-apiserver does for a bad token."""
    fields = _decoded.get(text)
    if fields is None:
        fields = _decode_fields(text)
        _keep(text, fields)
    else:
        _decoded.move_to_end(text)
    resource_version, token_scope, last, walk = fields
    if token_scope is _REFUSED:
        raise bad_request(f"continue key is not valid: {resource_version}")
    if token_scope != scope or (scope and last.namespace != scope):
        raise another_list()
    # In strings of the caller's own (`_own`); the token's scope is only compared.
    return Continuation(
        _own(resource_version),
        scope,
        TagRef(_own(last.namespace), _own(last.repository_path), _own(last.tag)),
        None if walk is None else _own(walk),
    )


# What a token decodes to: its resourceVersion, scope (as the token spells it: a scope that is no
# string is another list's), last key and walk id; or a refusal: the scope _REFUSED, and the 400's
# reason where the resourceVersion would be (one identity check on a page's decode tells them apart).
_Fields = tuple[str, object, TagRef, "str | None"]
_REFUSED = object()
_MALFORMED: _Fields = ("the token is malformed", _REFUSED, TagRef("", "", ""), None)
# kube-apiserver's own refusal of a token whose resourceVersion is 0 (storage.ErrInvalidStartRV).
_ZERO_START: _Fields = (
    "incorrect encoded start resourceVersion (version meta.k8s.io/v1)",
    _REFUSED,
    TagRef("", "", ""),
    None,
)
_decoded: OrderedDict[str, _Fields] = OrderedDict()


def forget_tokens() -> None:
    """Drops the tokens' decodings and parts kept (quiet.WhenQuiet)."""
    _decoded.clear()
    _parts.clear()


def _keep(text: str, fields: _Fields) -> None:
    if len(text) <= DECODED_TEXT_MAX:
        _decoded[text] = fields
        _decoded.move_to_end(text)
        if len(_decoded) > DECODED_MAX:
            _decoded.popitem(last=False)


def _own(text: str) -> str:
    """``text`` in a string of its own. What a token decodes to is the caller's alone (a walk keeps
    the key and the walk id, and counts their memory as freed with it, api/walks.py), as decoding
    the text makes it; and what the caches here keep is nobody else's (a page's key is cut from the
    catalog names its walk keeps; a token made for a list is made of the request's own scope string,
    its URL's namespace, which its walk keeps, counted and freed with it: kept here, it would
    outlive the walk)."""
    # A new string of the same characters (slicing or str() give the same object back). One of a
    # character is CPython's own, shared by everyone anyway. A forged token's tag may hold a lone
    # surrogate (JSON's \ud800), which strict UTF-8 refuses: the copy must not (a 500).
    return text[:1] + text[1:] if len(text) > 1 else text


def _refused(resource_version: object, ns: object, path: object, tag: object, walk: object) -> _Fields | None:
    """None for a token's fields that name a page to resume after; else the refusal they get."""
    if not isinstance(resource_version, str) or (version := parse_version(resource_version)) is None:
        return _MALFORMED
    if version == 0:
        # No list is answered at resourceVersion 0 (a replica's versions start at 1), and kube-apiserver
        # refuses a token of 0 as a start (its tokens carry the version as a number).
        return _ZERO_START
    valid = (
        # Spelled as a version is spelled, no leading zero: "007" would be echoed as the list's.
        resource_version[0] != "0"
        and all(isinstance(x, str) for x in (ns, path, tag))
        and is_namespace(ns)  # type: ignore[arg-type]
        and is_repository_path(path)  # type: ignore[arg-type]
        # The whole name within the registry's bound too: no page ends in a longer one (the registry
        # client refuses to read it), so only a tampered token names one, malformed as any other.
        and len(ns) + 1 + len(path) <= MAX_REPOSITORY_LENGTH  # type: ignore[arg-type]
        # Any tag a page could have ended on, not the tag grammar: the registry client hands out every
        # tag the registry lists (ECR's reach 300 characters), and a walk must go on past each; but
        # the empty one and text UTF-8 cannot carry, which it leaves out (`RegistryClient._nameable`):
        # only a tampered token names one (and the copy for the caller could not carry the latter).
        and _good_tag(tag)
        and (walk is None or is_walk_id(walk))
    )
    return None if valid else _MALFORMED


def _good_tag(tag: object) -> bool:
    """Whether a page could have ended on ``tag``: any tag the registry client hands out, which is any
    non-empty text UTF-8 can carry (`RegistryClient._nameable`)."""
    return isinstance(tag, str) and tag != "" and (tag.isascii() or utf8_encodable(tag))


# What Go's base64.RawURLEncoding, with which kube-apiserver decodes a token, takes: the URL-safe
# alphabet, no padding (it skips line breaks). Python's decoding drops any other character and takes
# padding and the standard alphabet's "+" and "/": such text is malformed there, so here too.
_RAW_URL_BASE64 = re.compile(r"[A-Za-z0-9_-]*")


def _decode_fields(text: str) -> _Fields:
    if "\r" in text or "\n" in text:
        text = without_line_ends(text)
    if _RAW_URL_BASE64.fullmatch(text) is None:
        return _MALFORMED
    try:
        raw = unpadded_urlsafe_b64decode(text)
        data = json.loads(raw)
        ns, path, tag = data["last"]
        resource_version, token_scope = data["rv"], data["scope"]
        walk = data.get("w")
        # Exactly the number 1: true and 1.0 compare equal to it.
        v = data["v"]
        refused = (
            _refused(resource_version, ns, path, tag, walk)
            if type(v) is int and v == _VERSION
            else _MALFORMED
        )
    except (binascii.Error, ValueError, KeyError, TypeError, UnicodeDecodeError, RecursionError):
        refused = _MALFORMED
    if refused is not None:
        return refused
    return resource_version, token_scope, TagRef(ns, path, tag), walk
