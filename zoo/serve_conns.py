"""Connection limits of `mmf zoo serve`: timeouts, a cap below the file limit, and who goes first at the cap.

A thread-per-connection server is starved by clients that connect and then send nothing, or a request head a
byte at a time (slowloris), or keep a connection alive forever: each holds a thread and a file descriptor, and
at the process's file limit `accept` fails for everyone. So every connection is either *waiting* for a request
head (with a deadline: `header_timeout` from the connect, `idle_timeout` after the previous answer) or *serving*
one (a stalled send ends after `send_timeout`, a socket timeout). A reaper closes waiting connections past their
deadline, and at the cap a new connection closes the one that has waited longest for a head: a real client,
which sends its request at once, is never the oldest waiting. Only when every connection is serving is a new
one answered 503 with Retry-After (the fetch engine backs off and retries).
"""
from __future__ import annotations

import dataclasses
import os
import socket
import threading
import time
from typing import Callable

DEFAULT_HEADER_TIMEOUT = 10.0   # seconds from connect to a complete request head
DEFAULT_IDLE_TIMEOUT = 15.0     # seconds a kept-alive connection may wait for its next request
DEFAULT_SEND_TIMEOUT = 60.0     # seconds a client may take no bytes of a body before it is dropped
DEFAULT_MAX_CONNECTIONS = 256
_MAX_TIMEOUT = 86400.0
_FD_RESERVE = 16                # descriptors kept free for the listener, logs, and whatever a thread opens
_REFUSAL = (b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\nContent-Length: 0\r\n"
            b"Connection: close\r\n\r\n")


def fd_budget() -> int:
    """How many connections the file limit allows: each may hold its socket and one open file while it
    sends, on top of the descriptors already open."""
    try:
        import resource

        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    except (ImportError, OSError, ValueError):
        return DEFAULT_MAX_CONNECTIONS
    if soft == resource.RLIM_INFINITY:
        return 1 << 16
    try:
        in_use = len(os.listdir("/proc/self/fd"))
    except OSError:
        in_use = 32
    return max(1, (soft - in_use - _FD_RESERVE) // 2)


@dataclasses.dataclass(frozen=True)
class Limits:
    header_timeout: float = DEFAULT_HEADER_TIMEOUT
    idle_timeout: float = DEFAULT_IDLE_TIMEOUT
    send_timeout: float = DEFAULT_SEND_TIMEOUT
    max_connections: int = DEFAULT_MAX_CONNECTIONS

    def __post_init__(self):
        for name in ("header_timeout", "idle_timeout", "send_timeout"):
            value = getattr(self, name)
            if not 0 < value <= _MAX_TIMEOUT:  # (NaN fails too)
                raise ValueError(f"{name.replace('_', '-')} must be above 0 and at most {_MAX_TIMEOUT:.0f} "
                                 f"seconds, not {value}")
        if self.max_connections < 1:
            raise ValueError(f"max-connections must be at least 1, not {self.max_connections}")

    @classmethod
    def default(cls) -> "Limits":
        return cls().fitted()

    def fitted(self) -> "Limits":
        """These limits with max_connections lowered to what the file limit allows."""
        return dataclasses.replace(self, max_connections=max(1, min(self.max_connections, fd_budget())))


@dataclasses.dataclass
class _Conn:
    sock: socket.socket
    deadline: float | None  # monotonic time the request head must be complete by; None while serving
    waiting_since: float
    closed: bool = False


class Connections:
    """The open connections of one server and their states; thread-safe."""

    def __init__(self, limits: Limits, say: Callable[[str], None] = lambda message: None):
        self.limits, self.say = limits, say
        self._lock = threading.Lock()
        self._conns: dict[int, _Conn] = {}  # id(socket) -> state
        self._at_cap = False

    def admit(self, sock: socket.socket) -> bool:
        """Register a new connection (waiting for its first head); at the cap, close the connection that has
        waited longest for a head to make room. False when every connection is serving (refuse this one)."""
        now, first_time_at_cap = time.monotonic(), False
        with self._lock:
            live = [c for c in self._conns.values() if not c.closed]
            if len(live) >= self.limits.max_connections:
                waiting = [c for c in live if c.deadline is not None]
                if not waiting:
                    return False
                self._close(min(waiting, key=lambda c: c.waiting_since))
                first_time_at_cap, self._at_cap = not self._at_cap, True
            elif self._at_cap and len(live) < self.limits.max_connections // 2:
                self._at_cap = False  # (said again when the cap is reached again)
            self._conns[id(sock)] = _Conn(sock, now + self.limits.header_timeout, now)
        if first_time_at_cap:
            self.say(f"{self.limits.max_connections} connections open (--max-connections, within ulimit -n): "
                     "closing the ones waiting longest for a request to make room")
        return True

    def refuse(self, sock: socket.socket) -> None:
        try:
            sock.setblocking(False)
            sock.send(_REFUSAL)
        except OSError:
            pass

    def wait_for_request(self, sock: socket.socket, kept_alive: bool) -> None:
        """The connection now waits for a request head: `idle_timeout` after an answer, else `header_timeout`
        from the connect (set by admit)."""
        if not kept_alive:
            return
        now = time.monotonic()
        with self._lock:
            conn = self._conns.get(id(sock))
            if conn is not None and not conn.closed:
                conn.deadline, conn.waiting_since = now + self.limits.idle_timeout, now

    def serving(self, sock: socket.socket) -> bool:
        """A complete request head arrived: no deadline while it is answered (send_timeout bounds stalls).
        False when the connection was already closed (its head was cut off by the close: do not answer)."""
        with self._lock:
            conn = self._conns.get(id(sock))
            if conn is None or conn.closed:
                return False
            conn.deadline = None
            return True

    def remove(self, sock: socket.socket) -> None:
        with self._lock:
            conn = self._conns.get(id(sock))
            if conn is not None and conn.sock is sock:
                del self._conns[id(sock)]

    def reap(self) -> None:
        """Close every connection whose request head is overdue."""
        now = time.monotonic()
        with self._lock:
            for conn in self._conns.values():
                if not conn.closed and conn.deadline is not None and now > conn.deadline:
                    self._close(conn)

    @staticmethod
    def _close(conn: _Conn) -> None:
        # shutdown wakes the connection's thread from its read (it sees the end of the stream and exits, closing
        # the socket); the slot is free from now on, the descriptor within moments
        conn.closed = True
        try:
            conn.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
