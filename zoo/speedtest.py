"""`mmf zoo mirrors`: latency and throughput of each configured mirror for one resource."""
from __future__ import annotations

import time
from dataclasses import dataclass

from zoo.transfer import http
from zoo.transfer.mirror import Mirror


@dataclass
class MirrorSpeed:
    url: str
    ok: bool
    latency_ms: float | None = None
    mb_per_s: float | None = None
    size: int | None = None
    detail: str = ""


def measure(url: str, opts, sample_bytes: int = 8 << 20) -> MirrorSpeed:
    """Time a 1-byte probe (latency), then read up to sample_bytes with one ranged request (throughput)."""
    m = Mirror(url)
    t0 = time.monotonic()
    try:
        http.probe(m, opts)
    except (http.Permanent, http.Transient) as exc:
        return MirrorSpeed(url, False, detail=str(exc))
    latency = (time.monotonic() - t0) * 1000
    n = min(sample_bytes, m.size or 0)
    if n <= 0:
        return MirrorSpeed(url, True, latency, None, m.size, "empty file")
    got, t1 = 0, time.monotonic()
    try:
        opener = http.open_range(m, 0, n - 1, opts) if m.ranges else http.open_full(m, opts)
        with opener as stream:
            while got < n:
                block = stream.read(min(1 << 20, n - got))
                if not block:
                    break
                got += len(block)
    except (http.Permanent, http.Transient) as exc:
        return MirrorSpeed(url, False, latency, None, m.size, str(exc))
    secs = max(time.monotonic() - t1, 1e-6)
    note = "" if m.ranges else "ignores Range (used as one stream only)"
    return MirrorSpeed(url, True, latency, got / secs / 1e6, m.size, note)
