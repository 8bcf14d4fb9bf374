"""Progress on stderr: one tqdm bar per resource (bytes, rate, ETA, mirrors in use) and one for the whole fetch."""
from __future__ import annotations

import sys
import time


class _Advance:
    """What the transfer engine calls: `advance(n)` per block, `advance.note(text)` to show mirrors in use."""

    def __init__(self, bar, overall):
        self.bar, self.overall, self._last = bar, overall, 0.0

    def __call__(self, n: int) -> None:
        self.bar.update(n)
        if self.overall is not None:
            self.overall.update(n)

    def restart(self, total: int | None) -> None:
        """The transfer starts over (another file size's turn): the bytes so far no longer count."""
        if self.overall is not None:
            self.overall.update(-self.bar.n)
        self.bar.reset(total=total)

    def note(self, text: str) -> None:
        now = time.monotonic()
        if now - self._last > 1.0:
            self._last = now
            self.bar.set_postfix_str(text, refresh=False)


class Progress:
    """Bars for one `mmf zoo fetch`; disabled with --quiet / --json."""

    def __init__(self, enabled: bool = True):
        self.enabled, self.bars, self.overall = enabled, [], None

    def _tqdm(self, **kw):
        from tqdm import tqdm

        bar = tqdm(unit="B", unit_scale=True, unit_divisor=1024, file=sys.stderr, dynamic_ncols=True,
                   mininterval=0.5, leave=True, **kw)
        self.bars.append(bar)
        return bar

    def plan(self, total: int | None, resources: int) -> None:
        """Called once the plan is known, before any byte: what the whole fetch weighs (so a 64 GB surprise is
        seen before it starts), and an overall bar when more than one resource is to be fetched."""
        if self.enabled and resources:
            from zoo.fsutil import human

            weight = human(total) if total is not None else "size unknown for some (the manifest has none)"
            sys.stderr.write(f"mmf zoo: {resources} resource(s) to fetch: {weight}\n")
        if self.enabled and resources > 1:
            self.overall = self._tqdm(total=total, desc=f"all {resources} resources", position=0)

    def bar(self, label: str, total: int | None):
        if not self.enabled:
            return None
        return _Advance(self._tqdm(total=total, desc=label[-40:]), self.overall)

    def close(self) -> None:
        for b in reversed(self.bars):
            b.close()
