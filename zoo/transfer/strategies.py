"""How a chunk is fetched: by range (the normal path), as one sequential stream (a mirror that ignores Range), by
racing a slow chunk on a faster mirror, or by splitting off the upper half of a chunk for an idle connection.

Each function takes the engine as `t` (typed by zoo/transfer/context.py: what a part may read and call) and
records every byte's mirror in the chunk's spans. A race or a split is only handed to a mirror with measured progress above --min-rate.
"""
from __future__ import annotations

import logging
import os
import time

import xxhash

from zoo.transfer import http
from zoo.transfer.mirror import ATTEMPT_PROGRESS, PROGRESS, Mirror
from zoo.transfer import partials
from zoo.transfer.board import Partial, Tail
from zoo.transfer.options import BLOCK, PARTIAL_EVERY, PARTIAL_MIN
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from zoo.transfer.context import Context

log = logging.getLogger("zoo")
SPLIT_MIN = 2 << 20  # an in-flight chunk with at least this much still to come may be split
RACE_SHARE = 0.05  # raced bytes stay under this share of the file (unless the holder is stalled)


class Fatal(Exception):
    """The transfer is stopping (another worker failed, or Ctrl-C)."""


class Lost(Exception):
    """Another connection (an end-game race) finished this chunk first."""


def fetch_chunk(t: Context, i: int) -> None:
    """Fetch chunk i by range from the best mirror, continuing after resets (elsewhere if need be)."""
    board, pool = t.board, t.pool
    start, end = t.journal.chunk_range(i)
    while not board.stopping:
        held = board.partials.get(i)
        if held is not None and start + held.done > end and not held.urls() & pool.files.distrusted():
            # every byte already arrived (a run stopped between the last write and the commit): a request for
            # bytes=end+1-end would be answered 200, which reads as "the file changed on this mirror"
            if t.settle(i, held):
                return
            continue
        m = pool.pick()
        if m is None:
            if not pool.can_serve():
                raise pool.exhausted(chunk=i)
            with board.cond:
                board.cond.wait(0.05)
            continue
        if not m.ranges:
            with m.lock:
                m.active -= 1
            sequential(t, m)
            return
        partial = _partial_for(t, i, start, m)
        try:
            if not _attempt(t, i, partial, m, start, end):
                continue
        except Lost:
            return
        if start + partial.done <= end:  # stopped at the limit: another connection fetched the rest
            try:
                if not join_tail(t, i, partial):
                    continue
            except Lost:
                return
        if t.settle(i, partial):
            return


def _partial_for(t: Context, i: int, start: int, m: Mirror) -> Partial:
    """What chunk i has so far, as `m` may go on from it (kept across resets, retries and runs)."""
    board = t.board
    partial = board.partial(i, start)
    if partial.urls() & t.pool.files.distrusted():
        with board.cond:  # it holds bytes of a mirror convicted since: start the chunk again
            partial = board.partials[i] = Partial(start)
    if i in board.whole and partial.spans and partial.urls() != {m.url}:
        with board.cond:  # after a chunk-hash failure with several sources: one mirror per attempt
            partial = board.partials[i] = Partial(start)
    board.begin(i, partial, m.url)
    return partial


def _attempt(t: Context, i: int, partial: Partial, m: Mirror, start: int, end: int) -> bool:
    """One ranged request from `m` for the rest of chunk i (its `active` count is lowered here). True when it
    ended at the chunk's end or its limit; False to try again (the mirror's failure accounted). Raises Lost."""
    pool = t.pool
    t0, got0 = time.monotonic(), partial.done
    try:
        with http.open_range(m, start + partial.done, end, t.opts) as stream:
            copy(t, stream, start + partial.done, end, partial, i, m)
    except http.Changed as exc:
        if not pool.recheck_validator(m):
            pool.drop(m, str(exc))
        return False
    except http.Permanent as exc:
        pool.drop(m, str(exc))
        return False
    except http.Transient as exc:
        # an attempt that moved the chunk on is not a failure: reconnect at once and go on from where it broke
        # off (a link that resets every few hundred KB still finishes at its speed); one that moved next to
        # nothing counts toward dropping the mirror, with back-off
        got = partial.done - got0
        m.record(got, time.monotonic() - t0, completed=got >= ATTEMPT_PROGRESS)
        if got >= ATTEMPT_PROGRESS and not isinstance(exc, http.Slow):
            log.debug("%s: %s: %s after %d bytes; continuing", t.name, m.host, exc, got)
        else:
            pool.transient(m, exc)
        return False
    finally:
        with m.lock:
            m.active -= 1
    m.record(partial.done - got0, time.monotonic() - t0, completed=True)
    return True


def copy(t: Context, stream, pos: int, end: int, partial: Partial, i: int, m: Mirror) -> None:
    """Write the stream at pos.. into the file, recording the mirror; enforce --min-rate while others could serve."""
    board, lock = t.board, t.board.lock_for(i)
    window, win_t, win_n = t.opts.stall_timeout, time.monotonic(), 0
    seen_t, seen_n = win_t, 0
    while pos <= (end if partial.limit is None else partial.limit):
        data = stream.read(min(BLOCK, end - pos + 1))
        if not data:
            raise http.Transient(f"connection closed after {partial.done} bytes of the chunk")
        with lock:  # a race winner may have finished the chunk: never write over its bytes
            if i in board.done:
                raise Lost()
            limit = end if partial.limit is None else partial.limit
            if pos > limit:
                break
            data = data[: limit - pos + 1]  # a split moved the limit while this block was in flight
            try:
                os.pwrite(t.fd, data, pos)
            except OSError as exc:
                raise t.disk_error(exc, "writing") from None
            partial.hasher.update(data)
            partial.done += len(data)
            partial.add(pos, len(data), m.url)
        pos += len(data)
        t.count(len(data))
        if board.stopping:
            raise Fatal("stopped")
        now = time.monotonic()
        if partial.done - partial.saved >= PARTIAL_MIN and now - partial.saved_at >= PARTIAL_EVERY:
            partials.save(t, i, partial)  # a SIGKILL now loses at most the last step of this chunk
        if m.url not in t.checks.seen:
            t.checks.early(m.url, partial.spans[-1])
            if not m.alive:
                raise http.Permanent(m.reason)
        win_n += len(data)
        seen_n += len(data)
        now = time.monotonic()
        if now - seen_t >= 0.5:
            m.observe(seen_n, now - seen_t)
            seen_t, seen_n = now, 0
        if now - win_t >= window:
            if t.opts.min_rate and win_n < t.opts.min_rate * (now - win_t) and t.pool.alternative_to(m):
                raise http.Slow(f"{win_n / (now - win_t):.0f} B/s, under --min-rate {t.opts.min_rate:g} B/s")
            win_t, win_n = now, 0


def read_range(t: Context, m: Mirror, start: int, end: int, tries: int = 1, extra: bool = False,
               deadline: float | None = None) -> bytes | None:
    """Bytes start..end from m into memory, or None when it failed `tries` times (no mirror state changed).
    `extra`: a cross-check or repair read, counted apart from the file's own bytes; `deadline`: seconds one
    attempt may take (a cross-check must not hold up the transfer behind a slow witness)."""
    data, attempt, want = bytearray(), 0, end - start + 1
    while attempt < tries:
        t0, got0, gave_up = time.monotonic(), len(data), False
        try:
            with http.open_range(m, start + len(data), end, t.opts) as stream:
                while len(data) < want:
                    block = stream.read(min(BLOCK, want - len(data)))
                    if not block or (t.board is not None and t.board.stopping):
                        break
                    data += block
                    elapsed = time.monotonic() - t0
                    if elapsed > t.opts.stall_timeout and len(data) - got0 < t.opts.min_rate * elapsed:
                        gave_up = True  # a tarpit: this reading is not worth waiting for
                        break
                    if deadline is not None and elapsed > deadline:
                        gave_up = True
                        break
        except (http.Permanent, http.Transient):
            pass
        t.count(len(data) - got0, extra)
        if len(data) == want:
            return bytes(data)
        if t.board is not None and t.board.stopping:
            return None
        if len(data) - got0 >= ATTEMPT_PROGRESS and not gave_up:
            continue  # it broke off after real progress: go on from there, no attempt used
        time.sleep(min(0.05 * 2 ** attempt, 1.0))
        attempt += 1
    return None


# ---- end game: idle connections help with the last chunks --------------------------------------------------
def steal_candidate(t: Context):
    """("split" | "race", chunk, mirror) worth doing now, or None. Called with the board's lock held."""
    board = t.board
    if not board.inflight:
        return None
    return _split_candidate(t) or _race_candidate(t)


def _helpers(t: Context, i: int, holder: str) -> list[Mirror]:
    """Mirrors that may take over part of chunk i: measured progress (PROGRESS bytes delivered, a rate above
    --min-rate), ready, range-capable. A tarpit's first burst earns it nothing."""
    now = time.monotonic()
    return [m for m in t.pool.usable() if m.ranges and m.rate and m.rate >= t.opts.min_rate
            and max(m.delivered, m.bytes) >= PROGRESS and m.backoff_until <= now and m.url != holder]


def _stalled(t: Context, p: Partial, now: float) -> bool:
    """The holder's current attempt has run over a second below --min-rate: its chunk is raced, never split (the
    split's owner would still have to crawl to the cut)."""
    elapsed = now - p.since
    return elapsed > 1.0 and (p.done - p.done_at_start) < t.opts.min_rate * elapsed


def _split_candidate(t: Context):
    board, best, now = t.board, None, time.monotonic()
    for i in board.inflight - board.racing - board.done - board.whole:
        p = board.partials.get(i)
        if p is None or p.tail is not None or not p.mirror or _stalled(t, p, now):
            continue
        start, end = t.journal.chunk_range(i)
        left = (end if p.limit is None else p.limit) - (start + p.done) + 1
        if left >= SPLIT_MIN and (best is None or left > best[0]):
            best = (left, i, p.mirror)
    if best is None:
        return None
    helpers = _helpers(t, best[1], "") or []
    if not helpers:
        return None
    return "split", best[1], max(helpers, key=lambda m: m.score())


def _race_candidate(t: Context):
    """A chunk is raced when a measured mirror would finish it in under half the holder's remaining time, and
    raced bytes stay under RACE_SHARE of the file; a stalled holder (no progress above --min-rate) always loses
    its chunk to a race."""
    board, now, best = t.board, time.monotonic(), None
    for i in board.inflight - board.racing - board.done:
        p = board.partials.get(i)
        if p is None or not p.mirror:
            continue
        start, end = t.journal.chunk_range(i)
        left = end - start + 1 - p.done
        elapsed = now - p.since
        rate = (p.done - p.done_at_start) / elapsed if elapsed > 0.2 else None
        eta = left / rate if rate else (float("inf") if elapsed > 1.0 else None)
        stalled = _stalled(t, p, now)
        if eta is None or (left < (end - start + 1) // 8 and not stalled):
            continue
        if board.raced_bytes > RACE_SHARE * t.journal.size and not stalled:
            continue
        for m in _helpers(t, i, p.mirror):
            mine = (end - start + 1) / m.rate
            if mine * 2 < eta and (best is None or eta - mine > best[0]):
                best = (eta - mine, i, m)
    if best is None:
        return None
    start, end = t.journal.chunk_range(best[1])
    board.raced_bytes += end - start + 1
    return "race", best[1], best[2]


def split(t: Context, i: int, m: Mirror) -> None:
    """Fetch the upper half of what chunk i still lacks into memory; its owner appends it in order."""
    board = t.board
    p = board.partials.get(i)
    start, end = t.journal.chunk_range(i)
    with board.lock_for(i):
        if p is None or i in board.done or p.tail is not None:
            return
        limit = end if p.limit is None else p.limit
        pos = start + p.done
        if limit - pos + 1 < SPLIT_MIN:
            return
        cut = pos + (limit - pos + 1) // 2
        tail = Tail(cut, limit)
        p.tail, p.limit = tail, cut - 1
    with m.lock:
        m.active += 1
    try:
        t0 = time.monotonic()
        tail.data = read_range(t, m, cut, limit)
        tail.mirror = m.url
        if tail.data is not None:
            m.record(len(tail.data), time.monotonic() - t0, completed=True)
    finally:
        with m.lock:
            m.active -= 1
        tail.event.set()


def join_tail(t: Context, i: int, partial: Partial) -> bool:
    """Append the tail another connection fetched; False (and no limit) when it failed: fetch it yourself."""
    board, tail = t.board, partial.tail
    if tail is None:
        partial.limit = None
        return False
    while not tail.event.wait(0.2):
        if board.stopping:
            raise Fatal("stopped")
    with board.lock_for(i):
        partial.tail, partial.limit = None, None
        if i in board.done:
            raise Lost()
        if tail.data is None or partial.start + partial.done != tail.start or len(tail.data) != tail.end - tail.start + 1:
            return False
        try:
            os.pwrite(t.fd, tail.data, tail.start)
        except OSError as exc:
            raise t.disk_error(exc, "writing") from None
        partial.hasher.update(tail.data)
        partial.done += len(tail.data)
        partial.add(tail.start, len(tail.data), tail.mirror)
    return True


def race(t: Context, i: int, m: Mirror) -> None:
    """Fetch chunk i whole into memory from m; if it verifies and nobody finished first, it wins."""
    start, end = t.journal.chunk_range(i)
    t0 = time.monotonic()
    data = read_range(t, m, start, end)
    if data is None or i in t.board.done:
        return
    m.record(len(data), time.monotonic() - t0, completed=True)
    p = Partial(start, done=len(data), spans=[[start, end, m.url]])
    p.hasher.update(data)
    if t.settle(i, p, data):
        log.info("%s: chunk %d finished by a faster mirror (%s)", t.name, i, m.host)


def sequential(t: Context, m: Mirror) -> None:
    """A mirror that ignores Range: one stream from byte 0, keeping only chunks not yet on disk."""
    board, journal = t.board, t.journal
    with board.cond:  # this worker owns every chunk now; the others go idle
        board.pending.clear()
    try:
        with http.open_full(m, t.opts) as stream:
            for i in range(journal.num_chunks):
                start, end = journal.chunk_range(i)
                if i in board.done:
                    http.discard(stream, end - start + 1)
                    continue
                partial = Partial(start)
                with board.cond:
                    board.partials[i] = partial  # journaled in steps like a ranged chunk's
                try:
                    copy(t, stream, start, end, partial, i, m)
                except Lost:
                    http.discard(stream, end - start + 1 - partial.done)
                    continue
                if not t.settle(i, partial):
                    raise http.Permanent(f"served chunk {i} with a wrong xxh3-128 hash")
    except (http.Permanent, http.Transient) as exc:
        if isinstance(exc, http.Permanent):
            t.pool.drop(m, str(exc))
        else:
            t.pool.transient(m, exc)
        with board.cond:
            board.pending = [i for i in range(journal.num_chunks) if i not in board.done]
            board.cond.notify_all()


def chunk_digest(data) -> str:
    return xxhash.xxh3_128_hexdigest(data)
