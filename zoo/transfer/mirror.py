"""The health of one mirror URL during one transfer: speed, failures and back-off, what its probe learnt, and why
it was dropped. The URL policy (roots, the origin) is zoo/mirrors.py."""
from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import urlparse

PROGRESS = 1 << 20  # bytes a mirror must have delivered before it is trusted with splits and races
# bytes one attempt must move for its end (a reset, a stall) not to count as a failure: a link that breaks off
# every few hundred KB keeps going, at full speed and without back-off; one that breaks off after a few KB is failing
ATTEMPT_PROGRESS = 16 << 10


@dataclass
class Mirror:
    """Health of one URL for one resource during one transfer. Thread-safe through `lock`."""

    url: str
    alive: bool = True
    reason: str = ""
    ranges: bool | None = None  # None until probed
    size: int | None = None
    validator: str | None = None  # ETag, else Last-Modified, sent as If-Range
    active: int = 0
    failures: int = 0  # consecutive transient failures
    backoff_until: float = 0.0
    rate: float | None = None  # EWMA bytes/s per connection
    bytes: int = 0
    delivered: int = 0  # bytes seen arriving (in flight included): PROGRESS of them earns splits and races
    probed: bool = False  # size, validator and first bytes known and accepted: it may be given work
    fallback: bool = False  # a default root (the origin): contacted only when the others cannot serve
    head: bytes = b""  # the first bytes of its file, from the probe (judged by content)
    modified: float | None = None  # Last-Modified as a timestamp (a tie-break between two disagreeing mirrors)
    unstable: bool = False  # its ETag changes on every request: the validator is Last-Modified or nothing
    suspect: str = ""  # lost a dispute it could not be convicted of: no new work while others can serve
    parked: bool = False  # serves another size than the one being tried: waits its turn (not alive meanwhile)
    worn: bool = False  # dropped for failing too often in a row (not evidence against its file)
    unreachable: str = ""  # never answered: why it cannot be reached (no name, refused, no route)
    variant: int = 0  # > 0: outvoted on a range by mirrors of the same size, it serves another version of the file
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    clock: Callable[[], float] = field(default=time.monotonic, repr=False)  # a fake one in the unit tests
    jitter: Callable[[float, float], float] = field(default=random.uniform, repr=False)

    @property
    def host(self) -> str:
        p = urlparse(self.url)
        return p.netloc or "local"

    def drop(self, reason: str) -> bool:
        """Stop using this mirror for the resource; True the first time."""
        with self.lock:
            first = self.alive
            self.alive, self.reason = False, self.reason or reason
            return first

    def transient(self, base: float, cap: float, retry_after: float | None = None) -> float:
        """Record a transient failure; returns the back-off applied (exponential, with full jitter)."""
        with self.lock:
            self.failures += 1
            delay = retry_after if retry_after is not None else self.jitter(0, min(cap, base * 2 ** self.failures))
            self.backoff_until = max(self.backoff_until, self.clock() + delay)
            if self.rate:
                self.rate *= 0.5  # errors make a mirror less attractive to the scheduler
            return delay

    def record(self, nbytes: int, seconds: float, completed: bool) -> None:
        """Account bytes and speed; a completed chunk or an attempt that moved ATTEMPT_PROGRESS bytes clears the
        failure streak (progress between resets is progress; a few KB per connection is not)."""
        with self.lock:
            if completed or nbytes >= ATTEMPT_PROGRESS:
                self.failures = 0
            self.bytes += nbytes
            if seconds > 0 and nbytes > 0:
                sample = nbytes / seconds
                self.rate = sample if self.rate is None else 0.6 * self.rate + 0.4 * sample

    def observe(self, nbytes: int, seconds: float) -> None:
        """Speed seen while a chunk is still in flight: enough to trust it with a split or a race."""
        if seconds > 0 and nbytes > 0:
            with self.lock:
                self.delivered += nbytes
                sample = nbytes / seconds
                self.rate = sample if self.rate is None else 0.6 * self.rate + 0.4 * sample

    def score(self) -> float:
        """Expected bytes/s of one more connection here; unmeasured mirrors get tried early."""
        if self.rate is None:
            return float("inf") if self.active == 0 else 0.0
        return self.rate
