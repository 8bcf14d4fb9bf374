"""Archive formats, told by content (never by name): magic numbers, tar headers, and what a non-archive looks like.

`detect_format(path)` -> "tar", "gztar", "bztar", "xztar", "zstdtar", "zip", "gz"/"bz2"/"xz"/"zst" (one compressed
file) or None (not an archive: an HTML error page, a text or binary file).
"""
from __future__ import annotations

import tarfile

from zoo.errors import CorruptArchiveError

TAR_FORMATS = {"tar": None, "gztar": "gz", "bztar": "bz2", "xztar": "xz", "zstdtar": "zst"}
SINGLE_FORMATS = {"gz": "gz", "bz2": "bz2", "xz": "xz", "zst": "zst"}  # one compressed file, no tar inside
MAGIC = {"gz": b"\x1f\x8b", "bz2": b"BZh", "xz": b"\xfd7zXZ\x00", "zst": b"\x28\xb5\x2f\xfd"}
ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06", b"PK\x07\x08")
_PEEK_MAX = 8 << 20    # compressed bytes read to find the first 512 plain bytes (bzip2 blocks are ~900 kB)


# ------------------------------------------------------------------------------------------- sniffing
def is_tar_block(block: bytes) -> bool:
    """True if `block` starts with a valid tar header (checksum verified; an all-zero block is not)."""
    block = block[:tarfile.BLOCKSIZE]
    if len(block) < tarfile.BLOCKSIZE or block.count(0) == tarfile.BLOCKSIZE:
        return False
    try:
        tarfile.TarInfo.frombuf(block, "utf-8", "surrogateescape")
    except tarfile.HeaderError:
        return False
    return True


def sniff(head: bytes) -> str | None:
    """What the first bytes say: 'gz', 'bz2', 'xz', 'zst', 'zip', 'tar', or None."""
    for kind, magic in MAGIC.items():
        if head.startswith(magic) and (kind != "bz2" or head[3:4] in b"123456789"):
            return kind
    if head[:4] in ZIP_MAGIC:
        return "zip"
    return "tar" if is_tar_block(head) else None


def describe(head: bytes) -> str:
    """Say what a file that is not an archive looks like, for error messages."""
    if not head:
        return "it is empty (0 bytes)"
    if head.count(0) == len(head):
        return "it holds only zero bytes (an empty or preallocated file, not a finished download)"
    text = head[:4096].lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    start = head[:60].decode("utf-8", "replace").strip().replace("\n", " ")
    if text.startswith((b"<!doctype", b"<html", b"<?xml", b"<head", b"<body")) or b"<html" in text[:1024]:
        return (f"it looks like an HTML/text page (starts with {start!r}), not an archive: the server or a "
                "proxy probably sent an error or login page")
    printable = sum(32 <= b < 127 or b in b"\t\r\n" for b in head[:4096])
    if printable >= 0.95 * min(len(head), 4096):
        return f"it looks like text (starts with {start!r}), not an archive: probably an error message"
    return f"its first bytes ({head[:8].hex(' ')}) match no known archive format"


def check_head(head: bytes, fmt: str, label: str) -> None:
    """Raise CorruptArchiveError unless `head` starts like a `fmt` archive (used before streaming)."""
    expected = TAR_FORMATS.get(fmt) or "tar"
    got = sniff(head)
    if got == expected:
        return
    what = f"it starts like a {got} file" if got else describe(head)
    raise CorruptArchiveError(
        f"{label} is not a {fmt} archive: {what}; delete it and download it again (check the URL)")


def detect_format(path) -> str | None:
    """Archive format of `path` by content, not by name.

    Returns "tar", "gztar", "bztar", "xztar", "zstdtar", "zip", "gz"/"bz2"/"xz"/"zst" (one compressed
    file, no tar inside), or None when the file is not an archive (an HTML error page, a text or binary
    file). Raises CorruptArchiveError for zstd data when neither `zstandard` nor the `zstd` tool is there.
    """
    from zoo.archive.decoders import can_decode, zstd_missing  # decoders need this module's magic numbers

    with open(path, "rb") as f:
        head = f.read(4096)
    kind = sniff(head)
    if kind in (None, "zip", "tar"):
        return kind
    if not can_decode(kind):
        raise zstd_missing(str(path))
    plain = _peek(path, kind)
    tar = next(name for name, k in TAR_FORMATS.items() if k == kind)
    return tar if is_tar_block(plain) else kind


class _Prefix:
    """Reads at most `limit` bytes of `f`: a peek must not decompress a whole huge file."""

    def __init__(self, f, limit: int):
        self._f, self._left = f, limit

    def read(self, n: int) -> bytes:
        n = min(n, self._left)
        self._left -= n
        return self._f.read(n) if n else b""


def _peek(path, kind: str) -> bytes:
    """The first 512 decompressed bytes (fewer if the data is short or broken)."""
    from zoo.archive.decoders import SourceError, open_decoder, zstandard_module

    with open(path, "rb") as f:
        if kind == "zst" and zstandard_module() is None:
            decoder = open_decoder(kind, f, external=True)  # the zstd tool reads the file itself
        else:
            decoder = open_decoder(kind, _Prefix(f, _PEEK_MAX), external=False)
        try:
            out = bytearray(512)
            view, got = memoryview(out), 0
            while got < 512 and (n := decoder.readinto(view[got:])):
                got += n
            return bytes(out[:got])
        except SourceError:
            return b""
        finally:
            decoder.close()
