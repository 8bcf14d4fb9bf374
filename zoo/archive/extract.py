"""Extract an archive file (tar, zip, one compressed file) into a private folder and report the files.

    fmt = detect_format(path)                     # "gztar", "zip", ... or None for a plain file
    files = extract_archive(path, tmp_dest)       # [(relative posix path, size, xxh3-128), ...]

`extract_archive` never writes outside `dest`, refuses links that lead out, device files and FIFOs, caps
what the tree takes on disk in bytes and entries (decompression and directory bombs), and turns truncation, corruption and a full disk into
`CorruptArchiveError` / `DiskError` messages that name the archive and say what to do. The caller extracts
into a fresh temp folder and renames it into place; nothing here fsyncs. `StreamExtractor` does the same
while a download is still arriving (see `zoo.archive.stream`).
"""
from __future__ import annotations

import lzma
import os
import stat
import time
import zipfile
import zlib

from zoo.archive.decoders import CHUNK, SourceError, open_decoder
from zoo.archive.formats import SINGLE_FORMATS, TAR_FORMATS, describe, detect_format
from zoo.archive.limits import BLOCK, Budget, extract_limit, footprint
from zoo.archive.safetree import SafeTree, safe_relpath
from zoo.archive.stream import StreamExtractor, extract_tar
from zoo.errors import CorruptArchiveError, UnsafeArchiveError
from zoo.fsutil import human

__all__ = ["detect_format", "extract_archive", "StreamExtractor"]



def extract_archive(archive, dest, *, declared_size: int | None = None, max_bytes: int | None = None,
                    progress=None, external: bool | None = None) -> list[tuple[str, int]]:
    """Extract `archive` into `dest` (a fresh private folder) and return [(relative posix path, size)].

    The list holds every regular file written (hard links included), in archive order; the caller records
    it to verify the tree later. `progress(n)` is called with each number of bytes written. `max_bytes`
    caps the tree's size on disk, every entry counting at least a block (see `zoo.archive.limits`). `external`: None = the fastest decoder measured here
(zlib/lzma in-process; lbzip2, or zstd without the zstandard package); True = pigz/xz/zstd tools.

    Raises CorruptArchiveError (not an archive, truncated, corrupt), UnsafeArchiveError (a member that
    would escape dest, a device file or FIFO, a bomb), DiskError (disk full, unwritable dest).
    """
    archive = os.fspath(archive)
    fmt = archive_format(archive)
    limit, desc = extract_limit(os.path.getsize(archive), declared_size, max_bytes)
    tree = SafeTree(dest, Budget(os.path.basename(archive), limit, desc), progress)
    try:
        read_members(archive, fmt, tree, external)
    except BaseException:
        if fmt == "zip":
            tree.drop_links()
        raise
    return tree.file_list()


def archive_format(archive: str) -> str:
    """The archive's format by content; CorruptArchiveError when it is none."""
    fmt = detect_format(archive)
    if fmt is None:
        with open(archive, "rb") as f:
            head = f.read(4096)
        raise CorruptArchiveError(
            f"{archive} is not an archive: {describe(head)}; delete it and download it again")
    return fmt


def read_members(archive: str, fmt: str, tree: SafeTree, external: bool | None = None) -> None:
    """Feed every member of `archive` (format `fmt`) to `tree`, which decides what is written (or only hashed)."""
    f = open(archive, "rb")
    if fmt == "zip":
        with f:
            _extract_zip(f, tree)
        return
    kind = TAR_FORMATS[fmt] if fmt in TAR_FORMATS else SINGLE_FORMATS[fmt]
    try:
        decoder = open_decoder(kind, f, external=external, closer=f.close, label=tree.label)
    except BaseException:
        f.close()
        raise
    try:
        if fmt in TAR_FORMATS:
            extract_tar(decoder, tree)
        else:
            _extract_single(decoder, tree, _single_name(archive, kind))
    finally:
        decoder.close()


# ---------------------------------------------------------------------------------------- one file
def _single_name(archive: str, kind: str) -> str:
    """'vocab.txt.gz' -> 'vocab.txt'; a name without the usual suffix gets '.out' appended."""
    base = os.path.basename(archive)
    for suffix in {"gz": (".gz", ".gzip", ".z"), "bz2": (".bz2",), "xz": (".xz",), "zst": (".zst", ".zstd")}[kind]:
        if base.lower().endswith(suffix) and len(base) > len(suffix):
            return base[:-len(suffix)]
    return base + ".out"


def _extract_single(decoder, tree: SafeTree, name: str) -> None:
    fd = tree.open_file(name, name)
    buf = bytearray(CHUNK)
    view, size = memoryview(buf), 0
    try:
        while n := decoder.readinto(view):
            tree.write(fd, view[:n], name)
            size += n
        decoder.finish()
    except SourceError as exc:
        os.close(fd)
        raise CorruptArchiveError(
            f"{tree.label} cannot be decompressed to the end ({human(size)} written): {exc}; delete it and "
            "download it again") from None
    except BaseException:
        os.close(fd)
        raise
    tree.finish_file(fd, name, size, 0o644, None, name)


# ---------------------------------------------------------------------------------------------- zip
def _zip_type(info: zipfile.ZipInfo) -> int:
    """The file-type bits a Unix zip tool stored in the external attributes (0 when absent)."""
    return stat.S_IFMT(info.external_attr >> 16)


def _extract_zip(f, tree: SafeTree) -> None:
    try:
        zf = zipfile.ZipFile(f)
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise CorruptArchiveError(
            f"{tree.label} is not a readable zip archive ({exc}); it is probably truncated: delete it and "
            "download it again") from None
    with zf:
        infos = zf.infolist()
        # zip declares sizes up front: refuse a bomb (bytes or entries) before writing anything
        total = sum(BLOCK if i.is_dir() else footprint(i.file_size) for i in infos)
        tree.budget.precheck(total, f"all {len(infos)} members", entries=len(infos))
        for info in infos:
            _extract_zip_member(zf, info, tree)
    tree.verify_links()


def _zip_call(fn, tree: SafeTree, name: str):
    """Run a zipfile read, turning its many error types into one CorruptArchiveError."""
    try:
        return fn()
    except (zipfile.BadZipFile, EOFError, zlib.error, lzma.LZMAError, NotImplementedError, RuntimeError,
            OSError) as exc:  # bz2 members raise OSError; encrypted ones RuntimeError
        raise CorruptArchiveError(
            f"{tree.label} cannot be read at member {name!r} ({exc}); delete it and download it again") from None


def _extract_zip_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, tree: SafeTree) -> None:
    name = info.filename
    rel = safe_relpath(name, tree.label)
    ftype = _zip_type(info)
    mode = (info.external_attr >> 16) & 0o7777 if info.create_system == 3 else 0
    if info.is_dir() or ftype == stat.S_IFDIR:
        if rel is not None:
            tree.make_dir(rel, mode or 0o755, name)
        return
    if ftype not in (0, stat.S_IFREG, stat.S_IFLNK):
        raise UnsafeArchiveError(f"{tree.label}: member {name!r} is a device file or FIFO; refusing to extract it")
    if rel is None:
        raise UnsafeArchiveError(f"{tree.label}: member {name!r} has an empty name; refusing to extract it")
    with _zip_call(lambda: zf.open(info), tree, name) as src:
        if ftype == stat.S_IFLNK:  # a Unix zip stores the link target as the member's data
            target = _zip_call(lambda: src.read(4096), tree, name).decode("utf-8", "surrogateescape")
            tree.symlink(rel, target, name)
            return
        fd = tree.open_file(rel, name)
        size = 0
        try:
            while block := _zip_call(lambda: src.read(CHUNK), tree, name):
                tree.write(fd, block, name)
                size += len(block)
        except BaseException:
            os.close(fd)
            raise
    try:
        mtime = time.mktime(info.date_time + (0, 0, -1))
    except (OverflowError, ValueError):
        mtime = None
    tree.finish_file(fd, rel, size, mode or 0o644, mtime, name)
