"""The in-order verify cursor: reads finished chunks back in file order (page cache), re-checks chunks resumed
from an earlier run against their journal hash, and feeds the whole-file sha256 and the sink (streaming
extraction). When a chunk it already passed is replaced (a mirror convicted mid-transfer), it hashes again from
the start and stops the sink: the archive is then extracted after verification instead.
"""
from __future__ import annotations

import hashlib
import logging
import os

import xxhash

from zoo.transfer.options import BLOCK
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from zoo.transfer.context import Context

log = logging.getLogger("zoo")


def wait_for(t: Context, i: int) -> None:
    board = t.board
    with board.cond:
        while i not in board.done and board.error is None:
            if i not in board.inflight and not t.pool.can_serve():
                board.error = t.pool.exhausted(chunk=i)  # nobody is left to fetch it
                break
            board.cond.wait(0.5)
        if board.error is not None:
            raise board.error


def hash_on_disk(fd: int, start: int, end: int) -> str:
    h, pos = xxhash.xxh3_128(), start
    while pos <= end:
        data = os.pread(fd, min(BLOCK * 4, end - pos + 1), pos)
        if not data:
            break
        h.update(data)
        pos += len(data)
    return h.hexdigest()


def run_cursor(t: Context) -> str:
    """The sha256 of the whole file, once every chunk is in place."""
    board, journal = t.board, t.journal
    sha, buf, i = hashlib.sha256(), bytearray(BLOCK), 0
    while i < journal.num_chunks:
        wait_for(t, i)
        start, end = journal.chunk_range(i)
        if i not in board.checked:
            # resumed from an earlier run: trust it only if the bytes on disk still hash as recorded
            if hash_on_disk(t.fd, start, end) != journal.chunks.get(i):
                log.warning("%s: chunk %d on disk does not match its journal entry; refetching", t.name, i)
                journal.forget(i)
                journal.commit()
                board.requeue([i])
                wait_for(t, i)
            with board.cond:
                board.checked.add(i)
        with board.cond:
            board.reading = i
        pos = start
        while pos <= end:
            k = os.preadv(t.fd, [memoryview(buf)[: min(BLOCK, end - pos + 1)]], pos)
            view = memoryview(buf)[:k]
            sha.update(view)
            t.feed(view)
            pos += k
        with board.cond:
            board.reading = None
            if board.rewind is not None:
                board.rewind, board.cursor, i = None, 0, 0
                sha = hashlib.sha256()
                t.stop_sink("bytes already streamed were replaced")
                continue
            board.cursor = i + 1
            if board.cursor == journal.num_chunks:
                board.finished = True  # atomically with the rewind check: a later conviction cannot requeue
        i += 1
    return sha.hexdigest()
