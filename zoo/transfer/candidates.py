"""Which file to fetch when the mirrors do not serve the same one: candidates tried in turn, the sha256 decides.

With a size in the manifest, that size is the only candidate. Without one (MMF's manifests have none), neither a
mirror nor a majority decides: the answers are grouped by size, and each group gets its turn until the sha256
accepts its file (`next_group`). The order is set by evidence from a few KB (`rank`): each mirror is asked for
the last bytes of the size it claims and of every smaller candidate; one that cannot serve the end of its own
claim lied in its Content-Range total and is dropped (its claim costs no transfer and no disk space); a smaller
size whose last bytes equal a larger file's there is most likely a truncated copy and goes after it; the rest go
smallest first, which bounds two candidates by the smaller file plus the right one (<= 2x the archive).
Likewise, a mirror outvoted on a range by two agreeing mirrors of the same size serves another version of the
file (or lies): it is set aside as a candidate of its own (`park_variant`), not convicted, since number is not
proof. A candidate is (size, variant); its mirrors are `parked` (not alive) until its turn.
"""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from zoo.transfer import http
from zoo.fsutil import human
from zoo.transfer.mirror import Mirror
from zoo.transfer.verdicts import DROPPED, PARKED

log = logging.getLogger("zoo")
TAIL = 4096  # bytes read at the end of a claimed size


class Candidates:
    """The file being tried (`size`, `variant`) and the others in the order of their turn. Owned by the pool;
    `classify` runs under the pool's lock."""

    def __init__(self, pool):
        self.pool = pool
        self.size: int | None = None
        self.variant = 0
        self.fixed = False  # the manifest gave the size: no other size is ever tried
        self.reason = ""  # why this size (for messages)
        self.queue: list[tuple[int, int]] = []  # (size, variant) of the other files, in the order of their turn
        self.tried: list[str] = []  # "the 1.2 MiB file of host" for each file that failed
        self.plausible: Callable[[int], str | None] = lambda size: None

    def decide(self, answers: list[Mirror], expected: int | None, resume: int | None, verify: bool = False) -> int:
        """The size to try first among the probe answers; the other sizes' mirrors are parked. `verify`: test the
        claims even when all mirrors agree (before a disk-space demand is made of them)."""
        pool = self.pool
        if expected is not None:
            self.fixed, self.reason = True, f"the manifest says {expected}"
            for m in answers:
                if m.size != expected:
                    pool.drop(m, f"serves {m.size} bytes, {self.reason}")
                else:
                    m.probed = True
            if not any(m.probed for m in answers):
                raise pool.exhausted()
            return expected
        groups: dict[int, list[Mirror]] = {}
        for m in answers:
            groups.setdefault(m.size, []).append(m)
        why = {s: self.plausible(s) for s in groups}
        if any(w is None for w in why.values()):  # none plausible: the manifest's chunk hashes are reported wrong
            for s in [s for s, w in why.items() if w is not None]:
                for m in groups.pop(s):
                    pool.drop(m, f"serves {s} bytes; {why[s]}")
        order = rank(groups, pool.opts, pool.drop) if len(groups) > 1 or verify else list(groups)
        if not order:
            raise pool.exhausted()
        if resume in order:  # a partial download of that size exists: its group goes on first
            order.remove(resume)
            order.insert(0, resume)
        size, self.queue = order[0], [(s, 0) for s in order[1:]]
        self.reason = (f"{len(groups[size])} mirror(s) serve {size}" if not self.queue else
                       f"sizes differ ({', '.join(str(s) for s in order)} bytes): {size} is tried first")
        if self.queue:
            log.info("%s: the mirrors serve %d different sizes; trying %s (%s) first, the sha256 decides",
                     pool.name, len(order), human(size), ", ".join(m.host for m in groups[size]))
        for s, members in groups.items():
            for m in members:
                if s == size:
                    m.probed = True
                else:
                    pool.judge.pass_(m, PARKED, f"serves {m.size} bytes; the {size}-byte file was tried first")
        return size

    def classify(self, m: Mirror) -> None:
        """A probe answer that came once the size being tried was known (pool lock held)."""
        if m.size == self.size:
            m.probed, m.variant = True, self.variant
        elif self.fixed:
            self.pool.judge.pass_(m, DROPPED, f"serves {m.size} bytes, {self.reason}", quiet=True, wake=False)
        elif self.plausible(m.size) is not None:
            self.pool.judge.pass_(m, DROPPED, f"serves {m.size} bytes; {self.plausible(m.size)}", quiet=True,
                                  wake=False)
        else:
            self.pool.judge.pass_(m, PARKED, f"serves {m.size} bytes; the {self.size}-byte file was tried first",
                                  wake=False)
            if (m.size, 0) not in self.queue:
                self.queue.append((m.size, 0))

    def park_variant(self, m: Mirror, reason: str) -> bool:
        """Set m aside as serving another version of the file; False when it was not in use anyway."""
        with self.pool._lock:
            if not m.alive or m.parked:
                return False
            m.variant = self.variant + 1
            self.pool.judge.pass_(m, PARKED, f"{reason}; its file is tried if theirs fails the sha256", wake=False)
            key = (self.size, m.variant)
            if key in self.queue:
                self.queue.remove(key)
            self.queue.insert(0, key)  # the same size as the file being tried: the likeliest other version
        return True

    def verify(self) -> bool:
        """Test the claim of the mirrors serving the file being tried (it does not fit on the disk): False when
        none of them can serve the end of it (they are dropped)."""
        if self.fixed:
            return True
        mine = [m for m in self.members((self.size, self.variant), parked=False) if m.alive]
        return bool(rank({self.size: mine}, self.pool.opts, self.pool.drop)) if mine else False

    def distrusted(self) -> set[str]:
        """Mirrors whose bytes must not be mixed into the file being fetched (convicted, or serving another)."""
        return set(self.pool.verdicts) | {m.url for m in self.pool.mirrors if m.parked}

    def has_next(self) -> bool:
        return any(self.members(k) for k in self.queue)

    def next_group(self, why: str) -> int:
        """The file being tried is wrong (`why`): convict its mirrors, give the next candidate its turn."""
        pool = self.pool
        hosts = self.members((self.size, self.variant), parked=False)
        self.tried.append(f"the {human(self.size)} file of {', '.join(m.host for m in hosts) or 'no mirror'}")
        for m in hosts:
            pool.convict(m, why)
        keys = [k for k in dict.fromkeys(self.queue) if self.members(k)]
        if len({s for s, _ in keys}) > 1:  # re-ranked: sizes may have joined since (the origin, probed late)
            by_size: dict[int, list[Mirror]] = {}
            for k in keys:
                by_size.setdefault(k[0], []).extend(self.members(k))

            def refuted(m: Mirror, reason: str) -> None:
                with m.lock:
                    m.alive, m.parked, m.reason = True, False, ""
                pool.drop(m, reason)

            order = rank(by_size, pool.opts, refuted)
            keys = sorted((k for k in keys if k[0] in order and self.members(k)),
                          key=lambda k: (order.index(k[0]), k[1]))
        if not keys:
            raise pool.exhausted()
        with pool._lock:
            (self.size, self.variant), self.queue = keys[0], keys[1:]
            self.reason = f"{self.tried[-1]} failed; {self.size} bytes are tried now"
            for m in self.members(keys[0]):
                with m.lock:
                    m.alive, m.parked, m.reason, m.probed = True, False, "", True
                    m.failures, m.backoff_until = 0, 0.0
        return self.size

    def members(self, key: tuple[int, int], parked: bool = True) -> list[Mirror]:
        """The parked mirrors of a waiting candidate, or (parked=False) those that were given the current one."""
        return [m for m in self.pool.mirrors if (m.size, m.variant) == key and m.parked == parked
                and m.url not in self.pool.verdicts and (parked or m.probed)]

    def disproved(self) -> bool:
        """Every mirror of the file being tried was dropped, none merely for failing often (then the partial
        download is worth keeping for a rerun, not giving up for another candidate)."""
        mine = [m for m in self.pool.mirrors if (m.size, m.variant) == (self.size, self.variant) and not m.parked]
        return bool(mine) and not any(m.alive or m.worn for m in mine)


def rank(groups: dict[int, list[Mirror]], opts, drop) -> list[int]:
    """The sizes of `groups` (size -> its mirrors) in the order to try them; `drop(mirror, reason)` is called for
    each mirror whose claim is disproved (and it is removed from its group)."""
    sizes = sorted(groups)
    # a mirror that ignores Range cannot be asked (its claim stands untested, like its whole file)
    asks = [(m, s) for size in sizes for m in groups[size] if m.ranges for s in sizes if 0 < s <= size]
    got: dict[tuple[str, int], object] = {}

    def ask(m: Mirror, s: int) -> None:
        got[(m.url, s)] = tail(m, s, opts)

    threads = [threading.Thread(target=ask, args=job, name="zoo-tail", daemon=True) for job in asks]
    for th in threads:
        th.start()
    deadline = time.monotonic() + opts.connect_timeout + opts.stall_timeout
    for th in threads:
        th.join(max(0.0, deadline - time.monotonic()))  # an answer not in by then is no evidence either way
    for size in sizes:
        for m in list(groups[size]):
            answer = got.get((m.url, size))
            if isinstance(answer, http.Permanent):
                drop(m, f"claims {size} bytes but cannot serve its last bytes ({answer})")
                groups[size].remove(m)
    live = [s for s in sizes if groups[s]]
    truncated = set()
    for a in live:
        mine = {got.get((m.url, a)) for m in groups[a]}
        theirs = {got.get((m.url, a)) for b in live if b > a for m in groups[b]}
        if any(isinstance(x, bytes) and x in theirs for x in mine):
            truncated.add(a)
    return sorted(live, key=lambda s: (s in truncated, s))


def tail(m: Mirror, size: int, opts):
    """The last TAIL bytes of the first `size` bytes of m's file, or the exception that prevented reading them."""
    start = max(0, size - TAIL)
    try:
        with http.open_range(m, start, size - 1, opts) as stream:
            return http.read_exactly(stream, size - start, opts)
    except (http.Permanent, http.Transient) as exc:
        return exc
