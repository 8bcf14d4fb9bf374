"""Read an archive without writing anything: what extraction would record, file by file.

    files, tops = archive_members(path)   # [(relative posix path, size, xxh3-128)], top-level names

The same readers as `extract_archive` (tar in every compression, zip, one compressed file) and the same member
rules (`safe_relpath`, later members replace earlier ones, hard links to earlier files), with a tree that hashes
member data instead of writing it. `mmf zoo adopt` compares installed files with this list, so it trusts the bytes
of an archive whose sha256 it checked, never the hashes of a record that came with a copied data dir.
"""
from __future__ import annotations

import os

import xxhash

from zoo.archive.extract import archive_format, read_members
from zoo.archive.limits import Budget
from zoo.archive.safetree import SafeTree
from zoo.errors import UnsafeArchiveError


class HashTree(SafeTree):
    """A SafeTree that writes nothing: file descriptors are /dev/null, member data only feeds an xxh3-128."""

    def __init__(self, label: str):  # no destination folder: SafeTree.__init__ would create one
        self.dest, self.label = os.devnull, label
        # no byte cap (nothing is written); the entry cap still bounds the bookkeeping
        self.budget = Budget(label, None, "nothing is written")
        self.progress, self.written = None, 0
        self.files: dict[str, int] = {}
        self.hashes: dict[str, str] = {}
        self._hashers: dict[int, object] = {}
        self._links: list[str] = []
        self._dirs: set[str] = set()
        self.tops: set[str] = set()

    def write(self, fd: int, data, member: str) -> None:
        self._hashers[fd].update(data)
        self.written += len(data)

    def make_dir(self, rel: str, mode: int, member: str) -> None:
        self.tops.add(rel.split("/")[0])

    def open_file(self, rel: str, member: str) -> int:
        self._forget(rel)
        fd = os.open(os.devnull, os.O_WRONLY | os.O_CLOEXEC)  # a real fd: the readers close it on errors
        self._hashers[fd] = xxhash.xxh3_128()
        return fd

    def finish_file(self, fd: int, rel: str, size: int, mode: int, mtime, member: str) -> None:
        os.close(fd)
        self.files[rel] = size
        self.hashes[rel] = self._hashers.pop(fd).hexdigest()
        self.tops.add(rel.split("/")[0])

    def symlink(self, rel: str, target: str, member: str) -> None:
        self._forget(rel)  # links are not listed in install records; their targets are checked as files
        self.tops.add(rel.split("/")[0])

    def hardlink(self, rel: str, target: str, member: str) -> None:
        source = "/".join(p for p in target.split("/") if p not in ("", "."))
        if source not in self.files:
            raise UnsafeArchiveError(f"{self.label}: hard link {member!r} -> {target!r} does not point at a file "
                                     "earlier in the archive")
        self._forget(rel)
        self.files[rel], self.hashes[rel] = self.files[source], self.hashes[source]
        self.tops.add(rel.split("/")[0])

    def verify_links(self) -> None:
        pass

    def drop_links(self) -> None:
        pass

    def _forget(self, rel: str) -> None:
        self.files.pop(rel, None)
        self.hashes.pop(rel, None)


def archive_members(archive, *, external: bool | None = None) -> tuple[list[tuple[str, int, str]], list[str]]:
    """(relative path, size, xxh3-128) of every regular file `archive` holds, in archive order, and the sorted
    top-level names (files, folders, links). Raises CorruptArchiveError / UnsafeArchiveError as extraction would."""
    archive = os.fspath(archive)
    fmt = archive_format(archive)
    tree = HashTree(os.path.basename(archive))
    read_members(archive, fmt, tree, external)
    return tree.file_list(), sorted(tree.tops)
