"""A small Range-capable HTTP mirror of a folder: `mmf zoo serve DIR` (and the demo's local mirror).

Point it at a folder laid out like the origin (datasets/..., models/...) or at the archive root a pack or
`mmf data synth --archive` wrote, and other machines fetch with `--mirror http://HOST:PORT/`. Single ranges,
ETag / Last-Modified and If-Range are supported; paths cannot leave the folder.

It keeps serving under clients that misbehave (zoo.serve_conns): a request head must arrive within
`header_timeout`, a kept-alive connection may wait `idle_timeout` for its next request, a stalled body is dropped
after `send_timeout`, and at most `max_connections` (below the process's file limit) are open at once: at the
cap, the connection waiting longest for a request head is closed to make room, and only when every connection
is busy sending is a new one answered 503 with Retry-After. A bad request gets a 4xx and never a traceback.
"""
from __future__ import annotations

import email.utils
import os
import re
import stat
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

from zoo.serve_conns import Connections, Limits

_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")
# One range, each number at most 19 digits (10**19 bytes is beyond any file): longer is refused, never parsed.
_SPEC = re.compile(r"\s*(\d{0,19})\s*-\s*(\d{0,19})\s*", re.ASCII)


def byte_range(header: str | None, size: int) -> tuple[int, int] | None | bool:
    """The Range header's single byte range within a file of `size` bytes as (first, last); None to send the
    whole file (no Range, or another unit: ignored as RFC 9110 allows); False when it cannot be served (416):
    not satisfiable (starts at or past the end, a zero suffix, an empty file), invalid (last < first, garbage,
    absurd numbers) or several ranges (multipart answers are not supported)."""
    if header is None:
        return None
    unit, equals, spec = header.partition("=")
    if not equals or unit.strip().lower() != "bytes":
        return None
    match = _SPEC.fullmatch(spec)
    if not match or match.groups() == ("", ""):
        return False
    first, last = match.groups()
    if first == "":  # suffix: the last N bytes
        n = int(last)
        return (max(0, size - n), size - 1) if n > 0 and size > 0 else False
    start = int(first)
    end = size - 1 if last == "" else int(last)
    if end < start or start >= size:
        return False
    return start, min(end, size - 1)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "mmf-zoo-serve"
    default_request_version = "HTTP/1.1"  # garbage (no version) gets a status line, not an HTTP/0.9 bare body

    def setup(self) -> None:
        self.timeout = self.server.limits.send_timeout  # per socket operation: a stalled client is dropped
        super().setup()
        self.requests_served = 0

    def log_message(self, fmt, *args):  # quiet: the fetch side reports progress
        if getattr(self.server, "verbose", False):
            super().log_message(fmt, *args)

    def handle_one_request(self) -> None:
        # the request head must be complete by a deadline (the reaper closes the connection otherwise)
        self.server.conns.wait_for_request(self.connection, kept_alive=self.requests_served > 0)
        super().handle_one_request()
        self.requests_served += 1

    def do_HEAD(self):
        self._serve(head=True)

    def do_GET(self):
        self._serve(head=False)

    def _serve(self, head: bool) -> None:
        if not self.server.conns.serving(self.connection):
            self.close_connection = True
            return
        target = self._target()
        if isinstance(target, int):
            return self._plain(target, b"bad request\n" if target == 400 else b"not found\n", head)
        try:
            fd = os.open(target, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))  # a FIFO swapped in cannot block us
        except OSError:
            return self._plain(404, b"not found\n", head)
        with os.fdopen(fd, "rb") as f:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                return self._plain(404, b"not found\n", head)
            self._send_file(f, st, head)

    def _target(self) -> Path | int:
        """The file the request names under the root, or the status to answer (400 malformed, 404 outside or
        missing)."""
        raw = urlsplit(self.path).path
        if _BAD_ESCAPE.search(raw):
            return 400
        try:
            rel = unquote(raw, errors="strict")
        except UnicodeDecodeError:
            return 400
        if "\0" in rel:
            return 400
        root: Path = self.server.root
        try:
            path = (root / rel.lstrip("/")).resolve()
            return path if path.is_relative_to(root) and path.is_file() else 404
        except (OSError, ValueError, RuntimeError):  # too long a name, a symlink loop, ...
            return 404

    def _send_file(self, f, st: os.stat_result, head: bool) -> None:
        size = st.st_size
        etag = f'"{st.st_size:x}-{st.st_mtime_ns:x}"'
        last_mod = email.utils.formatdate(st.st_mtime, usegmt=True)
        if_range = self.headers.get("If-Range")
        wanted = byte_range(self.headers.get("Range"), size) if if_range in (None, etag, last_mod) else None
        if wanted is False:
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{size}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        start, end = wanted or (0, size - 1)
        self.send_response(206 if wanted else 200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("ETag", etag)
        self.send_header("Last-Modified", last_mod)
        self.send_header("Content-Length", str(end - start + 1))
        if wanted:
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.end_headers()
        if head or end < start:
            return
        try:  # socket.sendfile: os.sendfile, waiting at most send_timeout for the client to take more
            sent = self.connection.sendfile(f, start, end - start + 1)
        except OSError:  # the client went away or stalled mid-body (ConnectionError, EPIPE, timeout, ...)
            sent = -1
        if sent != end - start + 1:  # (a file cut short while being sent, too) the body is incomplete
            self.close_connection = True

    def _plain(self, code: int, body: bytes, head: bool) -> None:
        self.send_response(code)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head:
            self.wfile.write(body)


class _Server(ThreadingHTTPServer):
    request_queue_size = 128  # a burst of connections waits in the kernel's queue, not refused by it
    daemon_threads = True

    def __init__(self, address, limits: Limits, verbose: bool):
        super().__init__(address, _Handler)
        self.limits, self.verbose = limits, verbose
        self.conns = Connections(limits, say=self._say)

    def _say(self, message: str) -> None:
        if self.verbose:
            print(f"mmf zoo serve: {message}", file=sys.stderr, flush=True)

    def verify_request(self, request, client_address) -> bool:
        if self.conns.admit(request):
            return True
        self.conns.refuse(request)  # every connection is busy sending: 503, try again shortly
        return False

    def service_actions(self) -> None:  # between accepts, every poll interval at most
        self.conns.reap()

    def shutdown_request(self, request) -> None:
        self.conns.remove(request)
        super().shutdown_request(request)

    def handle_error(self, request, client_address) -> None:
        # A client that closes early (the fetch engine does on purpose when it splits or races chunks, and a
        # Ctrl-C does) or stalls is normal for a mirror: nothing to say. Anything else is one line, never a
        # traceback a client could provoke at will.
        error = sys.exc_info()[1]
        if not isinstance(error, (ConnectionError, TimeoutError)):
            self._say(f"request from {client_address[0]} failed: {type(error).__name__}: {error}")


class FolderMirror:
    """Serve `root` on host:port in a background thread; use as a context manager."""

    def __init__(self, root: str | Path, host: str = "127.0.0.1", port: int = 0, verbose: bool = False,
                 limits: Limits | None = None):
        self.httpd = _Server((host, port), limits or Limits.default(), verbose)
        self.httpd.root = Path(root).resolve()
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.25},
                                       name="zoo-serve", daemon=True)

    @property
    def limits(self) -> Limits:
        return self.httpd.limits

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}/"

    def __enter__(self) -> "FolderMirror":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
