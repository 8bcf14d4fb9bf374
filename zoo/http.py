"""What the transfer engine accepts from a mirror: HTTP(S) through requests, and file:// mirrors.

Every response is checked: 206 with a Content-Range equal to the request and the known total, 200 only where a
full body was asked for, no HTML error pages, If-Range on every ranged request so a file replaced on the server
answers 200 (detected) instead of splicing new bytes onto old ones. Failures are sorted into `Transient` (retry,
maybe elsewhere) and `Permanent` (drop this mirror for this resource).
"""
from __future__ import annotations

import os
import re
import threading
from contextlib import contextmanager

import requests

from zoo.mirrors import Mirror, is_local, local_slice

USER_AGENT = "mmf-zoo/0.1 (+https://github.com/facebookresearch/mmf compatible)"
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")
_local = threading.local()


class Transient(Exception):
    def __init__(self, msg: str, retry_after: float | None = None):
        super().__init__(msg)
        self.retry_after = retry_after


class Permanent(Exception):
    pass


def session() -> requests.Session:
    """One Session per thread (requests' Session is not thread-safe); keep-alive across chunks."""
    s = getattr(_local, "session", None)
    if s is None:
        s = requests.Session()
        s.headers.update({"User-Agent": USER_AGENT, "Accept-Encoding": "identity"})
        adapter = requests.adapters.HTTPAdapter(pool_connections=4, pool_maxsize=4, max_retries=0)
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


def _validator(resp) -> str | None:
    etag = resp.headers.get("ETag")
    if etag and not etag.startswith("W/"):  # If-Range needs a strong validator
        return etag
    return resp.headers.get("Last-Modified")


def _get(m: Mirror, headers: dict, opts):
    try:
        return session().get(m.url, headers=headers, stream=True, allow_redirects=True,
                             timeout=(opts.connect_timeout, opts.stall_timeout))
    except requests.exceptions.InvalidURL as exc:
        raise Permanent(f"invalid URL: {exc}") from None
    except (requests.RequestException, OSError) as exc:
        raise Transient(_short(exc)) from None


def _short(exc: BaseException) -> str:
    text = str(exc)
    if "timed out" in text.lower():
        return "stalled (no data within --stall-timeout)"
    if "reset" in text.lower() or "aborted" in text.lower():
        return "connection reset"
    if "refused" in text.lower():
        return "connection refused"
    return f"{type(exc).__name__}: {text[:120]}"


def probe(m: Mirror, opts) -> None:
    """Learn size, validator and Range support of a mirror with a 1-byte ranged GET."""
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
        return
    resp = _get(m, {"Range": "bytes=0-0"}, opts)
    try:
        _check_status(resp, m)
        m.validator = _validator(resp)
        if resp.status_code == 206:
            match = _CONTENT_RANGE.fullmatch(resp.headers.get("Content-Range", "").strip())
            if not match or match.group(3) == "*":
                raise Permanent(f"bad Content-Range {resp.headers.get('Content-Range')!r} for bytes=0-0")
            m.size, m.ranges = int(match.group(3)), True
        else:
            length = resp.headers.get("Content-Length")
            if length is None:
                raise Permanent("ignores Range and sends no Content-Length: size unknown")
            m.size, m.ranges = int(length), False
    finally:
        resp.close()


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
    new = _validator(resp)
    if m.validator and new and new != m.validator:
        raise Permanent(f"file changed on this mirror during the transfer (validator {m.validator} -> {new})")


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
            raise Permanent("answered 200 to If-Range: the file changed on this mirror during the transfer"
                            if m.validator else "stopped honouring Range requests")
        cr = resp.headers.get("Content-Range", "").strip()
        match = _CONTENT_RANGE.fullmatch(cr)
        if not match or (int(match.group(1)), int(match.group(2))) != (start, end) or \
                (match.group(3) != "*" and m.size is not None and int(match.group(3)) != m.size):
            raise Permanent(f"wrong Content-Range {cr!r} for bytes={start}-{end}/{m.size}")
        _same_file(m, resp)
        yield _HttpStream(resp)
    finally:
        resp.close()


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


def discard(stream, n: int) -> None:
    while n > 0:
        data = stream.read(min(n, 1 << 20))
        if not data:
            raise Transient("connection closed early")
        n -= len(data)
