"""What the transfer engine accepts from a mirror: HTTP(S) through requests, and file:// mirrors.

Every response is checked: 206 with a Content-Range equal to the request and the known total, 200 only where a
full body was asked for, no HTML error pages, If-Range on every ranged request so a file replaced on the server
answers 200 (detected) instead of splicing new bytes onto old ones. Failures are sorted into `Transient` (retry,
maybe elsewhere) and `Permanent` (drop this mirror for this resource); `Changed` is a Permanent that the engine
re-checks first (a mirror whose ETag changes on every request has no usable validator, not a new file).

A watchdog bounds the time to the status line and headers (a tarpit that sends one byte a second never trips a
read timeout) and lets the engine cut the connections of its workers when it stops (`cancel`).

requests and urllib3 are imported at the first HTTP(S) request, not with this module: urllib3's import opens an
IPv6 socket (its HAS_IPV6 probe), and an install from local files (`--from`, a pack on an offline node) opens none.
"""
from __future__ import annotations

import email.utils
import errno
import os
import re
import socket
import threading
import time
from contextlib import contextmanager
from urllib.parse import urlparse

from zoo.manifest import MAX_NUMBER
from zoo.mirrors import is_local, local_slice
from zoo.transfer.mirror import Mirror

USER_AGENT = "mmf-zoo/0.1 (+https://github.com/facebookresearch/mmf compatible)"
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")
_local = threading.local()


class Transient(Exception):
    def __init__(self, msg: str, retry_after: float | None = None):
        super().__init__(msg)
        self.retry_after = retry_after


class Permanent(Exception):
    pass


class Unreachable(Transient):
    """The host was never reached: its name does not resolve, it refused the connection, there is no route to it,
    or it did not accept one within --connect-timeout. On a mirror that has never answered in this process a retry
    does not help (the pool drops it at once); on one that has, it is an ordinary transient failure."""

    def __init__(self, msg: str, host: str):
        super().__init__(msg)
        self.host = host


class Changed(Permanent):
    """The mirror's validator differs from the one the transfer uses (replaced file, or an unstable ETag)."""


class Slow(Transient):
    """The connection delivers less than --min-rate."""


# ---- watchdog: header deadline and cancellation ----------------------------------------------------------------
_reg = threading.Lock()
_socks: dict[int, socket.socket] = {}  # thread -> socket of the request it is making or reading
_deadlines: dict[int, float] = {}  # thread -> when its status line and headers must have arrived
_fired: set[int] = set()
_watchdog: threading.Thread | None = None


def _shut(sock) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)  # wakes the thread blocked in recv; urllib3 then discards the connection
    except (OSError, AttributeError):
        pass


def _watch() -> None:
    while True:
        time.sleep(0.1)
        now = time.monotonic()
        with _reg:
            late = [tid for tid, t in _deadlines.items() if t < now]
            for tid in late:
                _deadlines.pop(tid, None)
                _fired.add(tid)
                _shut(_socks.get(tid))


class _Watched:
    def getresponse(self, *args, **kwargs):
        global _watchdog
        tid, limit = threading.get_ident(), getattr(_local, "header_timeout", None)
        with _reg:
            _socks[tid] = self.sock
            if limit:
                _deadlines[tid] = time.monotonic() + limit
            if _watchdog is None:
                _watchdog = threading.Thread(target=_watch, name="zoo-http-watchdog", daemon=True)
                _watchdog.start()
        try:
            return super().getresponse(*args, **kwargs)
        finally:
            with _reg:
                _deadlines.pop(tid, None)


_pools: dict | None = None  # scheme -> urllib3 pool class whose connections the watchdog sees (built on first use)


def _pool_classes() -> dict:
    global _pools
    if _pools is None:
        import urllib3
        from urllib3.connection import HTTPConnection, HTTPSConnection

        class _Conn(_Watched, HTTPConnection):
            pass

        class _SConn(_Watched, HTTPSConnection):
            pass

        class _Pool(urllib3.HTTPConnectionPool):
            ConnectionCls = _Conn

        class _SPool(urllib3.HTTPSConnectionPool):
            ConnectionCls = _SConn

        _pools = {"http": _Pool, "https": _SPool}
    return _pools


def _release() -> None:
    tid = threading.get_ident()
    with _reg:
        _socks.pop(tid, None)
        _fired.discard(tid)


def cancel(threads) -> None:
    """Cut the connection each of these threads is using now (the engine stopping: Ctrl-C, or done)."""
    with _reg:
        for tid in threads:
            _shut(_socks.get(tid))


def session():
    """One requests.Session per thread (requests' Session is not thread-safe); keep-alive across chunks."""
    s = getattr(_local, "session", None)
    if s is None:
        import requests

        s = requests.Session()
        s.headers.update({"User-Agent": USER_AGENT, "Accept-Encoding": "identity"})
        adapter = requests.adapters.HTTPAdapter(pool_connections=4, pool_maxsize=4, max_retries=0)
        adapter.poolmanager.pool_classes_by_scheme = dict(_pool_classes())
        s.mount("http://", adapter)
        s.mount("https://", adapter)
        _local.session = s
    return s


def _retry_after(resp) -> float | None:
    value = resp.headers.get("Retry-After")
    try:
        return min(float(value), 300.0) if value is not None else None
    except ValueError:
        return None


def _check_status(resp, m: Mirror) -> None:
    code = resp.status_code
    if code in (404, 410):
        raise Permanent(f"HTTP {code}: not on this mirror")
    if code in (401, 403):
        raise Permanent(f"HTTP {code}: access denied")
    if code == 416:
        raise Permanent("HTTP 416: range not satisfiable (the mirror has a different size)")
    if code == 429 or code >= 500:
        raise Transient(f"HTTP {code}", _retry_after(resp))
    if code not in (200, 206):
        raise Permanent(f"HTTP {code}")
    if "text/html" in resp.headers.get("Content-Type", "").lower():
        raise Permanent(f"HTTP {code} with an HTML page instead of the file (error page or login portal)")


def _validator(resp, m: Mirror) -> str | None:
    etag = resp.headers.get("ETag")
    if etag and not etag.startswith("W/") and not m.unstable:  # If-Range needs a strong validator
        return etag
    return resp.headers.get("Last-Modified")


def _get(m: Mirror, headers: dict, opts):
    import requests

    host = _netloc(m.url)
    known = unreachable_cause(host)
    if known:  # another resource's mirror on this host was just found unreachable: do not wait for it again
        raise Unreachable(known, host)
    _local.header_timeout = opts.stall_timeout  # status line + headers, in total (see _watch)
    try:
        resp = session().get(m.url, headers=headers, stream=True, allow_redirects=True,
                             timeout=(opts.connect_timeout, opts.stall_timeout))
    except requests.exceptions.InvalidURL as exc:
        _release()
        raise Permanent(f"invalid URL: {exc}") from None
    except (requests.RequestException, OSError) as exc:
        fired = threading.get_ident() in _fired
        _release()
        if fired:
            raise Slow(f"headers not complete after {opts.stall_timeout:g}s (a tarpit?)") from None
        cause = _unreachable(exc, m.url, opts)
        if cause and host not in _answered:
            _unreachable_hosts[host] = (cause, time.monotonic())
            raise Unreachable(cause, host) from None
        raise Transient(cause or _short(exc)) from None  # a host that answered before: worth retrying
    _answered.add(host)
    _unreachable_hosts.pop(host, None)
    return resp


# ---- classified network failures ---------------------------------------------------------------------------
UNREACHABLE_TTL = 60.0  # seconds a host found unreachable is not tried again by other resources of the fetch
_unreachable_hosts: dict[str, tuple[str, float]] = {}  # netloc -> (cause, when)
_answered: set[str] = set()  # netlocs that answered in this process: a failure there is transient
_said: set[str] = set()  # netlocs whose unreachability was reported


def _netloc(url: str) -> str:
    return urlparse(url).netloc.lower()


def first_report(host: str) -> bool:
    """True the first time a host's unreachability is reported in this process (it is said once, not per file)."""
    with _reg:
        if host in _said:
            return False
        _said.add(host)
        return True


def unreachable_cause(host: str) -> str | None:
    """Why `host` (a netloc) was found unreachable within the last UNREACHABLE_TTL seconds, or None."""
    found = _unreachable_hosts.get(host)
    if found is None or time.monotonic() - found[1] > UNREACHABLE_TTL or host in _answered:
        return None
    return found[0]


def _chain(exc: BaseException):
    """The exception and everything it wraps (requests -> urllib3 -> socket), each once."""
    seen, todo = set(), [exc]
    while todo:
        e = todo.pop(0)
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        todo += [e.__cause__, e.__context__, getattr(e, "reason", None)]
        todo += [a for a in getattr(e, "args", ()) if isinstance(a, BaseException)]


def _unreachable(exc: BaseException, url: str, opts) -> str | None:
    """The cause in words when the host was never reached (see `Unreachable`), else None."""
    import requests
    import urllib3

    parsed = urlparse(url)
    host, where = parsed.hostname or "?", parsed.netloc
    chain = list(_chain(exc))
    for e in chain:  # the socket's own error first: urllib3's NewConnectionError is also a ConnectTimeoutError
        if isinstance(e, socket.gaierror):
            return f"cannot resolve {host} ({e.strerror or e})"
        if isinstance(e, ConnectionRefusedError):
            return f"{where} refused the connection (nothing listens there)"
        if isinstance(e, OSError) and e.errno in (errno.ENETUNREACH, errno.EHOSTUNREACH):
            return f"no route to {host} ({e.strerror})"
    if any(isinstance(e, urllib3.exceptions.NameResolutionError) for e in chain):
        return f"cannot resolve {host}"
    if any(isinstance(e, (urllib3.exceptions.ConnectTimeoutError, requests.exceptions.ConnectTimeout))
           and "timed out" in str(e).lower() for e in chain):
        return f"{where} did not accept a connection within {opts.connect_timeout:g}s"
    return None


_PRIVATE = re.compile(r"\b_?S?(?:Pool|Conn)\(host='?([^',)]*)'?, port=(\d+)\):? ?")


def _short(exc: BaseException) -> str:
    """One clause for a failure: no library class names, no URL cut in the middle."""
    text = str(exc)
    if "timed out" in text.lower():
        return "stalled (no data within --stall-timeout)"
    if "reset" in text.lower() or "aborted" in text.lower():
        return "connection reset"
    if "refused" in text.lower():
        return "connection refused"
    inner = [e for e in _chain(exc) if isinstance(e, OSError) and e.strerror]
    if inner:
        return inner[-1].strerror
    text = _PRIVATE.sub(lambda mo: f"{mo.group(1)}:{mo.group(2)}: ", text)
    return text if len(text) <= 200 else text[:200].rsplit(" ", 1)[0] + " ..."


SAMPLE = 4096  # first bytes read by a probe: enough to tell an archive from an HTML page by content


def _modified(resp) -> float | None:
    try:
        return email.utils.parsedate_to_datetime(resp.headers["Last-Modified"]).timestamp()
    except (KeyError, TypeError, ValueError):
        return None


def probe(m: Mirror, opts) -> None:
    """Learn size, validator, Range support and the first bytes (`m.head`) of a mirror with one ranged GET."""
    if is_local(m.url):
        path, offset, length = local_slice(m.url)
        try:
            st = os.stat(path)
        except FileNotFoundError:
            raise Permanent(f"{path} does not exist") from None
        except OSError as exc:
            raise Permanent(f"{path}: {exc.strerror}") from None
        size = st.st_size - offset if length is None else length
        m.size, m.validator, m.ranges = size, f"{st.st_size}-{st.st_mtime_ns}", True
        m.modified = st.st_mtime
        with open(path, "rb") as f:
            f.seek(offset)
            m.head = f.read(min(SAMPLE, size))
        return
    resp = _get(m, {"Range": f"bytes=0-{SAMPLE - 1}"}, opts)
    try:
        _check_status(resp, m)
        m.validator, m.modified = _validator(resp, m), _modified(resp)
        if resp.status_code == 206:
            match = _CONTENT_RANGE.fullmatch(resp.headers.get("Content-Range", "").strip())
            if not match or match.group(3) == "*" or int(match.group(1)) != 0:
                raise Permanent(f"bad Content-Range {resp.headers.get('Content-Range')!r} for bytes=0-{SAMPLE - 1}")
            m.size, m.ranges = int(match.group(3)), True
            want = int(match.group(2)) + 1
        else:
            length = resp.headers.get("Content-Length")
            if length is None:
                raise Permanent("ignores Range and sends no Content-Length: size unknown")
            m.size, m.ranges = int(length), False
            want = min(SAMPLE, m.size)
        m.head = read_exactly(_HttpStream(resp), want, opts)
    finally:
        resp.close()
        _release()


def check_validator(m: Mirror, opts) -> None:
    """After `probe`: ask again with a HEAD; an ETag that already changed marks the mirror unstable (validator
    Last-Modified, or none), so no ranged request is sent with an If-Range that can never match."""
    if is_local(m.url) or not m.validator or m.unstable:
        return
    import requests

    try:
        resp = session().head(m.url, allow_redirects=True, timeout=(opts.connect_timeout, opts.stall_timeout))
    except (requests.RequestException, OSError):
        return
    try:
        etag = resp.headers.get("ETag")
        if resp.status_code in (200, 206) and etag and etag != m.validator and not etag.startswith("W/"):
            m.unstable = True
            m.validator = _validator(resp, m)
    finally:
        resp.close()
        _release()


def read_exactly(stream, want: int, opts) -> bytes:
    """`want` bytes from a stream, or Transient (closed early, or slower than a tarpit's pace)."""
    head, t0 = bytearray(), time.monotonic()
    while len(head) < want:
        block = stream.read(want - len(head))
        if not block:
            raise Transient("connection closed during the probe")
        head += block
        if time.monotonic() - t0 > opts.stall_timeout:
            raise Slow(f"{len(head)} bytes in {opts.stall_timeout:g}s while probing (a tarpit?)")
    return bytes(head)


class _LocalStream:
    def __init__(self, path, start: int, end: int):
        self.f = open(path, "rb")
        self.f.seek(start)
        self.left = end - start + 1

    def read(self, n: int) -> bytes:
        data = self.f.read(min(n, self.left))
        self.left -= len(data)
        return data

    def close(self) -> None:
        self.f.close()


class _HttpStream:
    def __init__(self, resp):
        self.resp = resp

    def read(self, n: int) -> bytes:
        try:
            # read1 returns what has arrived instead of waiting for n bytes, so a reset loses nothing received
            raw = self.resp.raw
            return raw.read1(n) if hasattr(raw, "read1") else raw.read(n)
        except Exception as exc:  # urllib3 / http.client raise many types for one broken connection
            raise Transient(_short(exc)) from None

    def close(self) -> None:
        self.resp.close()


def _same_file(m: Mirror, resp) -> None:
    new = _validator(resp, m)
    if m.validator and new and new != m.validator:
        raise Changed(f"file changed on this mirror during the transfer (validator {m.validator} -> {new})")


@contextmanager
def open_range(m: Mirror, start: int, end: int, opts):
    """A stream of exactly bytes start..end (inclusive) of the mirror's file."""
    if is_local(m.url):
        path, offset, _ = local_slice(m.url)
        try:
            stream = _LocalStream(path, offset + start, offset + end)
        except OSError as exc:
            raise Permanent(f"{path}: {exc.strerror or exc}") from None
        try:
            yield stream
        finally:
            stream.close()
        return
    headers = {"Range": f"bytes={start}-{end}"}
    if m.validator:
        headers["If-Range"] = m.validator
    resp = _get(m, headers, opts)
    try:
        _check_status(resp, m)
        if resp.status_code == 200:
            if m.validator:
                raise Changed("answered 200 to If-Range: the file changed on this mirror during the transfer")
            raise Permanent("stopped honouring Range requests")
        cr = resp.headers.get("Content-Range", "").strip()
        match = _CONTENT_RANGE.fullmatch(cr)
        if not match or (int(match.group(1)), int(match.group(2))) != (start, end) or \
                (match.group(3) != "*" and m.size is not None and int(match.group(3)) != m.size):
            raise Permanent(f"wrong Content-Range {cr!r} for bytes={start}-{end}/{m.size}")
        _same_file(m, resp)
        yield _HttpStream(resp)
    finally:
        resp.close()
        _release()


@contextmanager
def open_full(m: Mirror, opts):
    """The whole file as one stream (for mirrors that ignore Range)."""
    if is_local(m.url):
        with open_range(m, 0, m.size - 1, opts) as s:
            yield s
        return
    resp = _get(m, {}, opts)
    try:
        _check_status(resp, m)
        if int(resp.headers.get("Content-Length", -1)) != m.size:
            raise Permanent(f"Content-Length {resp.headers.get('Content-Length')} differs from {m.size}")
        _same_file(m, resp)
        yield _HttpStream(resp)
    finally:
        resp.close()
        _release()


def discard(stream, n: int) -> None:
    while n > 0:
        data = stream.read(min(n, 1 << 20))
        if not data:
            raise Transient("connection closed early")
        n -= len(data)


def head(url: str, timeout: float) -> tuple[int | None, str | None]:
    """(size, validator) a server states for `url` in answer to one HEAD, or (None, None): for sizes shown before a
    fetch, never trusted by one. `timeout` bounds the connect, the headers (the watchdog: a tarpit that drips
    them does not hold the caller) and each read; a Content-Length that is not a plain number is no size."""
    import requests

    _local.header_timeout = timeout
    try:
        resp = session().head(url, allow_redirects=True, timeout=(timeout, timeout))
    except (requests.RequestException, OSError):
        return None, None
    finally:
        _release()
    with resp:
        length = resp.headers.get("Content-Length", "")
        digits = (length.lstrip("0") or "0") if length.isascii() and length.isdigit() else ""
        if resp.status_code != 200 or "text/html" in resp.headers.get("Content-Type", "").lower() \
                or not digits or len(digits) > len(str(MAX_NUMBER)) or int(digits) > MAX_NUMBER:
            return None, None
        return int(digits), resp.headers.get("ETag") or resp.headers.get("Last-Modified")
