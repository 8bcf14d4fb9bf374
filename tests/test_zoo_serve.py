"""`mmf zoo serve` / zoo/serve.py under clients that hang up, idle, trickle (slowloris) or send garbage, and
`mmf zoo fetch` typo suggestions. The server runs as `mmf zoo serve` in a subprocess."""
from __future__ import annotations

import os
import socket
import struct
import subprocess
import sys
import time

import pytest

from tests.zoo_helpers import ROOT, make_zoo, run_mmf


def _rst(sock: socket.socket) -> None:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def test_serve_prints_no_traceback_when_clients_close_early(tmp_path):
    (tmp_path / "big.bin").write_bytes(b"\0" * (32 << 20))
    proc = subprocess.Popen([sys.executable, "-m", "mmfzoo_cli", "zoo", "serve", str(tmp_path), "--port", "0"],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        port = int(line.split("http://127.0.0.1:")[1].split("/")[0])
        for k in range(6):
            s = socket.create_connection(("127.0.0.1", port))
            if k % 2:  # mid-body: ask for the big file, read a little, reset
                s.sendall(b"GET /big.bin HTTP/1.1\r\nHost: x\r\nRange: bytes=0-33554431\r\n\r\n")
                s.recv(65536)
            _rst(s)  # (even k: reset before sending a request at all)
        time.sleep(0.5)
        s = socket.create_connection(("127.0.0.1", port))  # still serving
        s.sendall(b"GET /big.bin HTTP/1.1\r\nHost: x\r\nRange: bytes=0-9\r\nConnection: close\r\n\r\n")
        reply = b""
        while chunk := s.recv(65536):
            reply += chunk
        assert reply.startswith(b"HTTP/1.1 206")
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=10)
    assert "Traceback" not in err and "ConnectionResetError" not in err, err


def test_fetch_suggests_the_nearest_key(tmp_path):
    zoo = make_zoo(tmp_path, key="textvqa", feature_bytes=1 << 10)
    r = run_mmf("zoo", "fetch", "textvqq", "--zoo", str(zoo.manifest), "--data-dir", str(tmp_path / "d"), timeout=60)
    assert r.returncode == 1
    assert "closest: textvqa" in r.stderr, r.stderr


def _start(folder, *options, nofile: int | None = None):
    """`mmf zoo serve FOLDER` in a subprocess (its file limit lowered to `nofile`): (process, port)."""
    def limit():
        import resource

        resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))

    proc = subprocess.Popen([sys.executable, "-m", "mmfzoo_cli", "zoo", "serve", str(folder), "--port", "0", *options],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=limit if nofile else None)
    line = proc.stdout.readline()
    assert "http://127.0.0.1:" in line, proc.communicate(timeout=10)[1]
    return proc, int(line.split("http://127.0.0.1:")[1].split("/")[0])


def _stop(proc) -> str:
    proc.terminate()
    _, err = proc.communicate(timeout=10)
    assert "Traceback" not in err, err
    return err


def _ask(port: int, request: bytes, timeout: float = 10) -> tuple[int, dict, bytes]:
    """Send raw `request` bytes on a new connection; (status, headers, body) of the answer, read to its end."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(request)
        reply = b""
        while b"\r\n\r\n" not in reply and (chunk := s.recv(65536)):
            reply += chunk
        head, _, body = reply.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
        while len(body) < int(headers.get("content-length", 0)) and (chunk := s.recv(65536)):
            body += chunk
    return int(lines[0].split()[1]), headers, body


def _get(path: str, *headers: str) -> bytes:
    return (f"GET {path} HTTP/1.1\r\nHost: x\r\n" + "".join(h + "\r\n" for h in headers)
            + "Connection: close\r\n\r\n").encode("latin-1")


def _closed_by_server(sock: socket.socket, timeout: float) -> bool:
    """Whether the server ends this connection within `timeout` (what it sent before is skipped)."""
    sock.settimeout(timeout)  # (0: is it closed already?)
    try:
        while sock.recv(65536):
            pass
    except (TimeoutError, BlockingIOError):
        return False
    except OSError:  # reset
        pass
    return True


def test_serve_keeps_serving_a_normal_client_under_slowloris(tmp_path):
    """Under `ulimit -n 128`, 300 connections that send nothing, half a request head, or idle after an answer:
    before, the server ran out of descriptors and a normal client got nothing; now, at its connection cap (below
    the file limit) the idlest connections are closed and the normal download goes through at once."""
    data = os.urandom(1 << 20)
    (tmp_path / "a.bin").write_bytes(data)
    proc, port = _start(tmp_path, nofile=128)
    idle = []
    try:
        for k in range(300):
            try:
                s = socket.create_connection(("127.0.0.1", port), timeout=2)
            except OSError:  # the server no longer accepts: it is starved (the old code)
                break
            if k % 3 == 1:
                s.sendall(b"GET /a.bin HTTP/1.1\r\nHost: x\r\n")  # the head never ends
            elif k % 3 == 2:  # a kept-alive connection that never asks again
                s.sendall(b"HEAD /a.bin HTTP/1.1\r\nHost: x\r\n\r\n")
            idle.append(s)
        status, headers, body = _ask(port, _get("/a.bin"), timeout=10)
        assert status == 200 and body == data
        closed = sum(_closed_by_server(s, 0) for s in idle)
        assert len(idle) == 300 and closed >= 300 - 128  # the fault fired: the idle ones made room
    finally:
        for s in idle:
            s.close()
        err = _stop(proc)
    assert "connections open" in err  # the cap was reached, and said so


def test_serve_closes_idle_and_trickling_connections_and_refuses_only_when_all_are_busy(tmp_path):
    (tmp_path / "big.bin").write_bytes(b"\0" * (64 << 20))
    proc, port = _start(tmp_path, "--header-timeout", "1", "--idle-timeout", "1", "--max-connections", "2")
    busy = []
    try:
        with socket.create_connection(("127.0.0.1", port)) as silent:
            assert _closed_by_server(silent, 10)  # no request within --header-timeout
        with socket.create_connection(("127.0.0.1", port)) as trickle:
            trickle.settimeout(10)
            start, cut = time.monotonic(), False
            try:
                for byte in b"GET /big.bin HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 100:
                    trickle.send(bytes([byte]))  # a byte every 0.2 s: each read is quick, the head never done
                    time.sleep(0.2)
                    if time.monotonic() - start > 10:
                        break
            except OSError:
                cut = True
            assert cut or _closed_by_server(trickle, 0.5)
        with socket.create_connection(("127.0.0.1", port)) as kept:
            kept.sendall(b"HEAD /big.bin HTTP/1.1\r\nHost: x\r\n\r\n")
            assert kept.recv(65536).startswith(b"HTTP/1.1 200")
            assert _closed_by_server(kept, 10)  # idle after its answer for --idle-timeout

        for _ in range(2):  # both slots sending a body nobody reads: busy, not idle
            s = socket.create_connection(("127.0.0.1", port))
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            s.sendall(_get("/big.bin"))
            busy.append(s)
        time.sleep(0.5)
        status, headers, _ = _ask(port, _get("/big.bin", "Range: bytes=0-9"))
        assert status == 503 and headers["retry-after"] == "1"
        for s in busy:
            _rst(s)
        busy.clear()
        time.sleep(0.5)
        assert _ask(port, _get("/big.bin", "Range: bytes=0-9"))[:1] == (206,)
    finally:
        for s in busy:
            s.close()
        _stop(proc)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    folder = tmp_path_factory.mktemp("served")
    data = bytes(range(256)) * 4
    (folder / "a.bin").write_bytes(data)
    (folder / "empty.bin").write_bytes(b"")
    proc, port = _start(folder)
    yield port, data
    _stop(proc)  # no traceback for anything the tests sent


@pytest.mark.parametrize("spec", ["bytes=500-100", "bytes=" + "9" * 5000 + "-", "bytes=0-" + "9" * 5000,
                                  "bytes=0-1,5-6", "bytes=-0", "bytes=1024-", "bytes=", "bytes=x-y"])
def test_invalid_or_unsatisfiable_ranges_get_416(served, spec):
    port, data = served
    status, headers, body = _ask(port, _get("/a.bin", f"Range: {spec}"))
    assert (status, headers["content-range"], headers["content-length"], body) == (416, "bytes */1024", "0", b"")


@pytest.mark.parametrize("spec, expected", [("bytes=-10", (1014, 1023)), ("bytes=10-19", (10, 19)),
                                            ("bytes=1000-5000", (1000, 1023)), ("bytes=0-", (0, 1023)),
                                            ("bytes = 5 - 6", (5, 6))])
def test_valid_ranges_get_206(served, spec, expected):
    port, data = served
    status, headers, body = _ask(port, _get("/a.bin", f"Range: {spec}"))
    first, last = expected
    assert status == 206 and headers["content-range"] == f"bytes {first}-{last}/1024"
    assert body == data[first:last + 1]


def test_ignored_ranges_send_the_whole_file(served):
    port, data = served
    for extra in ("Range: items=0-5", "Range: bytes=500-100\r\nIf-Range: \"stale\""):  # If-Range first
        status, headers, body = _ask(port, _get("/a.bin", extra))
        assert status == 200 and body == data
    assert _ask(port, _get("/empty.bin", "Range: bytes=0-"))[0] == 416
    assert _ask(port, _get("/empty.bin"))[:1] == (200,)


@pytest.mark.parametrize("request_bytes, expected", [
    (_get("/%00"), 400), (_get("/a.bin%00"), 400), (_get("/a%zz.bin"), 400), (_get("/%ff"), 400),
    (_get("/" + "a" * 5000), 404), (_get("/../../etc/passwd"), 404),
    (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(range(256)) + b"\r\n\r\n", 400),  # TLS
    (b"GET /a.bin HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 70000 + b"\r\n\r\n", 431),
    (b"GET /" + b"a" * 70000 + b" HTTP/1.1\r\n\r\n", 414),
], ids=["nul", "nul-suffix", "bad-escape", "bad-utf8", "long-name", "traversal", "tls-hello", "huge-header",
        "huge-request-line"])
def test_bad_requests_get_4xx_and_no_traceback(served, request_bytes, expected):
    port, data = served
    assert _ask(port, request_bytes)[0] == expected
    assert _ask(port, _get("/a.bin"))[2] == data  # still serving
