"""An HTTP server whose connections hold a thread only while a request is answered.

The standard library's ``ThreadingHTTPServer`` starts a thread per connection and keeps it
until the client closes, with no timeout: 300 idle or half-open keep-alive connections hold
300 threads for ever. :class:`PooledHTTPServer` instead

* answers requests on a bounded pool of ``workers`` threads (more wait in its queue);
* parks every connection that has nothing to read (just accepted, or kept alive between
  requests) in one selector thread, the :class:`WaitingRoom`, which hands it to the pool
  when bytes arrive and closes it after ``timeout`` seconds idle;
* gives a worker's socket a ``timeout`` (per read and write), so a client that stops
  half-way through its request line, headers or body frees the worker after that long.

So a silent client costs a file descriptor for ``timeout`` seconds, never a worker, and a
normal request is answered while hundreds of connections sit idle. Not covered: a client
that sends its request a byte at a time, each within ``timeout`` of the last, keeps its
worker that long (the timeout is per read); ``workers`` such clients delay everyone else.
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

#: default seconds a connection may sit idle, or a read or write may wait
TIMEOUT = 30.0


@dataclass(eq=False)
class Connection:
    """An accepted connection and, once it has sent a request, its handler (kept between
    requests, with its read buffer)."""

    request: socket.socket
    address: Any
    handler: BaseHTTPRequestHandler | None = None
    deadline: float = field(default=0.0)


class WaitingRoom:
    """Connections with nothing to read, in one selector thread: ``ready(connection)`` when
    bytes (or the client's close) arrive, ``expire(connection)`` after ``timeout`` s idle."""

    def __init__(self, timeout: float, ready: Any, expire: Any):
        self.timeout, self.ready, self.expire = timeout, ready, expire
        self.selector = selectors.DefaultSelector()
        self._wake_read, self._wake_write = socket.socketpair()
        self._wake_read.setblocking(False)
        self._wake_write.setblocking(False)
        self.selector.register(self._wake_read, selectors.EVENT_READ, None)
        self._arrivals: list[Connection] = []
        self._lock = threading.Lock()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="viewer-waiting-room", daemon=True)
        self._thread.start()

    def add(self, connection: Connection) -> None:
        """Wait for ``connection``'s next bytes (any thread)."""
        with self._lock:
            if self._closed:
                self.expire(connection)
                return
            self._arrivals.append(connection)
        self._wake()

    def __len__(self) -> int:
        return len(self.selector.get_map()) - 1

    def close(self) -> None:
        """Stop, and close every waiting connection."""
        with self._lock:
            self._closed = True
        self._wake()
        self._thread.join(10)

    def _wake(self) -> None:
        with contextlib.suppress(BlockingIOError, OSError):  # a full pipe is awake already
            self._wake_write.send(b"\0")

    def _run(self) -> None:
        waiting: set[Connection] = set()
        while True:
            with self._lock:
                closed, arrivals, self._arrivals = self._closed, self._arrivals, []
            for connection in arrivals:
                connection.deadline = time.monotonic() + self.timeout
                self.selector.register(connection.request, selectors.EVENT_READ, connection)
                waiting.add(connection)
            if closed:
                break
            wait = min((c.deadline for c in waiting), default=None)
            for key, _ in self.selector.select(None if wait is None else max(0.0, wait - time.monotonic())):
                if key.data is None:
                    with contextlib.suppress(BlockingIOError):
                        self._wake_read.recv(4096)
                    continue
                self._leave(key.data, waiting)
                self.ready(key.data)
            now = time.monotonic()
            for connection in [c for c in waiting if c.deadline <= now]:
                self._leave(connection, waiting)
                self.expire(connection)
        for connection in list(waiting):
            self._leave(connection, waiting)
            self.expire(connection)
        self.selector.close()
        self._wake_read.close()
        self._wake_write.close()

    def _leave(self, connection: Connection, waiting: set[Connection]) -> None:
        self.selector.unregister(connection.request)
        waiting.discard(connection)


class PooledHTTPServer(HTTPServer):
    """An ``HTTPServer`` answering on ``workers`` threads, idle connections closed after
    ``timeout`` seconds (see the module's description)."""

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler], workers: int,
                 timeout: float = TIMEOUT):
        if workers < 1 or not timeout > 0:
            raise ValueError(f"workers must be >= 1 and timeout > 0, not {workers} and {timeout}")
        super().__init__(address, handler)
        self.connection_timeout = timeout
        self.pool = ThreadPoolExecutor(workers, thread_name_prefix=f"viewer-worker-{self.server_address[1]}")
        self.waiting = WaitingRoom(timeout, self._dispatch, self._close)

    def process_request(self, request: Any, client_address: Any) -> None:
        """A new connection waits for its first bytes (the accepting thread never reads)."""
        self.waiting.add(Connection(request, client_address))

    def server_close(self) -> None:
        super().server_close()
        waiting = getattr(self, "waiting", None)
        if waiting is not None:
            waiting.close()
            self.pool.shutdown(wait=False, cancel_futures=True)

    def _dispatch(self, connection: Connection) -> None:
        try:
            self.pool.submit(self._serve, connection)
        except RuntimeError:  # the pool is shut down: the server is closing
            self._close(connection)

    def _serve(self, connection: Connection) -> None:
        """Answer the connection's requests while they are already here; then park it again."""
        try:
            handler = connection.handler = connection.handler or self._handler(connection)
            while True:
                handler.close_connection = True  # unless the request keeps the connection alive
                handler.handle_one_request()
                if handler.close_connection:
                    break
                if not self._buffered(handler):
                    self.waiting.add(connection)
                    return
        except OSError:  # the client went away (reset, broken pipe) or stopped reading
            pass
        except Exception:
            self.handle_error(connection.request, connection.address)
        self._close(connection)

    def _handler(self, connection: Connection) -> BaseHTTPRequestHandler:
        """The handler of a connection, set up (socket timeout, files) but not run."""
        handler = self.RequestHandlerClass.__new__(self.RequestHandlerClass)
        handler.request, handler.client_address, handler.server = connection.request, connection.address, self
        handler.timeout = self.connection_timeout  # StreamRequestHandler.setup sets it on the socket
        handler.setup()
        return handler

    def _buffered(self, handler: BaseHTTPRequestHandler) -> bool:
        """Whether the next request is already here (pipelined, or read into the buffer)."""
        handler.connection.settimeout(0)
        try:
            return bool(handler.rfile.peek(1))
        except OSError:
            return False
        finally:
            handler.connection.settimeout(self.connection_timeout)

    def _close(self, connection: Connection) -> None:
        if connection.handler is not None:
            with contextlib.suppress(OSError, ValueError):
                connection.handler.finish()
        self.shutdown_request(connection.request)
