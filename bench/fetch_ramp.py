"""Scenario A of bench/fetch.py in-process: steady-state aggregate (10-90% of the bytes) vs first-to-last byte.

    python bench/fetch_ramp.py   (after bench/fetch.py --size-mib 256 has built the cached archive)

Shows where the "0.87 of the aggregate cap" goes: a fixed ramp (probes, first chunks) and tail (last chunks).
"""
import hashlib
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from zoo.testing.faultserver import FaultServer, Faults  # noqa: E402
from zoo.transfer import Transfer  # noqa: E402
root = Path.home() / ".cache/mmf-zoo-bench" / f"mirror-{sys.argv[1] if len(sys.argv) > 1 else '256MiB'}"
rel = "datasets/benchset/defaults/features/features.tar.gz"
data = (root / rel).read_bytes()
caps = [25e6, 25e6, 8e6]
srvs = [FaultServer(root, faults=[Faults(rate_bps=c)]).start() for c in caps]
samples, stop = [], threading.Event()
def sampler():
    while not stop.is_set():
        samples.append((time.monotonic(), sum(sum(s.stats.bytes_sent.values()) for s in srvs), [s.stats.connections for s in srvs]))
        time.sleep(0.05)
threading.Thread(target=sampler, daemon=True).start()
part = Path(tempfile.mkdtemp()) / "features.part"
t = Transfer("b:features.tar.gz", [s.url_for(rel) for s in srvs], part, part.with_suffix(".journal"),
             sha256=hashlib.sha256(data).hexdigest(), size=len(data))
t0 = time.monotonic(); r = t.run(); t1 = time.monotonic(); stop.set(); time.sleep(0.1)
first = next(s for s in samples if s[1] > 8192); last = next(s for s in samples if s[1] >= samples[-1][1])
total = last[1] - first[1]; dur = last[0] - first[0]
mid = [s for s in samples if 0.1 * len(data) <= s[1] <= 0.9 * len(data)]
steady = (mid[-1][1] - mid[0][1]) / (mid[-1][0] - mid[0][0])
ramp = next(s for s in samples if s[1] >= 0.1 * len(data))[0] - first[0]
tail = last[0] - next(s for s in samples if s[1] >= 0.9 * len(data))[0]
conns = [sum(c) / len(c) for c in zip(*[s[2] for s in mid])]
print(f"cap 8x25 = 200 MB/s; first-to-last {total / dur / 1e6:.0f} MB/s ({total / dur / 200e6:.2f}); steady 10-90% "
      f"{steady / 1e6:.0f} MB/s ({steady / 200e6:.2f}); first 10% took {ramp:.2f}s, last 10% {tail:.2f}s "
      f"(at steady rate each would take {0.1 * len(data) / steady:.2f}s); mean connections per mirror in 10-90%: "
      + ", ".join(f"{c:.1f}" for c in conns) + f"; per mirror bytes {[sum(s.stats.bytes_sent.values()) for s in srvs]}")
for s in srvs: s.stop()
