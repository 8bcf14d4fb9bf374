"""Tar extraction from a stream of bytes, so that a download and its extraction can overlap.

`extract_tar` reads member headers with `tarfile`'s parser but copies the data itself in 1 MiB blocks, and
hands every write to `SafeTree`, which holds the safety rules. `extract_archive` calls it on a file;
`StreamExtractor` runs it on a background thread fed by `feed()`. Both apply back-pressure (a bounded queue,
or the pipe into an external decompressor), so memory stays flat whatever the archive size.
"""
from __future__ import annotations

import os
import tarfile
import threading

from zoo.archive.decoders import (CHUNK, ByteQueue, ProcessDecoder, SourceError, Stopped, can_decode, open_decoder,
                                  zstd_missing)
from zoo.archive.formats import TAR_FORMATS, check_head
from zoo.archive.limits import Budget, extract_limit, footprint
from zoo.archive.safetree import SafeTree, safe_relpath
from zoo.errors import CorruptArchiveError, UnsafeArchiveError
from zoo.fsutil import human

_TRAILER_MAX = 64 << 20  # bytes tolerated after the end-of-archive marker (GNU tar pads to 10 KiB)
_HEADER_MAX = 16 << 20   # pax / GNU long-name headers are read whole by tarfile: refuse absurd sizes


class _TarSource:
    """A forward-only file object over a decoder, for `tarfile.TarFile(mode='r')` and our own copies."""

    def __init__(self, decoder):
        self._decoder = decoder
        self.pos = 0
        self.last = b""  # the last block tarfile read: tells a real end-of-archive marker from a cut
        self._buf = bytearray(CHUNK)

    def _fill(self, view) -> int:
        got = 0
        while got < len(view):
            n = self._decoder.readinto(view[got:])
            if n == 0:
                break
            got += n
        return got

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0 or size > _HEADER_MAX:
            raise SourceError(f"a tar header asks to read {size} bytes at once (damaged or hostile archive)")
        buf = bytearray(size)
        got = self._fill(memoryview(buf))
        self.pos += got
        self.last = bytes(buf[:got])
        return self.last

    def tell(self) -> int:
        return self.pos

    def seek(self, pos: int, whence: int = 0) -> int:
        if whence != 0 or pos < self.pos:
            raise SourceError("tar streams only seek forward")
        view = memoryview(self._buf)
        while self.pos < pos:
            got = self._fill(view[:min(len(view), pos - self.pos)])
            if got == 0:
                break
            self.pos += got
        return self.pos

    def copy_to(self, fd: int, size: int, tree: SafeTree, member: str) -> None:
        view, left = memoryview(self._buf), size
        while left:
            got = self._decoder.readinto(view[:min(len(view), left)])
            if got == 0:
                raise SourceError("the data ends in the middle of this member (truncated download?)")
            tree.write(fd, view[:got], member)
            left -= got
            self.pos += got

    def drain(self) -> None:
        """Read to the end of the stream, so the decoder checks its trailer (gzip CRC, tool exit status)."""
        view, total = memoryview(self._buf), 0
        while got := self._decoder.readinto(view):
            total += got
            if total > _TRAILER_MAX:
                raise SourceError(f"more than {_TRAILER_MAX >> 20} MiB of data after the end-of-archive marker")


def _extract_member(tf: tarfile.TarFile, src: _TarSource, m: tarfile.TarInfo, tree: SafeTree) -> None:
    rel = safe_relpath(m.name, tree.label)
    if m.isdir():
        if rel is not None:  # None: the './' entry of `tar -C dir .`
            tree.make_dir(rel, m.mode, m.name)
        return
    if m.ischr() or m.isblk() or m.isfifo():
        kind = "a FIFO" if m.isfifo() else "a device file"
        raise UnsafeArchiveError(f"{tree.label}: member {m.name!r} is {kind}; refusing to extract it "
                                 "(data archives hold only files, folders and links)")
    if rel is None:
        raise UnsafeArchiveError(f"{tree.label}: member {m.name!r} has an empty name; refusing to extract it")
    if m.issym():
        tree.symlink(rel, m.linkname, m.name)
    elif m.islnk():
        tree.hardlink(rel, m.linkname, m.name)
    elif m.isreg():
        tree.budget.precheck(footprint(m.size), m.name)
        fd = tree.open_file(rel, m.name)
        try:
            if m.issparse():  # rare (tar -S); tarfile fills the holes for us
                f = tf.extractfile(m)
                while block := f.read(CHUNK):
                    tree.write(fd, block, m.name)
            else:
                src.copy_to(fd, m.size, tree, m.name)
        except BaseException:
            os.close(fd)
            raise
        tree.finish_file(fd, rel, m.size, m.mode, m.mtime, m.name)
    else:
        raise UnsafeArchiveError(
            f"{tree.label}: member {m.name!r} has an unsupported type {m.type!r}; refusing to extract it")


def _corrupt(tree: SafeTree, member: str | None, detail: str, inside: bool = False) -> CorruptArchiveError:
    where = (f"in member {member!r}" if inside else f"after member {member!r}") if member else "at its start"
    return CorruptArchiveError(
        f"{tree.label} cannot be read to the end ({where}, {human(tree.written)} extracted): {detail}; "
        "delete the archive and download it again")


def extract_tar(decoder, tree: SafeTree) -> None:
    """Extract every member of the tar stream that `decoder` produces into `tree`, then check its end."""
    try:
        _extract_tar(decoder, tree)
        tree.verify_links()
    except BaseException:
        tree.drop_links()  # a failed tree must not keep a link that leads out
        raise


def _extract_tar(decoder, tree: SafeTree) -> None:
    src = _TarSource(decoder)
    member, inside = None, False
    try:
        try:
            tf = tarfile.TarFile(fileobj=src, mode="r")
        except tarfile.ReadError as exc:
            raise _corrupt(tree, None, f"not a tar archive ({exc})") from None
        while (m := tf.next()) is not None:
            tf.members.clear()  # tarfile keeps every header otherwise: memory would grow with member count
            member, inside = m.name, True
            _extract_member(tf, src, m, tree)
            inside = False
        # tarfile stops quietly at EOF or at a damaged header; only a zero block is a real end of archive
        if len(src.last) != tarfile.BLOCKSIZE:
            raise _corrupt(tree, member, "it stops without the end-of-archive marker (truncated download?)")
        if src.last.count(0) != tarfile.BLOCKSIZE:
            raise _corrupt(tree, member, "the next member header is damaged")
        src.drain()
        decoder.finish()
    except SourceError as exc:
        detail = str(exc)
        if isinstance(decoder, ProcessDecoder):  # the tool's own words are often clearer
            detail = decoder.tool_error(timeout=5) or detail
        raise _corrupt(tree, member, detail, inside) from None
    except tarfile.TarError as exc:
        raise _corrupt(tree, member, f"damaged tar data ({exc})", inside) from None


_HEAD = 512  # bytes gathered before starting, to check the format on the first block


class StreamExtractor:
    """Extract a tar archive while its bytes arrive, in order, through `feed()`.

    `sx = StreamExtractor(dest, "gztar"); sx.feed(block) ...; files = sx.close()`; on any failure call
    `sx.abort()` and delete `dest`. After a crash, feed a new extractor from byte 0 of the partial file into
    a fresh `dest`. `feed` blocks while extraction is behind, so memory stays bounded (about 20 MB) whatever
    the archive size. `close` raises the errors of `extract_archive`; `feed` raises them early when it can.

    max_bytes / archive_size / declared_size: the cap on what the tree takes on disk, by the policy of
    `zoo.archive.limits`; whatever the cap, the tree may not outgrow the bytes fed so far (50x plus 64 MiB):
    a mirror's bytes are fed before the sha256 has vouched for them.
    name: what messages call the archive. external: as for `extract_archive` (True = pigz/xz/zstd tools).
    """

    def __init__(self, dest, fmt: str, *, max_bytes: int | None = None, archive_size: int | None = None,
                 declared_size: int | None = None, name: str | None = None,
                 external: bool | None = None):
        if fmt not in TAR_FORMATS:
            raise ValueError(f"StreamExtractor cannot stream {fmt!r} archives; use extract_archive() on the "
                             "finished file instead (check StreamExtractor.supports(fmt) first)")
        label = name or f"the streamed {fmt} archive"
        if not can_decode(TAR_FORMATS[fmt], external):
            raise zstd_missing(label)
        self._fmt, self._external = fmt, external
        limit, desc = extract_limit(archive_size, declared_size, max_bytes)
        self._budget = Budget(label, limit, desc, stream=True)
        self._tree = SafeTree(dest, self._budget)
        self._head: bytearray | None = bytearray()
        self._fed = 0
        self._queue: ByteQueue | None = None
        self._decoder = None
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._closed = self._aborted = False

    @staticmethod
    def supports(fmt: str | None) -> bool:
        """True for the tar formats this machine can stream; False for zip, single files, unknown formats."""
        return fmt in TAR_FORMATS and can_decode(TAR_FORMATS[fmt])

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        if not self._closed:
            self.abort()

    def feed(self, data) -> None:
        """Hand over the next bytes of the archive; blocks while extraction is behind."""
        if self._closed or self._aborted:
            raise ValueError("StreamExtractor.feed() called after close() or abort()")
        self._raise_error()
        self._fed += len(data)
        self._budget.received = self._fed  # read by the worker thread: an int store is atomic
        if self._head is not None:
            self._head += data
            if len(self._head) < _HEAD:
                return
            data = self._start()
        self._push(data)

    def _start(self) -> bytes:
        head, self._head = bytes(self._head), None
        try:
            check_head(head, self._fmt, self._tree.label)
        except CorruptArchiveError as exc:
            self._error = exc  # close() after a failed feed() raises it again
            raise
        self._queue = ByteQueue()
        self._decoder = open_decoder(TAR_FORMATS[self._fmt], self._queue, external=self._external,
                                     label=self._tree.label)
        if isinstance(self._decoder, ProcessDecoder):
            self._queue = None  # feed() writes straight into the tool's stdin: the pipe is the bound
        self._thread = threading.Thread(target=self._work, name="zoo-stream-extract", daemon=True)
        self._thread.start()
        return head

    def _push(self, data) -> None:
        try:
            if self._queue is not None:
                self._queue.put(data)
            else:
                view = memoryview(data)
                while view:
                    view = view[self._decoder.proc.stdin.write(view):]
        except (Stopped, OSError):  # the worker failed and stopped the queue or killed the tool
            self._thread.join()
            self._raise_error()
            raise CorruptArchiveError(f"{self._tree.label}: the decompressor stopped early") from None

    def _work(self) -> None:
        try:
            extract_tar(self._decoder, self._tree)
        except BaseException as exc:  # handed over to the feeding thread
            self._error = exc
            if self._queue is not None:
                self._queue.stop()
            else:
                self._decoder.proc.kill()  # unblocks a feed() stuck writing into the tool's stdin

    def _raise_error(self) -> None:
        if self._error is not None:
            raise self._error

    def close(self) -> list[tuple[str, int]]:
        """Signal the end of the archive, wait for the last member, return [(relative path, size)]."""
        if self._closed or self._aborted:
            raise ValueError("StreamExtractor.close() called twice or after abort()")
        self._closed = True
        try:
            self._raise_error()
            if self._head is not None:  # fewer than 512 bytes in all
                self._push(self._start())
            if self._queue is not None:
                self._queue.close()
            else:
                try:
                    self._decoder.proc.stdin.close()
                except OSError:
                    pass  # the tool already exited: the worker holds the reason
            self._thread.join()
            self._raise_error()
            return self._tree.file_list()
        finally:
            self._release()

    def abort(self) -> None:
        """Stop now; release the worker thread and any decompressor process. The caller deletes dest."""
        self._aborted = True
        if self._queue is not None:
            self._queue.stop()
        if isinstance(self._decoder, ProcessDecoder) and self._decoder.proc.poll() is None:
            self._decoder.proc.kill()
        if self._thread is not None:
            self._thread.join()
        self._release()

    def _release(self) -> None:
        if self._decoder is not None:
            self._decoder.close()
            self._decoder = None
