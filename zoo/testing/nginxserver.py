"""A real nginx on a free loopback port, for tests and the fetch benchmark.

nginx is the reference for "a correct, fast Range server": if the engine and ``FaultServer`` disagree,
nginx settles it. It runs with its own config in a temp prefix (no /etc/nginx), in the foreground::

    with NginxServer(tmp_path, limit_rate="25m") as ng:
        requests.get(ng.url_for("blob.bin"), headers={"Range": "bytes=0-99"})
        ng.access_log()   # ['GET /blob.bin 206 100 "bytes=0-99"']

Note for rate tests: nginx's ``limit_rate`` lets the first second's worth of bytes out at once.
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.parse
from pathlib import Path

_LOG_ERROR = re.compile(r"\[(?:emerg|alert|crit)\] \d+#\d+: (.*)")
_LOG_FORMAT = "'$request_method $uri $status $body_bytes_sent \"$http_range\"'"


class NginxError(RuntimeError):
    """nginx is missing or would not start; the message says why and what to do."""


def find_nginx(explicit: str | os.PathLike | None = None) -> str:
    """Path of the nginx binary: ``explicit``, else ``nginx`` on PATH, else /usr/sbin/nginx."""
    candidates = [str(explicit)] if explicit else [shutil.which("nginx") or "", "/usr/sbin/nginx"]
    for cand in candidates:
        if cand and os.path.isfile(cand) and os.access(cand, os.X_OK):
            return cand
    raise NginxError(
        f"nginx not found (looked for {', '.join(c for c in candidates if c) or 'nginx on PATH'}): "
        "install it with `apt-get install nginx` (only the binary is used; no service is started)")


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _config(prefix: Path, root: Path, host: str, port: int, limit_rate: str | int | None) -> str:
    user = "user root root;\n" if os.geteuid() == 0 else ""  # workers would run as nobody otherwise
    temps = "".join(f"    {kind}_temp_path {prefix / 'tmp' / kind};\n"
                    for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    rate = f"            limit_rate {limit_rate};\n" if limit_rate else ""
    return f"""{user}worker_processes 1;
pid {prefix / 'nginx.pid'};
error_log {prefix / 'error.log'} warn;
events {{ worker_connections 512; }}
http {{
    log_format zoo {_LOG_FORMAT};
    access_log {prefix / 'access.log'} zoo;
{temps}    default_type application/octet-stream;
    types {{ }}
    sendfile on;
    tcp_nopush on;
    tcp_nodelay on;
    keepalive_timeout 65;
    keepalive_requests 100000;
    server {{
        listen {host}:{port};
        root {root};
        autoindex off;
        location / {{
{rate}        }}
    }}
}}
"""


class NginxServer:
    """Run nginx serving ``root`` on ``host:port`` (0 = pick a free port) while the context is open."""

    def __init__(self, root: Path, port: int = 0, *, limit_rate: str | int | None = None,
                 host: str = "127.0.0.1", nginx: str | os.PathLike | None = None,
                 startup_timeout: float = 10.0):
        self.root = Path(root).resolve()
        self.host = host
        self.port = port
        self.limit_rate = limit_rate  # nginx syntax: bytes per second per connection, e.g. 25m
        self.binary = find_nginx(nginx)
        self.startup_timeout = startup_timeout
        self.prefix: Path | None = None
        self.proc: subprocess.Popen | None = None
        self._last_log: list[str] = []

    @property
    def url(self) -> str:
        """Base URL with a trailing slash."""
        return f"http://{self.host}:{self.port}/"

    def url_for(self, rel: str) -> str:
        """The URL of a file given by its path relative to ``root``."""
        return self.url + urllib.parse.quote(str(rel).lstrip("/"))

    def access_log(self) -> list[str]:
        """Lines ``METHOD URI STATUS BODY_BYTES "RANGE"`` (nginx writes each when a request ends)."""
        if self.prefix is None:
            return list(self._last_log)
        path = self.prefix / "access.log"
        return path.read_text().splitlines() if path.exists() else []

    def start(self) -> "NginxServer":
        """Write the config, start nginx, and wait until the port accepts connections."""
        if not self.root.is_dir():
            raise NginxError(f"nginx root {self.root} is not a directory: create it before starting")
        self.prefix = Path(tempfile.mkdtemp(prefix="zoo-nginx-"))
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
            (self.prefix / "tmp" / kind).mkdir(parents=True)
        # A port picked here can be taken before nginx binds it; retry only when we picked it.
        attempts = 5 if self.port == 0 else 1
        wanted = self.port
        for attempt in range(attempts):
            self.port = wanted or _free_port(self.host)
            if self._launch():
                return self
        log_path = self.prefix / "error.log"
        lines = log_path.read_text(errors="replace").splitlines() if log_path.exists() else []
        errors = [m.group(1) for m in map(_LOG_ERROR.search, lines) if m]
        failed = [e for e in errors if "failed" in e]
        why = (failed or errors or ["nothing logged"])[-1]
        self.stop()
        raise NginxError(f"nginx did not start on {self.host}:{self.port} after {attempts} tries "
                         f"({why}): free the port or pass port=0")

    def _launch(self) -> bool:
        conf = self.prefix / "nginx.conf"
        conf.write_text(_config(self.prefix, self.root, self.host, self.port, self.limit_rate))
        (self.prefix / "error.log").unlink(missing_ok=True)
        pidfile = self.prefix / "nginx.pid"
        pidfile.unlink(missing_ok=True)
        # -e: the log used before the config is read (else /var/log/nginx, unwritable as a user).
        self.proc = subprocess.Popen(
            [self.binary, "-c", str(conf), "-p", str(self.prefix), "-e", str(self.prefix / "error.log"),
             "-g", "daemon off;"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True)  # own process group, so stop() can reach the workers too
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.proc = None
                return False
            # nginx writes its pid file only after binding; without this check a port someone
            # else listens on would look like ours.
            if pidfile.exists() and pidfile.read_text().strip() == str(self.proc.pid):
                try:
                    with socket.create_connection((self.host, self.port), timeout=0.5):
                        return True
                except OSError:
                    pass
            time.sleep(0.02)
        self._kill()
        return False

    def _kill(self) -> None:
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()
        self.proc = None

    def stop(self) -> None:
        """SIGQUIT (graceful), then SIGKILL to its process group after 3 s; remove the prefix."""
        if self.proc is not None:
            self.proc.send_signal(signal.SIGQUIT)
            try:
                self.proc.wait(3)
                self.proc = None
            except subprocess.TimeoutExpired:
                self._kill()  # the group: workers of a killed master could linger otherwise
        if self.prefix is not None:
            self._last_log = self.access_log()  # keep it readable after the prefix is gone
            shutil.rmtree(self.prefix, ignore_errors=True)
            self.prefix = None

    def __enter__(self) -> "NginxServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
