"""Bad mirrors (issues 9, 17): per case, `mmf zoo fetch` next to one bad mirror -> exit code, time, bytes / archive;
then a lone link that resets every 300 KB against the same link without resets.

    python bench/bad_mirrors.py [--size-mb 40] [--cases corrupt,outdated,...|none] [--chunk-hashes]
                                [--rate-mbps 20] [--link-rate-mbps 4] [--reset-kb 300] [--link-latency-ms 20]

Each case (zoo/testing/badmirrors.py) serves the same tar.gz from a good FaultServer and a bad one, listed in the
order the case says, every connection capped at --rate-mbps; the manifest has no `size` (and chunk hashes only
with --chunk-hashes). The baseline is the good mirror alone, in the same run. Prints one row per case: exit code,
seconds, seconds minus the baseline, bytes the servers sent / archive size, and what `--json` says of the bad
mirror. The link rows (issue 17): one mirror, every connection capped at --link-rate-mbps, clean and resetting
every --reset-kb of each response, --link-latency-ms before each response (a reconnect's round trip) and no
burst when a connection starts, default chunks (8 MiB) and connections (8); the ratio is resets / clean.
Loopback only; needs nothing but the project.
"""
from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import random
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import xxhash
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from zoo.testing.badmirrors import CASES, scenario  # noqa: E402
from zoo.testing.faultserver import FaultServer, Faults  # noqa: E402

KEY = "badmirrorset"
REL = f"datasets/{KEY}/defaults/features/features.tar.gz"
CHUNK = 8 << 20


def build_archive(path: Path, size_mb: float) -> None:
    payload = random.Random(9).randbytes(int(size_mb * 1e6))  # incompressible: the archive is ~size_mb
    with tarfile.open(path, "w:gz", compresslevel=1) as tf:
        info = tarfile.TarInfo("features/data.bin")
        info.size = len(payload)
        tf.addfile(info, io.BytesIO(payload))


def write_manifest(path: Path, archive: Path, chunk_hashes: bool) -> None:
    data = archive.read_bytes()
    item = {"url": f"mmf://{REL}", "file_name": archive.name, "hashcode": hashlib.sha256(data).hexdigest()}
    if chunk_hashes:
        item["chunk_hashes"] = {"chunk_size": CHUNK, "xxh3_128": [xxhash.xxh3_128_hexdigest(data[i:i + CHUNK])
                                                                  for i in range(0, len(data), CHUNK)]}
    path.write_text(yaml.safe_dump({KEY: {"defaults": {"version": "1", "resources": {"features": [item]}}}}))


def fetch(manifest: Path, data_dir: Path, roots: list[str], stall: float) -> tuple[int, float, dict]:
    cmd = [sys.executable, "-m", "mmfzoo_cli", "zoo", "fetch", KEY, "--zoo", str(manifest), "--data-dir", str(data_dir),
           "--json", "--stall-timeout", str(stall)]
    for r in roots:
        cmd += ["--mirror", r]
    env = {**os.environ, "MMF_ZOO_MIRROR_ONLY": "1"}
    t0 = time.monotonic()
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env, timeout=900)
    took = time.monotonic() - t0
    try:
        report = json.loads(r.stdout)[0]["mirrors"] if r.returncode == 0 else {"error": r.stderr.strip()[-200:]}
    except (ValueError, IndexError, KeyError):
        report = {"error": r.stderr.strip()[-200:]}
    return r.returncode, took, report


def capped(server: FaultServer, mbps: float) -> None:
    server.faults.append(Faults(rate_bps=mbps * 1e6))  # after the case's own rules: theirs win where they set one


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mb", type=float, default=40.0)
    ap.add_argument("--cases", default=",".join(CASES))
    ap.add_argument("--chunk-hashes", action="store_true")
    ap.add_argument("--rate-mbps", type=float, default=20.0, help="per-connection cap on every server (MB/s)")
    ap.add_argument("--stall-timeout", type=float, default=5.0)
    ap.add_argument("--link-rate-mbps", type=float, default=4.0, help="per-connection cap of the lone link (MB/s)")
    ap.add_argument("--reset-kb", type=float, default=300.0, help="the lone link resets after this much of a body")
    ap.add_argument("--link-latency-ms", type=float, default=20.0,
                    help="wait before each response of the lone link (a round trip: what a reconnect costs)")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="mmf-bad-mirrors-"))
    archive = work / "features.tar.gz"
    build_archive(archive, args.size_mb)
    size = archive.stat().st_size
    manifest = work / "datasets.yaml"
    write_manifest(manifest, archive, args.chunk_hashes)
    (work / "alone" / REL).parent.mkdir(parents=True)
    (work / "alone" / REL).write_bytes(archive.read_bytes())
    with FaultServer(work / "alone") as alone:
        capped(alone, args.rate_mbps)
        code, base, _ = fetch(manifest, work / "d-alone", [alone.url], args.stall_timeout)
    print(f"archive {size / 1e6:.1f} MB, chunk hashes: {'yes' if args.chunk_hashes else 'no'}, "
          f"{args.rate_mbps:g} MB/s per connection, --stall-timeout {args.stall_timeout:g}")
    print(f"good mirror alone: exit {code}, {base:.2f}s\n")
    print(f"{'case':16} {'exit':>4} {'time s':>7} {'- alone':>7} {'bytes/archive':>13}  bad mirror (--json)")
    worst = 0
    for name in [c for c in args.cases.split(",") if c and c != "none"]:
        with scenario(name, work / f"m-{name}", archive, REL, CHUNK) as sc:
            for srv in (sc.good, sc.bad):
                if srv is not None:
                    capped(srv, args.rate_mbps)
            code, took, report = fetch(manifest, work / f"d-{name}", sc.roots, args.stall_timeout)
            wire = sc.wire_bytes()
            fired = sc.fault_fired()
        verdict = report.get(sc.bad_url, report.get("error", "?"))
        print(f"{name:16} {code:>4} {took:7.2f} {took - base:+7.2f} {wire / size:13.2f}  "
              f"{verdict[:90]}{'' if fired else '  (FAULT NEVER FIRED)'}", flush=True)
        worst = max(worst, code)
    return 1 if max(worst, lone_link(args, work, manifest, size)) else 0


def lone_link(args, work: Path, manifest: Path, size: int) -> int:
    """The issue's link: one mirror, resets every --reset-kb, vs the same link without resets, in this run."""
    rows = {}
    for name, reset in (("clean", None), ("resets", int(args.reset_kb * 1000))):
        with FaultServer(work / "alone") as srv:
            # no burst at the start of a connection: a reconnect must not be faster than going on (TCP starts slow)
            srv.faults.append(Faults(reset_after=reset, rate_bps=args.link_rate_mbps * 1e6, rate_burst=0,
                                     latency=args.link_latency_ms / 1000))
            code, took, _ = fetch(manifest, work / f"d-link-{name}", [srv.url], args.stall_timeout)
            srv.stats.wait_idle(2)
            rows[name] = (code, took, sum(srv.stats.bytes_sent.values()), srv.faults[0].used)
    print(f"\nlone link, {args.link_rate_mbps:g} MB/s per connection, {args.link_latency_ms:g} ms before each response, "
          "8 MiB chunks, 8 connections:")
    for name, (code, took, sent, used) in rows.items():
        what = f"{used} resets" if name == "resets" else "no resets"
        print(f"  {name:7} exit {code}  {took:6.2f}s  {sent / size:5.2f}x the archive sent  ({what})")
    print(f"  ratio resets/clean: {rows['resets'][1] / rows['clean'][1]:.2f}", flush=True)
    return max(rows["clean"][0], rows["resets"][0])


if __name__ == "__main__":
    sys.exit(main())
