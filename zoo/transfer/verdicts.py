"""Where a mirror is blamed: `Verdicts.pass_` is the one function through which every verdict on a mirror goes,
and `record` the one record of evidence (in order, with the reason) that the report and the journal read.

Kinds, from the lightest: SUSPECT (lost a dispute it could not be convicted of: no new work while others can
serve), PARKED (serves another file than the one being tried: waits its turn), WORN (failed too often in a row:
no evidence against its file), UNREACHABLE (never answered), DROPPED (a permanent error for this file: 404, a
wrong Content-Range, a changed file, not the file by content), CONVICTED (proven to serve bad bytes or the wrong
file: kept in the journal, so a rerun does not trust it again). What a conviction does to the chunks the mirror
served (refetch) is the engine's business (`Transfer.convict`); this module only judges.
"""
from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

from zoo.transfer.mirror import Mirror

log = logging.getLogger("zoo")
SUSPECT, PARKED, WORN, UNREACHABLE, DROPPED, CONVICTED = "suspect", "parked", "worn", "unreachable", "dropped", \
    "convicted"


@dataclass(frozen=True)
class Verdict:
    url: str
    kind: str
    reason: str


class Verdicts:
    def __init__(self, name: str, wake: Callable[[], None], first_report: Callable[[str], bool] | None = None):
        self.name, self.wake = name, wake
        self.first_report = first_report or (lambda host: True)  # an unreachable host is said once per process
        self.record: list[Verdict] = []
        self.convicted: dict[str, str] = {}  # url -> why it is proven bad for this file (persisted in the journal)
        self._lock = threading.Lock()

    def pass_(self, m: Mirror, kind: str, reason: str, quiet: bool = False, wake: bool = True) -> bool:
        """Judge m; True when this verdict took it out of use (the first to do so). `quiet`: not logged (a
        verdict remembered from an earlier run, or one the caller words itself); `wake=False` when the caller
        holds the pool's lock (the engine's wake takes the board's)."""
        with self._lock:
            self.record.append(Verdict(m.url, kind, reason))
            if kind == CONVICTED:
                self.convicted.setdefault(m.url, reason)
        if kind == SUSPECT:
            with m.lock:
                m.suspect = m.suspect or reason
            return False
        if kind == PARKED:
            with m.lock:
                m.alive, m.parked, m.probed, m.reason = False, True, False, reason
            return True
        if kind == WORN:
            m.worn = True
        if kind == UNREACHABLE:
            m.unreachable = reason
        first = m.drop(reason)
        if first and not quiet:
            if kind == UNREACHABLE:
                (log.warning if self.first_report(m.host) else log.debug)("%s", reason)
            else:
                log.warning("%s: dropping mirror %s: %s", self.name, m.url, reason)
        if wake:
            self.wake()
        return first

    def against(self, url: str) -> list[Verdict]:
        with self._lock:
            return [v for v in self.record if v.url == url]
