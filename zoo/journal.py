"""The crash-safe sidecar of a partial download.

It records the total size, the chunk size, each mirror's validator (ETag / Last-Modified) and, per finished
chunk, its xxh3-128. Invariant: the journal never claims a chunk whose bytes are not durable. Callers fsync the
data file before `commit`, and `commit` replaces the journal atomically (temp file, fsync, rename, fsync dir),
so a SIGKILL or power loss at any instant leaves either the old or the new journal; per-chunk records are
appended after the data is durable (see `Journal`).
"""
from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path

from zoo.fsutil import atomic_write_text

JOURNAL_VERSION = 3


@dataclass
class Journal:
    """Header line (size, chunk size, validators) + one appended line per finished chunk.

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
    served_by: dict[int, list[str]] = field(default_factory=dict)  # chunk index -> mirror urls (for repair)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _log: object = field(default=None, repr=False)

    @property
    def num_chunks(self) -> int:
        return max(1, -(-self.size // self.chunk_size)) if self.size else 1

    def chunk_range(self, index: int) -> tuple[int, int]:
        """Inclusive byte range of a chunk."""
        start = index * self.chunk_size
        return start, min(self.size, start + self.chunk_size) - 1

    def commit(self, index: int | None = None, digest: str | None = None, mirrors: list[str] | None = None) -> None:
        """Append the record of a durable chunk; without an index, rewrite header + records atomically."""
        with self._lock:
            if index is None:
                self._rewrite()
                return
            self.chunks[index] = digest
            if mirrors:
                self.served_by[index] = sorted(mirrors)
            if self._log is None:
                self._rewrite()
                return
            self._log.write(json.dumps([index, digest, self.served_by.get(index, [])]) + "\n")
            self._log.flush()
            os.fdatasync(self._log.fileno())

    def forget(self, index: int) -> None:
        """Drop a chunk from memory; the caller then calls commit() to rewrite the file without it."""
        with self._lock:
            self.chunks.pop(index, None)
            self.served_by.pop(index, None)

    def close(self) -> None:
        with self._lock:
            if self._log is not None:
                self._log.close()
                self._log = None

    def _rewrite(self) -> None:
        header = {"journal_version": JOURNAL_VERSION, "size": self.size, "chunk_size": self.chunk_size,
                  "sha256": self.sha256, "validators": self.validators}
        lines = [json.dumps(header)] + [json.dumps([i, h, self.served_by.get(i, [])])
                                        for i, h in sorted(self.chunks.items())]
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
                if header.get("journal_version") != JOURNAL_VERSION:
                    return None
                j = cls(path=Path(path), size=int(header["size"]), chunk_size=int(header["chunk_size"]),
                        sha256=header.get("sha256"), validators=dict(header.get("validators") or {}))
                for line in f:
                    try:
                        index, digest, mirrors = json.loads(line)
                    except ValueError:
                        break  # torn by a crash mid-append: nothing after it was written either
                    j.chunks[int(index)] = str(digest)
                    j.served_by[int(index)] = list(mirrors)
            return j
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return None
