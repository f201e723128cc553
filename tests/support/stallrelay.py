"""A TCP relay, in threads, in front of a real registry that stalls the test's reactor around one
exchange: the registry's answer reaches the client's socket while the reactor thread is busy.

What a loaded machine does to a server now and then (its process not scheduled for a while in the
middle of its work), made deterministic: ``stall_next(reactor)`` picks the next request. When the
relay has it (the client sent it), it asks the reactor thread to block; once it blocks, the relay
passes the request on, reads the registry's whole answer and hands it to the client; the reactor
thread blocks on until ``seconds`` have passed since it began, so that a deadline set when the
request left is due by the time it resumes, with the answer waiting in its socket.

The block runs as a thread call (``callFromThread``): the reactor runs those before it looks at
which timed calls are due, as it would after any stretch of work between two polls. Requests are
relayed one at a time per connection, as the clients send them (no pipelining).
"""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

_HEADERS_END = b"\r\n\r\n"


class StallRelay:
    def __init__(self, upstream: str) -> None:
        host, _, port = upstream.removeprefix("http://").partition(":")
        self._upstream = (host, int(port))
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        self._stall: tuple[Any, float] | None = None
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = [self._listener]
        #: (method, path) of each request the reactor was stalled around, once its answer was handed on.
        self.stalled: list[tuple[str, str]] = []
        self._threads = [threading.Thread(target=self._accept, daemon=True)]
        self._threads[0].start()

    def stall_next(self, reactor: Any, seconds: float) -> None:
        """Stall ``reactor`` for ``seconds`` around the next request, as described above."""
        with self._lock:
            self._stall = (reactor, seconds)

    def close(self) -> None:
        for sock in self._sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()
        for thread in self._threads:
            thread.join(5)

    def __enter__(self) -> StallRelay:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self._upstream)
            self._sockets += [client, upstream]
            thread = threading.Thread(target=self._relay, args=(client, upstream), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _relay(self, client: socket.socket, upstream: socket.socket) -> None:
        client_in, upstream_in = _Reader(client), _Reader(upstream)
        try:
            while (request := client_in.message(head=False)) is not None:
                method, path = request.split(b" ", 2)[:2]
                with self._lock:
                    stall, self._stall = self._stall, None
                answered = threading.Event()
                if stall is not None:
                    reactor, seconds = stall
                    blocking = threading.Event()
                    reactor.callFromThread(_block, reactor, seconds, blocking, answered)
                    blocking.wait()
                try:
                    upstream.sendall(request)
                    answer = upstream_in.message(head=method == b"HEAD")
                    if answer is None:
                        return
                    client.sendall(answer)
                    if stall is not None:
                        self.stalled.append((method.decode(), path.decode()))
                finally:
                    answered.set()  # however this ends, the reactor thread is not left blocked
        except OSError:
            return


def _block(reactor: Any, seconds: float, blocking: threading.Event, answered: threading.Event) -> None:
    began = reactor.seconds()
    blocking.set()
    answered.wait()
    while reactor.seconds() <= began + seconds:
        time.sleep(0.01)


class _Reader:
    """Whole HTTP/1.1 messages off a socket: the head and a body as long as Content-Length says, or
    chunked to its last chunk."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._buffer = b""

    def message(self, *, head: bool) -> bytes | None:
        """The next message, or None at the end of the stream; ``head``: the answer to a HEAD (no
        body whatever its headers say)."""
        while _HEADERS_END not in self._buffer:
            if not self._fill():
                return None
        end = self._buffer.index(_HEADERS_END) + len(_HEADERS_END)
        fields = self._buffer[:end].lower()
        length = 0
        if not head and b"\r\ncontent-length:" in fields:
            length = int(fields.split(b"\r\ncontent-length:", 1)[1].split(b"\r\n", 1)[0])
        elif not head and b"\r\ntransfer-encoding: chunked" in fields:
            while b"\r\n0\r\n\r\n" not in self._buffer[end - 2 :]:
                if not self._fill():
                    return None
            length = self._buffer.index(b"\r\n0\r\n\r\n", end - 2) + 7 - end
        while len(self._buffer) < end + length:
            if not self._fill():
                return None
        message, self._buffer = self._buffer[: end + length], self._buffer[end + length :]
        return message

    def _fill(self) -> bool:
        data = self._sock.recv(65536)
        self._buffer += data
        return bool(data)
