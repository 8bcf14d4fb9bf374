"""Chunks in flight across runs: journal a chunk's prefix in steps, and take it back on the next run.

A step is recorded only after the data file is fdatasynced, with the xxh3-128 of the prefix and who served which
bytes of it (zoo/journal.py's invariant); on resume the prefix is re-hashed from disk and used only if it matches
and no byte of it came from a mirror convicted since. The chunk's hasher then goes on from there, so the whole
chunk is still checked against its manifest hash (when there is one) and cross-checked like any other.
"""
from __future__ import annotations

import logging
import os
import time

import xxhash

from zoo.transfer.board import Partial
from zoo.transfer.options import BLOCK
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from zoo.transfer.context import Context

log = logging.getLogger("zoo")


def save(t: Context, i: int, partial: Partial) -> None:
    """Journal what chunk i has so far (called by the connection fetching it, and once the transfer stopped)."""
    board, journal = t.board, t.journal
    with board.lock_for(i):  # writes to the chunk happen under this lock: the snapshot is consistent
        if i in board.done or partial.done <= partial.saved or partial.urls() & t.pool.files.distrusted():
            return
        done, digest, spans = partial.done, partial.hasher.copy().hexdigest(), [list(s) for s in partial.spans]
    try:
        os.fdatasync(t.fd)  # the bytes first, then the record that claims them
        if journal.commit_partial(i, done, digest, spans):
            partial.saved = max(partial.saved, done)
    except OSError as exc:  # a full disk shows up where the bytes are written; a step is merely not recorded
        log.debug("%s: chunk %d not journaled: %s", t.name, i, exc)
    partial.saved_at = time.monotonic()


def save_all(t: Context) -> None:
    """After the workers stopped (Ctrl-C, SIGTERM, an error): journal every chunk in flight."""
    with t.board.cond:
        inflight = list(t.board.partials.items())
    for i, partial in inflight:
        save(t, i, partial)


def resume(t: Context, journal) -> int:
    """Put the journaled prefixes of unfinished chunks back on the board; returns the bytes taken back."""
    verdicts, taken, dropped = t.pool.files.distrusted(), 0, False
    for i, (done, digest, spans) in sorted(journal.partials.items()):
        start = journal.chunk_range(i)[0]
        hasher, pos = xxhash.xxh3_128(), start
        convicted = i in journal.chunks or bool({s[2] for s in spans} & verdicts)
        while not convicted and pos < start + done:
            data = os.pread(t.fd, min(BLOCK * 4, start + done - pos), pos)
            if not data:
                break
            hasher.update(data)
            pos += len(data)
        if convicted or pos < start + done or hasher.hexdigest() != digest:
            if not convicted:
                log.info("%s: the partial chunk %d on disk does not match its journal record; fetching it again",
                         t.name, i)
            journal.forget_partial(i)
            dropped = True
            continue
        t.board.partials[i] = Partial(start, done=done, hasher=hasher, spans=[list(s) for s in spans], saved=done)
        taken += done
    if dropped:
        journal.commit()
    return taken
