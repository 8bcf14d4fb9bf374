"""`mmf zoo list` with sizes (issue 18): its time without --probe (no network: must stay as fast as before), with
--probe against a healthy loopback mirror and against a tarpit (every answer 60 s late), and from the cache after.

    python bench/list_sizes.py [--tarpit-latency 60]

The built-in manifests plus a small toy manifest without sizes (tests/zoo_helpers.make_zoo), all served by one
FaultServer named in MMF_ZOO_MIRRORS (MMF_ZOO_MIRROR_ONLY=1: nothing leaves loopback). Prints seconds and the
requests the mirror saw per run; the first row (no --probe) is the baseline the others are compared with.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.zoo_helpers import make_zoo  # noqa: E402
from zoo.testing.faultserver import FaultServer, Faults  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tarpit-latency", type=float, default=60.0)
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-list-"))
    zoo = make_zoo(root, with_size=False)
    data = root / "data"
    data.mkdir()
    env = {**os.environ, "MMF_ZOO_MIRROR_ONLY": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "mmfzoo_cli", "zoo", "list", "--zoo", str(zoo.manifest), "--data-dir", str(data)]
    baseline = None
    for label, fault in (("healthy mirror", None), (f"tarpit ({args.tarpit_latency:g} s late)",
                                                    Faults(latency=args.tarpit_latency))):
        with FaultServer(zoo.mirror, faults=fault) as srv:
            env["MMF_ZOO_MIRRORS"] = srv.url
            for run, extra in (("no --probe", []), ("--probe", ["--probe"]), ("cached", [])):
                t0 = time.monotonic()
                r = subprocess.run(cmd + extra, env=env, capture_output=True, text=True, cwd=ROOT)
                took = time.monotonic() - t0
                baseline = baseline or took
                print(f"{label:22} {run:11} {took:6.2f} s  x{took / baseline:5.2f}  rc={r.returncode}  "
                      f"requests={sum(srv.stats.requests.values())}")
        (data / ".mmfzoo" / "probed-sizes.json").unlink(missing_ok=True)


if __name__ == "__main__":
    main()
