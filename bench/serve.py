"""`mmf zoo serve` throughput on loopback: this tree's zoo/serve.py against another revision's, in the same run.

    python bench/serve.py --baseline-rev REV [--size-mb 1024] [--rounds 5] [--connections 1]

Each round downloads the file once from each server (alternating, so both see the same machine state), every
connection fetching its share as one Range request and discarding the bytes; prints MB/s per round, the medians
and new/baseline. The baseline module is `git show REV:zoo/serve.py`, imported on its own (it needs nothing else).
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def load_baseline(rev: str, where: Path):
    source = subprocess.run(["git", "-C", str(ROOT), "show", f"{rev}:zoo/serve.py"], check=True,
                            capture_output=True, text=True).stdout
    path = where / "baseline_serve.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("baseline_serve", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def fetch_range(port: int, name: str, first: int, last: int) -> int:
    got, buf = 0, bytearray(1 << 20)
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(f"GET /{name} HTTP/1.1\r\nHost: x\r\nRange: bytes={first}-{last}\r\nConnection: close\r\n\r\n"
                  .encode())
        head = b""
        while b"\r\n\r\n" not in head:
            head += s.recv(4096)
        got = len(head.partition(b"\r\n\r\n")[2])
        view = memoryview(buf)
        while n := s.recv_into(view):
            got += n
    assert got == last - first + 1, (got, first, last)
    return got


def download(port: int, name: str, size: int, connections: int) -> float:
    """MB/s of one whole-file download split into `connections` ranges."""
    step = -(-size // connections)
    threads = [threading.Thread(target=fetch_range, args=(port, name, i, min(size, i + step) - 1))
               for i in range(0, size, step)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return size / (time.perf_counter() - start) / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--baseline-rev", required=True, help="git revision whose zoo/serve.py is the baseline")
    parser.add_argument("--connections", type=int, default=1)
    args = parser.parse_args()
    from zoo.serve import FolderMirror

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        size = args.size_mb << 20
        with open(folder / "blob.bin", "wb") as f:
            for _ in range(args.size_mb):
                f.write(os.urandom(1 << 20))
        baseline = load_baseline(args.baseline_rev, folder)
        rates: dict[str, list[float]] = {"new": [], "baseline": []}
        with FolderMirror(folder) as new, baseline.FolderMirror(folder) as old:
            servers = {"new": new.httpd.server_address[1], "baseline": old.httpd.server_address[1]}
            download(servers["new"], "blob.bin", size, args.connections)  # warm the page cache
            for r in range(args.rounds):
                for label in (("new", "baseline") if r % 2 == 0 else ("baseline", "new")):
                    rates[label].append(download(servers[label], "blob.bin", size, args.connections))
                print(f"round {r + 1}: new {rates['new'][-1]:8.0f} MB/s   baseline {rates['baseline'][-1]:8.0f} MB/s",
                      flush=True)
        med = {k: statistics.median(v) for k, v in rates.items()}
        print(f"median: new {med['new']:.0f} MB/s, baseline ({args.baseline_rev}) {med['baseline']:.0f} MB/s, "
              f"new/baseline {med['new'] / med['baseline']:.2f}")


if __name__ == "__main__":
    main()
