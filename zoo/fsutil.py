"""Filesystem helpers shared by the zoo, the data path and the trainer (no torch, no yaml).

One definition each: atomic writes (readers see the old or the new file, never a mix), directory fsync,
sha256 / xxh3-128 of a file, and `human()` byte counts for messages.
"""
from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

import xxhash

BLOCK = 8 << 20  # 8 MiB reads: few syscalls, flat memory


def fsync_dir(path) -> None:
    """Make a rename or a new file in `path` durable (best effort: some filesystems refuse)."""
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


def folder_problem(path) -> str | None:
    """Why `path` cannot be, or become, a writable folder (it or a parent is a file, or it is read-only); None when
    it can. Said before work starts, not as a traceback from the first write."""
    path = Path(path).absolute()
    existing = existing_ancestor(path)
    if not existing.is_dir():
        return "is a file, not a folder" if existing == path else f"is under {existing}, which is a file"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"cannot be written ({existing} is not writable)"
    return None


def atomic_write_bytes(path, write) -> None:
    """Call `write(fileobj)` on a temp file beside `path`, fsync it, rename it over `path`, fsync the folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def atomic_write_text(path, text: str) -> None:
    atomic_write_bytes(path, lambda f: f.write(text.encode()))


def sha256_file(path, start: int = 0, length: int | None = None) -> str:
    """sha256 of a file (or of `length` bytes from `start`)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        f.seek(start)
        left = length
        while block := f.read(BLOCK if left is None else min(BLOCK, left)):
            h.update(block)
            if left is not None:
                left -= len(block)
                if left <= 0:
                    break
    return h.hexdigest()


def xxh3_file(path) -> str:
    """xxh3-128 of a file's content, the hash install records keep per extracted file (several GB/s)."""
    h = xxhash.xxh3_128()
    with open(path, "rb", buffering=0) as f:
        buf = bytearray(BLOCK)
        view = memoryview(buf)
        while n := f.readinto(buf):
            h.update(view[:n])
    return h.hexdigest()


def human(n: float | None) -> str:
    """A byte count for people: '1.5 GiB' (binary units everywhere, so messages agree with each other)."""
    if n is None:
        return "?"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{int(n)} B" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"  # unreachable


def existing_ancestor(path) -> Path:
    """The nearest folder at or above `path` that exists (where free space is measured)."""
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def is_inside(path, root) -> bool:
    """True when `path` is `root` or below it, lexically (after normalising `..`), without touching the disk."""
    p, r = os.path.normpath(os.path.abspath(path)), os.path.normpath(os.path.abspath(root))
    return p == r or p.startswith(r.rstrip(os.sep) + os.sep)
