"""Consensus without chunk hashes: while the transfer runs, sample ranges of what each mirror served and compare.

A check asks the serving mirror again and a second mirror for a small range (SAMPLE bytes) and compares both
with the bytes on disk. Evidence, in order: a mirror that returns different bytes for the same range is convicted
(a flipping disk or proxy); with a third mirror the minority is convicted; two self-consistent mirrors that
disagree are only a dispute: the one serving the older file (Last-Modified) becomes a suspect that gets no new
work, and both are suspected first by the repair step if the sha256 fails. Each mirror is checked on its first
SAMPLE bytes (and gets one connection until then); later checks, only without chunk hashes, are paced to keep the
extra bytes under `opts.crosscheck` of the file.
"""
from __future__ import annotations

import logging
import os
import random
import threading
from collections import Counter

from zoo.transfer.strategies import read_range
from zoo.transfer.verdicts import SUSPECT
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from zoo.transfer.context import Context

log = logging.getLogger("zoo")
SAMPLE = 64 << 10
CHECK_DEADLINE = 1.0  # seconds per sample read: a slower witness makes the check inconclusive, not the transfer slow


class CrossCheck:
    def __init__(self, t: Context):
        self.t = t
        # the first check of each mirror runs with chunk hashes too (it costs 128 KiB and catches a liar before it
        # is trusted with several chunks); paced checks only without them
        self.enabled = t.opts.crosscheck > 0
        self.paced = self.enabled and t.chunk_hashes is None
        self.budget = t.opts.crosscheck * t.journal.size
        self.spent = 0
        self.committed = 0
        self.seen: set[str] = set()  # first check started
        self.passed: set[str] = set()  # first check done without a conviction
        self.suspicion: Counter = Counter()
        self.lock = threading.Lock()
        self.rng = random.Random()

    def early(self, url: str, span: list) -> None:
        """A mirror's first SAMPLE bytes are in: check them now, before it is trusted with more work."""
        if not self.enabled or url in self.seen or span[1] - span[0] + 1 < SAMPLE:
            return
        with self.lock:
            if url in self.seen:
                return
            self.seen.add(url)
            self.spent += 2 * SAMPLE
        self.check(url, span[1] - SAMPLE + 1, span[1])
        self.passed.add(url)

    def vetted(self, m) -> bool:
        """May m get more than one connection? Yes once its first check passed, or when nobody can check it."""
        return (not self.enabled or m.url in self.passed or m.url in self.seen and not m.alive
                or sum(1 for o in self.t.pool.usable() if o.ranges) < 2)

    def after_commit(self, spans: list) -> None:
        """Called by the worker that committed a chunk with these spans."""
        if not self.paced or sum(1 for m in self.t.pool.usable() if m.ranges) < 2:
            return
        for url in dict.fromkeys(s[2] for s in spans):
            mine = [s for s in spans if s[2] == url]
            with self.lock:
                self.committed += sum(s[1] - s[0] + 1 for s in mine)
                allowed = self.budget * self.committed / max(1, self.t.journal.size)
                if url in self.seen and self.spent + 2 * SAMPLE > allowed:
                    continue
                self.seen.add(url)
                self.spent += 2 * SAMPLE
            s = max(mine, key=lambda x: x[1] - x[0])
            a = self.rng.randint(s[0], max(s[0], s[1] - SAMPLE + 1))
            self.check(url, a, min(s[1], a + SAMPLE - 1))

    def check(self, url: str, a: int, b: int) -> None:
        t, pool = self.t, self.t.pool
        served = pool.by_url(url)
        other = _witness(pool, {url})
        if served is None or not served.alive or other is None:
            return
        disk = os.pread(t.fd, b - a + 1, a)
        again = read_range(t, served, a, b, tries=2, extra=True, deadline=CHECK_DEADLINE)
        theirs = read_range(t, other, a, b, tries=2, extra=True, deadline=CHECK_DEADLINE)
        if again is not None and again != disk:
            return t.convict(served, f"served different bytes for the same range on two requests (bytes {a}-{b})")
        if theirs is None or theirs == disk:
            return
        twice = read_range(t, other, a, b, tries=2, extra=True, deadline=CHECK_DEADLINE)
        if twice is not None and twice != theirs:
            return t.convict(other, f"served different bytes for the same range on two requests (bytes {a}-{b})")
        third = _witness(pool, {url, other.url})
        vote = read_range(t, third, a, b, tries=2, extra=True, deadline=CHECK_DEADLINE) if third is not None else None
        if vote is not None and vote == theirs:
            return t.outvoted(served, f"outvoted on bytes {a}-{b} by {other.host} and {third.host}")
        if vote is not None and vote == disk:
            return t.outvoted(other, f"outvoted on bytes {a}-{b} by {served.host} and {third.host}")
        with self.lock:
            self.suspicion[served.url] += 1
            self.suspicion[other.url] += 1
        older = _older(served, other)
        log.warning("%s: %s and %s disagree on bytes %d-%d%s", t.name, served.host, other.host, a, b,
                    f"; {older.host} serves the older file and gets no new work" if older else "")
        if older is not None:
            with self.lock:
                self.suspicion[older.url] += 1
            pool.judge.pass_(older, SUSPECT, f"disagrees with another mirror on bytes {a}-{b} and serves an older file")


def _witness(pool, exclude: set):
    """The fastest usable range-capable mirror not in `exclude` (back-off ignored: one small request)."""
    ranged = [m for m in pool.usable() if m.ranges and m.url not in exclude]
    return max(ranged, key=lambda m: m.rate or 0.0) if ranged else None


def _older(x, y):
    if x.modified is None or y.modified is None or x.modified == y.modified:
        return None
    return x if x.modified < y.modified else y
