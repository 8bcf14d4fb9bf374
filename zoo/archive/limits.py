"""The one extraction-size policy (decompression bombs), for files and streams, for the API and for fetch.

Two caps, both counted as the tree is written:
- bytes on disk: every entry (file, folder, symlink, hard link) costs its footprint, at least one filesystem
  block, so a tree of empty folders or links is charged like the disk space and inodes it takes, not as zero;
- entries: at most MAX_ENTRIES files, folders and links (MMF_ZOO_MAX_EXTRACT_ENTRIES overrides).

Byte cap order: an explicit `max_bytes`; else MMF_ZOO_MAX_EXTRACT_BYTES; else 1.5x the manifest's
`extracted_size` (+1 MiB); else 50x the archive size, never below 64 MiB. A stream is also held to 50x the bytes
received so far plus 64 MiB, whatever the cap above: before the sha256 has vouched for them, a mirror's bytes
may not create more than that (a refused stream is extracted again from the verified file, under the cap alone).
"""
from __future__ import annotations

import os

from zoo.errors import UnsafeArchiveError, ZooError
from zoo.fsutil import human

LIMIT_ENV = "MMF_ZOO_MAX_EXTRACT_BYTES"
ENTRIES_ENV = "MMF_ZOO_MAX_EXTRACT_ENTRIES"
RATIO = 50             # MMF's LMDB features hold zero padding: 20-40x is seen in real data
DECLARED_SLACK = 1.5
FLOOR = 64 << 20       # tiny archives of padding-heavy files are fine
BLOCK = 4096           # the footprint of the smallest entry on common Linux filesystems (ext4, xfs, tmpfs)
MAX_ENTRIES = 2_000_000  # MMF's largest archives hold a few hundred thousand files; inodes are finite


def _env_int(name: str, what: str) -> int | None:
    env = os.environ.get(name, "").strip()
    if not env:
        return None
    try:
        value = int(env)
    except ValueError:
        raise ZooError(f"{name}={env!r} is not a {what}; set it to an integer or unset it") from None
    if value <= 0:
        raise ZooError(f"{name}={env!r} must be a positive {what}; set it to an integer or unset it")
    return value


def env_limit() -> int | None:
    return _env_int(LIMIT_ENV, "byte count")


def footprint(size: int) -> int:
    """Bytes an entry of `size` bytes takes on disk, at least one block (empty files, folders, links)."""
    return max(BLOCK, -(-size // BLOCK) * BLOCK)


def extract_limit(archive_size: int | None, declared_size: int | None = None,
                  max_bytes: int | None = None) -> tuple[int | None, str]:
    """(cap in bytes, where it comes from); (None, ...) means "grow with the bytes received" (streams only)."""
    if max_bytes is not None:
        return int(max_bytes), "max_bytes"
    env = env_limit()
    if env is not None:
        return env, LIMIT_ENV
    if declared_size:
        # the manifest says how big the tree is: no floor, a small archive must not grow past its own claim
        return int(declared_size * DECLARED_SLACK) + (1 << 20), \
            f"{DECLARED_SLACK}x the declared size {human(declared_size)} + 1 MiB"
    if archive_size is None:
        return None, f"{RATIO}x the bytes received plus {human(FLOOR)}"
    return max(RATIO * archive_size, FLOOR), f"{RATIO}x the archive size {human(archive_size)}"


def entry_limit() -> tuple[int, str]:
    env = _env_int(ENTRIES_ENV, "count of files, folders and links")
    return (env, ENTRIES_ENV) if env is not None else (MAX_ENTRIES, "the default")


def override_hint() -> str:
    return f"set {LIMIT_ENV}=<bytes> (or pass a larger max_bytes)"


class Budget:
    """What one extraction may still create: bytes on disk (footprints) and entries, with the error to raise.

    `received` is None for a file; for a stream, the archive bytes fed so far, which bound the running total.
    `precheck` judges a member by its declared size before any of it is written (files and zips); a stream
    judges declared sizes against the fixed cap only, as their bytes have not arrived yet.
    """

    def __init__(self, label: str, limit: int | None, desc: str = "max_bytes", *, stream: bool = False):
        self.label = label
        self.limit, self.desc = limit, desc
        self.max_entries, self.entries_desc = entry_limit()
        self.received: int | None = 0 if stream else None
        self.used = 0      # footprint bytes charged so far
        self.entries = 0   # files, folders and links made so far

    def _cap(self) -> int | None:
        if self.received is None:
            return self.limit
        grown = RATIO * self.received + FLOOR
        return self.limit if self.limit is not None and self.limit <= grown else grown

    def _refuse(self, used: int, entries: int, member: str, cap: int) -> UnsafeArchiveError:
        if cap == self.limit:
            desc, hint = self.desc, f"if the archive is trusted and really this compressible, {override_hint()}"
        else:
            desc = (f"{RATIO}x the bytes received ({human(self.received)} so far) plus {human(FLOOR)}, until the "
                    "sha256 has vouched for them")
            hint = "extract the finished, verified file instead (mmf zoo fetch does so by itself)"
        return UnsafeArchiveError(
            f"{self.label}: extracting {member!r} would bring the extracted tree to {human(used)} on disk in "
            f"{entries} files, folders and links, over the limit of {human(cap)} ({desc}; every entry counts "
            f"at least {BLOCK} bytes); this looks like a decompression bomb: {hint}")

    def _check(self, used: int, entries: int, member: str, fixed_only: bool = False) -> None:
        if entries > self.max_entries:
            raise UnsafeArchiveError(
                f"{self.label}: extracting {member!r} would make {entries} files, folders and links, over the "
                f"limit of {self.max_entries} ({self.entries_desc}); this looks like a decompression bomb. If the "
                f"archive is trusted and really holds that many, set {ENTRIES_ENV}=<count>")
        cap = self.limit if fixed_only else self._cap()
        if cap is not None and used > cap:
            raise self._refuse(used, entries, member, cap)

    def precheck(self, nbytes: int, member: str, entries: int = 1) -> None:
        """Refuse `entries` new entries with a footprint of `nbytes` in all, before writing any of them."""
        self._check(self.used + nbytes, self.entries + entries, member, fixed_only=self.received is not None)

    def entry(self, member: str, n: int = 1) -> None:
        """Charge `n` new entries (a block each) before they are made."""
        self._check(self.used + n * BLOCK, self.entries + n, member)
        self.used += n * BLOCK
        self.entries += n

    def grow(self, old: int, new: int, member: str) -> None:
        """Charge a file growing from `old` to `new` bytes (its first block was charged by `entry`)."""
        extra = footprint(new) - footprint(old)
        if extra:
            self._check(self.used + extra, self.entries, member)
            self.used += extra
