"""The crash-safe sidecar of a partial download.

It records the total size, the chunk size, each mirror's validator (ETag / Last-Modified) and, per finished
chunk, its xxh3-128. Invariant: the journal never claims a chunk whose bytes are not durable. Callers fsync the
data file before `commit`, and `commit` replaces the journal atomically (temp file, fsync, rename, fsync dir),
so a SIGKILL or power loss at any instant leaves either the old or the new journal.
"""
from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path

JOURNAL_VERSION = 2


def fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_text(path: Path, text: str) -> None:
    """Write text to path so that readers see the old or the new content, never a mix."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


@dataclass
class Journal:
    path: Path
    size: int
    chunk_size: int
    sha256: str | None = None
    validators: dict[str, dict] = field(default_factory=dict)  # mirror url -> {etag, last_modified}
    chunks: dict[int, str] = field(default_factory=dict)  # chunk index -> xxh3_128 hex
    served_by: dict[int, list[str]] = field(default_factory=dict)  # chunk index -> mirror urls (for repair)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def num_chunks(self) -> int:
        return max(1, -(-self.size // self.chunk_size)) if self.size else 1

    def chunk_range(self, index: int) -> tuple[int, int]:
        """Inclusive byte range of a chunk."""
        start = index * self.chunk_size
        return start, min(self.size, start + self.chunk_size) - 1

    def commit(self, index: int | None = None, digest: str | None = None, mirrors: list[str] | None = None) -> None:
        """Record a durable chunk (or just save), then replace the file atomically."""
        with self._lock:
            if index is not None:
                self.chunks[index] = digest
                if mirrors:
                    self.served_by[index] = sorted(mirrors)
            atomic_write_text(self.path, json.dumps(self._state(), separators=(",", ":")))

    def forget(self, index: int) -> None:
        with self._lock:
            self.chunks.pop(index, None)
            self.served_by.pop(index, None)

    def _state(self) -> dict:
        return {
            "journal_version": JOURNAL_VERSION, "size": self.size, "chunk_size": self.chunk_size,
            "sha256": self.sha256, "validators": self.validators,
            "chunks": {str(k): v for k, v in sorted(self.chunks.items())},
            "served_by": {str(k): v for k, v in sorted(self.served_by.items())},
        }

    @classmethod
    def load(cls, path: Path) -> "Journal | None":
        """The journal at path, or None when missing or unreadable (then the partial file starts over)."""
        try:
            state = json.loads(Path(path).read_text())
            if state.get("journal_version") != JOURNAL_VERSION:
                return None
            return cls(
                path=Path(path), size=int(state["size"]), chunk_size=int(state["chunk_size"]),
                sha256=state.get("sha256"), validators=dict(state.get("validators") or {}),
                chunks={int(k): str(v) for k, v in (state.get("chunks") or {}).items()},
                served_by={int(k): [v] if isinstance(v, str) else list(v)
                           for k, v in (state.get("served_by") or {}).items()},
            )
        except (OSError, ValueError, KeyError, TypeError):
            return None
