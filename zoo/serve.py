"""A small Range-capable HTTP mirror of a folder: `mmf zoo serve DIR` (and the demo's local mirror).

Point it at a folder laid out like the origin (datasets/..., models/...) or at the archive root a pack or
`mmf data synth --archive` wrote, and other machines fetch with `--mirror http://HOST:PORT/`. Single ranges,
ETag / Last-Modified and If-Range are supported; paths cannot leave the folder.
"""
from __future__ import annotations

import email.utils
import os
import re
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlparse

_RANGE = re.compile(r"bytes=(\d*)-(\d*)$")


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "mmf-zoo-serve"

    def log_message(self, fmt, *args):  # quiet: the fetch side reports progress
        if getattr(self.server, "verbose", False):
            super().log_message(fmt, *args)

    def do_HEAD(self):
        self._serve(head=True)

    def do_GET(self):
        self._serve(head=False)

    def _serve(self, head: bool) -> None:
        root: Path = self.server.root
        rel = unquote(urlparse(self.path).path).lstrip("/")
        path = (root / rel).resolve()
        if not path.is_relative_to(root) or not path.is_file():
            return self._plain(404, b"not found\n", head)
        st = path.stat()
        size = st.st_size
        etag = f'"{st.st_size:x}-{st.st_mtime_ns:x}"'
        last_mod = email.utils.formatdate(st.st_mtime, usegmt=True)
        start, end, code = 0, size - 1, 200
        match = _RANGE.match(self.headers.get("Range", "").strip())
        if_range = self.headers.get("If-Range")
        if match and (if_range is None or if_range in (etag, last_mod)):
            a, b = match.groups()
            if a == "" and b == "":
                match = None
            elif a == "":
                start, end = max(0, size - int(b)), size - 1
            else:
                start, end = int(a), min(size - 1, int(b) if b else size - 1)
            if match and start >= size:
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{size}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            code = 206 if match else 200
        self.send_response(code)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("ETag", etag)
        self.send_header("Last-Modified", last_mod)
        self.send_header("Content-Length", str(end - start + 1))
        if code == 206:
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.end_headers()
        if head:
            return
        with open(path, "rb") as f:
            try:
                sent, left = 0, end - start + 1
                while left > 0:
                    n = os.sendfile(self.connection.fileno(), f.fileno(), start + sent, min(left, 8 << 20))
                    if n == 0:
                        break
                    sent, left = sent + n, left - n
            except OSError:  # the client went away mid-body (ConnectionError, EPIPE, ...)
                self.close_connection = True

    def _plain(self, code: int, body: bytes, head: bool) -> None:
        self.send_response(code)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head:
            self.wfile.write(body)


class _Server(ThreadingHTTPServer):
    def handle_error(self, request, client_address) -> None:
        # A client that closes early (the fetch engine does on purpose when it splits or races chunks, and a
        # Ctrl-C does) is normal for a mirror: no traceback. Anything else is still reported.
        if isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            return
        super().handle_error(request, client_address)


class FolderMirror:
    """Serve `root` on host:port in a background thread; use as a context manager."""

    def __init__(self, root: str | Path, host: str = "127.0.0.1", port: int = 0, verbose: bool = False):
        self.httpd = _Server((host, port), _Handler)
        self.httpd.daemon_threads = True
        self.httpd.root = Path(root).resolve()
        self.httpd.verbose = verbose
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="zoo-serve", daemon=True)

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
