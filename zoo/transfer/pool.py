"""The mirrors of one file: parallel probes with a deadline, the size by evidence, health, back-off, verdicts.

A mirror is given work only once its probe answered with the size being tried and a first block that looks like
the file (judged by content, not by Content-Type). Which size (and which version of it) is tried is the job of
zoo/transfer/candidates.py: the manifest's size, else each size the mirrors serve in turn until the sha256 accepts
one. Default roots (the origin) are probed when the other mirrors cannot serve, disagree on the size, or their
file fails the sha256. A mirror is dropped for a permanent error, too many transient ones, or on evidence
(`convict`: the reason is kept in the journal, so a rerun does not trust it again).
"""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from zoo.errors import MirrorsExhaustedError, OfflineError
from zoo.mirrors import Source, is_local
from zoo.transfer import http
from zoo.transfer.candidates import Candidates
from zoo.transfer.mirror import Mirror
from zoo.transfer.verdicts import CONVICTED, DROPPED, UNREACHABLE, WORN, Verdicts

log = logging.getLogger("zoo")
ANSWER_GRACE = 0.5  # after the first probe answer, how long the others get before the transfer starts
ContentCheck = Callable[[bytes], "str | None"]  # the file's first bytes -> why they cannot be its start, or None


def mirrors_for(urls: list[str | Source]) -> list[Mirror]:
    """One Mirror per distinct URL. A Source under the origin is held back (`fallback`) while other URLs exist; a
    plain string is never the origin (the caller that knows says so with a Source)."""
    sources = list({s.url: s for s in (u if isinstance(u, Source) else Source(u) for u in urls)}.values())
    others = any(not s.origin for s in sources)
    return [Mirror(s.url, fallback=s.origin and others) for s in sources]


class MirrorPool:
    def __init__(self, name: str, urls: list[str | Source], opts, wake: Callable[[], None],
                 content_check: ContentCheck | None = None):
        self.name, self.opts, self.wake = name, opts, wake
        self.content_check = content_check or (lambda head: None)
        self.mirrors = mirrors_for(urls)
        self.judge = Verdicts(name, lambda: self.wake(), http.first_report)  # every verdict on a mirror
        self.files = Candidates(self)
        self._lock = threading.Condition()
        self._probing: set[str] = set()
        self._answered: list[Mirror] = []
        self.vetted: Callable[[Mirror], bool] = lambda m: True  # set by the engine: passed its first cross-check
        if opts.offline:
            remote = [m for m in self.mirrors if not is_local(m.url)]
            for m in remote:
                self.judge.pass_(m, DROPPED, "offline mode", quiet=True)
            if not self.alive():
                raise OfflineError(f"{name}: needs the network ({remote[0].url if remote else 'no URL'}) but offline "
                                   "mode is on; install it with `mmf zoo fetch KEY --from PATH` or drop --offline")

    # ---- views ----------------------------------------------------------------------------------------------
    def by_url(self, url: str) -> Mirror | None:
        return next((m for m in self.mirrors if m.url == url), None)

    def alive(self) -> list[Mirror]:
        return [m for m in self.mirrors if m.alive]

    def usable(self) -> list[Mirror]:
        """Probed, alive mirrors; suspects only when nobody else is left."""
        ok = [m for m in self.mirrors if m.alive and m.probed]
        clean = [m for m in ok if not m.suspect]
        return clean or ok

    def pick(self) -> Mirror | None:
        """The ready usable mirror (range-capable ones first) with the best expected speed, or None. Its `active`
        count is already raised (the caller lowers it): connections starting together spread over the mirrors."""
        self.maintain()
        with self._lock:
            now = time.monotonic()
            pool = self.usable()
            pool = [m for m in pool if m.ranges] or pool
            ready = [m for m in pool if m.backoff_until <= now]
            # a mirror not yet vouched for by a cross-check gets one connection (its check takes milliseconds)
            ready = [m for m in ready if m.active == 0 or self.vetted(m)]
            if not ready:
                return None
            m = max(ready, key=lambda m: (m.score(), -self.mirrors.index(m)))
            with m.lock:
                m.active += 1
            return m

    def alternative_to(self, m: Mirror) -> bool:
        """Could another mirror take over m's work at a useful speed (the condition for --min-rate)?"""
        return any(o is not m and (o.rate is None or o.rate > self.opts.min_rate) for o in self.usable())

    def can_serve(self, exclude=()) -> bool:
        """Some alive mirror not in `exclude` may still get work (now or after a probe / back-off)."""
        return any(m.url not in exclude for m in self.alive())

    # ---- probes and the size ------------------------------------------------------------------------------
    def settle(self, expected: int | None, resume: int | None = None,
               plausible: Callable[[int], str | None] | None = None, verify: bool = False) -> int:
        """Probe (preferred mirrors first, in parallel) and return the size to try first, by evidence.

        `resume`: the size of a partial download (its group goes first); `plausible(size)`: why a size cannot be
        the file (e.g. the manifest's chunk hashes need another), or None; `verify`: test the mirrors' claims
        even when they agree (see Candidates.decide)."""
        self.files.plausible = plausible or self.files.plausible
        first = [m for m in self.mirrors if not m.fallback]
        self._probe_round(first)
        with self._lock:
            claimed = {m.size for m in self._answered if m.alive}
        if not claimed or (expected is None and len(claimed) > 1):
            # nobody answered, or the given mirrors disagree on the size: the held-back roots (origin) vote too
            self._probe_round([m for m in self.mirrors if m.fallback])
        while True:
            with self._lock:
                answers = [m for m in self._answered if m.alive]
                if not answers and not self.alive():
                    raise self.exhausted()
            if answers:
                break
            self.maintain(force_fallback=True)
            with self._lock:
                self._lock.wait(0.2)
        size = self.files.decide(answers, expected, resume, verify)
        with self._lock:
            self.files.size = size
            for m in self._answered:  # answers that came in while deciding
                if m.alive and not m.probed and not m.parked:
                    self.files.classify(m)
        return size

    @property
    def size(self) -> int | None:
        """The size of the file being tried."""
        return self.files.size

    def settle_fallback(self) -> None:
        """Probe the held-back default roots now (more witnesses for a repair, or another size to try)."""
        held = [m for m in self.mirrors if m.fallback and m.alive and not m.probed]
        if held:
            self._probe_round(held)

    def _probe_round(self, mirrors: list[Mirror]) -> None:
        """Probe in parallel; return when all answered, or ANSWER_GRACE after the first answer, or at the deadline."""
        self.probe(mirrors)
        deadline = time.monotonic() + self.opts.connect_timeout + self.opts.stall_timeout
        first_answer = None
        with self._lock:
            while any(m.url in self._probing for m in mirrors):
                now = time.monotonic()
                if self._answered and first_answer is None:
                    first_answer = now
                if now > deadline or (first_answer is not None and now - first_answer > ANSWER_GRACE):
                    return
                self._lock.wait(0.05)

    def probe(self, mirrors: list[Mirror]) -> None:
        """Start a background probe of each alive, unprobed mirror that has none running."""
        for m in mirrors:
            with self._lock:
                if m.url in self._probing or not m.alive or m.probed or m in self._answered:
                    continue
                self._probing.add(m.url)
            threading.Thread(target=self._probe_one, args=(m,), name="zoo-probe", daemon=True).start()

    def _probe_one(self, m: Mirror) -> None:
        try:
            http.probe(m, self.opts)
            http.check_validator(m, self.opts)
            problem = self.content_check(m.head)
            if problem:
                self.drop(m, problem)
                return
            with self._lock:
                self._answered.append(m)
                if self.files.size is not None:
                    self.files.classify(m)
        except http.Permanent as exc:
            self.drop(m, str(exc))
        except http.Unreachable as exc:
            self.unreachable(m, exc)
        except http.Transient as exc:
            self.transient(m, exc)
        finally:
            with self._lock:
                self._probing.discard(m.url)
                self._lock.notify_all()
            self.wake()

    def maintain(self, force_fallback: bool = False) -> None:
        """Re-probe mirrors whose probe failed once their back-off is over; bring in the fallback roots when the
        preferred mirrors are all gone."""
        now = time.monotonic()
        preferred_alive = any(m.alive and not m.fallback for m in self.mirrors)
        due = [m for m in self.mirrors if m.alive and not m.probed and m not in self._answered
               and m.backoff_until <= now and m.url not in self._probing
               and (not m.fallback or not preferred_alive or force_fallback and not self._answered)]
        if due:
            self.probe(due)

    def recheck_validator(self, m: Mirror) -> bool:
        """After a validator mismatch: True when the mirror's ETag changes on every request (then it is marked
        unstable and uses Last-Modified, or no validator: the sha256 still protects the file)."""
        seen = []
        for _ in range(2):
            probe = Mirror(m.url)
            try:
                http.probe(probe, self.opts)
            except (http.Permanent, http.Transient):
                return False
            seen.append(probe.validator)
        if seen[0] == seen[1]:
            return False
        m.unstable = True
        probe = Mirror(m.url, unstable=True)
        try:
            http.probe(probe, self.opts)
            m.validator = probe.validator
        except (http.Permanent, http.Transient):
            m.validator = None
        log.info("%s: %s changes its ETag on every request; using %s", self.name, m.host,
                 "Last-Modified" if m.validator else "no validator (the sha256 still guards the file)")
        return True

    # ---- health ---------------------------------------------------------------------------------------------
    @property
    def verdicts(self) -> dict[str, str]:
        """url -> why it is proven bad for this file (the convictions of `judge`, kept in the journal)."""
        return self.judge.convicted

    def drop(self, m: Mirror, reason: str) -> None:
        self.judge.pass_(m, DROPPED, reason)

    def convict(self, m: Mirror, reason: str) -> None:
        """Drop on evidence; the reason is persisted so a rerun does not trust this mirror for this file."""
        self.judge.pass_(m, CONVICTED, reason)

    def remember(self, verdicts: dict[str, str]) -> None:
        for url, reason in verdicts.items():
            m = self.by_url(url)
            if m is not None:
                self.judge.convicted.setdefault(url, reason)  # the journal keeps the original words
                self.judge.pass_(m, CONVICTED, f"proven bad for this file in an earlier run: {reason}", quiet=True)

    def unreachable(self, m: Mirror, exc: http.Unreachable) -> None:
        """A mirror that never answered cannot be reached (no name, refused, no route): dropped without retries,
        the cause said once per host."""
        self.judge.pass_(m, UNREACHABLE, str(exc))

    def transient(self, m: Mirror, exc: Exception) -> None:
        if m.failures + 1 >= self.opts.max_failures:
            self.judge.pass_(m, WORN, f"failed {self.opts.max_failures} times in a row (last: {exc})")
            return
        delay = m.transient(self.opts.backoff_base, self.opts.backoff_cap, getattr(exc, "retry_after", None))
        log.info("%s: %s: %s; retrying in %.1fs", self.name, m.host, exc, delay)

    def exhausted(self, chunk: int | None = None) -> MirrorsExhaustedError:
        """The error when no mirror is left (the engine adds what of a partial download is kept, if any)."""
        if not self.mirrors:
            return MirrorsExhaustedError(f"{self.name}: no mirror to fetch it from (--mirror-only or "
                                         "MMF_ZOO_MIRROR_ONLY=1 without a --mirror or MMF_ZOO_MIRRORS root); pass "
                                         "--mirror URL or --from PATH")
        if all(m.unreachable for m in self.mirrors):
            causes = "; ".join(dict.fromkeys(m.unreachable for m in self.mirrors))
            return MirrorsExhaustedError(f"{self.name}: no mirror reachable: {causes}. Offline, or a proxy is "
                                         "needed? Pass --mirror URL or --from PATH")
        reasons = "; ".join(f"{m.url}: {m.reason or 'no answer'}" for m in self.mirrors) or "no URL"
        what = f" (chunk {chunk})" if chunk is not None else ""
        return MirrorsExhaustedError(f"{self.name}: no mirror left{what}: {reasons}; run again later or add "
                                     "--mirror NAME|URL")

    def report(self) -> dict[str, str]:
        return {m.url: (f"ok ({m.bytes} bytes)" if m.alive else f"unused: {m.reason}" if m.parked else
                        f"dropped: {m.reason}") for m in self.mirrors}
