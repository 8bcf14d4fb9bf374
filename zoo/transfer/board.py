"""Which chunks are pending, in flight, done; the progress inside each, and who served which bytes. One lock.

Provenance: every byte written is recorded as a span (start, end, mirror url) of its chunk. A chunk may come from
several mirrors (a reset continued elsewhere, a split's tail); blame then needs the spans, not the chunk.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import xxhash


@dataclass
class Tail:
    """The upper part of a chunk, fetched by an idle connection to shorten the end of a transfer."""

    start: int
    end: int
    event: threading.Event = field(default_factory=threading.Event)
    data: bytes | None = None
    mirror: str = ""


@dataclass
class Partial:
    """Progress inside a chunk, kept across retries and mirrors (and, journaled in steps, across runs), so a
    reset refetches nothing."""

    start: int  # the chunk's first byte
    done: int = 0
    hasher: object = field(default_factory=xxhash.xxh3_128)
    spans: list = field(default_factory=list)  # [[start, end, url], ...] inclusive, in file order
    mirror: str = ""  # serving it right now
    since: float = 0.0  # when the current attempt started
    done_at_start: int = 0
    limit: int | None = None  # absolute last byte this connection fetches when another one took the rest
    tail: Tail | None = None
    saved: int = 0  # bytes of it recorded in the journal (durable, hash recorded)
    saved_at: float = field(default_factory=time.monotonic)

    def add(self, pos: int, n: int, url: str) -> None:
        if self.spans and self.spans[-1][2] == url and self.spans[-1][1] == pos - 1:
            self.spans[-1][1] = pos + n - 1
        else:
            self.spans.append([pos, pos + n - 1, url])

    def urls(self) -> set[str]:
        return {s[2] for s in self.spans}


class ChunkBoard:
    def __init__(self, num_chunks: int, done: set[int]):
        self.cond = threading.Condition()
        self.num_chunks = num_chunks
        self.pending = [i for i in range(num_chunks) if i not in done]
        self.done = set(done)  # journaled; re-checked by the cursor before use
        self.checked: set[int] = set()  # written in this run (or re-hashed): the cursor trusts them
        self.inflight: set[int] = set()
        self.racing: set[int] = set()
        self.partials: dict[int, Partial] = {}
        self.whole: set[int] = set()  # failed a chunk hash with several sources: refetch from one mirror only
        self.raced_bytes = 0
        self.finished = False
        self.error: BaseException | None = None
        self.rewind: int | None = None  # lowest chunk replaced after the cursor passed it
        self.cursor = 0  # the next chunk the cursor will read
        self.reading: int | None = None  # the chunk the cursor is reading now
        self._locks: dict[int, threading.Lock] = {}

    def lock_for(self, i: int) -> threading.Lock:
        with self.cond:
            return self._locks.setdefault(i, threading.Lock())

    def partial(self, i: int, start: int) -> Partial:
        with self.cond:
            return self.partials.setdefault(i, Partial(start))

    def begin(self, i: int, p: Partial, url: str) -> None:
        with self.cond:
            p.mirror, p.since, p.done_at_start = url, time.monotonic(), p.done

    def finish(self, i: int) -> None:
        """Chunk i is durable and journaled."""
        with self.cond:
            self.done.add(i)
            self.checked.add(i)
            self.partials.pop(i, None)
            self.cond.notify_all()

    def requeue(self, chunks) -> None:
        """Fetch these chunks again (first in line); the cursor rewinds if it already passed one."""
        with self.cond:
            for i in sorted(chunks, reverse=True):
                self.done.discard(i)
                self.checked.discard(i)
                self.partials.pop(i, None)
                if i not in self.pending:  # even if in flight: that attempt may be the one being rejected
                    self.pending.insert(0, i)
                if i < self.cursor or i == self.reading:
                    self.rewind = i if self.rewind is None else min(self.rewind, i)
            self.cond.notify_all()

    def fail(self, exc: BaseException) -> None:
        with self.cond:
            self.error = self.error or exc
            self.cond.notify_all()

    def stop(self) -> None:
        with self.cond:
            self.finished = True
            self.cond.notify_all()

    @property
    def stopping(self) -> bool:
        return self.finished or self.error is not None
