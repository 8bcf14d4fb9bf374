"""The crash-safe sidecar of a partial download.

It records the total size, the chunk size, each mirror's validator (ETag / Last-Modified), the verdicts against
mirrors proven bad for this file (so a rerun does not trust them again) and, per finished chunk, its xxh3-128 and
which mirror served which byte range of it (provenance: the evidence for blame after a failed sha256), and, per
chunk still in flight, how far it got (a partial record: the first N bytes, their xxh3-128 and provenance), so a
link that never delivers a whole chunk still makes progress across runs. Invariant: the journal never claims
bytes that are not durable and whose hash it does not record. Callers fsync the data file before `commit` and
`commit_partial`, and the header is replaced atomically (temp file, fsync, rename, fsync dir), so a SIGKILL or
power loss at any instant leaves either the old or the new journal; records are appended after the data is
durable (see `Journal`). Version 3 journals (whole chunks only) are still read.
"""
from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path

from zoo.fsutil import atomic_write_text

JOURNAL_VERSION = 4  # 4: partial-chunk records
READABLE_VERSIONS = (3, 4)


@dataclass
class Journal:
    """Header line (size, chunk size, validators) + one appended line per finished chunk (a list) or per step of
    a chunk in flight (a dict with "partial": the latest one of a chunk wins; a whole record supersedes it).

    A chunk record is appended and fdatasynced (O(1) per chunk: a 34 GB file has ~4,300 chunks, and rewriting
    the whole journal each time would write over a GB of JSON). A record torn by a crash does not parse and is
    ignored; a whole record is only ever written after its data was made durable. The header is rewritten with
    the compacted records by an atomic replace when it changes (start of a transfer, a new mirror validator).
    """

    path: Path
    size: int
    chunk_size: int
    sha256: str | None = None
    validators: dict[str, dict] = field(default_factory=dict)  # mirror url -> {validator}
    chunks: dict[int, str] = field(default_factory=dict)  # chunk index -> xxh3_128 hex
    verdicts: dict[str, str] = field(default_factory=dict)  # mirror url -> why it is proven bad for this file
    spans: dict[int, list[list]] = field(default_factory=dict)  # chunk index -> [[start, end, url], ...] inclusive
    # chunk index -> (bytes done from the chunk's start, xxh3_128 of those bytes, their spans): a chunk in flight
    partials: dict[int, tuple[int, str, list]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _log: object = field(default=None, repr=False)
    _closed: bool = field(default=False, repr=False)
    _superseded: int = field(default=0, repr=False)  # appended partial records a later record made obsolete

    @property
    def served_by(self) -> dict[int, list[str]]:
        """Chunk index -> the mirrors that served any of its bytes."""
        return {i: sorted({s[2] for s in spans}) for i, spans in self.spans.items()}

    @property
    def num_chunks(self) -> int:
        return max(1, -(-self.size // self.chunk_size)) if self.size else 1

    def chunk_range(self, index: int) -> tuple[int, int]:
        """Inclusive byte range of a chunk."""
        start = index * self.chunk_size
        return start, min(self.size, start + self.chunk_size) - 1

    def commit(self, index: int | None = None, digest: str | None = None, spans: list | None = None) -> None:
        """Append the record of a durable chunk; without an index, rewrite header + records atomically.

        After `close(final=True)` (an interrupted transfer whose stragglers may still finish chunks) nothing is
        recorded: an unrecorded chunk is merely fetched again, a record written behind a closed journal is not safe.
        """
        with self._lock:
            if self._closed:
                return
            if index is None:
                self._rewrite()
                return
            self.chunks[index] = digest
            self.partials.pop(index, None)  # a whole record supersedes the partial one when loading, too
            if spans:
                self.spans[index] = [list(s) for s in spans]
            self._append(self._record(index))

    def commit_partial(self, index: int, done: int, digest: str, spans: list) -> bool:
        """Record that the first `done` bytes of chunk `index` are durable and hash to `digest` (xxh3-128).

        The caller made those bytes durable first. Nothing is recorded for a finished chunk or a closed journal."""
        with self._lock:
            if self._closed or index in self.chunks or done <= 0:
                return False
            self._superseded += 1
            self.partials[index] = (done, digest, [list(s) for s in spans])
            if self._superseded > max(256, len(self.chunks) + len(self.partials)):
                self._rewrite()  # compact: a slow day-long download must not grow the journal a line a second
            else:
                self._append(self._partial_record(index))
            return True

    def _append(self, record) -> None:
        if self._log is None:
            self._rewrite()
            return
        self._log.write(json.dumps(record) + "\n")
        self._log.flush()
        os.fdatasync(self._log.fileno())

    def forget(self, index: int) -> None:
        """Drop a chunk (and its partial record) from memory; the caller then calls commit() to rewrite the file."""
        with self._lock:
            self.chunks.pop(index, None)
            self.spans.pop(index, None)
            self.partials.pop(index, None)

    def forget_partial(self, index: int) -> None:
        with self._lock:
            self.partials.pop(index, None)

    def kept_bytes(self) -> int:
        """Bytes a rerun can reuse (whole chunks and the journaled prefixes of partial ones), before re-hashing."""
        whole = sum(self.chunk_range(i)[1] - self.chunk_range(i)[0] + 1 for i in self.chunks)
        return whole + sum(p[0] for i, p in self.partials.items() if i not in self.chunks)

    def close(self, final: bool = False) -> None:
        with self._lock:
            self._closed = self._closed or final
            if self._log is not None:
                self._log.close()
                self._log = None

    def _record(self, index: int) -> list:
        spans = self.spans.get(index, [])
        return [index, self.chunks[index], sorted({s[2] for s in spans}), spans]

    def _partial_record(self, index: int) -> dict:
        done, digest, spans = self.partials[index]
        return {"partial": index, "done": done, "xxh3_128": digest, "spans": spans}

    def _rewrite(self) -> None:
        header = {"journal_version": JOURNAL_VERSION, "size": self.size, "chunk_size": self.chunk_size,
                  "sha256": self.sha256, "validators": self.validators, "verdicts": self.verdicts}
        lines = [json.dumps(header)] + [json.dumps(self._record(i)) for i in sorted(self.chunks)]
        lines += [json.dumps(self._partial_record(i)) for i in sorted(self.partials) if i not in self.chunks]
        self._superseded = 0
        if self._log is not None:
            self._log.close()
        atomic_write_text(self.path, "\n".join(lines) + "\n")
        self._log = open(self.path, "a")

    @classmethod
    def load(cls, path: Path) -> "Journal | None":
        """The journal at path, or None when missing or unreadable (then the partial file starts over)."""
        try:
            with open(path) as f:
                header = json.loads(f.readline())
                if header.get("journal_version") not in READABLE_VERSIONS:
                    return None
                j = cls(path=Path(path), size=int(header["size"]), chunk_size=int(header["chunk_size"]),
                        sha256=header.get("sha256"), validators=dict(header.get("validators") or {}),
                        verdicts=dict(header.get("verdicts") or {}))
                for line in f:
                    try:
                        record = json.loads(line)
                    except ValueError:
                        break  # torn by a crash mid-append: nothing after it was written either
                    if isinstance(record, dict):
                        j._load_partial(record)
                        continue
                    index, digest, mirrors = record[:3]
                    j.partials.pop(int(index), None)
                    j.chunks[int(index)] = str(digest)
                    start, end = j.chunk_range(int(index))
                    # records of the first version name mirrors only: each then counts as serving the whole chunk
                    j.spans[int(index)] = ([list(s) for s in record[3]] if len(record) > 3
                                           else [[start, end, u] for u in mirrors])
            return j
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return None

    def _load_partial(self, record: dict) -> None:
        index, done = int(record["partial"]), int(record["done"])
        start, end = self.chunk_range(index)
        spans = [[int(a), int(b), str(u)] for a, b, u in record["spans"]]
        if index in self.chunks or not 0 < done <= end - start + 1 or not 0 <= index < self.num_chunks:
            return  # a whole record wins; a record that does not fit the chunk is not trusted
        if not spans or spans[0][0] != start or spans[-1][1] != start + done - 1:
            return
        self.partials[index] = (done, str(record["xxh3_128"]), spans)
