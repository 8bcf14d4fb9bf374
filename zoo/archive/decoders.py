"""Turn compressed bytes back into plain bytes (formats are told apart in `zoo.archive.formats`).

A *decoder* has `readinto(view) -> int` (0 at the end), `finish()` (raise SourceError if the stream did not
end cleanly) and `close()`. By default the fastest one measured here wins (bench/bench_extract.py, 2 cores):
zlib and lzma in this process, in bounded pieces so a bomb cannot fill memory; `pigz -dc` was 1.2x slower and
used 17% more CPU, because inflate is single-threaded in pigz too and the pipe adds copies. External tools
win where they decompress in parallel (`lbzip2`) or are the only decoder (`zstd` without the `zstandard`
package); `external=True` forces them. Decoders read a file opened 'rb' or a `ByteQueue` fed by a download.
"""
from __future__ import annotations

import bz2
import collections
import fcntl
import lzma
import shutil
import subprocess
import tempfile
import threading
import zlib

from zoo.archive.formats import MAGIC
from zoo.errors import CorruptArchiveError


def _fastest_inflate():
    """isal's inflate is ~2.8x faster than zlib's here (135 MB archive: 1.44 s vs 4.01 s), and decompression bounds
    a fetch's time-to-tree; zlib-ng is close behind. Both are drop-in zlib APIs (decompressobj, max_length,
    unconsumed_tail); zlib is the fallback on platforms without their wheels."""
    try:
        from isal import isal_zlib

        return isal_zlib
    except ImportError:
        pass
    try:
        from zlib_ng import zlib_ng

        return zlib_ng
    except ImportError:
        return zlib


INFLATE = _fastest_inflate()

CHUNK = 1 << 20          # 1 MiB: output pieces and copy buffers
IN_CHUNK = 256 << 10     # compressed bytes handed to zlib/bz2/lzma per call
QUEUE_BYTES = 16 << 20   # streaming: compressed bytes allowed to wait for the worker thread
# first tool found on PATH wins; each one reads stdin and writes the plain bytes to stdout
EXTERNAL = {"gz": [["pigz", "-dc"]], "bz2": [["lbzip2", "-dc"], ["pbzip2", "-dc"]],
            "xz": [["xz", "-dc"]], "zst": [["zstd", "-dcq"]]}
_F_SETPIPE_SZ = 1031     # Linux fcntl: 1 MiB pipes, fewer context switches between us and the tool


class SourceError(Exception):
    """The compressed stream is truncated or corrupt (reworded with the archive's name by the caller)."""


class Stopped(Exception):
    """The byte queue was stopped by abort() or by a failing worker."""


# ------------------------------------------------------------------------------------------- decoders
def external_command(kind: str | None) -> list[str] | None:
    """The argv of the first external decompressor on PATH for `kind`, or None."""
    for argv in EXTERNAL.get(kind, []):
        if shutil.which(argv[0]):
            return argv
    return None


def zstandard_module():
    """The optional `zstandard` module, or None."""
    try:
        import zstandard
    except ImportError:
        return None
    return zstandard


def auto_external(kind: str | None) -> bool:
    """Whether the default (external=None) uses an external tool for `kind`: see the module docstring."""
    if kind == "bz2":
        return True  # lbzip2/pbzip2 decompress blocks in parallel; bz2 in-process is ~30 MB/s
    return kind == "zst" and zstandard_module() is None


def can_decode(kind: str | None, external: bool | None = None) -> bool:
    """Whether this machine can decompress `kind` (always, except zstd without the tool or the module)."""
    if kind != "zst":
        return True
    return (external is not False and external_command(kind) is not None) or (
        external is not True and zstandard_module() is not None)


def zstd_missing(label: str) -> CorruptArchiveError:
    """The error for a zstd archive on a machine that cannot decompress it."""
    return CorruptArchiveError(
        f"{label} is zstd-compressed, but neither the 'zstandard' Python package nor the 'zstd' command is "
        "installed; run `pip install zstandard` (or install the zstd package) and retry")


class ProcessDecoder:
    """Decompress with an external tool; `stdin` is an open file, or subprocess.PIPE fed by the caller."""

    def __init__(self, argv: list[str], stdin):
        self._err = tempfile.TemporaryFile()  # a file, not a pipe: the tool can never block on stderr
        self.proc = subprocess.Popen(argv, stdin=stdin, stdout=subprocess.PIPE, stderr=self._err,
                                     bufsize=0, close_fds=True)
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                try:
                    fcntl.fcntl(pipe.fileno(), _F_SETPIPE_SZ, CHUNK)
                except OSError:
                    pass  # pipe-max-size is lower here: default pipes work, only with more switches
        self.name = argv[0]

    def readinto(self, view) -> int:
        return self.proc.stdout.readinto(view) or 0

    def tool_error(self, timeout: float | None = None) -> str | None:
        """The tool's last stderr line if it exited with an error, None if it succeeded or still runs."""
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None
        if rc == 0:
            return None
        self._err.seek(0)
        lines = self._err.read(4000).decode("utf-8", "replace").strip().splitlines()
        return f"{self.name} failed: {lines[-1] if lines else f'exit status {rc}'}"

    def finish(self) -> None:
        error = self.tool_error()  # called after stdout hit EOF, so the tool is exiting
        if error:
            raise SourceError(error)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                try:
                    pipe.close()
                except OSError:
                    pass  # broken pipe: the tool is gone anyway
        self.proc.wait()
        self._err.close()


class StdlibDecoder:
    """Decompress gzip/bzip2/xz in this process, 1 MiB of output at a time.

    Handles concatenated streams (pigz/pbzip2 output) and zero padding after the last one; a stream cut short
    raises SourceError. With wbits=31 zlib checks the gzip header, CRC and length itself.
    """

    def __init__(self, kind: str, read_chunk, closer=None):
        self._kind, self._read, self._closer = kind, read_chunk, closer
        self._d = self._new()
        self._tail = b""  # compressed input not consumed yet
        self._out, self._pos = b"", 0

    def _new(self):
        if self._kind == "gz":
            return INFLATE.decompressobj(31)
        return bz2.BZ2Decompressor() if self._kind == "bz2" else lzma.LZMADecompressor()

    def _next_stream(self, data) -> bool:
        """After a stream ended: start the next one, or return False at a clean end of input."""
        magic = MAGIC[self._kind]
        data = bytes(data)
        while True:
            data = data.lstrip(b"\0")
            if len(data) >= len(magic):
                break
            more = self._read(IN_CHUNK)
            if not more:
                if data:
                    raise SourceError("unexpected bytes after the end of the compressed data")
                return False
            data += more
        if not data.startswith(magic):
            raise SourceError("unexpected bytes after the end of the compressed data")
        self._d, self._tail = self._new(), data
        return True

    def _piece(self) -> bytes:
        while True:
            d = self._d
            if d.eof:
                if not self._next_stream(d.unused_data + self._tail):
                    return b""
                continue
            if self._kind == "gz":
                data = self._tail or self._read(IN_CHUNK)
                # with no input left, decompress(b"") still flushes what zlib holds back
                out = d.decompress(data, CHUNK)
                self._tail = d.unconsumed_tail
                if not data and not out:
                    raise SourceError("the compressed data ends early (truncated download?)")
            else:
                data = b""
                if d.needs_input:
                    data, self._tail = self._tail or self._read(IN_CHUNK), b""
                    if not data:
                        raise SourceError("the compressed data ends early (truncated download?)")
                out = d.decompress(data, CHUNK)
            if out:
                return out

    def next_piece(self) -> bytes:
        """The next piece of output (at most 1 MiB), b'' at the clean end of the data."""
        try:
            return self._piece()
        except (zlib.error, INFLATE.error, lzma.LZMAError, OSError, EOFError) as exc:
            raise SourceError(f"corrupt compressed data ({exc})") from None

    def readinto(self, view) -> int:
        if self._pos >= len(self._out):
            self._out, self._pos = self.next_piece(), 0
        n = min(len(view), len(self._out) - self._pos)
        view[:n] = memoryview(self._out)[self._pos:self._pos + n]
        self._pos += n
        return n

    def finish(self) -> None:
        pass  # truncation was raised by readinto

    def close(self) -> None:
        if self._closer is not None:
            self._closer()


class ZstdModuleDecoder:
    """Decompress zstd with the optional `zstandard` package (bounded reads)."""

    def __init__(self, read_chunk, closer=None):
        self._read = read_chunk
        self._reader = zstandard_module().ZstdDecompressor().stream_reader(
            self, read_size=IN_CHUNK, read_across_frames=True)
        self._closer = closer

    def read(self, n: int) -> bytes:  # what zstandard's stream_reader calls for input
        return bytes(self._read(n))

    def readinto(self, view) -> int:
        try:
            return self._reader.readinto(view)
        except Exception as exc:  # zstandard.ZstdError: its import path differs across versions
            raise SourceError(f"corrupt zstd data ({exc})") from None

    def finish(self) -> None:
        pass

    def close(self) -> None:
        if self._closer is not None:
            self._closer()


class PlainDecoder:
    """An uncompressed stream: bytes pass through."""

    def __init__(self, raw, closer=None):
        self._raw, self._closer = raw, closer

    def readinto(self, view) -> int:
        return self._raw.readinto(view) or 0

    def finish(self) -> None:
        pass

    def close(self) -> None:
        if self._closer is not None:
            self._closer()


def open_decoder(kind: str | None, raw, *, external: bool | None = None, closer=None, label="the archive"):
    """A decoder for compression `kind` (None = plain) reading `raw`: a file opened 'rb' or a ByteQueue.

    external: None = the measured default (`auto_external`); True = require an external tool (pigz for
    gzip); False = in-process only. `closer` is called when the decoder no longer needs `raw`.
    """
    if kind is None:
        return PlainDecoder(raw, closer)
    wanted = auto_external(kind) if external is None else external
    argv = external_command(kind) if wanted else None
    if external is True and argv is None:
        raise ValueError(f"no external decompressor for {kind} on PATH (looked for {EXTERNAL[kind]})")
    if argv is not None:
        decoder = ProcessDecoder(argv, subprocess.PIPE if isinstance(raw, ByteQueue) else raw)
        if closer is not None:
            closer()  # the tool holds its own copy of the file descriptor
        return decoder
    if kind == "zst":
        if zstandard_module() is None:
            raise zstd_missing(label)
        return ZstdModuleDecoder(raw.read, closer)
    return StdlibDecoder(kind, raw.read, closer)


class ByteQueue:
    """A bounded FIFO of byte blocks from `feed()` (producer) to the worker thread (consumer)."""

    def __init__(self, capacity: int = QUEUE_BYTES):
        self._cv = threading.Condition()
        self._blocks: collections.deque = collections.deque()
        self._size, self._capacity = 0, capacity
        self._eof = self._stopped = False

    def put(self, data) -> None:
        """Append a block, waiting while the queue is full (back-pressure)."""
        block = memoryview(data if isinstance(data, bytes) else bytes(data))  # the caller may reuse its buffer
        with self._cv:
            while self._size >= self._capacity and not self._stopped:
                self._cv.wait()
            if self._stopped:
                raise Stopped()
            self._blocks.append(block)
            self._size += len(block)
            self._cv.notify_all()

    def close(self) -> None:
        """No more data: readers get b'' once the queue is empty."""
        with self._cv:
            self._eof = True
            self._cv.notify_all()

    def stop(self) -> None:
        """Drop everything and fail every waiter (abort, or the worker died)."""
        with self._cv:
            self._stopped = True
            self._blocks.clear()
            self._size = 0
            self._cv.notify_all()

    def read(self, n: int):
        """Up to `n` bytes (a memoryview), b'' at the end; waits for data."""
        with self._cv:
            while not self._blocks and not self._eof and not self._stopped:
                self._cv.wait()
            if self._stopped:
                raise Stopped()
            if not self._blocks:
                return b""
            block = self._blocks.popleft()
            if len(block) > n:
                self._blocks.appendleft(block[n:])
                block = block[:n]
            self._size -= len(block)
            self._cv.notify_all()
            return block

    def readinto(self, view) -> int:
        block = self.read(len(view))
        view[:len(block)] = block
        return len(block)
