"""Re-read certificate and CA files when they change on disk, so rotation needs no restart.

Files are polled (as k8s.io/apiserver also does, besides fsnotify): a mounted Secret is updated by
swapping a symlink, which inotify on the file itself would miss.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Sequence

import attrs
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from payloadtags.validators import paths_redacted, read_file, without_userinfo

log = Logger()


def _fingerprint(path: str) -> bytes | OSError:
    try:
        return hashlib.sha256(read_file(path)).digest()
    except OSError as error:
        return error


@attrs.define
class FileWatcher:
    """Calls ``reload`` when any of ``paths`` has new content; ``reload`` raising keeps the old state."""

    clock: IReactorTime
    paths: Sequence[str]
    reload: Callable[[], None]
    what: str
    period: float = 10.0
    _seen: list[bytes | None] = attrs.field(factory=list, init=False)
    # Whether the files that cannot be read now were said to be: once per episode, not every period.
    _unreadable_said: bool = attrs.field(default=False, init=False)
    _loop: LoopingCall | None = attrs.field(default=None, init=False)

    def start(self) -> None:
        self._seen = [f if isinstance(f, bytes) else None for f in map(_fingerprint, self.paths)]
        self._loop = LoopingCall(self.check)
        self._loop.clock = self.clock
        self._loop.start(self.period, now=False)

    def stop(self) -> None:
        if self._loop is not None and self._loop.running:
            self._loop.stop()

    def check(self) -> bool:
        """Reload if something changed; True when a new state was installed."""
        read = [_fingerprint(p) for p in self.paths]
        unreadable = [(p, f) for p, f in zip(self.paths, read, strict=True) if isinstance(f, OSError)]
        if unreadable:
            # Mid-rotation (a file briefly missing) or for good (deleted, its mode or owner changed):
            # try again next period, and say so once, or an operator learns only when it expires.
            if not self._unreadable_said:
                self._unreadable_said = True
                log.warn(
                    "{what}: cannot read {files}; keeping the previous ones, trying again every period",
                    what=self.what,
                    files=", ".join(
                        f"{without_userinfo(p)} ({error.strerror or type(error).__name__})"
                        for p, error in unreadable
                    ),
                )
            return False
        current: list[bytes | None] = [f for f in read if isinstance(f, bytes)]
        if self._unreadable_said:
            self._unreadable_said = False
            log.info(
                "{what}: can read {paths} again",
                what=self.what,
                paths=", ".join(map(without_userinfo, self.paths)),
            )
        if current == self._seen:
            return False
        try:
            self.reload()
        except Exception as error:
            log.error(
                "{what}: cannot load the changed files {paths}: {error}; keeping the previous ones",
                what=self.what,
                paths=", ".join(without_userinfo(os.path.basename(p)) for p in self.paths),
                error=self._redacted(str(error)),
            )
            self._seen = current  # do not retry the same broken content every period
            return False
        self._seen = current
        log.info(
            "{what}: reloaded {paths}", what=self.what, paths=", ".join(map(without_userinfo, self.paths))
        )
        return True

    def _redacted(self, message: str) -> str:
        """``message`` with each of the paths it names as the start's log names them (startup's
        `_logged`): all before a path's last '@' redacted. A URL given to a file flag may name a file
        (--tls-cert-file=https://user:pw@h/tls.crt is read under the working directory), and a reload's
        error names the file as given (or quoted, as an OSError does)."""
        return paths_redacted(message, self.paths)
