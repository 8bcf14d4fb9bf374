"""Progress on stderr: one tqdm bar per resource (bytes, rate, ETA, mirrors in use) and one for the whole fetch;
or, where stderr is not a terminal (a training job's log), one line per resource every PERIOD seconds and when
it is done, so hours of download are visible without filling a log with redraws (`Progress.auto`)."""
from __future__ import annotations

import logging
import sys
import threading
import time

from zoo.fsutil import human

PERIOD = 30.0  # seconds between two progress lines of a resource in a non-interactive log


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


class _Lines:
    """The `_Advance` interface as periodic lines: 'LABEL: 1.2 GiB of 40.0 GiB (3%), 25.1 MiB/s, ETA 26 min'."""

    def __init__(self, label: str, total: int | None, write, period: float):
        self.label, self.total, self.write, self.period = label, total, write, period
        self.done, self.t0, self._last, self._lock = 0, time.monotonic(), time.monotonic(), threading.Lock()
        self.said_done = False

    def __call__(self, n: int) -> None:
        with self._lock:
            self.done += n
            now = time.monotonic()
            finished = bool(self.total) and self.done >= self.total and not self.said_done
            if not finished and now - self._last < self.period:
                return
            self._last, self.said_done = now, self.said_done or finished
        self.write(self.line(final=finished))

    def line(self, final: bool = False) -> str:
        took = max(1e-6, time.monotonic() - self.t0)
        rate = self.done / took
        of = f" of {human(self.total)} ({100 * self.done / self.total:.0f}%)" if self.total else ""
        if final:
            return f"{self.label}: {human(self.done)} in {took:.0f} s ({human(rate)}/s)"
        left = (self.total - self.done) / rate if self.total and rate > 0 else None
        eta = f", ETA {_duration(left)}" if left is not None else ""
        return f"{self.label}: {human(self.done)}{of}, {human(rate)}/s{eta}"

    def restart(self, total: int | None) -> None:
        with self._lock:
            self.total, self.done, self.t0, self.said_done = total, 0, time.monotonic(), False

    def note(self, text: str) -> None:
        pass  # the mirrors in use change too often for a log line

    def close(self) -> None:
        if self.done and not self.said_done:
            self.said_done = True
            self.write(self.line(final=True))


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _say(text: str) -> None:
    """A progress line: through the `zoo` logger where a command or a run set it up (zoo.logfmt's one console format,
    and a run's train.log), else plainly on stderr (a library caller that configured no logging)."""
    log = logging.getLogger("zoo")
    if log.handlers:
        log.info(text)
    else:
        print(f"zoo: {text}", file=sys.stderr, flush=True)


class Progress:
    """Bars for one `mmf zoo fetch`; disabled with --quiet / --json. `lines=True`: periodic lines instead."""

    def __init__(self, enabled: bool = True, lines: bool = False, period: float | None = None, write=None):
        self.enabled, self.bars, self.overall = enabled, [], None
        self.lines, self.period = lines, PERIOD if period is None else period
        self.write = write or _say

    @classmethod
    def auto(cls, stream=None) -> "Progress":
        """Bars on a terminal, periodic lines elsewhere (what `zoo.fetch` shows, hence `mmf train`'s fetch)."""
        stream = stream or sys.stderr
        tty = hasattr(stream, "isatty") and stream.isatty()
        return cls(enabled=True, lines=not tty)

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
            _say(f"{resources} resource(s) to fetch: {weight}")
        if self.enabled and resources > 1 and not self.lines:
            self.overall = self._tqdm(total=total, desc=f"all {resources} resources", position=0)

    def bar(self, label: str, total: int | None):
        if not self.enabled:
            return None
        if self.lines:
            advance = _Lines(label, total, self.write, self.period)
            self.bars.append(advance)
            return advance
        return _Advance(self._tqdm(total=total, desc=label[-40:]), self.overall)

    def close(self) -> None:
        for b in reversed(self.bars):
            b.close()
