"""The one extraction-size policy (decompression bombs), for files and streams, for the API and for fetch.

Order: an explicit `max_bytes`; else MMF_ZOO_MAX_EXTRACT_BYTES; else 1.5x the manifest's `extracted_size` (+1 MiB);
else 50x the archive size, never below 64 MiB. A stream whose size is unknown grows its cap with the bytes
received (50x so far plus 64 MiB).
"""
from __future__ import annotations

import os

from zoo.errors import ZooError
from zoo.fsutil import human

LIMIT_ENV = "MMF_ZOO_MAX_EXTRACT_BYTES"
RATIO = 50             # MMF's LMDB features hold zero padding: 20-40x is seen in real data
DECLARED_SLACK = 1.5
FLOOR = 64 << 20       # tiny archives of padding-heavy files are fine


def env_limit() -> int | None:
    env = os.environ.get(LIMIT_ENV, "").strip()
    if not env:
        return None
    try:
        value = int(env)
    except ValueError:
        raise ZooError(f"{LIMIT_ENV}={env!r} is not a byte count; set it to an integer or unset it") from None
    if value <= 0:
        raise ZooError(f"{LIMIT_ENV}={env!r} must be a positive byte count; set it to an integer or unset it")
    return value


def extract_limit(archive_size: int | None, declared_size: int | None = None,
                  max_bytes: int | None = None) -> tuple[int | None, str]:
    """(cap in bytes, where it comes from); (None, ...) means "grow with the bytes received" (streams only)."""
    if max_bytes is not None:
        return int(max_bytes), "max_bytes"
    env = env_limit()
    if env is not None:
        return env, LIMIT_ENV
    if declared_size:
        # the manifest says how big the tree is: no floor, a small archive must not grow past its own claim
        return int(declared_size * DECLARED_SLACK) + (1 << 20), \
            f"{DECLARED_SLACK}x the declared size {human(declared_size)} + 1 MiB"
    if archive_size is None:
        return None, f"{RATIO}x the bytes received plus {human(FLOOR)}"
    return max(RATIO * archive_size, FLOOR), f"{RATIO}x the archive size {human(archive_size)}"


def override_hint() -> str:
    return f"set {LIMIT_ENV}=<bytes> (or pass a larger max_bytes)"
