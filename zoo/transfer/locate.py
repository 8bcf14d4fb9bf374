"""The bad-range locator: a pure function from recorded provenance and readings to explanations to try.

After a whole-file sha256 failure the engine knows, for every byte range on disk, which mirror served it
(`Span`), and it asks other mirrors for the same ranges. `locate` turns those readings into hypotheses: "these
mirrors lied; replace the ranges they served with these other readings". The engine tries them in order against
the sha256, which is the only proof there is without chunk hashes. Ranges on which every reading agrees are
vouched for and never swapped. No I/O, no threads: unit-tested alone (tests/test_zoo_locate.py).
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass


@dataclass(frozen=True)
class Span:
    start: int  # inclusive
    end: int  # inclusive
    url: str  # the mirror whose bytes are on disk


@dataclass(frozen=True)
class Hypothesis:
    blamed: frozenset  # mirror urls it assumes lied
    swaps: tuple  # ((start, end, url whose reading replaces the disk bytes), ...) sorted by start


def disputed(spans: list[Span], readings: dict) -> dict[tuple[int, int], tuple[str, dict]]:
    """(start, end) -> (server on disk, {digest: set(urls)}) for the ranges where readings differ."""
    out = {}
    for s in spans:
        groups: dict[str, set] = defaultdict(set)
        for url, digest in readings.get((s.start, s.end), {}).items():
            groups[digest].add(url)
        if len(groups) > 1:
            out[(s.start, s.end)] = (s.url, dict(groups))
    return out


def outvoted(conflicts: dict) -> set[str]:
    """Mirrors on the losing side of a strict majority (at least two agreeing readings) somewhere."""
    losers: set[str] = set()
    for _server, groups in conflicts.values():
        ranked = sorted(groups.values(), key=len, reverse=True)
        if len(ranked[0]) >= 2 and len(ranked[0]) > len(ranked[1]):
            for group in ranked[1:]:
                losers |= group
    return losers


def locate(spans: list[Span], readings: dict, order: list[str] = ()) -> list[Hypothesis]:
    """Hypotheses to test against the sha256, most likely first.

    Args:
        spans: who served each range on disk.
        readings: (start, end) -> {url: digest}; the disk's own digest is listed under the span's url.
        order: mirrors to suspect first (caught by a cross-check, older file), before the rest.
    Returns:
        First "every outvoted mirror lied" (majority, with three or more readings), then one mirror at a time in
        `order`; a hypothesis is left out when some range its mirrors served has no reading from anyone else.
    """
    conflicts = disputed(spans, readings)
    if not conflicts:
        return []
    involved = sorted({u for _s, groups in conflicts.values() for us in groups.values() for u in us})
    ranked = [u for u in order if u in involved] + [u for u in involved if u not in order]
    candidates = ([frozenset(outvoted(conflicts))] if outvoted(conflicts) else []) + [frozenset({u}) for u in ranked]
    out, seen = [], set()
    for blamed in candidates:
        if blamed in seen:
            continue
        seen.add(blamed)
        swaps = _swaps(conflicts, blamed)
        if swaps:
            out.append(Hypothesis(blamed, tuple(swaps)))
    return out


def _swaps(conflicts: dict, blamed: frozenset) -> list[tuple[int, int, str]] | None:
    swaps = []
    for (start, end), (server, groups) in sorted(conflicts.items()):
        if server not in blamed:
            continue  # the disk holds an unblamed mirror's bytes: keep them
        choices = [(len(urls - blamed), digest, sorted(urls - blamed)) for digest, urls in groups.items()
                   if server not in urls and urls - blamed]
        if not choices:
            return None  # nobody else vouched for anything here: this hypothesis cannot be built
        best = max(choices)
        swaps.append((start, end, best[2][0]))
    return swaps
