"""Where the cluster API is and how to authenticate to it.

`load_cluster_config` is **blocking**: it reads files, and a kubeconfig may run an exec credential
plugin. Call it once at start-up, before the reactor runs (or from a thread), never from a request
handler. Everything it returns is plain data that the reactor-side client uses without blocking.
"""

from __future__ import annotations

import ast
import base64
import datetime
import decimal
import functools
import math
import os
import re
from collections.abc import Hashable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import urlsplit

import attrs

from payloadtags.kube.execcred import ExecPlugin, PluginError, run_plugin_blocking
from payloadtags.validators import (
    address_problem,
    at_in_authority,
    go_trim_space,
    has_userinfo,
    header_safe,
    read_file,
    without_line_ends,
    without_userinfo,
)

if TYPE_CHECKING:
    from kubernetes.client import Configuration

SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
SERVICE_HOST_ENV = "KUBERNETES_SERVICE_HOST"
SERVICE_PORT_ENV = "KUBERNETES_SERVICE_PORT"


class ConfigError(Exception):
    """The cluster configuration is missing a piece or cannot be read."""


def _redact(value: object) -> str:
    return "None" if value is None else "'<redacted>'"


def _redact_url(value: object) -> str:
    return repr(without_userinfo(value) if isinstance(value, str) else value)


_EXCLUSIVE = (
    ("ca_file", "ca_data"),
    ("client_cert_file", "client_cert_data"),
    ("client_key_file", "client_key_data"),
    ("token_file", "exec_plugin"),
)


@attrs.frozen
class ClusterConfig:
    """How to reach the cluster API: URL, trust, and client credentials.

    Credentials come either as file paths or as PEM bytes. A `token_file` (the in-cluster
    service-account token, or a kubeconfig user's ``tokenFile``) is re-read by the client periodically
    and after a 401, because such tokens rotate; a `token` beside it is sent while the file cannot be
    read (as client-go's bearer round tripper does), and the file's once it can. An `exec_plugin` is
    run again by the client once `token_expires_at` (POSIX seconds) has passed and after a 401; `token`
    is then the credential it printed at start-up. Any other `token` is used as it is. The token never
    appears in ``repr``.
    """

    server: str = attrs.field(repr=_redact_url)
    ca_file: str | None = None
    ca_data: bytes | None = attrs.field(default=None, repr=False)
    client_cert_file: str | None = None
    client_key_file: str | None = None
    client_cert_data: bytes | None = attrs.field(default=None, repr=False)
    client_key_data: bytes | None = attrs.field(default=None, repr=_redact)
    token: str | None = attrs.field(default=None, repr=_redact)
    token_file: str | None = None
    # The kubeconfig's folder, which its relative files are joined to: a URL that took --kubeconfig's
    # place makes it `https:/user:pw@host` under the working directory, so a message naming such a file
    # redacts it (and no more: an absolute tokenFile is shown whole, '@' or not, review r13cfg L1). It
    # changes how messages name files, not how the cluster is reached: not compared.
    kubeconfig_folder: str | None = attrs.field(default=None, repr=_redact_url, eq=False)
    exec_plugin: ExecPlugin | None = None
    token_expires_at: float | None = None
    insecure_skip_tls_verify: bool = False
    tls_server_name: str | None = None
    in_cluster: bool = False
    # The namespace of the kubeconfig's context, or the pod's: where namespaced objects of our own go.
    namespace: str | None = None
    # What loading found that does not stop the start but is worth a warning there (a line each, no secret).
    warnings: tuple[str, ...] = ()
    # The kubeconfig fields the CA, client certificate and key were read from, for a refusal to name the
    # one the user wrote: the kubernetes library writes a ``*-data`` field to a file of its own.
    ca_field: str = "certificate-authority"
    client_cert_field: str = "client-certificate"
    client_key_field: str = "client-key"

    @server.validator
    def _check_server(self, _attribute: attrs.Attribute[Any], value: str) -> None:
        if not value.startswith(("https://", "http://")):
            raise ValueError(f"cluster server must be an http(s) URL, not {without_userinfo(value)!r}")

    def __attrs_post_init__(self) -> None:
        for a, b in _EXCLUSIVE:
            if getattr(self, a) is not None and getattr(self, b) is not None:
                raise ValueError(f"give {a} or {b}, not both")
        has_cert = self.client_cert_file is not None or self.client_cert_data is not None
        has_key = self.client_key_file is not None or self.client_key_data is not None
        if has_cert != has_key:
            raise ValueError("a client certificate needs its key, and a key its certificate")

    @property
    def uses_tls(self) -> bool:
        return self.server.startswith("https://")

    @property
    def has_client_cert(self) -> bool:
        return self.client_cert_file is not None or self.client_cert_data is not None


def in_pod(environ: Mapping[str, str] = os.environ, service_account_dir: str = SERVICE_ACCOUNT_DIR) -> bool:
    """Whether this process runs in a pod with a service account to talk to its cluster.

    Both are needed: the service environment variables alone also appear in pods that opted out of
    a token (``automountServiceAccountToken: false``), where there is nothing to authenticate with.
    """
    return bool(environ.get(SERVICE_HOST_ENV)) and (Path(service_account_dir) / "token").is_file()


def pod_without_token(
    environ: Mapping[str, str] = os.environ, service_account_dir: str = SERVICE_ACCOUNT_DIR
) -> str | None:
    """Where the token should be, when this runs in a pod that has none mounted (None otherwise)."""
    token = Path(service_account_dir) / "token"
    if environ.get(SERVICE_HOST_ENV) and not token.is_file():
        return str(token)
    return None


def load_cluster_config(
    kubeconfig: str | None,
    *,
    context: str | None = None,
    environ: Mapping[str, str] = os.environ,
    service_account_dir: str = SERVICE_ACCOUNT_DIR,
) -> ClusterConfig | None:
    """Load the cluster configuration the way the process was deployed. Blocking: see the module doc.

    - an explicit `kubeconfig` file wins (``--kubeconfig``);
    - otherwise, in a pod, the service account's in-cluster configuration;
    - otherwise None: standalone mode, no cluster API.

    ``$KUBECONFIG`` and ``~/.kube/config`` are deliberately not consulted: a developer's personal
    kubeconfig must not silently turn standalone mode into cluster mode.
    """
    if kubeconfig is not None:
        return _from_kubeconfig(kubeconfig, context)
    if in_pod(environ, service_account_dir):
        return _from_service_account(environ, service_account_dir)
    return None


def _from_kubeconfig(path: str, context: str | None) -> ClusterConfig:
    # Imported here: the package takes seconds to import and standalone mode never needs it.
    from kubernetes import config as kube_config
    from kubernetes.client import Configuration
    from kubernetes.config.kube_config import ConfigNode

    if os.path.isdir(path):
        raise ConfigError(f"kubeconfig {path!r} is a directory, not a file")
    if not os.path.exists(path):
        raise ConfigError(f"kubeconfig {path!r} does not exist")
    import yaml

    try:
        # Bytes: PyYAML then reads UTF-16 by its byte order mark, as go-yaml does (PowerShell 5 writes it).
        # Only the first document is read, as go-yaml's Unmarshal reads it: a file may end in a "---".
        loader = _go_yaml_loader()(read_file(path))
        try:
            node = loader.get_node() if loader.check_node() else None
            # Counted on the nodes, before any is built: merging a chain of merge keys builds each
            # mapping again, in time and memory quadratic in the chain's length.
            problem = _alias_problem(node)
            document = None if problem or node is None else loader.construct_document(node)
        finally:
            loader.dispose()
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise ConfigError(f"cannot read kubeconfig {path!r}: {_gist(e)}") from e
    except RecursionError:
        problem = "the document is nested too deeply"
    if problem:
        raise ConfigError(f"cannot read kubeconfig {path!r}: {problem}")
    shape = f"{path!r} is not a kubeconfig (a YAML document with clusters, users and contexts)"
    if not isinstance(document, dict) or not document.get("clusters"):
        raise ConfigError(shape)
    for kind in ("clusters", "users", "contexts"):
        # Read as lists below and by the library: a number or a mapping would end in a traceback.
        if document.get(kind) is not None and not isinstance(document[kind], list):
            raise ConfigError(f"{shape}: {kind} is not a list")
        if document.get(kind):
            # A null entry is an empty one to client-go, which no context names; the library failed on it
            # ("argument of type 'NoneType' is not iterable").
            document[kind] = [entry for entry in document[kind] if entry is not None]
    context_entry, user, cluster_entry = _chosen(document, context, path)
    scheme = _SCHEME.match(cluster_entry["server"])
    if scheme and not cluster_entry["server"][scheme.end() :].strip("/"):
        # Said as written: the check of the server's form below sees it lowercased and without its
        # slashes ('https:'), which is not what the file holds (review r4cfg N1).
        raise ConfigError(
            f"kubeconfig {path!r}: cluster server {cluster_entry['server']!r} has no host, as kubectl "
            "refuses it"
        )
    if scheme:
        # HTTPS:// is https:// to kubectl (Go's url.Parse lowercases the scheme); the library and
        # ClusterConfig look for it in lower case (the library left the CA and the client certificate out).
        cluster_entry["server"] = scheme.group(1).lower() + cluster_entry["server"][scheme.end(1) :]
    if any(char < " " or char == "\x7f" for char in cluster_entry["server"]):
        # kubectl refuses it ("net/url: invalid control character in URL"); urlsplit drops a tab or line
        # end silently, so the server payloadtags connected to was not the one written.
        raise ConfigError(
            f"kubeconfig {path!r}: cluster server {without_userinfo(cluster_entry['server'])!r} holds a "
            "control character, which kubectl refuses too (net/url: invalid control character in URL)"
        )
    warnings: tuple[str, ...] = ()
    unused = _without_credentials(user) if not _is_https(cluster_entry["server"]) else []
    if unused:
        # As client-go, which takes a user's credentials for an https:// server only (kubectl sends none
        # to an http:// one, nor runs its plugin): on plain http:// whoever sees the traffic could read
        # them. A `kubectl proxy` there holds its own credential and adds it.
        plugin_note = " (its exec plugin is not run)" if "exec" in unused else ""
        warnings = (
            f'kubeconfig {path!r}: user "{context_entry.get("user")}": {", ".join(unused)} not used'
            f"{plugin_note}: the cluster's server is plain http://, to which kubectl sends no credential "
            "either (one would cross the connection unencrypted), so payloadtags connects without one",
        )
    token = user.get("token")
    if isinstance(token, str) and not header_safe(token.strip("\r\n")):
        # Sent, it was mangled (a line end) or cut (a NUL); kubectl fails every request with it ("invalid
        # header field value"). A line end at either end is let off, as documented: a YAML block scalar
        # (`token: |`) ends in one. Any other character at an end is the token's: kubectl sends it as
        # written (a Unicode space) or fails (VT, FF, U+001C-U+001F). A blank token is none, below.
        raise ConfigError(
            f'kubeconfig {path!r}: user "{context_entry.get("user")}": token holds a control character (a '
            "line end, NUL…), which no Authorization header can carry, as kubectl cannot send it either"
        )
    basic = [field for field in ("username", "password") if field in user]
    if basic:
        # Left after the plain-http rule above: kubectl would send Basic credentials (and refuse them beside
        # a token), which no API server takes since Kubernetes 1.19; the library's refusal named nothing.
        raise ConfigError(
            f'kubeconfig {path!r}: user "{context_entry.get("user")}": {" and ".join(basic)} (basic auth) '
            "is not supported, as no Kubernetes API server takes it since 1.19: give the user a token, a "
            "client certificate or an exec plugin"
        )
    # After _chosen: an empty field is gone, and a file beside its data refused, so one at most is left.
    ca_field = _written(cluster_entry, "certificate-authority")
    cert_field, key_field = _written(user, "client-certificate"), _written(user, "client-key")
    _extensions_as_sent(document, set())
    _as_written(document, set())
    base = os.path.dirname(os.path.abspath(path))
    plugin = None
    if isinstance(user.get("exec"), dict) and not _has_own_credential(user):
        try:
            plugin = ExecPlugin.from_kubeconfig(user["exec"], base, cluster_entry)
        except (PluginError, KeyError, TypeError) as e:
            raise ConfigError(f"kubeconfig {path!r}: {_gist(e)}") from e
    if isinstance(user.get("exec"), dict):
        # Run below by our own runner, or not at all. The library's runner would run it whenever the
        # user it loads has no token: once the blank token is dropped, or beside an empty tokenFile.
        # It has no time or size bound, and keeps neither the expiry nor a way to renew.
        user.pop("exec")
    if isinstance(user.get("token"), str) and not user["token"].strip():
        # client-go sends a blank token as it stands (`Authorization: Bearer` and nothing after), which the
        # API server takes as no credential: none is sent, and a tokenFile beside it is the credential.
        user.pop("token")
    token_file = user.get("tokenFile")
    token_beside = bool(user.get("token"))
    if token_file:
        where = f'kubeconfig {path!r}: user "{context_entry.get("user")}"'
        if _check_token_file(os.path.join(base, token_file), where, token_beside=token_beside):
            # No file has such a path: the token beside it is the credential, for good (client-go reads
            # the file at each request, fails each time and sends the token).
            warnings += (
                f"{where}: tokenFile holds a NUL byte, so it cannot be read: the token beside it is sent",
            )
            token_file = None
    configuration = Configuration()
    try:
        kube_config.load_kube_config_from_dict(
            # A node that knows the file's path, so relative paths resolve against the kubeconfig's folder.
            ConfigNode("kubeconfig", document, path),
            context=context,
            client_configuration=configuration,
            persist_config=False,
        )
    except UnicodeDecodeError:
        # Its own words name a byte and its place, and the file read is a credential: not said.
        raise ConfigError(f"cannot load kubeconfig {path!r}: a file it names is not UTF-8 text") from None
    except (kube_config.ConfigException, OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise ConfigError(f"cannot load kubeconfig {path!r}: {_gist(e)}") from e
    # As client-go: a tokenFile is re-read (it rotates), and wins over a token beside it whenever it can be
    # read; the token is sent while it cannot. (The library took the token, when there is one, and
    # left the file.)
    try:
        cluster = _convert(
            configuration,
            token_file=os.path.join(base, token_file) if token_file else None,
            token_beside=token_beside,
            in_cluster=False,
        )
    except ValueError as e:  # ClusterConfig's own checks; what _chosen saw first is named there
        raise ConfigError(f"kubeconfig {path!r}: {_gist(e)}") from e
    cluster = attrs.evolve(
        cluster,
        ca_field=ca_field,
        client_cert_field=cert_field,
        client_key_field=key_field,
        kubeconfig_folder=base,
    )
    if plugin is not None:
        cluster = _with_plugin_credential(cluster, plugin, path)
    problem = _server_problem(cluster.server)
    if problem:
        server = without_userinfo(cluster.server)
        raise ConfigError(f"kubeconfig {path!r}: cluster server {server!r}: {problem}")
    namespace = context_entry.get("namespace")
    return attrs.evolve(cluster, namespace=namespace or None, warnings=warnings)


# A user's credentials, as client-go's getUserIdentificationPartialConfig takes them (auth-provider is
# refused by `_check_user`), in the order a warning names them.
_CREDENTIALS = (
    "token",
    "tokenFile",
    "client-certificate",
    "client-certificate-data",
    "client-key",
    "client-key-data",
    "username",
    "password",
    "exec",
)


# A server's http(s) scheme, in any case.
_SCHEME = re.compile(r"(https?)://", re.IGNORECASE)


def _is_https(server: str) -> bool:
    return server.startswith("https://")  # the scheme lowercased (`_SCHEME`)


def _without_credentials(user: dict[str, Any]) -> list[str]:
    """Take the user's credentials out of its section; the fields that were there, for a warning."""
    return [field for field in _CREDENTIALS if user.pop(field, None) is not None]


def _written(section: dict[str, Any], field: str) -> str:
    """Which of a field's two forms the section gives: its ``*-data`` or its file (also when neither)."""
    return f"{field}-data" if section.get(f"{field}-data") else field


def _has_own_credential(user: dict[str, Any]) -> bool:
    """Whether the user has a credential beside which client-go's exec authenticator steps aside, so
    that kubectl never runs the plugin: a token (a blank one included), a tokenFile (an empty one too),
    or a client certificate with its key, each as a file or as data. A key alone is no credential to
    client-go, which copies the key only with a certificate. The user's fields are tidied: an empty one
    is absent, as to client-go."""
    return bool(user.get("token") or user.get("tokenFile") or user.get("auth-provider")) or (
        _given(user, "client-certificate") and _given(user, "client-key")
    )


def _given(section: dict[str, Any], field: str) -> bool:
    """Whether the section gives the field in either form, its file or its ``*-data``."""
    return bool(section.get(field) or section.get(f"{field}-data"))


# A cluster's fields whose type the kubernetes library does not check, with the type client-go decodes.
_CLUSTER_FIELDS: tuple[tuple[str, type], ...] = (
    ("server", str),
    ("certificate-authority", str),
    ("certificate-authority-data", str),
    ("tls-server-name", str),
    ("insecure-skip-tls-verify", bool),
    ("disable-compression", bool),
)
# The same for a user: the library sends a list put under token as its Python text, and fails on a
# number under a file key in Python's words.
_USER_FIELDS: tuple[tuple[str, type], ...] = (
    ("token", str),
    ("tokenFile", str),
    ("client-certificate", str),
    ("client-certificate-data", str),
    ("client-key", str),
    ("client-key-data", str),
    ("username", str),
    ("password", str),
)
# client-go's impersonation keys: it sends Impersonate-* headers on every request. payloadtags does not,
# and would act with the user's own, usually wider, rights.
_IMPERSONATION = ("as", "as-uid", "as-groups", "as-user-extra")


class _Boolean(str):
    """A plain scalar that go-yaml v2 (kubectl's reader) takes for a boolean: its text as written, and
    the boolean, which only a boolean field reads (`_booleans`). sigs.k8s.io/yaml decodes a document
    into the kubeconfig's types; elsewhere the text stands, as a string field's value."""

    value: bool

    def __new__(cls, text: str, value: bool) -> _Boolean:
        boolean = super().__new__(cls, text)
        boolean.value = value
        return boolean


class _BooleanKey(_Boolean):
    """A boolean as a mapping's key: one key with every other boolean of its value (go-yaml's map has
    one ``true``: ``on: 1`` then ``yes: 2`` is ``true: 2``), and another key than any string (``on: 1``
    and ``'on': 2`` are two keys to kubectl, "true" and "on", where a `_Boolean`, equal to its text,
    made them one)."""

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _BooleanKey) and self.value == other.value

    def __ne__(self, other: object) -> bool:
        return not self == other

    def __hash__(self) -> int:
        return hash((_BooleanKey, self.value))


# A non-finite number as a key, as sigs.k8s.io/yaml writes it in JSON (after go-yaml's float text).
_GO_SPECIAL_KEYS = {math.inf: ".inf", -math.inf: "-.inf"}


def _special_key(key: float) -> str:
    return ".nan" if math.isnan(key) else _GO_SPECIAL_KEYS[key]


# The kubeconfig's boolean fields, by section: client-go decodes only these as booleans.
_CLUSTER_BOOLEANS = ("insecure-skip-tls-verify", "disable-compression")
_EXEC_BOOLEANS = ("provideClusterInfo",)


@functools.cache
def _go_yaml_loader() -> type[Any]:
    """PyYAML's safe loader reading a document as go-yaml v2 (kubectl's reader, through
    sigs.k8s.io/yaml) does, rather than as YAML 1.1 or 1.2 say: kubectl 1.27 to 1.33 read ``y`` and
    ``off`` as booleans (YAML 1.1; 1.2 has only ``true``/``false``), but ``1:20`` and dates as text,
    and ``1e3``, ``0o17`` and ``08`` as numbers. A plain scalar is resolved by `_go_plain`, each
    boolean loaded as a `_Boolean`. A tagged value is what go-yaml makes of it (`_go_tags`): the text
    of a ``!!timestamp``, the decoded text of a ``!!binary``, a mapping of nulls for a ``!!set``, a
    list for ``!!omap`` and ``!!pairs``, and an unknown tag's node as if untagged; PyYAML's dates,
    bytes, sets and tuples have no JSON form, and an exec plugin's extension is sent as JSON."""
    import yaml

    class Loader(yaml.SafeLoader):
        # go-yaml v2's escapes of one character (its scannerc.go): YAML 1.1's, with \' and without YAML
        # 1.2's \/, which PyYAML has; kubectl refuses the file for any other ("found unknown escape
        # character").
        ESCAPE_REPLACEMENTS: ClassVar[dict[str, str]] = {
            **{char: text for char, text in yaml.SafeLoader.ESCAPE_REPLACEMENTS.items() if char != "/"},
            "'": "'",
        }

        def __init__(self, stream: Any) -> None:
            super().__init__(stream)
            # Where the node being composed stands, each step its parent and index (`_place`): made
            # into a path (users[0].user.token) only for a refusal to name.
            self.steps: list[tuple[Any, Any]] = []
            # Where each escape go-yaml refuses was scanned, and what it refuses it for: refused when
            # the node holding it is composed, where its path is known (`compose_node`). The scanner
            # reads a token ahead: the list may hold one of a node to come.
            self.bad_escapes: list[tuple[Any, str]] = []

        def resolve(self, kind: Any, value: Any, implicit: Any) -> Any:
            if kind is yaml.ScalarNode and implicit[0]:
                return _go_plain(value)[0]
            return super().resolve(kind, value, implicit)

        def scan_flow_scalar_non_spaces(self, double: bool, start_mark: Any) -> Any:
            """PyYAML's, with each escape of a code (``\\x``, ``\\u``, ``\\U``) read by `_code_escape`
            and the one-character escapes of go-yaml v2."""
            if not double:
                return super().scan_flow_scalar_non_spaces(double, start_mark)
            chunks = []
            while True:
                length = 0
                while self.peek(length) not in '"\\\0 \t\r\n\x85\u2028\u2029':
                    length += 1
                if length:
                    chunks.append(self.prefix(length))
                    self.forward(length)
                if self.peek() != "\\":
                    return chunks
                if self.peek(1) in self.ESCAPE_CODES:
                    chunks.append(self._code_escape(start_mark))
                    continue
                # An escape of one character, or of a line break, read as PyYAML reads it.
                mark = self.get_mark()
                self.forward()
                char = self.peek()
                if char in self.ESCAPE_REPLACEMENTS:
                    chunks.append(self.ESCAPE_REPLACEMENTS[char])
                    self.forward()
                elif char in "\r\n\x85\u2028\u2029":
                    self.scan_line_break()
                    chunks.extend(self.scan_flow_scalar_breaks(double, start_mark))
                else:
                    raise yaml.scanner.ScannerError(
                        "while scanning a double-quoted scalar",
                        start_mark,
                        f"found unknown escape character {char!r}",
                        mark,
                    )

        def _code_escape(self, start_mark: Any) -> str:
            """The character of an escape of its code, as PyYAML reads it; one that go-yaml refuses (a
            surrogate, or past \\U0010FFFF, where chr() raised ValueError or OverflowError) is noted
            and left out, to be refused with the node's path (`compose_node`)."""
            mark = self.get_mark()
            length = self.ESCAPE_CODES[self.peek(1)]
            self.forward(2)
            for k in range(length):
                if self.peek(k) not in "0123456789ABCDEFabcdef":
                    raise yaml.scanner.ScannerError(
                        "while scanning a double-quoted scalar",
                        start_mark,
                        f"expected escape sequence of {length} hexadecimal numbers, but found "
                        f"{self.peek(k)!r}",
                        self.get_mark(),
                    )
            code = int(self.prefix(length), 16)
            self.forward(length)
            if 0xD800 <= code <= 0xDFFF:
                self.bad_escapes.append((mark, "a surrogate, \\uD800-\\uDFFF, which has no UTF-8 form"))
            elif code > 0x10FFFF:
                self.bad_escapes.append((mark, "past \\U0010FFFF"))
            else:
                return chr(code)
            return ""

        def compose_node(self, parent: Any, index: Any) -> Any:
            event = self.peek_event()
            key = index.value if isinstance(index, yaml.ScalarNode) else None
            if isinstance(event, yaml.AliasEvent) and event.anchor not in self.anchors:
                # PyYAML's own message quotes the name: an unquoted password that begins with "*".
                raise yaml.composer.ComposerError(
                    None,
                    None,
                    _field(key) + "an alias (*…) names no anchor (quote the value if it is text)",
                    event.start_mark,
                )
            self.steps.append((parent, index))
            try:
                node = super().compose_node(parent, index)
            finally:
                self.steps.pop()
            bad = self._bad_escape(node)
            if bad is not None:
                place = _place([*self.steps, (parent, index)])
                mark, why = bad
                # go-yaml refuses any escape of a surrogate, a valid pair's too, and one past the last
                # code point ("found invalid Unicode character escape code"), so kubectl refuses the
                # whole file, whatever field holds it, naming the escape's line. Left in, a surrogate
                # has no UTF-8 form: a token cannot go into a header, a server or a namespace into a
                # URL, a path or an argument to the OS. The value is not shown: it may be a secret.
                raise yaml.composer.ComposerError(
                    None,
                    None,
                    (f"{place}: " if place else "") + f"found invalid Unicode character escape code ({why})",
                    mark,
                )
            if key is not None and isinstance(node, yaml.ScalarNode):
                # The key it stands under, for a refusal to name instead of the value (`_go_tags`).
                node.field = key
            return node

        def _bad_escape(self, node: Any) -> tuple[Any, str] | None:
            """The first escape go-yaml refuses in a scalar node: where it is, and why."""
            if not self.bad_escapes or not isinstance(node, yaml.ScalarNode):
                return None
            start, end = node.start_mark.index, node.end_mark.index
            return next(((m, why) for m, why in self.bad_escapes if start <= m.index < end), None)

        def construct_mapping(self, node: Any, deep: bool = False) -> dict[Any, Any]:
            """PyYAML's, with the keys as sigs.k8s.io/yaml (kubectl) makes them JSON keys: a null key is
            refused (JSON has none: "unsupported map key"), a boolean is a `_BooleanKey`, and a
            non-finite number is read (refused as a value: JSON has none; a key is written as text)."""
            if isinstance(node, yaml.MappingNode):
                self.flatten_mapping(node)
            mapping: dict[Any, Any] = {}
            for key_node, value_node in node.value:
                key: Any = _non_finite_key(key_node)
                if key is None:
                    key = self.construct_object(key_node, deep=deep)
                if key is None:
                    raise yaml.constructor.ConstructorError(
                        None,
                        None,
                        "a null key (~, null or nothing before the colon: kubectl's unsupported map key; "
                        "quote it if it is text)",
                        key_node.start_mark,
                    )
                if isinstance(key, _Boolean):
                    key = _BooleanKey(key, key.value)
                if not isinstance(key, Hashable):
                    raise yaml.constructor.ConstructorError(
                        "while constructing a mapping",
                        node.start_mark,
                        "found unhashable key",
                        key_node.start_mark,
                    )
                mapping[key] = self.construct_object(value_node, deep=deep)
            return mapping

        def compose_scalar_node(self, anchor: Any) -> Any:
            event = self.peek_event()
            if event.tag != "!":
                return super().compose_scalar_node(anchor)
            # The non-specific tag: a string to go-yaml (`! 8080` is "8080"); PyYAML resolves it as if
            # untagged, its parser marking it implicit as a plain scalar.
            self.get_event()
            node = yaml.ScalarNode(_YAML + "str", event.value, event.start_mark, event.end_mark, event.style)
            if anchor is not None:
                self.anchors[anchor] = node
            return node

    for tag, constructor in _go_tags(yaml).items():
        Loader.add_constructor(tag, constructor)
    return Loader


_YAML = "tag:yaml.org,2002:"
_GO_NULLS = frozenset(("", "~", "null", "Null", "NULL"))
_GO_BOOLEANS = {
    **dict.fromkeys(("y", "Y", "yes", "Yes", "YES", "true", "True", "TRUE", "on", "On", "ON"), True),
    **dict.fromkeys(("n", "N", "no", "No", "NO", "false", "False", "FALSE", "off", "Off", "OFF"), False),
}
_GO_SPECIAL_FLOATS = {
    **dict.fromkeys((".inf", ".Inf", ".INF", "+.inf", "+.Inf", "+.INF"), math.inf),
    **dict.fromkeys(("-.inf", "-.Inf", "-.INF"), -math.inf),
    **dict.fromkeys((".nan", ".NaN", ".NAN"), math.nan),
}
# strconv.ParseInt(text, 0, 64) and go-yaml's float pattern, after go-yaml has removed every underscore.
_GO_INT = re.compile(r"([-+]?)(0[xX][0-9a-fA-F]+|0[bB][01]+|0[oO][0-7]+|0[0-7]*|[1-9][0-9]*)")
_GO_INT_PREFIXES = {"0x": 16, "0b": 2, "0o": 8}
_GO_FLOAT = re.compile(r"[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?")
# go-yaml's timestamp layouts (2006-1-2, with a time after a T, t or space), for an explicit !!timestamp.
_GO_TIMESTAMP = re.compile(
    r"(\d{4})-(\d\d?)-(\d\d?)(?:(?:[Tt](\d\d?):(\d\d?):(\d\d?)(?:\.\d+)?(?:Z|[-+]\d\d:\d\d))"
    r"|(?: (\d\d?):(\d\d?):(\d\d?)(?:\.\d+)?))?"
)


def _go_plain(text: str) -> tuple[str, Any]:
    """The tag and value go-yaml v2 resolves a plain scalar to."""
    if text in _GO_NULLS:
        return _YAML + "null", None
    if text in _GO_BOOLEANS:
        return _YAML + "bool", _Boolean(text, _GO_BOOLEANS[text])
    if text in _GO_SPECIAL_FLOATS:
        return _YAML + "float", _GO_SPECIAL_FLOATS[text]
    if text == "<<":
        return _YAML + "merge", text
    if text[:1] in tuple("+-.0123456789") and (text[0] != "." or _underscores_ok(text)):
        number = _go_number(text.replace("_", ""))
        if number is not None:
            return _YAML + ("int" if isinstance(number, int) else "float"), number
    return _YAML + "str", text


def _underscores_ok(text: str) -> bool:
    """Whether Go's ParseFloat takes the underscores of ``text`` (its ``underscoreOK``): each between
    two digits. go-yaml v2 reads a plain scalar starting with "." with ParseFloat on the text as
    written (``._5`` and ``.5__`` are text), where one starting with a digit or a sign has every
    underscore dropped first."""
    before = "^"  # what came last: ^ the start, 0 a digit, _ an underscore, ! anything else
    for char in text:
        if char.isascii() and char.isdigit():
            before = "0"
        elif char == "_":
            if before != "0":
                return False
            before = "_"
        elif before == "_":
            return False
        else:
            before = "!"
    return before != "_"


def _go_number(plain: str) -> int | float | None:
    whole = _GO_INT.fullmatch(plain)
    if whole:
        digits, prefix = whole[2], whole[2][:2].lower()
        if prefix in _GO_INT_PREFIXES:
            number = int(digits[2:], _GO_INT_PREFIXES[prefix])
        else:  # a leading 0 is octal, as in Go (and C)
            number = int(digits, 8 if digits.startswith("0") else 10)
        number = -number if whole[1] == "-" else number
        if -(1 << 63) <= number < 1 << 64:  # int64, or else uint64
            return number
    if _GO_FLOAT.fullmatch(plain):
        value = float(plain)
        if math.isinf(value):
            return None  # out of range for ParseFloat: go-yaml leaves the text
        # Go's JSON writes a float under 1e21 without an exponent or a fraction when it has none
        # (1e3 as 1000), which a plugin's Go decoder reads into an integer; Python's would write 1000.0.
        return int(decimal.Decimal(repr(value))) if value.is_integer() and abs(value) < 1e21 else value
    return None


def _non_finite_key(node: Any) -> float | None:
    """A key node that go-yaml reads as a non-finite number (``.inf``, ``-.Inf``, ``.nan``): the number,
    else None (read as any node)."""
    import yaml

    if isinstance(node, yaml.ScalarNode) and node.tag == _YAML + "float":
        value = _go_plain(node.value)[1]
        if isinstance(value, float) and not math.isfinite(value):
            return value
    return None


def _go_tags(yaml: Any) -> dict[str | None, Any]:
    """Constructors for what PyYAML's safe loader makes of a tag otherwise, by tag (None: unknown)."""

    def short(tag: str) -> str:
        return tag.replace(_YAML, "!!")

    def refused(node: Any, problem: str) -> yaml.constructor.ConstructorError:
        return yaml.constructor.ConstructorError(
            None, None, _field(getattr(node, "field", None)) + problem, node.start_mark
        )

    def resolved(loader: Any, node: Any) -> Any:
        """An implicit or an explicit !!null, !!bool, !!int or !!float: the plain scalar go-yaml reads,
        which must be of the type the tag names (an int may be a float)."""
        text = loader.construct_scalar(node)
        tag, value = _go_plain(text)
        if tag != node.tag and (tag, node.tag) != (_YAML + "int", _YAML + "float"):
            # go-yaml quotes the text: it may be a secret (`token: !!int …`).
            raise refused(node, f"cannot decode {short(tag)} as a {short(node.tag)}")
        if isinstance(value, float) and not math.isfinite(value):
            # kubectl's sigs.k8s.io/yaml turns the document into JSON, which has none, and refuses the file.
            raise refused(node, f"json: unsupported value: {text}")
        return value

    def timestamp(loader: Any, node: Any) -> str:
        text = str(loader.construct_scalar(node))
        match = _GO_TIMESTAMP.fullmatch(text)
        try:
            if match is None:
                raise ValueError(text)
            numbers = [int(part) for part in match.groups() if part is not None]
            datetime.date(numbers[0], numbers[1], numbers[2])  # a real date, as Go's time.Parse wants
            if len(numbers) > 3 and not (numbers[3] < 24 and numbers[4] < 60 and numbers[5] < 60):
                raise ValueError(text)
        except ValueError:
            raise refused(node, "cannot decode !!str as a !!timestamp") from None
        return text

    def binary(loader: Any, node: Any) -> str:
        text = str(loader.construct_scalar(node))
        try:
            data = base64.b64decode(without_line_ends(text), validate=True)
        except ValueError:
            raise refused(node, "!!binary value contains invalid base64 data") from None
        # Go's JSON writes each byte that is not UTF-8 as U+FFFD, as the plugin then gets it.
        return data.decode("utf-8", "replace")

    def untagged(loader: Any, node: Any) -> Any:
        if isinstance(node, yaml.MappingNode):
            return loader.construct_yaml_map(node)
        if isinstance(node, yaml.SequenceNode):
            return loader.construct_yaml_seq(node)
        return loader.construct_scalar(node)

    return {
        **dict.fromkeys((_YAML + kind for kind in ("null", "bool", "int", "float")), resolved),
        _YAML + "timestamp": timestamp,
        _YAML + "binary": binary,
        _YAML + "set": untagged,
        _YAML + "omap": untagged,
        _YAML + "pairs": untagged,
        None: untagged,
    }


def _place(steps: list[tuple[Any, Any]]) -> str:
    """Where a node stands, from the steps down to it, each a parent and the index it was composed
    with: a mapping's value by its key (``users[0].user.token``), a list's item by its position, a key
    as a key of its mapping. A key that cannot be shown on a line is written as ``…``."""
    import yaml

    path = ""
    for parent, index in steps:
        if isinstance(index, int):
            path += f"[{index}]"
        elif isinstance(index, yaml.Node):
            key = index.value if isinstance(index, yaml.ScalarNode) else None
            name = key if isinstance(key, str) and _field(key) else "…"
            path += f".{name}" if path else name
        elif isinstance(parent, yaml.MappingNode):
            path += ": a key" if path else "a key"
    return path


def _field(key: object) -> str:
    """A refusal's start: the key its value stands under, when it is one that can be shown on a line."""
    return f"{key}: " if isinstance(key, str) and key.isprintable() and 0 < len(key) <= 64 else ""


def _booleans(section: dict[str, Any], fields: tuple[str, ...]) -> None:
    """A boolean field's `_Boolean` read as the boolean."""
    for field in fields:
        value = section.get(field)
        if isinstance(value, _Boolean):
            section[field] = value.value


def _as_written(value: Any, seen: set[int]) -> Any:
    """``value`` with every `_Boolean` left (outside the boolean fields) as the plain text written; a
    mapping or a list is changed in place, as the sections taken from it are in use, once (an alias
    names the same one again). Extensions are made as sent first (`_extensions_as_sent`)."""
    if isinstance(value, _Boolean):
        return str.__str__(value)
    if not isinstance(value, dict | list) or id(value) in seen:
        return value
    seen.add(id(value))
    if isinstance(value, dict):
        items = [(_as_written(k, seen), _as_written(v, seen)) for k, v in value.items()]
        value.clear()
        value.update(items)
    else:
        value[:] = [_as_written(v, seen) for v in value]
    return value


def _extensions_as_sent(value: Any, seen: set[int]) -> None:
    """Each ``extension`` of an ``extensions`` list replaced by `_as_sent`'s copy of it. Before
    `_as_written`: an anchor met first outside an extension would have lost its booleans there."""
    if not isinstance(value, dict | list) or id(value) in seen:
        return
    seen.add(id(value))
    if isinstance(value, dict):
        extensions = value.get("extensions")
        if isinstance(extensions, list):
            for entry in extensions:
                if isinstance(entry, dict) and "extension" in entry:
                    entry["extension"] = _as_sent(entry["extension"], {})
    for item in value.values() if isinstance(value, dict) else value:
        _extensions_as_sent(item, seen)


def _as_sent(value: Any, made: dict[int, Any]) -> Any:
    """A free-form section (an ``extension``: a RawExtension that client-go decodes with no type) as
    kubectl sends it on (to an exec plugin, as its ``config``): each `_Boolean` the boolean, and a boolean
    key as sigs.k8s.io/yaml writes it in JSON ("true", which Python's True would make the same key as the
    number 1). A copy, each mapping or list made once (``made``, by id): the same one may stand
    elsewhere too, through an anchor, where its text stands."""
    if isinstance(value, _Boolean):
        return value.value
    if not isinstance(value, dict | list):
        return value
    if id(value) in made:
        return made[id(value)]
    if isinstance(value, list):
        copied: list[Any] = []
        made[id(value)] = copied
        copied.extend(_as_sent(v, made) for v in value)
        return copied
    mapping: dict[Any, Any] = {}
    made[id(value)] = mapping
    for k, v in value.items():
        if isinstance(k, _Boolean):
            k = str(k.value).lower()
        elif isinstance(k, float) and not math.isfinite(k):
            k = _special_key(k)  # Python's JSON would write Infinity
        mapping[k] = _as_sent(v, made)
    return mapping


# go-yaml v2's bound on aliases (kubectl's reader): past 1000 nodes with more than 100 from aliases, a
# document whose aliases make more than this share of it is refused, from 99% up to 400,000 nodes to
# 10% from 4,000,000 on ("document contains excessive aliasing").
def _allowed_alias_share(nodes: int) -> float:
    if nodes <= 400_000:
        return 0.99
    if nodes >= 4_000_000:
        return 0.10
    return 0.99 - 0.89 * (nodes - 400_000) / 3_600_000


def _alias_problem(root: Any) -> str | None:
    """Why go-yaml would refuse the document's aliases: an anchor whose value contains itself, or too
    many nodes decoded for aliases. Counted on the composed nodes (``root``, None for no document), before
    anything is built, as go-yaml counts while it decodes, in the document's order: every node, an
    alias's own node and then its value's nodes again, the latter as aliased; a merge key's value as any
    other (``<<: *a`` is an alias of a), without the merge key itself or a list of merged mappings, which
    go-yaml does not decode as nodes. Measured without expanding them (each node walked once), so that
    what follows (building the document, `_as_written`, the plugin's JSON) is bounded and acyclic. A node
    met again is an alias (PyYAML's composer gives an anchor and its aliases one node)."""
    import yaml

    cost: dict[int, int] = {}  # nodes decoding a node takes, its own aliases expanded, by id
    walking: set[int] = set()  # met again inside itself: an anchor that contains itself
    decoded, aliased = 1, 0  # the document's node, then as go-yaml's decodeCount and aliasCount

    def excessive() -> None:
        # go-yaml checks at each node; past an alias is where the share is highest.
        if aliased > 100 and decoded > 1000 and aliased / decoded > _allowed_alias_share(decoded):
            raise _Excessive(decoded)

    def children(node: Any) -> list[Any]:
        if isinstance(node, yaml.SequenceNode):
            return list(node.value)
        if not isinstance(node, yaml.MappingNode):
            return []
        found: list[Any] = []
        for key, value in node.value:
            if key.tag != _YAML + "merge":
                found += (key, value)
            elif isinstance(value, yaml.SequenceNode) and id(value) not in cost:
                found += value.value
            else:
                found.append(value)
        return found

    def walk(node: Any) -> int:
        nonlocal decoded, aliased
        walking.add(id(node))
        total = 1
        decoded += 1
        for child in children(node):
            if id(child) in walking:
                raise _Cycle
            if id(child) in cost:  # an alias: its node, then its value once more
                total += 1 + cost[id(child)]
                decoded += 1 + cost[id(child)]
                aliased += cost[id(child)]
                excessive()
            else:
                total += walk(child)
        walking.discard(id(node))
        cost[id(node)] = total
        return total

    try:
        if root is not None:
            walk(root)
        excessive()
    except _Cycle:
        return "a YAML anchor's value contains itself (an alias inside it names it)"
    except _Excessive as e:
        return f"the document contains excessive aliasing (aliases expand it to over {e.args[0]} nodes)"
    return None


class _Excessive(Exception):
    pass


class _Cycle(Exception):
    pass


def _tidied(section: dict[str, Any], fields: tuple[tuple[str, type], ...]) -> None:
    """Drop what client-go takes as absent, so that the library does too: a null (the library refuses it
    in words of its own) and an empty string, or a ``*-data`` that decodes to nothing (Go's base64
    skips line ends: ``"\n"``). An empty ``*-data`` beside its file key matters most: the library would
    then ignore the file, and a pinned CA or a client certificate with it."""
    for key in [k for k, v in section.items() if v is None]:
        del section[key]
    for field, kind in fields:
        value = section.get(field)
        if kind is str and isinstance(value, str):
            if value == "" or (field.endswith("-data") and not without_line_ends(value)):
                del section[field]


def _check_types(
    section: dict[str, Any], fields: tuple[tuple[str, type], ...], where: str, path: str
) -> None:
    for field, kind in fields:
        value = section.get(field)
        # A `_Boolean` is a string only to the fields no check reads; a checked one refuses it as
        # client-go refuses a boolean in a string field.
        if value is not None and (not isinstance(value, kind) or isinstance(value, _Boolean)):
            # As client-go, which refuses the file: the kubernetes library would take any non-empty
            # string for true ("false" would turn certificate verification off), and any value for a
            # token. The value is not shown: it may be a secret.
            expected = "true or false" if kind is bool else "a string"
            raise ConfigError(f"kubeconfig {path!r}: {where}: {field} must be {expected}, not {_kind(value)}")
        if isinstance(value, str) and field.endswith("-data"):
            try:
                base64.b64decode(without_line_ends(value), validate=True)
            except ValueError:
                # As client-go ("illegal base64 data"); the library failed in its words, or wrote
                # what it could decode to a file of its own and refused that file.
                raise ConfigError(f"kubeconfig {path!r}: {where}: {field} is not valid base64") from None


def _check_exec_strings(section: dict[str, Any], where: str) -> None:
    """An exec plugin's ``args`` and ``env`` as client-go decodes them, refused in one line where it
    refuses them: a list of strings, and a list of mappings with a ``name`` and a string ``value``. A null
    is the empty string, as Go's JSON decodes it into a string. A boolean word (an unquoted ``y``,
    ``true``, ``off``) is refused as a boolean, as kubectl refuses it: the plugin was run with the text
    written. The values are not shown: they may be secrets."""
    args = section.get("args")
    if args is not None and not isinstance(args, list):
        # A string was run one argument per character, a mapping as its keys.
        raise ConfigError(f"{where}: args must be a list of strings, not {_kind(args)}")
    for index, arg in enumerate(args or ()):
        if arg is not None and (not isinstance(arg, str) or isinstance(arg, _Boolean)):
            raise ConfigError(f"{where}: args[{index}] must be a string, not {_kind(arg)}")
        _check_os_string(arg, f"{where}: args[{index}]")
    if args:
        section["args"] = ["" if arg is None else arg for arg in args]
    env = section.get("env")
    if env is not None and not isinstance(env, list):
        raise ConfigError(f"{where}: env must be a list of name and value pairs, not {_kind(env)}")
    for index, entry in enumerate(env or ()):
        if not isinstance(entry, dict):
            raise ConfigError(
                f"{where}: env[{index}] must be a mapping with a name and a value, not {_kind(entry)}"
            )
        name, value = entry.get("name"), entry.get("value")
        if not isinstance(name, str) or isinstance(name, _Boolean) or not name:
            # client-go: "env variable name must be specified"; a number is refused as it decodes.
            kind = "an empty one" if name == "" else _kind(name)
            raise ConfigError(f"{where}: env[{index}]: name must be a non-empty string, not {kind}")
        _check_os_string(name, f"{where}: env[{index}]: name")
        if name.startswith("="):
            # kubectl passes "=A=x" on; a process environment cannot hold it from here (Python refuses
            # it, and a variable named "" is no use to a plugin).
            raise ConfigError(f"{where}: env[{index}]: name must not begin with '='")
        if value is not None and (not isinstance(value, str) or isinstance(value, _Boolean)):
            raise ConfigError(f'{where}: env "{name}": value must be a string, not {_kind(value)}')
        _check_os_string(value, f'{where}: env "{name}": value')
        entry["value"] = "" if value is None else value


def _check_os_string(text: str | None, where: str) -> None:
    """What an exec plugin's argument or environment cannot carry, refused in one line at load rather
    than in a traceback when the plugin is run: a NUL (kubectl refuses it too: "environment variable
    contains NUL"). A surrogate, which has no UTF-8 form, is refused with the file, in any field
    (`_go_yaml_loader`). The text is not shown: it may be a secret."""
    if text is not None and "\0" in text:
        raise ConfigError(f"{where} must not contain a NUL character")


def _kind(value: object) -> str:
    """What a kubeconfig value is, said without the value (which may be a secret)."""
    if isinstance(value, bool | _Boolean):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return "null" if value is None else type(value).__name__


def _chosen(
    document: dict[str, Any], context: str | None, path: str
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """The chosen context's own section, its user's and its cluster's.

    A context that is not there is left to the library to report. A context that names a user or a
    cluster the file does not hold is refused here, in client-go's words: the library would go on
    without credentials (every request then 401) or say less. A context that names no user is
    anonymous, as in client-go."""

    def section(kind: str, name: object, key: str) -> dict[str, Any] | None:
        for entry in document.get(kind) or ():
            if isinstance(entry, dict) and entry.get("name") == name:
                found = entry.get(key)
                return found if isinstance(found, dict) else {}
        return None

    context_name = context or document.get("current-context")
    chosen = section("contexts", context_name, "context")
    if chosen is None:
        return {}, {}, {}
    user_name, cluster_name = chosen.get("user"), chosen.get("cluster")
    for field, value in (("user", user_name), ("cluster", cluster_name)):
        if value is not None and not isinstance(value, str):
            # The value is not shown: a hand edit may have put credentials here.
            raise ConfigError(
                f'kubeconfig {path!r}: context "{context_name}": {field} must be the name of a '
                f"{field}s entry, not {_kind(value)}"
            )
    namespace = chosen.get("namespace")
    if namespace is not None and not isinstance(namespace, str):
        # As client-go refuses it. A number's text is go-yaml's (08 is 8, 1e3 is 1000): taken as the
        # namespace it was another one, the leader-election Lease's out of a pod. A boolean word stays the
        # text written (a `_Boolean` is a string), as in the other fields no check reads.
        raise ConfigError(
            f'kubeconfig {path!r}: context "{context_name}": namespace must be a string, '
            f"not {_kind(namespace)}"
        )
    user = section("users", user_name, "user") if user_name else {}
    if user is None:
        raise ConfigError(
            f'kubeconfig {path!r}: user "{user_name}" was not found for context "{context_name}"'
        )
    cluster = section("clusters", cluster_name, "cluster") if cluster_name else None
    if cluster is None:
        raise ConfigError(
            f'kubeconfig {path!r}: cluster "{cluster_name}" was not found for context "{context_name}"'
            if cluster_name
            else f'kubeconfig {path!r}: cluster was not specified for context "{context_name}"'
        )
    _booleans(cluster, _CLUSTER_BOOLEANS)
    exec_section = user.get("exec")
    if exec_section is not None and not isinstance(exec_section, dict):
        # As client-go, which refuses the file ("cannot unmarshal string into Go struct field
        # AuthInfo.users.user.exec"); the library took a string or a list for a plugin, failed on it
        # and only logged that (`ERROR:root:`), going on without it. The value is not shown: a hand
        # edit may have put a command line with a secret here.
        raise ConfigError(
            f'kubeconfig {path!r}: user "{user_name}": exec must be a mapping, not {_kind(exec_section)}'
        )
    if isinstance(exec_section, dict):
        _booleans(user["exec"], _EXEC_BOOLEANS)
        # Any value the kubernetes library takes for true handed the plugin the cluster's details, a
        # quoted "false" included; client-go refuses the file.
        _check_types(user["exec"], ((_EXEC_BOOLEANS[0], bool),), f'user "{user_name}": exec', path)
        _check_exec_strings(user["exec"], f'kubeconfig {path!r}: user "{user_name}": exec')
    _tidied(cluster, _CLUSTER_FIELDS)
    _tidied(user, _USER_FIELDS)
    _check_types(cluster, _CLUSTER_FIELDS, f'cluster "{cluster_name}"', path)
    _check_types(user, _USER_FIELDS, f'user "{user_name}"', path)
    _check_user(user, f'kubeconfig {path!r}: user "{user_name}"')
    # In client-go's order: the user's pairs, then the cluster's. The key's only with a certificate, as
    # client-go checks it: a key alone is refused below, as no credential.
    _refuse_file_and_data(
        user,
        ("client-certificate", "client-key") if _given(user, "client-certificate") else (),
        f'kubeconfig {path!r}: user "{user_name}"',
    )
    _refuse_file_and_data(
        cluster, ("certificate-authority",), f'kubeconfig {path!r}: cluster "{cluster_name}"'
    )
    if not cluster.get("server"):
        raise ConfigError(f'kubeconfig {path!r}: cluster "{cluster_name}" has no server')
    if has_userinfo(cluster["server"]):
        # client-go would send them as Basic credentials; we would fail on every connection instead.
        # The server is not shown: it holds a password. Any '@' counts, even after a '/', '?' or '#':
        # it may end a password that holds them.
        where = f'kubeconfig {path!r}: cluster "{cluster_name}": server'
        if at_in_authority(cluster["server"]):
            raise ConfigError(
                f"{where} must not carry credentials (user:password@ before the host): give the user a "
                "token, a client certificate or an exec plugin"
            )
        raise ConfigError(
            f"{where} has an '@' after its host (in its path, query or fragment), refused since it may end a "
            "password that holds '/', '?' or '#' (user:password@): write an '@' of the path or query as "
            "%40, and give the user a token, a client certificate or an exec plugin"
        )
    if cluster.get("insecure-skip-tls-verify") is True and (
        cluster.get("certificate-authority") or cluster.get("certificate-authority-data")
    ):
        # client-go's own refusal, in its words. Usually a CA added later with the old flag left in place.
        raise ConfigError(
            f'kubeconfig {path!r}: cluster "{cluster_name}": specifying a root certificates file with the '
            "insecure flag is not allowed (remove insecure-skip-tls-verify or the certificate-authority)"
        )
    if cluster.get("proxy-url"):
        # client-go would tunnel through it; we connect directly, and silently doing so would end in
        # connection or DNS errors that never mention the proxy.
        raise ConfigError(
            f'kubeconfig {path!r}: cluster "{cluster_name}" has a proxy-url, which payloadtags does not '
            "support: it connects to the cluster API directly (remove proxy-url and allow that connection)"
        )
    return chosen, user, cluster


def _refuse_file_and_data(section: dict[str, Any], fields: tuple[str, ...], where: str) -> None:
    """Refuse a field given both as a file and as data (``client-certificate`` and
    ``client-certificate-data``), as kubectl refuses the file ("client-cert-data and client-cert are both
    specified"): the kubernetes library silently takes the data, so which certificate, key or CA is used
    would be its choice. An empty one of the two is absent (`_tidied`), as to client-go."""
    both = [
        f"{field} and {field}-data" for field in fields if section.get(field) and section.get(f"{field}-data")
    ]
    if both:
        raise ConfigError(
            f"{where}: {'; '.join(both)} are both given, which kubectl refuses: give the file or the data"
        )


def _check_user(user: dict[str, Any], where: str) -> None:
    """Refuse what client-go does with a user that payloadtags would do otherwise, silently."""
    provider = user.get("auth-provider")
    if provider is not None:
        # client-go removed gcp and azure; the library's oidc refresh does not verify the identity
        # provider's certificate when no idp-certificate-authority is given (the refresh token and
        # client secret would go where an unverified server says), and payloadtags never refreshes later.
        name = provider.get("name") if isinstance(provider, dict) else None
        named = f' "{name}"' if isinstance(name, str) and name.isprintable() and len(name) <= 64 else ""
        raise ConfigError(
            f"{where}: auth-provider{named} is not supported: use an exec credential plugin "
            "(such as kubelogin for oidc) or a token"
        )
    given = [key for key in _IMPERSONATION if user.get(key) not in (None, "", [], {})]
    if given:
        raise ConfigError(
            f"{where}: impersonation ({', '.join(given)}) is not supported: payloadtags would act with the "
            "user's own credentials; give it the credentials of the identity to act as"
        )


def _with_plugin_credential(cluster: ClusterConfig, plugin: ExecPlugin, path: str) -> ClusterConfig:
    try:
        credential = run_plugin_blocking(plugin)
    except PluginError as e:
        raise ConfigError(f"kubeconfig {path!r}: {e}") from e
    if credential.token is not None:
        return attrs.evolve(
            cluster, token=credential.token, exec_plugin=plugin, token_expires_at=credential.expires_at
        )
    # A client certificate from a plugin is used as it is: renewing it would mean a new TLS context.
    return attrs.evolve(
        cluster,
        client_cert_file=None,
        client_key_file=None,
        client_cert_data=credential.client_cert_data,
        client_key_data=credential.client_key_data,
        client_cert_field="the exec plugin's status.clientCertificateData",
        client_key_field="the exec plugin's status.clientKeyData",
    )


# A quote in a PyYAML problem or context: its repr of the text it met ('x', "'", '\\t').
_QUOTE = re.compile(r""" ?('(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")""")
# The quotes a refusal may keep: a token's name ('<block end>', '<scalar>'); one character is kept too.
_TOKEN_NAME = re.compile(r"'<[a-z ]+>'")


def _unquoted(text: str | None) -> str | None:
    """``text`` without the quotes that could show part of a value: a refusal names the key and
    place, never the value (a password written ``!Sup3r!s3cret`` is a tag handle, which PyYAML
    quotes whole: "found undefined tag handle '!Sup3r!'"; an anchor's name, in "found duplicate
    anchor"). Allow-listed: a quote of one character (the scanner's "found character '%' that cannot
    start any token") and a token's name; any other is dropped, as kubectl says "found undefined tag
    handle" alone."""
    if text is None:
        return None

    def kept(match: re.Match[str]) -> str:
        quoted = match.group(1)
        if _TOKEN_NAME.fullmatch(quoted):
            return match.group(0)
        try:
            value = ast.literal_eval(quoted)
        except (ValueError, SyntaxError):
            return ""
        return match.group(0) if isinstance(value, str) and len(value) <= 1 else ""

    return _QUOTE.sub(kept, text)


def _gist(error: Exception) -> str:
    """The error on one line, as start-up reports every problem: a YAML error's own text spans several,
    with the offending line quoted and a caret under the place."""
    import yaml

    if isinstance(error, yaml.MarkedYAMLError):
        mark = error.problem_mark or error.context_mark
        problem, context = _unquoted(error.problem), _unquoted(error.context)
        gist = problem or context or "not valid YAML"
        if mark is not None:
            gist += f" at line {mark.line + 1}, column {mark.column + 1}"
        if problem and context:
            start = error.context_mark
            gist += f" ({context}" + (
                f" at line {start.line + 1}, column {start.column + 1})" if start else ")"
            )
        return gist
    if isinstance(error, yaml.reader.ReaderError) and error.encoding not in (None, "unicode"):
        # Bytes that do not decode (not a character PyYAML refuses): its own text calls the byte an
        # "unacceptable character".
        return (
            f"{error.encoding!r} codec can't decode byte 0x{error.character:02x} in position "
            f"{error.position}: {error.reason}"
        )
    return " ".join(str(error).split())


def _from_service_account(environ: Mapping[str, str], service_account_dir: str) -> ClusterConfig:
    from kubernetes.client import Configuration
    from kubernetes.config import ConfigException
    from kubernetes.config.incluster_config import InClusterConfigLoader

    token_file = str(Path(service_account_dir) / "token")
    configuration = Configuration()
    loader = InClusterConfigLoader(
        token_filename=token_file,
        cert_filename=str(Path(service_account_dir) / "ca.crt"),
        # Token rotation is handled by re-reading token_file in our own client.
        try_refresh_token=False,
        environ=environ,
    )
    namespace_file = Path(service_account_dir) / "namespace"
    host, port = environ.get(SERVICE_HOST_ENV), environ.get(SERVICE_PORT_ENV)
    if host and port:
        # Checked as a kubeconfig's server is, and before the loader, which fails on some with a ValueError:
        # the environment may hold what no request can carry (bytes that are not UTF-8 come out of
        # os.environ as surrogate escapes), and every request would fail inside the client.
        server = f"https://[{host}]:{port}" if ":" in host or "%" in host else f"https://{host}:{port}"
        problem = _server_problem(server)
        if problem:
            raise ConfigError(
                f"cannot load the in-cluster configuration: cluster server {server!r} (from "
                f"${SERVICE_HOST_ENV} and ${SERVICE_PORT_ENV}): {problem}"
            )
    try:
        loader.load_and_set(configuration)
    except (ConfigException, OSError) as e:
        raise ConfigError(f"cannot load the in-cluster configuration: {e}") from e
    except UnicodeDecodeError as e:  # the byte is not shown: it is part of the token
        raise ConfigError(f"cannot load the in-cluster configuration: {token_file} is not UTF-8 text") from e
    try:
        namespace = namespace_file.read_text(encoding="utf-8").strip() or None
    except OSError:
        namespace = None
    except UnicodeDecodeError as e:
        raise ConfigError(
            f"cannot load the in-cluster configuration: {namespace_file} is not UTF-8 text"
        ) from e
    return attrs.evolve(_convert(configuration, token_file=token_file, in_cluster=True), namespace=namespace)


def _server_problem(server: str) -> str | None:
    try:
        return address_problem(urlsplit(server))
    except ValueError as e:  # e.g. an unclosed IPv6 bracket
        return str(e)


def _check_token_file(token_file: str, where: str, *, token_beside: bool) -> bool:
    """Refuse a token file whose bytes are not UTF-8, naming the file only: the library's own words
    name a byte of the token and its position. A path with a NUL, which no file has, is refused naming
    the field only (read, it raised ValueError, a traceback at start), unless a token stands beside it:
    kubectl then sends that token, and so is True returned (the file is never to be read). One that
    cannot be read otherwise is left to the library (and, with a token beside it, to the client). An
    empty one (or blank) is refused, unless a token stands beside it."""
    if "\0" in token_file:
        if token_beside:
            return True
        raise ConfigError(f"{where}: tokenFile holds a NUL byte")
    try:
        text = read_file(token_file).decode("utf-8")
    except OSError:
        return False
    except UnicodeDecodeError:
        raise ConfigError(f"{where}: tokenFile {token_file!r} is not UTF-8 text") from None
    except ValueError:  # a path the file system cannot take: the loader says it in one line
        return False
    # client-go takes Go's white space off the file's ends (not Python's: U+001C-U+001F stay, and
    # kubectl cannot send them).
    if not header_safe(go_trim_space(text)):
        raise ConfigError(
            f"{where}: tokenFile {token_file!r} holds a control character (a line end, NUL…) inside the "
            "token, which no Authorization header can carry, as kubectl cannot send it either"
        )
    if not go_trim_space(text) and not token_beside:
        # kubectl refuses an empty file ("read empty token from file") and sends a blank one as no
        # credential ("Bearer" and nothing else, or a request it cannot send for a line end in it),
        # running no exec plugin beside either: payloadtags would go on without a credential. Refusing
        # the blank one too is stricter than kubectl (review r6cfg L3).
        raise ConfigError(
            f"{where}: tokenFile {token_file!r} is empty or blank, refused unless a token that is not blank "
            "stands beside it: kubectl refuses an empty one, and for a blank one sends no credential (or "
            "fails every request, for a line end in it)"
        )
    return False


def _convert(
    configuration: Configuration, *, token_file: str | None, in_cluster: bool, token_beside: bool = False
) -> ClusterConfig:
    token = None
    if token_file is None or token_beside:
        token = _bearer_token(
            configuration.api_key.get("BearerToken") or configuration.api_key.get("authorization")
        )
    return ClusterConfig(
        server=str(configuration.host).rstrip("/"),
        ca_file=configuration.ssl_ca_cert or None,
        client_cert_file=configuration.cert_file or None,
        client_key_file=configuration.key_file or None,
        token=token,
        token_file=token_file,
        insecure_skip_tls_verify=not configuration.verify_ssl,
        tls_server_name=getattr(configuration, "tls_server_name", None) or None,
        in_cluster=in_cluster,
    )


def _bearer_token(header: str | None) -> str | None:
    """The token inside the loader's ready-made ``Authorization`` value."""
    if not header:
        return None
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        # Basic auth is refused before the loader runs (`_from_kubeconfig`); nothing else reaches this point.
        raise ConfigError(f"unsupported kubeconfig credential scheme {scheme!r}")
    # Only the line ends `_from_kubeconfig` let off: kubectl sends the rest as written.
    return token.strip("\r\n")
