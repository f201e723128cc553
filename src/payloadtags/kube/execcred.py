"""kubeconfig ``exec`` credential plugins (client.authentication.k8s.io ExecCredential).

A plugin is a program that prints an ExecCredential whose ``status`` holds a bearer token and, usually,
when it expires. client-go runs it again once ``expirationTimestamp`` has passed and after a 401; so
does `KubeClient`, through `run_plugin`, which never blocks the reactor. `run_plugin_blocking` is for
start-up (configuration loading is blocking anyway, see `payloadtags.kube.config`).
"""

from __future__ import annotations

import base64
import codecs
import json
import os
import selectors
import subprocess
import time
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any, Final

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.error import ProcessDone, ProcessExitedAlready
from twisted.internet.protocol import ProcessProtocol
from twisted.python.failure import Failure

from payloadtags.jsontypes import JsonObject
from payloadtags.validators import cut_end_redacted, header_safe, paths_redacted, utf8_encodable

# A plugin may have to reach an identity provider; client-go gives it no deadline at all, but a plugin
# that never answers must not hold every request to the cluster API forever.
PLUGIN_TIMEOUT: Final = 60.0
_OUTPUT_LIMIT: Final = 1 << 20
_ERROR_LIMIT: Final = 4096
# Between stdout's end and the plugin's exit (a moment, as a rule), how often the exit is looked at.
_EXIT_POLL: Final = 0.01


class PluginError(Exception):
    """The plugin could not be run, failed, or printed something that is not an ExecCredential."""


@attrs.frozen
class ExecPlugin:
    """A kubeconfig user's ``exec`` section: what to run, as the kubeconfig says it."""

    command: str
    api_version: str
    args: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = attrs.field(default=(), repr=False)
    # The kubeconfig's folder: a relative command path is resolved against it, as in client-go. The plugin
    # runs in our own working directory, as client-go runs it in kubectl's (a relative file its args name
    # is found there).
    folder: str | None = None
    # ``spec.cluster`` handed to the plugin when the kubeconfig asks for it (provideClusterInfo).
    cluster: JsonObject | None = attrs.field(default=None, repr=False, eq=False, hash=False)
    # The cluster's ``certificate-authority`` file, given to the plugin as certificate-authority-data.
    # Read at each run, as the CA bundle may be rotated in place.
    ca_file: str | None = None

    @classmethod
    def from_kubeconfig(
        cls, section: Mapping[str, Any], folder: str | None, cluster: JsonObject
    ) -> ExecPlugin:
        """The plugin of an ``exec`` section whose ``args`` are strings and whose ``env`` holds mappings
        of a string ``name`` and ``value`` (`payloadtags.kube.config` checks them)."""
        command, api_version = section.get("command"), section.get("apiVersion")
        if not isinstance(command, str) or not command or not isinstance(api_version, str):
            raise PluginError("exec: the kubeconfig's exec section needs a command and an apiVersion")
        if section.get("interactiveMode") == "Always":
            # client-go refuses to run such a plugin without a terminal; a server never has one.
            raise PluginError(
                f"exec plugin {command}: interactiveMode Always needs a terminal, and payloadtags runs "
                "plugins without one; use a plugin that can work with interactiveMode Never or IfAvailable"
            )
        info = _cluster_info(cluster) if section.get("provideClusterInfo") else None
        # Inline data wins over the file, as in client-go.
        ca_file = (
            cluster.get("certificate-authority")
            if info is not None and "certificate-authority-data" not in info
            else None
        )
        plugin = cls(
            command=command,
            api_version=api_version,
            args=tuple(section.get("args") or ()),
            env=tuple(_as_environ(e["name"], e["value"]) for e in section.get("env") or ()),
            folder=folder,
            cluster=info,
            ca_file=os.path.join(folder or "", str(ca_file)) if ca_file else None,
        )
        if info is not None:
            plugin._exec_info({"cluster": info})  # what has no JSON form fails at load, in one line
        return plugin

    def argv(self) -> list[str]:
        command = self.command
        if os.sep in command and not os.path.isabs(command) and self.folder:
            command = os.path.join(self.folder, command)
        return [command, *self.args]

    def environment(self, base: Mapping[str, str] = os.environ) -> dict[str, str]:
        spec: JsonObject = {"interactive": False}
        if self.cluster is not None:
            spec["cluster"] = self._cluster_with_ca()
        return {**base, **dict(self.env), "KUBERNETES_EXEC_INFO": self._exec_info(spec)}

    def _exec_info(self, spec: JsonObject) -> str:
        """KUBERNETES_EXEC_INFO: JSON that a plugin's decoder reads, so without a bare NaN or Infinity."""
        info = {"apiVersion": self.api_version, "kind": "ExecCredential", "spec": spec}
        try:
            return json.dumps(info, allow_nan=False)
        except (TypeError, ValueError) as e:
            raise PluginError(
                f"exec plugin {self.command}: the cluster's {_EXEC_EXTENSION} extension has no JSON "
                f"form ({e})"
            ) from e

    def _cluster_with_ca(self) -> JsonObject:
        assert self.cluster is not None
        if self.ca_file is None:
            return self.cluster
        try:
            # A synchronous read, on the reactor at a renewal, on purpose (as the token file's): a CA
            # bundle is a few kilobytes, read only when the plugin is run.
            ca = Path(self.ca_file).read_bytes()
        except OSError as e:
            # As client-go: no run rather than a plugin told nothing about the CA.
            raise PluginError(f"exec plugin {self.command}: cannot read the cluster's CA bundle: {e}") from e
        return {**self.cluster, "certificate-authority-data": base64.b64encode(ca).decode("ascii")}


# The kubeconfig cluster fields an ExecCredential's spec.cluster carries (client.authentication.k8s.io/v1).
_CLUSTER_FIELDS: Final = (
    "server",
    "tls-server-name",
    "insecure-skip-tls-verify",
    "certificate-authority-data",
    "proxy-url",
    "disable-compression",
)
_EXEC_EXTENSION: Final = "client.authentication.k8s.io/exec"


def _cluster_info(cluster: Mapping[str, Any]) -> JsonObject:
    info: JsonObject = {k: cluster[k] for k in _CLUSTER_FIELDS if k in cluster}
    for extension in cluster.get("extensions") or ():
        if isinstance(extension, dict) and extension.get("name") == _EXEC_EXTENSION:
            info["config"] = extension.get("extension")
    return info


@attrs.frozen
class ExecCredential:
    """What a plugin printed: a bearer token or a client certificate, and when it expires (POSIX
    seconds; None: it does not say, it is kept until a 401)."""

    token: str | None = attrs.field(default=None, repr=False)
    client_cert_data: bytes | None = attrs.field(default=None, repr=False)
    client_key_data: bytes | None = attrs.field(default=None, repr=False)
    expires_at: float | None = None


def parse_output(plugin: ExecPlugin, output: bytes) -> ExecCredential:
    if len(output) > _OUTPUT_LIMIT:
        raise PluginError(f"exec plugin {plugin.command}: output is larger than {_OUTPUT_LIMIT >> 20} MiB")
    try:
        data = json.loads(output)
    except ValueError as e:
        raise PluginError(f"exec plugin {plugin.command}: output is not JSON") from e
    except RecursionError as e:
        # Python's decoder nests as deep as its stack lets it, about a thousand levels; kubectl's stops
        # at 10000 ("exceeded max depth"). No ExecCredential comes near either.
        raise PluginError(f"exec plugin {plugin.command}: output is nested too deeply to read") from e
    if not isinstance(data, dict) or not isinstance(data.get("status"), dict):
        raise PluginError(f"exec plugin {plugin.command}: output is not an ExecCredential with a status")
    if data.get("apiVersion") != plugin.api_version:
        raise PluginError(
            f"exec plugin {plugin.command}: printed apiVersion {data.get('apiVersion')!r}, "
            f"the kubeconfig asks for {plugin.api_version!r}"
        )
    status = data["status"]
    expires_at = None
    if status.get("expirationTimestamp"):
        try:
            stamp = str(status["expirationTimestamp"]).replace("Z", "+00:00")
            expires_at = datetime.fromisoformat(stamp).timestamp()
        except ValueError as e:
            raise PluginError(f"exec plugin {plugin.command}: bad expirationTimestamp") from e
    token = status.get("token")
    if isinstance(token, str) and token:
        _check_utf8(plugin, "token", token)
        if not header_safe(token):
            # Sent, it was mangled (a line end) or cut (a NUL); kubectl fails every request with it.
            raise PluginError(
                f"exec plugin {plugin.command}: the ExecCredential's status.token holds a control character "
                "(a line end, NUL…), which no Authorization header can carry"
            )
        return ExecCredential(token=token, expires_at=expires_at)
    cert, key = status.get("clientCertificateData"), status.get("clientKeyData")
    if isinstance(cert, str) and isinstance(key, str) and cert and key:
        _check_utf8(plugin, "clientCertificateData", cert)
        _check_utf8(plugin, "clientKeyData", key)
        return ExecCredential(
            client_cert_data=cert.encode(), client_key_data=key.encode(), expires_at=expires_at
        )
    raise PluginError(
        f"exec plugin {plugin.command}: the ExecCredential has no token and no client certificate"
    )


def _check_utf8(plugin: ExecPlugin, field: str, text: str) -> None:
    """A credential printed with a JSON escape of a lone surrogate (``"\\ud800"``), which has no UTF-8
    form (a header or a PEM cannot carry it), is refused as the plugin failing: a failed run at start
    (one line) or at a renewal (tried again, said once a minute). kubectl sends U+FFFD in its place,
    which no cluster issued either. The text is not shown: it is a secret."""
    if not utf8_encodable(text):
        raise PluginError(
            f"exec plugin {plugin.command}: the ExecCredential's status.{field} holds a lone surrogate "
            "(a \\uD800-\\uDFFF escape), which has no UTF-8 form"
        )


def _credential(plugin: ExecPlugin, output: bytes) -> ExecCredential:
    """`parse_output`, whose every failure is the run's, at once: a bug in reading the output failed
    neither run cleanly (a traceback at start; at a renewal, the run held until the plugin timeout,
    said as the plugin giving nothing). Only its kind is said: the output holds a secret."""
    try:
        return parse_output(plugin, output)
    except PluginError:
        raise
    except Exception as e:
        raise PluginError(
            f"exec plugin {plugin.command}: its output could not be read ({type(e).__name__})"
        ) from e


def _failed(plugin: ExecPlugin, code: int | None, stderr: bytes) -> PluginError:
    # A plugin that fails often names itself ($0, a traceback's file), by its path joined to the
    # kubeconfig's folder, which a URL that took --kubeconfig's place makes `https:/user:pw@host` under
    # the working directory. Redacted before white space is squeezed and the text cut: afterwards the
    # folder may no longer be found whole, and its start before the cut would be shown (review r13cfg F1).
    folders = (plugin.folder or "",)
    # Only its first 4 KiB are held: a text cut there may end inside the folder, and inside a character
    # (left out, not replaced, so that the folder's start is still found).
    cut = len(stderr) >= _ERROR_LIMIT
    text = paths_redacted(
        codecs.getincrementaldecoder("utf-8")("replace").decode(stderr, final=not cut), folders
    )
    detail = " ".join((cut_end_redacted(text, folders) if cut else text).split())[:500]
    how = f"exited with {code}" if code is not None else "was killed"
    return PluginError(f"exec plugin {plugin.command} {how}" + (f": {detail}" if detail else ""))


def _as_environ(name: str, value: str) -> tuple[str, str]:
    """An env entry as the plugin sees it when kubectl runs it: kubectl passes ``NAME=value`` as
    written, so a name ``A=B`` with value ``x`` is the variable ``A`` holding ``B=x`` (the process
    environment reads up to the first ``=``). Python refuses a name with ``=``, so it is split here."""
    head, sep, rest = name.partition("=")
    return (head, rest + sep + value) if sep else (name, value)


def run_plugin_blocking(plugin: ExecPlugin, timeout: float = PLUGIN_TIMEOUT) -> ExecCredential:
    """Run the plugin and wait for it. Blocking: only at start-up, off the reactor.

    Its output is held as a renewal holds it (`_PluginProcess`): stdout up to the limit and a byte,
    stderr's first 4 KiB. A plugin whose stdout passes the limit is killed and refused at once, rather
    than read whole (or, when it never stops printing, until the timeout)."""
    try:
        process = subprocess.Popen(
            plugin.argv(),
            env=plugin.environment(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
    except (OSError, ValueError) as e:
        # ValueError: what the OS cannot take in an argument or the environment (the kubeconfig's
        # check refuses it first); its text names no value.
        raise PluginError(f"cannot run exec plugin {plugin.command}: {e}") from e
    with process:
        try:
            out, err, code = _wait_bounded(process, time.monotonic() + timeout)
        except subprocess.TimeoutExpired as e:
            raise PluginError(f"exec plugin {plugin.command} gave no credential within {timeout:g}s") from e
        finally:
            if process.returncode is None:
                process.kill()
                process.wait()
    if code is not None and code != 0:
        raise _failed(plugin, code, err)
    return _credential(plugin, out)


def _wait_bounded(process: subprocess.Popen[bytes], deadline: float) -> tuple[bytes, bytes, int | None]:
    """stdout (up to the limit and a byte), stderr (its first 4 KiB) and the exit code of ``process``,
    read until stdout has ended and it has exited; the code is None when stdout passed the limit, which
    is not waited for. TimeoutExpired past ``deadline``.

    stderr's end is not waited for: kubectl hands a plugin its own stderr and waits only for stdout and
    the exit, so a helper the plugin leaves holding stderr does not hold the run. Until the exit stderr
    is read (a plugin blocked on a full stderr pipe would never exit); at the exit, what it holds by
    then is read without waiting for more."""
    assert process.stdout is not None and process.stderr is not None
    out_fd, err_fd = process.stdout.fileno(), process.stderr.fileno()
    kept = {out_fd: bytearray(), err_fd: bytearray()}
    limits = {out_fd: _OUTPUT_LIMIT + 1, err_fd: _ERROR_LIMIT}
    out, err = kept[out_fd], kept[err_fd]
    code = None
    with selectors.DefaultSelector() as selector:
        for fd in kept:
            selector.register(fd, selectors.EVENT_READ)
        while selector.get_map():
            stdout_open = out_fd in selector.get_map()
            if not stdout_open:
                code = process.poll()
                if code is not None:
                    _read_held(err_fd, err)
                    break
            left = deadline - time.monotonic()
            if left <= 0:
                raise subprocess.TimeoutExpired(process.args, 0)
            # Once stdout has ended, only stderr is watched, and the exit looked at between its reads.
            for key, _ in selector.select(left if stdout_open else min(left, _EXIT_POLL)):
                data = os.read(key.fd, 65536)
                if not data:
                    selector.unregister(key.fd)
                    continue
                # Past its bound a stream is still read, and dropped, so that the plugin can go on.
                kept[key.fd] += data[: limits[key.fd] - len(kept[key.fd])]
                if len(out) > _OUTPUT_LIMIT:
                    return bytes(out), bytes(err), None
    if code is None:
        code = process.wait(max(0.0, deadline - time.monotonic()))
    return bytes(out), bytes(err), code


def _read_held(fd: int, kept: bytearray) -> None:
    """Add to `kept`, up to its bound, what the pipe `fd` holds now, without waiting for more: what a
    plugin wrote before it exited. At most the bound is read, however fast a helper still writes."""
    os.set_blocking(fd, False)
    while len(kept) < _ERROR_LIMIT:
        try:
            data = os.read(fd, _ERROR_LIMIT - len(kept))
        except OSError:  # BlockingIOError: nothing more for now
            return
        if not data:
            return
        kept += data


class _PluginProcess(ProcessProtocol):
    """A renewal's run. As `_wait_bounded` at start, it is over once stdout has ended and the plugin has
    exited, not when stderr ends too (Twisted's ``processEnded``): a helper the plugin leaves holding
    stderr must not hold the renewal (kubectl does not wait for it)."""

    def __init__(self, plugin: ExecPlugin, done: Deferred[ExecCredential]) -> None:
        self._plugin = plugin
        self._done = done
        self._out = bytearray()
        self._err = bytearray()
        self._out_ended = False
        self._exited: Failure | None = None

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.closeStdin()

    def outReceived(self, data: bytes) -> None:
        # A byte past the limit is kept, for `parse_output` to refuse the output as too large.
        self._out += data[: _OUTPUT_LIMIT + 1 - len(self._out)]

    def errReceived(self, data: bytes) -> None:
        self._err += data[: _ERROR_LIMIT - len(self._err)]

    def outConnectionLost(self) -> None:
        self._out_ended = True
        self._settle()

    def processExited(self, reason: Failure) -> None:
        self._exited = reason
        self._settle()

    def processEnded(self, reason: Failure) -> None:
        # Twisted calls it after the two above; they have settled the run, unless they were not called.
        self._out_ended, self._exited = True, self._exited or reason
        self._settle()

    def _settle(self) -> None:
        if self._done.called or not self._out_ended or self._exited is None:
            return
        self._close_stderr()
        reason = self._exited
        if reason.check(ProcessDone):
            try:
                credential = _credential(self._plugin, bytes(self._out))
            except PluginError as e:
                self._done.errback(e)
            else:
                self._done.callback(credential)
            return
        self._done.errback(_failed(self._plugin, getattr(reason.value, "exitCode", None), bytes(self._err)))

    def _close_stderr(self) -> None:
        """Read what stderr holds now (written before the exit, maybe not yet read by the reactor),
        without waiting for more, and stop reading it. A helper that still holds it is killed by SIGPIPE
        at its next write to it (EPIPE if it ignores SIGPIPE): Twisted gives the plugin SIGPIPE's default,
        not Python's ignoring it. Under kubectl, which hands the plugin its own stderr, the helper's
        writes still reach that stderr."""
        # The pipe's reader, on POSIX; absent once stderr has ended (all of it was received then).
        reader = getattr(self.transport, "pipes", {}).get(2)
        if reader is None or self.transport is None:
            return
        _read_held(reader.fileno(), self._err)
        self.transport.closeChildFD(2)

    def abandon(self) -> None:
        """At the timeout: kill the plugin, stop reading its pipes and close our end of each. Killing it
        is not enough: a helper it started may hold one (stderr, as a rule) until that helper exits,
        and the pipe, read all along, with it. The helper is left running, as kubectl leaves it; as one
        still holding stderr after a plugin's exit (`_close_stderr`), it is killed by SIGPIPE at its
        next write to a pipe closed here."""
        if self.transport is None:
            return
        try:
            self.transport.signalProcess("KILL")
        except ProcessExitedAlready:  # it had exited; a helper still held its stdout
            pass
        # Each pipe ends as stdout's does when it reaches its end (outConnectionLost, then processEnded
        # once the plugin is reaped): the run is settled already, so nothing more is done or said.
        self.transport.loseConnection()


def run_plugin(reactor: Any, plugin: ExecPlugin, timeout: float = PLUGIN_TIMEOUT) -> Deferred[ExecCredential]:
    """Run the plugin as a child process of the reactor; the result fires when it has exited.

    Past `timeout` the process is killed, every pipe to it closed (whoever else holds its other end),
    and the result fails with `PluginError`.
    """
    done: Deferred[ExecCredential] = Deferred()
    protocol = _PluginProcess(plugin, done)
    argv = plugin.argv()
    try:
        reactor.spawnProcess(protocol, argv[0], argv, env=plugin.environment())
    except (OSError, ValueError) as e:
        # ValueError: what the OS cannot take in an argument or the environment (the kubeconfig's
        # check refuses it first); its text names no value.
        done.errback(PluginError(f"cannot run exec plugin {plugin.command}: {e}"))
        return done
    except PluginError as e:
        done.errback(e)
        return done

    def expire() -> None:
        if not done.called:
            done.errback(PluginError(f"exec plugin {plugin.command} gave no credential within {timeout:g}s"))
            protocol.abandon()

    timer = reactor.callLater(timeout, expire)

    def stop_timer(result: object) -> object:
        if timer.active():
            timer.cancel()
        return result

    return done.addBoth(stop_timer)
