"""A fault-injecting HTTP/1.1 Range server on 127.0.0.1, for the zoo transfer engine's tests and bench.

Files under ``root`` are served by their relative path (GET and HEAD, single ``Range``, ``If-Range``,
strong ``ETag`` and ``Last-Modified``, keep-alive). Faults are rules (``Faults``) that can be changed
while the server runs; counters (``server.stats``) record what was actually sent.

Usage in a pytest fixture::

    import pytest
    from zoo.testing.faultserver import FaultServer, Faults

    @pytest.fixture
    def mirror(tmp_path):
        (tmp_path / "blob.bin").write_bytes(os.urandom(1 << 20))
        with FaultServer(tmp_path) as srv:
            yield srv
        assert srv.errors == []          # a bug in the server itself fails the test

    def test_resume_after_reset(mirror):
        mirror.set_faults(Faults(glob="*.bin", reset_after=300_000, first_n=2))
        ...  # fetch mirror.url_for("blob.bin") with the engine
        assert mirror.stats.requests["blob.bin"] == 3
        assert mirror.stats.bytes_sent["blob.bin"] < 2 * (1 << 20)   # nothing refetched from 0

Rules and counting:
- A rule applies to a request whose relative path matches ``glob`` (fnmatch) while it has occurrences
  left (``first_n``; None = forever).
- Status answers (``status_sequence``, ``not_found``, ``gone``, ``forbidden``, ``html_200``) come
  first: the first live rule that has one answers GET or HEAD with it and uses one occurrence.
- Otherwise a GET uses one occurrence of every live matching rule, and for each setting the first
  rule (in order) that sets it wins. A HEAD uses none (body faults cannot change it).
- ``change_etag_after=N`` is not limited by ``first_n``: requests N+1, N+2, ... to a matching path
  (counted by ``stats.requests``, HEAD included) see the "replaced" file.
"""
from __future__ import annotations

import dataclasses
import email.utils
import fcntl
import fnmatch
import os
import random
import socket
import socketserver
import struct
import sys
import threading
import time
import traceback
import urllib.parse
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

SIOCOUTQNSD = 0x894B  # Linux ioctl: bytes in a socket's send queue not sent yet
CHUNK = 1 << 20  # Python-write chunk; large enough that loopback speed is not limited by the loop
HTML_ERROR_PAGE = (
    b"<!DOCTYPE html><html><head><title>Access denied</title></head>"
    b"<body><h1>Please sign in to the network</h1><p>Error 0xDEAD</p></body></html>\n"
)


@dataclass
class Faults:
    """One fault rule. Mutable at runtime; use ``update()`` to change several fields at once."""

    glob: str = "*"  # fnmatch pattern on the relative path, e.g. "*.tar.gz"
    first_n: int | None = None  # apply to the first N matching responses only; None = always
    reset_after: int | None = None  # RST the connection after this many body bytes
    stall_after: int | None = None  # stop sending after this many body bytes ...
    stall_seconds: float = 0.0  # ... for this long (socket stays open), then continue
    status_sequence: list = field(default_factory=list)  # [503, (429, {"Retry-After": "1"})], one each
    not_found: bool = False  # 404
    gone: bool = False  # 410
    forbidden: bool = False  # 403
    corrupt: list = field(default_factory=list)  # absolute file offsets whose byte is XOR 0xFF
    ignore_range: bool = False  # 200 full body to every Range request (still says Accept-Ranges)
    change_etag_after: int | None = None  # after N requests the file is "replaced" (new ETag, content)
    replacement: Path | None = None  # content after replacement; default: the file XOR 0x55
    wrong_content_range: int = 0  # 206 for a range shifted by this many bytes (True = 1)
    html_200: bool = False  # 200 text/html error page (captive portal, S3 error)
    rate_bps: float | None = None  # per-connection token bucket, bytes per second
    rate_burst: int | None = None  # bytes a new connection may send at once (default: the bucket, >= 16 KiB)
    latency: float = 0.0  # seconds before the status line
    short_body: bool = False  # send half the body, then close cleanly (FIN)
    flip_per_body: bool = False  # flip one byte at a random position of every body (a bad disk or proxy)
    etag_per_request: bool = False  # a new ETag on every response, same content (an unstable validator)
    header_rate_bps: float | None = None  # send status line and headers at this many bytes per second
    claim_extra: int = 0  # Content-Range totals claim the file is this many bytes larger (negative: smaller)
    _used: int = field(default=0, repr=False, compare=False)
    _status_pos: int = field(default=0, repr=False, compare=False)
    _lock: Any = field(default_factory=threading.Lock, repr=False, compare=False)

    def update(self, **changes: Any) -> None:
        """Set several fields atomically with respect to requests being planned."""
        with self._lock:
            for name, value in changes.items():
                if name.startswith("_") or name not in _FIELD_NAMES:
                    raise AttributeError(f"Faults has no setting {name!r}; see zoo/testing/faultserver.py")
                setattr(self, name, value)

    def reset(self) -> None:
        """Forget how many occurrences and status-sequence entries were used."""
        with self._lock:
            self._used = 0
            self._status_pos = 0

    @property
    def used(self) -> int:
        """How many responses this rule has applied to (see the module docstring for what counts)."""
        return self._used


_FIELD_NAMES = {f.name for f in dataclasses.fields(Faults) if not f.name.startswith("_")}


@dataclass
class Plan:
    """The merged faults for one request (a snapshot, so runtime changes never tear a response)."""

    status: tuple[int, dict] | None = None
    reset_after: int | None = None
    stall_after: int | None = None
    stall_seconds: float = 0.0
    corrupt: frozenset = frozenset()
    ignore_range: bool = False
    replaced: bool = False
    replacement: Path | None = None
    wrong_content_range: int = 0
    rate_bps: float | None = None
    rate_burst: int | None = None
    latency: float = 0.0
    short_body: bool = False
    flip_per_body: bool = False
    etag_per_request: bool = False
    header_rate_bps: float | None = None
    claim_extra: int = 0


def _take_status(rule: Faults) -> tuple[int, dict] | None:
    """The status this rule answers with now (advancing its sequence), or None."""
    if rule._status_pos < len(rule.status_sequence):
        entry = rule.status_sequence[rule._status_pos]
        rule._status_pos += 1
        return (entry, {}) if isinstance(entry, int) else (entry[0], dict(entry[1]))
    for flag, code in (("not_found", 404), ("gone", 410), ("forbidden", 403)):
        if getattr(rule, flag):
            return code, {}
    if rule.html_200:
        return 200, {"Content-Type": "text/html; charset=utf-8"}
    return None


def _plan(rules: list[Faults], rel: str, method: str, requests_before: int) -> Plan:
    """Merge the matching rules for one request, using one occurrence of each rule that shapes it.

    A status answer (first rule that has one) ends planning: body faults cannot apply to it, so
    they are not used up. A HEAD is shaped only by status answers and latency.
    """
    plan = Plan()
    matching = [rule for rule in rules if fnmatch.fnmatch(rel, rule.glob)]
    for rule in matching:
        with rule._lock:
            if rule.change_etag_after is not None and requests_before >= rule.change_etag_after:
                plan.replaced, plan.replacement = True, rule.replacement
                break
    live = lambda rule: rule.first_n is None or rule._used < rule.first_n  # noqa: E731
    for rule in matching:
        with rule._lock:
            if live(rule) and not plan.latency:
                plan.latency = rule.latency
            if live(rule) and rule.header_rate_bps and not plan.header_rate_bps:
                plan.header_rate_bps = rule.header_rate_bps
            if live(rule) and rule.etag_per_request:
                plan.etag_per_request = True
            if live(rule) and (status := _take_status(rule)) is not None:
                rule._used += 1
                plan.status = status
                return plan
    if method == "HEAD":
        return plan
    for rule in matching:
        with rule._lock:
            if not live(rule):
                continue
            rule._used += 1
            if plan.reset_after is None:
                plan.reset_after = rule.reset_after
            if plan.stall_after is None and rule.stall_after is not None:
                plan.stall_after, plan.stall_seconds = rule.stall_after, rule.stall_seconds
            plan.corrupt = plan.corrupt or frozenset(rule.corrupt)
            plan.ignore_range = plan.ignore_range or rule.ignore_range
            plan.wrong_content_range = plan.wrong_content_range or int(rule.wrong_content_range)
            plan.rate_bps = plan.rate_bps or rule.rate_bps
            plan.rate_burst = plan.rate_burst if plan.rate_burst is not None else rule.rate_burst
            plan.short_body = plan.short_body or rule.short_body
            plan.flip_per_body = plan.flip_per_body or rule.flip_per_body
            plan.claim_extra = plan.claim_extra or rule.claim_extra
    return plan


@dataclass
class Stats:
    """What the server did, per relative path. Read it from tests; ``reset()`` between phases."""

    requests: Counter = field(default_factory=Counter)  # all methods, including faulted ones
    bytes_sent: Counter = field(default_factory=Counter)  # body bytes written (exact once a client
    #   has read a body's last byte; use wait_idle() after a client gave up mid-body)
    ranges: dict = field(default_factory=dict)  # path -> [(start, end_inclusive)] of bodies begun
    statuses: dict = field(default_factory=dict)  # path -> [status code] in order
    connections: int = 0  # open right now
    peak_connections: int = 0
    in_flight: int = 0  # requests being answered right now
    _lock: Any = field(default_factory=threading.Condition, repr=False)

    def reset(self) -> None:
        """Zero every counter (open connections stay counted)."""
        with self._lock:
            self.requests.clear()
            self.bytes_sent.clear()
            self.ranges.clear()
            self.statuses.clear()
            self.peak_connections = self.connections

    def wait_idle(self, timeout: float = 5.0) -> bool:
        """Wait until no request is being answered (e.g. after a client gave up mid-body)."""
        with self._lock:
            return self._lock.wait_for(lambda: self.in_flight == 0, timeout)

    def _count(self, rel: str) -> int:
        with self._lock:
            before = self.requests[rel]
            self.requests[rel] += 1
            self.in_flight += 1
            return before

    def _done(self) -> None:
        with self._lock:
            self.in_flight -= 1
            self._lock.notify_all()

    def _status(self, rel: str, code: int, span: tuple[int, int] | None) -> None:
        with self._lock:
            self.statuses.setdefault(rel, []).append(code)
            if span is not None:
                self.ranges.setdefault(rel, []).append(span)

    def _sent(self, rel: str, n: int) -> None:
        with self._lock:
            self.bytes_sent[rel] += n

    def _open(self, delta: int) -> None:
        with self._lock:
            self.connections += delta
            self.peak_connections = max(self.peak_connections, self.connections)


class _Aborted(Exception):
    """The response was cut on purpose (reset, short body, server stopping)."""


class _Bucket:
    """Token bucket for one connection; waits on the stop event so stop() is never delayed."""

    def __init__(self, rate: float, burst: int | None = None):
        self.rate = rate
        self.capacity = max(16 * 1024, int(rate / 50))
        self.tokens = float(self.capacity if burst is None else min(burst, self.capacity))
        self.last = time.monotonic()

    def take(self, n: int, stop: threading.Event) -> None:
        while True:
            now = time.monotonic()
            self.tokens = min(self.capacity, self.tokens + (now - self.last) * self.rate)
            self.last = now
            if self.tokens >= n:
                self.tokens -= n
                return
            if stop.wait((n - self.tokens) / self.rate):
                raise _Aborted("server stopping")


def _parse_range(header: str, size: int) -> tuple[int, int] | str | None:
    """(start, end) inclusive, "unsatisfiable", or None to ignore the header (RFC 9110 §14.2)."""
    unit, _, spec = header.partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None  # other units and multi-range: a full 200 is a valid answer
    first, dash, last = spec.strip().partition("-")
    if not dash:
        return None
    try:
        if first == "":
            n = int(last)
            if n <= 0 or size == 0:
                return "unsatisfiable"
            return max(0, size - n), size - 1
        start = int(first)
        end = int(last) if last else size - 1
    except ValueError:
        return None
    if start >= size and (not last or end >= start):
        return "unsatisfiable"
    if end < start:
        return None
    return start, min(end, size - 1)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: "_Server"

    def setup(self) -> None:
        super().setup()
        # Headers and body go out in separate sends; without NODELAY, Nagle + delayed ACK add 40 ms.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.bucket: _Bucket | None = None
        self.server.track(self.connection, +1)

    def finish(self) -> None:
        try:
            super().finish()
        except OSError:
            pass
        finally:
            self.server.track(self.connection, -1)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        pass  # quiet tests; stats hold what tests need

    def flush_headers(self) -> None:
        rate = getattr(self, "_header_rate", None)
        if not rate or not getattr(self, "_headers_buffer", None):
            return super().flush_headers()
        data = b"".join(self._headers_buffer)
        self._headers_buffer = []
        for k in range(len(data)):  # a tarpit: one byte at a time, never silent long enough to time out
            if self.server.stop_event.wait(1.0 / rate):
                raise _Aborted("server stopping")
            try:
                self.wfile.write(data[k:k + 1])
                self.wfile.flush()
            except OSError as exc:
                raise _Aborted(f"client went away: {exc}") from exc

    def do_HEAD(self) -> None:
        self._serve(head=True)

    def do_GET(self) -> None:
        self._serve(head=False)

    # -- request -> response -------------------------------------------------------------------

    def _serve(self, head: bool) -> None:
        srv = self.server
        rel = urllib.parse.unquote(urllib.parse.urlsplit(self.path).path).lstrip("/")
        before = srv.stats._count(rel)
        try:
            plan = _plan(list(srv.faults), rel, self.command, before)
            self._header_rate = plan.header_rate_bps
            if plan.latency and srv.stop_event.wait(plan.latency):
                raise _Aborted("server stopping")
            if plan.status is not None:
                code, headers = plan.status
                reason = self.responses.get(code, ("",))[0]
                body = HTML_ERROR_PAGE if code == 200 else f"{code} {reason}\n".encode()
                return self._simple(rel, code, body, head, headers)
            path = srv.resolve(rel)
            try:
                # Open before stat: a test may swap files on disk while we serve.
                fh = open(plan.replacement if plan.replaced and plan.replacement else path, "rb")
            except (FileNotFoundError, TypeError):  # TypeError: path is None
                return self._simple(rel, 404, b"404 Not Found\n", head, {})
            with fh:
                self._file(rel, fh, plan, head)
        except _Aborted:
            self.close_connection = True
        finally:
            srv.stats._done()

    def _simple(self, rel: str, code: int, body: bytes, head: bool, headers: dict) -> None:
        srv = self.server
        self.send_response(code)
        headers = {"Content-Type": "text/plain; charset=utf-8", **headers}
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        srv.stats._status(rel, code, None)
        if not head:
            self.wfile.write(body)

    def _file(self, rel: str, fh, plan: Plan, head: bool) -> None:
        st = os.fstat(fh.fileno())
        size, xor, mtime = st.st_size, 0, st.st_mtime
        etag = f'"{st.st_size:x}-{st.st_mtime_ns:x}"'
        if plan.etag_per_request:
            etag = f'"{st.st_size:x}-{st.st_mtime_ns:x}-{time.monotonic_ns():x}"'
        if plan.replaced:
            if plan.replacement is None:
                xor, etag = 0x55, f'"{st.st_size:x}-{st.st_mtime_ns:x}-x55"'
            else:
                etag = f'"{st.st_size:x}-{st.st_mtime_ns:x}-r"'
            mtime += 3600  # a distinct Last-Modified, so a date If-Range no longer matches
        last_modified = email.utils.formatdate(mtime, usegmt=True)

        span: tuple[int, int] | None = None
        header = self.headers.get("Range")
        if header and not plan.ignore_range and self._if_range_matches(etag, last_modified):
            parsed = _parse_range(header, size)
            if parsed == "unsatisfiable":
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{size}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                self.server.stats._status(rel, 416, None)
                return
            span = parsed  # None: header ignored, full body
        if span is not None and plan.wrong_content_range:
            span = self._shift(span, plan.wrong_content_range, size)
        start, end = span if span is not None else (0, size - 1)
        length = end - start + 1

        self.send_response(206 if span is not None else 200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(length))
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("ETag", etag)
        self.send_header("Last-Modified", last_modified)
        if span is not None:  # a lying total (claim_extra) still serves the real file's bytes
            self.send_header("Content-Range", f"bytes {start}-{end}/{max(0, size + plan.claim_extra)}")
        self.end_headers()
        self.server.stats._status(rel, 206 if span is not None else 200, None if head else (start, end))
        if not head and length > 0:
            self._body(rel, fh, start, length, plan, xor)

    def _if_range_matches(self, etag: str, last_modified: str) -> bool:
        value = self.headers.get("If-Range")
        if value is None:
            return True
        value = value.strip()
        if value.startswith('"') or value.startswith("W/"):
            return value == etag  # strong comparison: weak tags never match
        return value == last_modified

    @staticmethod
    def _shift(span: tuple[int, int], by: int, size: int) -> tuple[int, int]:
        start, end = span
        length = end - start + 1
        new = start + by if start + by + length <= size else start - by
        new = min(max(0, new), max(0, size - length))
        return new, new + length - 1

    # -- body writing --------------------------------------------------------------------------

    def _body(self, rel: str, fh, start: int, length: int, plan: Plan, xor: int) -> None:
        """Send [start, start+length) in segments split at the stall and cut points."""
        cut, cut_kind = length, None
        if plan.short_body:
            cut, cut_kind = length // 2, "short"
        if plan.reset_after is not None and plan.reset_after < cut:
            cut, cut_kind = plan.reset_after, "reset"
        stall = plan.stall_after if plan.stall_after is not None and plan.stall_after < cut else None
        if plan.flip_per_body:
            plan = dataclasses.replace(plan, corrupt=plan.corrupt | {start + random.randrange(length)})
        sent = 0
        if stall is not None:
            sent += self._segment(rel, fh, start, stall, plan, xor)
            self.wfile.flush()
            if self.server.stop_event.wait(plan.stall_seconds):
                raise _Aborted("server stopping")
        sent += self._segment(rel, fh, start + sent, cut - sent, plan, xor)
        if cut_kind == "reset":
            self._reset(rel)
        if cut_kind is not None:
            raise _Aborted(cut_kind)

    def _segment(self, rel: str, fh, offset: int, count: int, plan: Plan, xor: int) -> int:
        """Send ``count`` file bytes from ``offset``; returns how many went out."""
        if count <= 0:
            return 0
        rate = plan.rate_bps
        if rate and (self.bucket is None or self.bucket.rate != rate):
            self.bucket = _Bucket(rate, plan.rate_burst)
        # about ten sends a second, so a slow rate trickles instead of going silent between bursts
        step = max(1, min(CHUNK, self.bucket.capacity, int(rate / 10))) if rate else CHUNK
        python_write = bool(xor or plan.corrupt)
        stats, done = self.server.stats, 0
        while done < count:
            n = min(step, count - done)
            if rate:
                self.bucket.take(n, self.server.stop_event)
            # Count before sending, correct after: once the client holds the last byte, the
            # counter is already exact, so tests can read it without waiting for this thread.
            stats._sent(rel, n)
            wrote = 0
            try:
                if python_write:
                    raw = os.pread(fh.fileno(), n, offset + done)
                    chunk = self._transform(raw, offset + done, plan, xor)
                    self.wfile.write(chunk)
                    wrote = len(chunk)
                else:
                    # A blocking sendfile returns short only when interrupted; slices keep the
                    # counters moving while a big body is in flight.
                    wrote = os.sendfile(self.connection.fileno(), fh.fileno(), offset + done, n)
            except OSError as exc:
                raise _Aborted(f"client went away: {exc}") from exc
            finally:
                if wrote != n:
                    stats._sent(rel, wrote - n)
            if wrote == 0:
                raise _Aborted("file shrank while serving")
            done += wrote
        return done

    @staticmethod
    def _transform(data: bytes, offset: int, plan: Plan, xor: int) -> bytes:
        buf = bytearray(data)
        if xor:
            buf = bytearray(b ^ xor for b in buf) if len(buf) < 4096 else _xor_bytes(buf, xor)
        for pos in plan.corrupt:
            if offset <= pos < offset + len(buf):
                buf[pos - offset] ^= 0xFF
        return bytes(buf)

    def _reset(self, rel: str) -> None:
        """Close with SO_LINGER 0 so the kernel sends RST instead of FIN. What it still held unsent (or unacked)
        is discarded, never reaching the client: it is taken off `bytes_sent` (Linux: bytes not yet sent)."""
        conn = self.connection
        try:
            self.wfile.flush()
            queued = struct.unpack("i", fcntl.ioctl(conn.fileno(), SIOCOUTQNSD, b"\0\0\0\0"))[0]
            self.server.stats._sent(rel, -queued)
        except OSError:
            pass
        try:
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
        conn.close()
        self.rfile.close()  # drop makefile's reference so the fd really closes now


def _xor_bytes(buf: bytearray, key: int) -> bytearray:
    # int.from_bytes turns a per-byte Python loop into one big-int XOR: fast enough for tests.
    n = len(buf)
    mask = int.from_bytes(bytes([key]) * n, "little")
    return bytearray((int.from_bytes(buf, "little") ^ mask).to_bytes(n, "little"))


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    block_on_close = False
    request_queue_size = 128

    def __init__(self, addr, root: Path, faults: list[Faults]):
        self.root = root.resolve()
        self.faults = faults
        self.stats = Stats()
        self.stop_event = threading.Event()
        self.errors: list[str] = []
        self.live: set[socket.socket] = set()
        self.live_lock = threading.Condition()
        super().__init__(addr, _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind calls getfqdn(), which can hang on hosts without working DNS.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]

    def resolve(self, rel: str) -> Path | None:
        """The file for a relative URL path, or None (missing, a directory, or outside root)."""
        if not rel or "\x00" in rel or any(part == ".." for part in rel.split("/")):
            return None
        path = (self.root / rel).resolve()
        if not path.is_relative_to(self.root) or not path.is_file():
            return None
        return path

    def track(self, conn: socket.socket, delta: int) -> None:
        with self.live_lock:
            (self.live.add if delta > 0 else self.live.discard)(conn)
            self.live_lock.notify_all()
        self.stats._open(delta)

    def handle_error(self, request, client_address) -> None:
        exc = sys.exc_info()[1]
        if isinstance(exc, (ConnectionError, TimeoutError)) or self.stop_event.is_set():
            return  # clients hanging up, or our own stop(): expected in fault tests
        self.errors.append("".join(traceback.format_exception(exc)))
        traceback.print_exception(exc)


class FaultServer:
    """Serve ``root`` on ``host:port`` (0 = a free port) with optional fault rules."""

    def __init__(self, root: Path, *, faults: Faults | list[Faults] | None = None,
                 host: str = "127.0.0.1", port: int = 0):
        rules = [] if faults is None else [faults] if isinstance(faults, Faults) else list(faults)
        self._server = _Server((host, port), Path(root), rules)
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """Base URL with a trailing slash, e.g. ``http://127.0.0.1:41234/``."""
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/"

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    @property
    def root(self) -> Path:
        return self._server.root

    @property
    def faults(self) -> list[Faults]:
        """The live rule list; mutate rules in place or use ``set_faults``."""
        return self._server.faults

    @property
    def stats(self) -> Stats:
        return self._server.stats

    @property
    def errors(self) -> list[str]:
        """Tracebacks of unexpected server-side exceptions (a test should assert this is empty)."""
        return self._server.errors

    def url_for(self, rel: str) -> str:
        """The URL of a file given by its path relative to ``root``."""
        return self.url + urllib.parse.quote(str(rel).lstrip("/"))

    def set_faults(self, *rules: Faults) -> None:
        """Replace all fault rules (no arguments: serve normally)."""
        self._server.faults[:] = rules

    def start(self) -> "FaultServer":
        """Start serving in a daemon thread; returns self."""
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                name=f"FaultServer:{self.port}", daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout: float = 1.0) -> None:
        """Stop promptly: wake stalls and rate waits, cut open connections, close the socket."""
        srv = self._server
        if srv.stop_event.is_set():
            return
        srv.stop_event.set()
        if self._thread is not None:
            srv.shutdown()
            self._thread.join(timeout)
        with srv.live_lock:
            for conn in list(srv.live):
                try:
                    conn.shutdown(socket.SHUT_RDWR)  # wakes a thread blocked in send/recv
                except OSError:
                    pass
            srv.live_lock.wait_for(lambda: not srv.live, timeout)
        srv.server_close()

    def __enter__(self) -> "FaultServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
