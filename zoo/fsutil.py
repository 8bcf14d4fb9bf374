"""Filesystem helpers shared by the zoo, the data path and the trainer (no torch, no yaml).

One definition each: atomic writes (readers see the old or the new file, never a mix), the modes of what the zoo
writes (`shared_mode`), directory fsync, sha256 / xxh3-128 of a file, and `human()` byte counts for messages.
"""
from __future__ import annotations

import functools
import hashlib
import os
import re
import tempfile
from pathlib import Path

import xxhash

BLOCK = 8 << 20  # 8 MiB reads: few syscalls, flat memory
FILE, FOLDER = 0o666, 0o777  # the modes open() and mkdir() ask for; the umask takes its bits away
EXECUTABLE = FOLDER


@functools.cache
def umask() -> int:
    """This process's umask, read once (Linux shows it in /proc; elsewhere it can only be read by setting it)."""
    try:
        found = re.search(r"^Umask:\s*([0-7]+)", Path("/proc/self/status").read_text(), re.M)
        if found:
            return int(found.group(1), 8)
    except OSError:
        pass
    old = os.umask(0o022)
    os.umask(old)
    return old


def shared_mode(base: int) -> int:
    """The mode for what the zoo writes into a data dir, as open()/mkdir() under the user's umask would give it
    (`FILE` -> 0644, `FOLDER` / `EXECUTABLE` -> 0755 under umask 022), so a lab's second user (and their MMF) can
    read an install. The owner always keeps its own bits: the zoo replaces and repairs what it installed."""
    return (base & ~umask() | base & 0o700) & 0o777


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


def atomic_write_bytes(path, write, private: bool = False) -> None:
    """Call `write(fileobj)` on a temp file beside `path`, fsync it, rename it over `path`, fsync the folder.
    The file gets `shared_mode(FILE)` (mkstemp's 0600 would lock other users out of a shared data dir), or stays
    0600 when `private`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            if not private:
                os.fchmod(f.fileno(), shared_mode(FILE))
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
