"""Fetch benchmark: command typed -> verified, extracted tree, `mmf zoo fetch` against aria2c and MMF's approach.

    python bench/fetch.py [--size-mib 1024] [--scenarios A,B,C] [--repeat 1] [--keep] [--json-out FILE]

Archive: a tree of feature-like .npy files (100 x 2048 float16 of ReLU'd normals, ~2x compressible) as tar.gz,
built once with pigz into --cache-dir and reused. Every contender runs in its own subprocess, so its CPU seconds
and peak RSS come from its rusage (wait4: the process and the children it waited for; peak RSS is the largest
single process). Bytes fetched come from the servers' counters. Each extracted tree is checked file by file
(xxh3) against the generated one; a wrong tree is reported as such, never timed as a success.

Scenarios (loopback only):
  A "CDN": 3 range servers (zoo/testing/faultserver.py), every connection capped at 25/25/8 MB/s (--caps).
  B "fast link": one uncapped nginx (zoo/testing/nginxserver.py), plus `pigz -dc | tar x` of the local archive.
  C "flaky": A, and each time a mirror has sent another 32 MB (--fault-every-mb) its next request is reset
     after 1 MiB, and every third time one also stalls for 3 s (--stall-seconds); the engine runs with
     --stall-timeout 1 (aria2c with --timeout=1). --fault-period S arms the faults every S seconds instead.
Contenders: `mmf zoo fetch` (defaults), the MMF approach (one requests stream, sha256 pass, unpack_archive, as in
mmf/utils/download.py), `aria2c -x8 -s8` over all mirrors + `sha256sum` + `tar xzf`.
The archive sits in the page cache for every contender alike (caches are not dropped: that needs root and hurts
other processes); written trees are synced to disk between runs.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from zoo.sources import sha256_file  # noqa: E402  (the archive's hash for the manifest)

KEY = "benchset"
REL = f"datasets/{KEY}/defaults/features/features.tar.gz"  # MMF's layout under a mirror root
MB = 1e6
ROWS, DIM = 100, 2048  # one image's object features, as MMF pads them
DEFAULT_CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "mmf-zoo-bench"


class BenchError(Exception):
    """A benchmark setup problem; the message says what to do."""


# ------------------------------------------------------------------------------------------- the archive
@dataclass
class Archive:
    path: Path
    size: int
    sha256: str
    tree_bytes: int
    files: dict  # relative path -> [size, xxh3_64 hex]


def build_archive(cache: Path, size_mib: float) -> Archive:
    """The cached archive for this size, generating the tree and compressing it (pigz -3) the first time."""
    import numpy as np
    import xxhash

    tag = f"{size_mib:g}MiB"
    meta_path = cache / f"archive-{tag}.json"
    mirror = cache / f"mirror-{tag}"
    path = mirror / REL
    if meta_path.exists() and path.exists():
        meta = json.loads(meta_path.read_text())
        if meta["size"] == path.stat().st_size:
            return Archive(path, meta["size"], meta["sha256"], meta["tree_bytes"], meta["files"])
    print(f"generating a {tag} tree and its tar.gz in {cache} (once; reused by later runs)", flush=True)
    tree = cache / f"tree-{tag}"
    shutil.rmtree(tree, ignore_errors=True)
    rng = np.random.default_rng(0)
    files, total, i = {}, 0, 0
    target = int(size_mib * (1 << 20))
    while total < target:
        rel = f"open_images/feats/{i // 500:03d}/img_{i:06d}.npy"
        arr = np.maximum(rng.standard_normal(ROWS * DIM, dtype=np.float32) - 0.3, 0).astype(np.float16)
        (tree / rel).parent.mkdir(parents=True, exist_ok=True)
        np.save(tree / rel, arr.reshape(ROWS, DIM))
        data = (tree / rel).read_bytes()
        files[rel] = [len(data), xxhash.xxh3_64_hexdigest(data)]
        total, i = total + len(data), i + 1
    path.parent.mkdir(parents=True, exist_ok=True)
    gz = "pigz -3" if shutil.which("pigz") else "gzip -3"
    tmp = path.with_name(path.name + ".tmp")
    subprocess.run(["bash", "-c", f'set -o pipefail; tar -C "{tree}" -cf - open_images | {gz} > "{tmp}"'], check=True)
    os.replace(tmp, path)
    shutil.rmtree(tree)
    meta = {"size": path.stat().st_size, "sha256": sha256_file(path), "tree_bytes": total, "files": files}
    meta_path.write_text(json.dumps(meta))
    return Archive(path, meta["size"], meta["sha256"], total, files)


def check_tree(root: Path, archive: Archive) -> str | None:
    """None when every generated file is under root with the right bytes, else the first problem in one line."""
    import xxhash

    for rel, (size, digest) in archive.files.items():
        p = root / rel
        if not p.is_file():
            return f"missing {rel} under {root}"
        if p.stat().st_size != size or xxhash.xxh3_64_hexdigest(p.read_bytes()) != digest:
            return f"wrong content in {p}"
    return None


# ------------------------------------------------------------------------------------------- measuring
@dataclass
class Result:
    scenario: str
    contender: str
    ok: bool = False
    problem: str = ""
    wall: float = 0.0  # seconds, launch -> process exit with a verified tree
    cpu: float = 0.0  # user + system seconds of the process tree
    rss_mib: float = 0.0  # ru_maxrss of the largest process
    fetched: int | None = None  # body bytes the servers sent for the archive
    net_mbps: float | None = None  # fetched bytes / (first to last byte on the servers' side)
    per_mirror: list | None = None  # bytes each server sent (A, C)
    faults: int | None = None  # scenario C: fault rules that hit a request of this run
    walls: list = field(default_factory=list)  # every repeat


def run_timed(cmd: list[str], out: Path, timeout: float) -> tuple[int, float, float, float]:
    """Run cmd in its own process group; returns (exit code, wall s, cpu s, peak RSS MiB) from wait4."""
    with open(out / "stdout", "wb") as so, open(out / "stderr", "wb") as se:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=so, stderr=se, cwd=ROOT, start_new_session=True)
    killer = threading.Timer(timeout, lambda: os.killpg(proc.pid, signal.SIGKILL))
    killer.start()
    try:
        _, status, ru = os.wait4(proc.pid, 0)
    finally:
        killer.cancel()
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, wall, ru.ru_utime + ru.ru_stime, ru.ru_maxrss / 1024


class Traffic:
    """Polls a byte counter every 20 ms: first and last time it moved."""

    def __init__(self, total):
        self.total, self.first, self.last, self.bytes = total, None, None, 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._poll, daemon=True)
        self.thread.start()

    def _poll(self):
        while not self.stop.wait(0.02):
            n = self.total()
            if n > self.bytes:
                now = time.perf_counter()
                self.first = self.first or now
                self.last, self.bytes = now, n

    def finish(self) -> tuple[int, float | None]:
        self.stop.set()
        self.thread.join()
        n = self.total()
        span = (self.last - self.first) if self.first and self.last and self.last > self.first else None
        return n, (n / span / MB if span else None)


def measure(scenario: str, name: str, make_cmd, tree_of, servers, archive: Archive, work: Path,
            args) -> Result:
    """Run one contender --repeat times (clean dirs each time); keep the run with the median wall time."""
    runs = []
    for rep in range(args.repeat):
        out = work / f"{scenario}-{name}"
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
        os.sync()  # the previous run's dirty pages must not be written back on this run's time
        servers.arm()
        before, before_each = servers.total(), servers.each()
        traffic = Traffic(lambda: servers.total() - before) if servers.live else None
        rc, wall, cpu, rss = run_timed(make_cmd(out), out, args.timeout)
        fetched, net = traffic.finish() if traffic else (None, None)
        servers.disarm()
        if servers.counts and not servers.live:
            fetched = servers.total() - before  # nginx: known once the requests ended
        err = (out / "stderr").read_text(errors="replace").strip().splitlines()
        r = Result(scenario, name, wall=wall, cpu=cpu, rss_mib=rss, fetched=fetched, net_mbps=net,
                   faults=servers.injected if servers.faults else None,
                   per_mirror=[b - a for a, b in zip(before_each, servers.each())] or None)
        if rc != 0 and wall >= args.timeout:
            r.problem = f"killed after {args.timeout:g} s (--timeout)"
        elif rc != 0:
            r.problem = f"exit {rc}: {err[-1] if err else 'no message'}"[:200]
        else:
            r.problem = check_tree(tree_of(out), archive) or ""
            r.ok = not r.problem
        runs.append(r)
        if not args.keep:
            shutil.rmtree(out, ignore_errors=True)
    runs.sort(key=lambda r: (not r.ok, r.wall))
    best = runs[len([r for r in runs if r.ok]) // 2] if runs[0].ok else runs[0]
    best.walls = [round(r.wall, 3) for r in runs]
    print(f"  {scenario} {name:14} {'ok' if best.ok else 'FAILED: ' + best.problem} {best.wall:.1f}s", flush=True)
    return best


# ------------------------------------------------------------------------------------------- servers
class Mirrors:
    """Range servers for a scenario: FaultServers (live byte counters) or nginx (access log at request end)."""

    def __init__(self, root: Path, kind: str, caps: list[float], faults: dict | None = None):
        from zoo.testing.faultserver import FaultServer, Faults

        self.kind, self.faults, self.live, self.counts = kind, faults, kind == "fault", True
        self.injected = 0
        self.servers, self.ticker, self.stop = [], None, threading.Event()
        if kind == "nginx":
            from zoo.testing.nginxserver import NginxServer

            self.servers = [NginxServer(root).start()]
            return
        for cap in caps:
            rules = [Faults(first_n=0, reset_after=faults["reset_after"]) if faults else None,
                     Faults(first_n=0, stall_after=faults["stall_after"], stall_seconds=faults["stall_seconds"])
                     if faults else None,
                     Faults(rate_bps=cap * MB)]
            self.servers.append(FaultServer(root, faults=[r for r in rules if r]).start())

    @property
    def urls(self) -> list[str]:
        return [s.url for s in self.servers]

    def total(self) -> int:
        if self.kind == "nginx":
            uri = "/" + REL
            return sum(int(line.split()[3]) for line in self.servers[0].access_log() if line.split()[1] == uri)
        return sum(s.stats.bytes_sent[REL] for s in self.servers)

    def each(self) -> list[int]:
        return [s.stats.bytes_sent[REL] for s in self.servers] if self.live else []

    def arm(self) -> None:
        """Start the fault clock. By bytes (default): each time a mirror has sent another `every` bytes of the
        archive, its next request is reset after `reset_after` bytes, and every third time another request also
        stalls. By time (`period`): the same, once per period per mirror. A fault hits the next request."""
        self.injected = 0
        if not self.faults:
            return
        self.stop.clear()
        every, period = self.faults["every"], self.faults["period"]
        start = [s.stats.bytes_sent[REL] for s in self.servers]
        ticks = [0] * len(self.servers)

        def fire(k: int) -> None:
            s, ticks[k] = self.servers[k], ticks[k] + 1
            for rule in s.faults[:1] if ticks[k] % 3 else s.faults[:2]:
                self.injected += rule.used  # 0 or 1: the previous arming was used or is replaced
                rule.update(first_n=1)
                rule.reset()

        def tick():
            while not self.stop.wait(period or 0.005):
                for k, s in enumerate(self.servers):
                    if period:
                        fire(k)
                        continue
                    while s.stats.bytes_sent[REL] - start[k] >= every * (ticks[k] + 1):
                        fire(k)
        self.ticker = threading.Thread(target=tick, daemon=True)
        self.ticker.start()

    def disarm(self) -> None:
        if self.ticker:
            self.stop.set()
            self.ticker.join()
            self.ticker = None
            for s in self.servers:
                for rule in s.faults[:2]:
                    self.injected += rule.used
                    rule.update(first_n=0)
                    rule.reset()
        if self.kind == "nginx":
            time.sleep(0.2)  # nginx logs a request when it ends; the client has just closed it

    def close(self) -> list[str]:
        errors = []
        for s in self.servers:
            s.stop()
            errors += getattr(s, "errors", [])
        return errors


# ------------------------------------------------------------------------------------------- contenders
def engine_cmd(urls: list[str], archive: Archive, extra: list[str], root: Path | None = None):
    """`mmf zoo fetch` of this tree, or of the project copy at `root` (a baseline revision)."""
    def make(out: Path) -> list[str]:
        manifest = out / "zoo.yaml"
        manifest.write_text(json.dumps({KEY: {"defaults": {"version": "1", "resources": {"features": [
            {"url": f"mmf://{REL}", "file_name": archive.path.name, "hashcode": archive.sha256,
             "size": archive.size}]}}}}))  # JSON is YAML
        cmd = [sys.executable, "-m", "mmfzoo_cli", "zoo", "fetch", KEY, "--zoo", str(manifest), "--mirror-only",
               "--data-dir", str(out / "data"), "--json"]
        for u in urls:
            cmd += ["--mirror", u]
        if root is not None:  # its own code first on sys.path, whatever is installed
            cli = "mmfzoo_cli" if (Path(root) / "mmfzoo_cli").is_dir() else "mmf_cli"  # named so before issue 18
            cmd[1:3] = ["-c", f"import sys, runpy; sys.path.insert(0, {str(root)!r}); "
                              f"sys.argv[0] = 'mmf'; runpy.run_module({cli!r}, run_name='__main__')"]
        return cmd + extra
    return make


def mmf_cmd(url: str, archive: Archive):
    return lambda out: [sys.executable, __file__, "--mmf-approach", url + REL, str(out), archive.sha256]


def aria2_cmd(urls: list[str], archive: Archive, extra: str):
    def make(out: Path) -> list[str]:
        name = archive.path.name
        mirrors = " ".join(f'"{u}{REL}"' for u in urls)
        return ["bash", "-c", f'set -e; cd "{out}"; aria2c -x8 -s8 --console-log-level=error --summary-interval=0 '
                f'--download-result=hide --allow-overwrite=true --auto-file-renaming=false {extra} -o {name} '
                f'{mirrors}; echo "{archive.sha256}  {name}" | sha256sum -c --quiet; mkdir tree; '
                f'tar xzf {name} -C tree']
    return make


def local_cmd(archive: Archive):
    gz = "pigz" if shutil.which("pigz") else "gzip"
    return lambda out: ["bash", "-c", f'set -eo pipefail; mkdir "{out}/tree"; {gz} -dc "{archive.path}" | '
                        f'tar x -C "{out}/tree"']


def mmf_approach(url: str, out: Path, sha: str) -> None:
    """MMF's download(): HEAD check, one stream in 32 KiB pieces to .part (Range resume on ConnectionError and
    ReadTimeout only, 5 retries), rename, sha256 in 64 KiB blocks, then shutil.unpack_archive."""
    import requests

    part, final = out / "features.tar.gz.part", out / "features.tar.gz"
    assert requests.head(url, allow_redirects=True).status_code == 200, f"the url {url} is broken"
    retry = 5
    while retry >= 0:
        resume = part.stat().st_size if part.exists() else 0
        headers = {"Range": f"bytes={resume}-", "Accept-Encoding": "identity"} if resume else {}
        try:
            with requests.get(url, stream=True, timeout=5, headers=headers) as r, open(part, "ab" if resume else "wb") as f:
                for chunk in r.iter_content(32768):
                    f.write(chunk)
            break
        except (requests.ConnectionError, requests.ReadTimeout):
            retry -= 1
            if retry < 0:
                sys.exit("Connection broken too many times")
            time.sleep([16, 8, 4, 2, 1][retry])
    part.rename(final)
    h = hashlib.sha256()
    with open(final, "rb") as f:
        while block := f.read(65536):
            h.update(block)
    if h.hexdigest() != sha:
        sys.exit(f"checksum mismatch: {h.hexdigest()} != {sha}")
    shutil.unpack_archive(str(final), str(out / "tree"))


# ------------------------------------------------------------------------------------------- scenarios
def run_scenario(sc: str, archive: Archive, work: Path, args) -> tuple[list[Result], dict]:
    root = archive.path.parents[len(Path(REL).parts) - 1]  # the mirror root that holds REL
    caps = [float(c) for c in args.caps.split(",")]
    faults = None
    if sc == "C":
        faults = {"reset_after": int(args.reset_after_kib * 1024), "stall_after": 256 << 10, "stall_seconds": args.stall_seconds,
                  "period": args.fault_period, "every": int(args.fault_every_mb * MB)}
    mirrors = Mirrors(root, "nginx" if sc == "B" else "fault", caps, faults)
    extra = ["--stall-timeout", f"{args.stall_timeout:g}"] if sc == "C" else []
    extra += ["--chunk-size", f"{args.chunk_size:g}"] if args.chunk_size else []
    aria_extra = f"--timeout={max(1, round(args.stall_timeout))} --max-tries=0 --retry-wait=0" if sc == "C" else ""
    engine_tree = lambda out: out / "data" / Path(REL).parent  # noqa: E731
    tree = lambda out: out / "tree"  # noqa: E731
    contenders = [("mmf zoo fetch", engine_cmd(mirrors.urls, archive, extra), engine_tree),
                  ("mmf approach", mmf_cmd(mirrors.urls[0], archive), tree)]
    if args.baseline_root:
        contenders.insert(1, ("mmf fetch base", engine_cmd(mirrors.urls, archive, extra, args.baseline_root),
                              engine_tree))
    if shutil.which("aria2c"):
        contenders.append(("aria2c", aria2_cmd(mirrors.urls, archive, aria_extra), tree))
    if args.only:
        contenders = [c for c in contenders if c[0] in args.only.split(",")]
    results = []
    try:
        for name, make, tree_of in contenders:
            results.append(measure(sc, name, make, tree_of, mirrors, archive, work, args))
        if sc == "B":
            results.append(measure(sc, "local pigz|tar", local_cmd(archive), tree, _NoServer(), archive, work, args))
    finally:
        errors = mirrors.close()
    if errors:
        raise BenchError(f"scenario {sc}: the test server itself failed ({errors[0].splitlines()[-1]}); "
                         "fix zoo/testing/faultserver.py before trusting these numbers")
    return results, {"caps": caps, "faults": faults}


class _NoServer:
    live = counts = False
    faults = injected = None

    def total(self):
        return 0

    def each(self):
        return []

    def arm(self):
        pass

    def disarm(self):
        pass


def targets(results: list[Result], archive: Archive, caps: list[float]) -> list[tuple[str, str, str]]:
    """[(target, measured, PASS/MISS/n/a)] for the issue's targets, from this run's results."""
    from zoo.transfer import TransferOptions

    get = {(r.scenario, r.contender): r for r in results}
    conns = TransferOptions().connections
    out = []

    def ratio(label, sc, a, b, limit, kind):
        ra, rb = get.get((sc, a)), get.get((sc, b))
        if not (ra and rb and ra.ok and rb.ok):
            why = "missing or failed contender" if (sc, a) in get or (sc, b) in get else "scenario not run"
            return out.append((label, why, "n/a"))
        x = ra.wall / rb.wall
        good = x <= limit if kind == "<=" else rb.wall / ra.wall >= limit
        shown = f"{x:.2f}" if kind == "<=" else f"{rb.wall / ra.wall:.1f}x"
        out.append((label, shown, "PASS" if good else "MISS"))

    e = get.get(("A", "mmf zoo fetch"))
    if e:
        cap = conns * max(caps)
        net = e.net_mbps or 0.0
        out.append((f"A: transfer >= 0.9 x {conns} conns x {max(caps):g} MB/s = {0.9 * cap:.0f} MB/s",
                    f"{net:.0f} MB/s ({net / cap:.2f})", "PASS" if e.ok and net >= 0.9 * cap else "MISS"))
    for sc in sorted({s for s, c in get if c == "mmf fetch base"}):  # only with --baseline-root
        ratio(f"{sc}: time-to-tree <= the baseline revision", sc, "mmf zoo fetch", "mmf fetch base", 1.0, "<=")
    ratio("A: time-to-tree <= aria2c", "A", "mmf zoo fetch", "aria2c", 1.0, "<=")
    ratio("A: >= 5x faster than the MMF approach", "A", "mmf zoo fetch", "mmf approach", 5.0, ">=")
    ratio("B: time-to-tree <= 1.15 x local pigz|tar", "B", "mmf zoo fetch", "local pigz|tar", 1.15, "<=")
    ratio("B: time-to-tree <= 0.6 x the MMF approach", "B", "mmf zoo fetch", "mmf approach", 0.6, "<=")
    c = get.get(("C", "mmf zoo fetch"))
    if c:
        out.append(("C: finishes with a correct tree", "ok" if c.ok else c.problem[:60], "PASS" if c.ok else "MISS"))
        frac = (c.fetched or 0) / archive.size
        out.append(("C: bytes fetched <= 1.10 x file size", f"{frac:.3f}", "PASS" if c.ok and frac <= 1.10 else "MISS"))
    return out


def machine() -> str:
    model = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "?")
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return f"{os.cpu_count()} CPUs ({model}), load average {load}, Python {sys.version.split()[0]}"


def table(results: list[Result], archive: Archive) -> str:
    head = f"{'scen':4} {'contender':15} {'wall s':>7} {'MB/s':>6} {'net MB/s':>8} {'CPU s':>6} {'RSS MiB':>7} " \
           f"{'fetched/size':>12} {'faults':>6}  result"
    lines = [head, "-" * len(head)]
    for r in results:
        fetched = f"{r.fetched / archive.size:.3f}" if r.fetched is not None else "-"
        net = f"{r.net_mbps:.0f}" if r.net_mbps else "-"
        lines.append(f"{r.scenario:4} {r.contender:15} {r.wall:7.2f} {archive.size / MB / r.wall:6.0f} {net:>8} "
                     f"{r.cpu:6.1f} {r.rss_mib:7.0f} {fetched:>12} {r.faults if r.faults is not None else '-':>6}  {'ok' if r.ok else 'FAILED: ' + r.problem[:70]}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size-mib", type=float, default=1024, help="uncompressed tree size (default 1024)")
    ap.add_argument("--scenarios", default="A,B,C")
    ap.add_argument("--repeat", type=int, default=1, help="runs per contender; the median is reported")
    ap.add_argument("--keep", action="store_true", help="keep every downloaded archive and extracted tree")
    ap.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE)
    ap.add_argument("--caps", default="25,25,8", help="per-connection MB/s of the 3 mirrors in A and C")
    ap.add_argument("--fault-every-mb", type=float, default=32, help="C: MB served by a mirror between faults")
    ap.add_argument("--fault-period", type=float, default=0, help="C: fault clock in seconds instead of bytes")
    ap.add_argument("--reset-after-kib", type=float, default=1024, help="C: body bytes before a reset")
    ap.add_argument("--stall-seconds", type=float, default=3.0)
    ap.add_argument("--stall-timeout", type=float, default=1.0, help="C: the engine's --stall-timeout")
    ap.add_argument("--chunk-size", type=float, default=None, help="MiB; default: the engine's default")
    ap.add_argument("--timeout", type=float, default=900, help="seconds before a contender is killed")
    ap.add_argument("--json-out", type=Path, help="also write the results as JSON here")
    ap.add_argument("--baseline-root", type=Path, help="a copy of another revision (git archive REV | tar x -C DIR): "
                    "its `mmf zoo fetch` runs as the contender 'mmf fetch base', for ratios in the same run")
    ap.add_argument("--only", help="comma-separated contenders to run (e.g. 'mmf zoo fetch,mmf fetch base')")
    ap.add_argument("--mmf-approach", nargs=3, metavar=("URL", "OUT", "SHA256"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.mmf_approach:
        mmf_approach(args.mmf_approach[0], Path(args.mmf_approach[1]), args.mmf_approach[2])
        return 0
    scenarios = [s.strip().upper() for s in args.scenarios.split(",") if s.strip()]
    bad = [s for s in scenarios if s not in ("A", "B", "C")]
    if bad or args.repeat < 1 or len(args.caps.split(",")) != 3:
        raise BenchError(f"bad arguments ({', '.join(bad) or args.caps}): scenarios are A, B, C; --caps needs 3 "
                         "comma-separated MB/s values; --repeat >= 1")
    args.cache_dir.mkdir(parents=True, exist_ok=True)
    archive = build_archive(args.cache_dir, args.size_mib)
    work = args.cache_dir / "runs"
    print(f"machine: {machine()}\narchive: {archive.path} {archive.size / MB:.0f} MB (tree "
          f"{archive.tree_bytes / MB:.0f} MB, {len(archive.files)} files, ratio "
          f"{archive.tree_bytes / archive.size:.2f}); in page cache for all contenders", flush=True)
    with open(archive.path, "rb") as f:  # warm the page cache, the same for everyone
        while f.read(8 << 20):
            pass
    results, info = [], {}
    for sc in scenarios:
        if sc == "B" and not (shutil.which("nginx") or os.path.exists("/usr/sbin/nginx")):
            print("  B skipped: nginx is not installed (apt-get install nginx)")
            continue
        res, info[sc] = run_scenario(sc, archive, work, args)
        results += res
    caps = [float(c) for c in args.caps.split(",")]
    rows = targets(results, archive, caps)
    print("\n" + table(results, archive) + "\n")
    for label, measured, verdict in rows:
        print(f"{verdict:4}  {label:50} {measured}")
    if args.json_out:
        args.json_out.write_text(json.dumps({"machine": machine(), "archive_size": archive.size,
                                             "tree_bytes": archive.tree_bytes, "results": [asdict(r) for r in results],
                                             "targets": rows, "scenarios": info}, indent=1))
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
