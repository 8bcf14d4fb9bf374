"""A partial download journaled under another chunk size, re-expressed in the chunk size the manifest requires.

Only needed when the manifest's chunk hashes fix the chunking (otherwise the engine simply keeps the partial's
chunk size: it is a unit of resume, not of the result). Every kept byte is re-verified: first each old record (a
whole chunk, or the journaled prefix of one in flight) is re-hashed from disk and dropped if it no longer matches;
then each new chunk that the verified bytes cover from its start is hashed from disk, a whole one checked against
the manifest's hash, a partly covered one kept as a partial record (its whole chunk is checked when it completes).
Bytes that do not start a new chunk's contiguous prefix cannot be journaled and are fetched again; the count is
returned so the caller can say so.
"""
from __future__ import annotations

import os

import xxhash

from zoo.journal import Journal
from zoo.transfer.options import BLOCK


def _hash(fd: int, start: int, end: int) -> str | None:
    """xxh3-128 of bytes start..end (inclusive) on disk, or None when the file is shorter."""
    hasher, pos = xxhash.xxh3_128(), start
    while pos <= end:
        data = os.pread(fd, min(BLOCK * 4, end - pos + 1), pos)
        if not data:
            return None
        hasher.update(data)
        pos += len(data)
    return hasher.hexdigest()


def verified_pieces(old: Journal, fd: int, distrusted: set[str]) -> list[tuple[int, int, list]]:
    """(start, end, spans) of every old record whose bytes still hash as journaled, in file order."""
    pieces = []
    records = [(i, old.chunk_range(i)[0], old.chunk_range(i)[1], d, old.spans.get(i, []))
               for i, d in old.chunks.items()]
    records += [(i, old.chunk_range(i)[0], old.chunk_range(i)[0] + p[0] - 1, p[1], p[2])
                for i, p in old.partials.items() if i not in old.chunks]
    for _, start, end, digest, spans in sorted(records, key=lambda r: r[1]):
        if {s[2] for s in spans} & distrusted or _hash(fd, start, end) != digest:
            continue
        pieces.append((start, end, spans))
    return pieces


def _covered(pieces: list[tuple[int, int, list]], start: int, end: int) -> tuple[int, list]:
    """How many bytes from `start` (up to `end`) the pieces cover contiguously, and the spans of those bytes."""
    pos, spans = start, []
    for a, b, piece_spans in pieces:
        if b < pos or a > end:
            continue
        if a > pos:
            break
        for s0, s1, url in piece_spans:
            lo, hi = max(s0, pos), min(s1, end)
            if lo <= hi:
                spans.append([lo, hi, url])
        pos = min(b, end) + 1
        if pos > end:
            break
    return pos - start, spans


def rechunk(old: Journal, chunk_size: int, fd: int, chunk_hashes: list[str] | None,
            distrusted: set[str]) -> tuple[Journal, int]:
    """A journal of the same file under `chunk_size`, holding what of `old` verifies; and the bytes lost."""
    new = Journal(old.path, old.size, chunk_size, old.sha256, validators=dict(old.validators),
                  verdicts=dict(old.verdicts))
    pieces = verified_pieces(old, fd, distrusted)
    for k in range(new.num_chunks):
        start, end = new.chunk_range(k)
        done, spans = _covered(pieces, start, end)
        if done <= 0:
            continue
        digest = _hash(fd, start, start + done - 1)
        if digest is None:
            continue
        if done == end - start + 1:
            if chunk_hashes is None or (k < len(chunk_hashes) and chunk_hashes[k] == digest):
                new.chunks[k], new.spans[k] = digest, spans
        else:
            new.partials[k] = (done, digest, spans)
    return new, max(0, old.kept_bytes() - new.kept_bytes())
