"""`mmf zoo serve` / zoo/serve.py under clients that hang up, and `mmf zoo fetch` typo suggestions."""
from __future__ import annotations

import socket
import struct
import subprocess
import sys
import time

from tests.zoo_helpers import ROOT, make_zoo, run_mmf


def _rst(sock: socket.socket) -> None:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def test_serve_prints_no_traceback_when_clients_close_early(tmp_path):
    (tmp_path / "big.bin").write_bytes(b"\0" * (32 << 20))
    proc = subprocess.Popen([sys.executable, "-m", "mmf_cli", "zoo", "serve", str(tmp_path), "--port", "0"],
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
