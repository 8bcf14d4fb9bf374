"""Extraction speed: GNU tar, pigz | tar, zoo's extract_archive and StreamExtractor on one generated tar.gz.

    python bench/bench_extract.py                # ~300 MB archive, 2 rounds
    python bench/bench_extract.py --mb 100 --rounds 1

The archive imitates MMF feature dumps: ReLU float16 activations (about 2x compressible), one big
LMDB-like file plus many 1 MB files. Every method runs in a fresh subprocess (so its peak RSS is its own),
into a fresh folder, with the archive in the page cache; results are ratios against `tar xzf` measured in
the same run. Speed is reported here, never asserted in tests.
"""
from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

METHODS = {
    "tar xzf": "shell:tar xzf {archive} -C {dest}",
    "pigz -dc | tar x": "shell:pigz -dc {archive} | tar xf - -C {dest}",
    "extract_archive (external=True: pigz)": "py:archive:True",
    "extract_archive (default: zlib in-process)": "py:archive:None",
    "StreamExtractor 1 MiB feeds (external=True: pigz)": "py:stream:True",
    "StreamExtractor 1 MiB feeds (default: zlib)": "py:stream:None",
}

CHILD = """
import sys, time
sys.path.insert(0, {root!r})
from zoo.archive import StreamExtractor, extract_archive
archive, dest, how, external = sys.argv[1], sys.argv[2], sys.argv[3], eval(sys.argv[4])
t0 = time.perf_counter()
if how == "archive":
    files = extract_archive(archive, dest, external=external)
else:
    sx = StreamExtractor(dest, "gztar", external=external)
    buf = bytearray(1 << 20)
    with open(archive, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            sx.feed(memoryview(buf)[:n])
    files = sx.close()
dt = time.perf_counter() - t0
# VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the parent across exec
hwm = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM"))
print(dt, hwm, len(files))
"""


def make_archive(path: str, mb: int) -> None:
    import numpy as np  # bench only: zoo itself never imports numpy

    src = path + ".src"
    shutil.rmtree(src, ignore_errors=True)
    os.makedirs(os.path.join(src, "features", "small"))
    rng = np.random.default_rng(0)

    def relu_f16(nbytes: int) -> bytes:
        x = rng.standard_normal(nbytes // 2, dtype=np.float32) - 0.2
        return np.maximum(x, 0).astype(np.float16).tobytes()

    big = mb * 4 // 5
    with open(os.path.join(src, "features", "data.mdb"), "wb") as f:
        for _ in range(big):
            f.write(relu_f16(1 << 20))
    for i in range(mb - big):
        with open(os.path.join(src, "features", "small", f"{i:05d}.npy"), "wb") as f:
            f.write(relu_f16(1 << 20))
    subprocess.run(f"tar cf - -C {src} features | pigz -6 > {path}", shell=True, check=True)
    shutil.rmtree(src)


def _cpu() -> float:
    # children's user+sys, grandchildren (pigz under the Python child) included once they are reaped
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_one(spec: str, archive: str, dest: str) -> tuple[float, float, int]:
    """(wall seconds, CPU seconds of every process involved, peak RSS in KiB or 0 for shell methods)."""
    os.makedirs(dest)
    cpu0 = _cpu()
    if spec.startswith("shell:"):
        t0 = time.perf_counter()
        subprocess.run(spec[6:].format(archive=archive, dest=dest), shell=True, check=True)
        return time.perf_counter() - t0, _cpu() - cpu0, 0
    _, how, external = spec.split(":")
    out = subprocess.run([sys.executable, "-c", CHILD.format(root=ROOT), archive, dest, how, external],
                         check=True, capture_output=True, text=True).stdout.split()
    return float(out[0]), _cpu() - cpu0, int(out[1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=int, default=300, help="uncompressed size of the generated archive")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--workdir", default="/tmp/zoo-bench-extract")
    ap.add_argument("--only", default="", help="run tar xzf plus the methods whose name contains this text")
    args = ap.parse_args()
    methods = {k: v for k, v in METHODS.items() if k == "tar xzf" or args.only in k}
    os.makedirs(args.workdir, exist_ok=True)
    archive = os.path.join(args.workdir, f"features-{args.mb}.tar.gz")
    if not os.path.exists(archive):
        make_archive(archive, args.mb)
    size = os.path.getsize(archive)
    with open(archive, "rb") as f:  # warm the page cache: every method reads it from memory
        while f.read(1 << 24):
            pass
    print(f"archive {size / 2**20:.0f} MiB compressed, {args.mb} MiB extracted, {os.cpu_count()} cores, "
          f"load average before: {os.getloadavg()[0]:.1f}")
    times: dict[str, list[float]] = {m: [] for m in methods}
    cpu: dict[str, list[float]] = {m: [] for m in methods}
    rss: dict[str, int] = {}
    for _ in range(args.rounds):
        for name, spec in methods.items():
            dest = os.path.join(args.workdir, "out")
            shutil.rmtree(dest, ignore_errors=True)
            os.sync()  # start each method with no dirty pages from the previous one
            seconds, cpu_s, peak = run_one(spec, archive, dest)
            times[name].append(seconds)
            cpu[name].append(cpu_s)
            rss[name] = max(rss.get(name, 0), peak)
    shutil.rmtree(os.path.join(args.workdir, "out"), ignore_errors=True)
    print(f"load average after: {os.getloadavg()[0]:.1f} (other work on the machine skews absolute times)")
    base = statistics.median(times["tar xzf"])
    best = min(times["tar xzf"])
    print(f"{'method':46s} {'median s':>8s} {'min s':>6s} {'MiB/s':>6s} {'vs tar xzf':>10s} {'(min)':>6s} "
          f"{'CPU s':>6s} {'peak RSS':>8s}")
    for name, ts in times.items():
        med, low = statistics.median(ts), min(ts)
        peak = f"{rss[name] / 1024:.0f} MiB" if rss[name] else "-"
        print(f"{name:46s} {med:8.2f} {low:6.2f} {args.mb / med:6.0f} {base / med:9.2f}x {best / low:5.2f}x "
              f"{statistics.median(cpu[name]):6.2f} {peak:>8s}")


if __name__ == "__main__":
    main()
