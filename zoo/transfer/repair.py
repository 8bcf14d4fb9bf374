"""After a whole-file sha256 mismatch without chunk hashes: find the bad ranges and swap in good ones.

The ranges each mirror served (the journal's spans) are compared with other mirrors, suspects first (caught by a
cross-check, older file, fewest bytes served: the cheapest hypothesis first), with retries (a flaky good mirror is
still a good witness) and a second opinion where there is a third mirror. `locate` turns the readings into
hypotheses; the first one whose swaps give the manifest's sha256 is applied, and only the mirrors it blames are
convicted. Alternative readings go to sparse side files next to the partial download.
"""
from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

from zoo.errors import HashMismatchError, MirrorsExhaustedError
from zoo.transfer.cursor import hash_on_disk
from zoo.transfer.locate import Span, locate
from zoo.transfer.options import BLOCK
from zoo.transfer.strategies import chunk_digest, read_range
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from zoo.transfer.context import Context

log = logging.getLogger("zoo")


class _Alternatives:
    """Readings that differ from the disk, one sparse side file per witness mirror."""

    def __init__(self, part: Path):
        self.part, self.files = part, {}

    def put(self, url: str, start: int, data: bytes) -> None:
        if url not in self.files:
            path = self.part.with_name(f"{self.part.name}.alt{len(self.files)}")
            self.files[url] = (path, os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600))
        os.pwrite(self.files[url][1], data, start)

    def read(self, url: str, start: int, end: int) -> bytes:
        return os.pread(self.files[url][1], end - start + 1, start)

    def close(self) -> None:
        for path, fd in self.files.values():
            os.close(fd)
            path.unlink(missing_ok=True)


def _sha_with(t: Context, alt: _Alternatives, swaps) -> str:
    sha, pos, size = hashlib.sha256(), 0, t.journal.size

    def copy_part(upto: int) -> None:
        nonlocal pos
        while pos < upto:
            data = os.pread(t.fd, min(BLOCK * 4, upto - pos), pos)
            sha.update(data)
            pos += len(data)

    for start, end, url in swaps:
        copy_part(start)
        sha.update(alt.read(url, start, end))
        pos = end + 1
    copy_part(size)
    return sha.hexdigest()


def _apply(t: Context, alt: _Alternatives, hyp) -> None:
    journal = t.journal
    touched = set()
    for start, end, url in hyp.swaps:
        os.pwrite(t.fd, alt.read(url, start, end), start)
        i = start // journal.chunk_size
        touched.add(i)
        journal.spans[i] = [[a, b, url] if (a, b) == (start, end) else [a, b, u] for a, b, u in journal.spans[i]]
    os.fsync(t.fd)
    for i in touched:
        journal.chunks[i] = hash_on_disk(t.fd, *journal.chunk_range(i))
    journal.commit()


def repair(t: Context, digest: str) -> str:
    """The manifest's sha256 after repairing the partial file, or HashMismatchError (the caller deletes the partial
    file, unless another size is still to be tried), or MirrorsExhaustedError (partial kept: a mirror not asked
    yet may still repair it)."""
    journal, pool = t.journal, t.pool
    spans = [Span(a, b, u) for i in sorted(journal.spans) for a, b, u in journal.spans[i]]
    servers = list(dict.fromkeys(s.url for s in spans))
    if t.chunk_hashes is None:
        pool.settle_fallback()  # the origin is another witness now, if it was held back
    witnesses = [m for m in pool.mirrors if m.alive and m.probed and m.ranges]
    if t.chunk_hashes is not None or len({m.url for m in witnesses} | set(servers)) < 2:
        raise HashMismatchError(
            f"{t.name}: sha256 is {digest}, the manifest says {t.sha256}; "
            + ("every chunk matched its chunk hash, so the manifest's hashcode is likely outdated"
               if t.chunk_hashes is not None else "only one mirror was available, so the bad bytes cannot be located")
            + _tried(t) + "; the partial file was deleted, run the fetch again (add a --mirror to help)")
    served = {u: sum(s.end - s.start + 1 for s in spans if s.url == u) for u in servers}

    def rank(u):
        m = pool.by_url(u)
        return (-t.checks.suspicion[u], bool(m and m.alive and not m.suspect), (m.modified or 0) if m else 0, served[u])

    order = sorted(servers, key=rank)
    log.warning("%s: sha256 mismatch; comparing the ranges each mirror served with other mirrors", t.name)
    readings = {(s.start, s.end): {s.url: hash_on_disk(t.fd, s.start, s.end)} for s in spans}
    alt, tried = _Alternatives(t.part), set()
    try:
        for suspect in order:
            for s in (s for s in spans if s.url == suspect):
                _ask(t, s, readings[(s.start, s.end)], [m for m in witnesses if m.url != suspect], alt)
            for hyp in locate(spans, readings, order):
                if hyp in tried:
                    continue
                tried.add(hyp)
                if _sha_with(t, alt, hyp.swaps) == t.sha256:
                    _apply(t, alt, hyp)
                    for url in sorted(hyp.blamed):
                        m = pool.by_url(url)
                        if m is not None:
                            t.convict(m, f"served {sum(b - a + 1 for a, b, _ in hyp.swaps)} bytes that failed the "
                                         "sha256 (its ranges, replaced by other mirrors' bytes, made the file match)",
                                      requeue=False)
                    t.stop_sink("the streamed bytes were repaired")
                    return t.sha256
    finally:
        alt.close()
    unasked = [m.url for m in pool.mirrors if m.alive and m not in witnesses]
    if unasked:  # a mirror that could not be asked now (backing off, not probed) may still repair it
        raise MirrorsExhaustedError(f"{t.name}: sha256 is {digest}, the manifest says {t.sha256}; the mirrors asked "
                                    f"so far could not locate the bad bytes and {len(unasked)} could not be asked "
                                    f"({', '.join(unasked)}); the partial download is kept: run the fetch again")
    raise HashMismatchError(f"{t.name}: sha256 is {digest}, the manifest says {t.sha256}, and comparing the ranges "
                            f"with {len(witnesses)} mirror(s) did not explain it{_tried(t)}; the partial file was "
                            "deleted, run the fetch again (add a --mirror to help)")


def _tried(t: Context) -> str:
    return f" ({'; '.join(t.pool.files.tried)} failed it too)" if t.pool.files.tried else ""


def _ask(t: Context, span: Span, seen: dict, others: list, alt: _Alternatives) -> None:
    """Readings of one span from other mirrors: until one agrees with the disk, or two opinions are in."""
    disk = seen[span.url]
    opinions = 0
    for m in sorted(others, key=lambda m: -(m.rate or 0)):
        if m.url in seen:
            continue
        data = read_range(t, m, span.start, span.end, tries=3, extra=True)
        if data is None:
            continue
        digest = chunk_digest(data)
        seen[m.url] = digest
        if digest == disk:
            return
        alt.put(m.url, span.start, data)
        opinions += 1
        if opinions >= 2:
            return
