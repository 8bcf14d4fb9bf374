"""`Transfer`: wires the pool, the board, the strategies, the cross-check, the cursor and the repair together."""
from __future__ import annotations

import errno
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path

from zoo.transfer import http
from zoo.errors import DiskError, HashMismatchError, MirrorsExhaustedError, VerificationError
from zoo.fsutil import existing_ancestor, human
from zoo.journal import Journal
from zoo.space import not_enough
from zoo.transfer.mirror import Mirror
from zoo.transfer import partials, strategies
from zoo.transfer.board import ChunkBoard, Partial
from zoo.transfer.crosscheck import CrossCheck
from zoo.transfer.cursor import run_cursor
from zoo.transfer.options import TransferOptions, TransferResult
from zoo.transfer.pool import MirrorPool
from zoo.transfer.repair import repair

log = logging.getLogger("zoo")
EXIT_GRACE = 1.0  # seconds the workers get to stop when the transfer ends (Ctrl-C must exit within 2 s)


class WrongFile(Exception):
    """The file of the size being tried is not the one the manifest means; another size waits for its turn."""


class Transfer:
    """Download `urls` (mirrors of one file: strings, or zoo.mirrors.Source carrying the origin flag) -> `part`
    with a journal. `content_check(first bytes)` says why a mirror's body cannot be the file (the caller knows
    the formats). `run()` raises ZooError subclasses."""

    def __init__(self, name: str, urls: list[str], part: Path, journal_path: Path, *, size: int | None = None,
                 sha256: str | None = None, chunk_hashes: list[str] | None = None, chunk_size: int | None = None,
                 opts: TransferOptions | None = None, progress: Callable[[int], None] | None = None,
                 sink: Callable[[memoryview], None] | None = None, sink_restart: Callable[[], None] | None = None,
                 content_check: Callable[[bytes], str | None] | None = None):
        self.name, self.part, self.journal_path = name, Path(part), Path(journal_path)
        self.opts = opts or TransferOptions()
        self.expected_size, self.sha256, self.chunk_hashes = size, sha256, chunk_hashes
        self.chunk_size = chunk_size or self.opts.chunk_size
        self.progress, self.sink, self.sink_restart = progress, sink, sink_restart
        # the state the parts (strategies, crosscheck, cursor, partials, repair) read, all declared here: the
        # journal from the start of an attempt, the board, the open partial file and the checks from the start of
        # its transfer (before any worker starts)
        self.board: ChunkBoard | None = None
        self.journal: Journal | None = None
        self.fd: int = -1
        self.checks: CrossCheck | None = None
        self.resumed = 0
        self.restarted: str | None = None  # why a partial download could not be reused (said, and reported)
        self.pool = MirrorPool(name, urls, self.opts, self._wake, content_check)
        self.mirrors = self.pool.mirrors
        self.fetched = 0
        self.extra = 0  # of which cross-check and repair reads
        self.sink_error: str | None = None
        self._count_lock = threading.Lock()

    # ---- public ---------------------------------------------------------------------------------------------
    def run(self) -> TransferResult:
        """Fetch and verify the file. Ctrl-C (KeyboardInterrupt) leaves the journal consistent and carries
        `zoo_kept` = (partial file, bytes a rerun reuses, size) for the message."""
        try:
            journal = Journal.load(self.journal_path)
            if journal is None and self._part_bytes():
                self._restart(None, "its journal is missing or unreadable, so its bytes cannot be verified")
            if journal is not None and journal.sha256 and self.sha256 and journal.sha256 != self.sha256:
                # begun for another file (the manifest's hashcode changed): neither its bytes nor verdicts apply
                journal = self._restart(journal, "it was begun for another file (the manifest's sha256 changed)")
            if journal is not None:
                self.pool.remember(journal.verdicts)
            size = self.pool.settle(self.expected_size, resume=journal.size if journal else None,
                                    plausible=self._plausible)
            while True:
                try:
                    return self._attempt(size, journal)
                except WrongFile as exc:
                    size, journal = self._next_file(str(exc)), None
        except MirrorsExhaustedError as exc:
            part, kept, size = self.kept()
            if kept <= 0:  # never claim a partial download is kept when none is
                raise
            raise MirrorsExhaustedError(f"{exc}; {human(kept)} of {human(size)} is kept in {part}: run the same "
                                        "command to resume") from None
        except KeyboardInterrupt as exc:
            try:
                exc.zoo_kept = self.kept()
            except OSError:
                pass
            raise

    def kept(self) -> tuple[Path, int, int | None]:
        """(partial file, bytes of it a rerun can reuse, file size) as journaled now."""
        journal = self.journal or Journal.load(self.journal_path)
        if journal is None or not self.part.exists():
            return self.part, 0, self.pool.size
        return self.part, journal.kept_bytes(), journal.size

    def _attempt(self, size: int, journal: Journal | None) -> TransferResult:
        """One size: resume or start the partial download, transfer, verify (and repair)."""
        if journal and not self.part.exists():
            journal = self._restart(journal, f"the partial file {self.part} is gone")
        if journal and journal.size != size:
            journal = self._restart(journal, f"the file changed on the mirrors (size {journal.size} -> {size} bytes)")
        if journal and journal.chunk_size != self.chunk_size:
            journal = self._rechunk(journal)
        if journal and self._changed_everywhere(journal):
            journal = self._restart(journal, "the file changed on every mirror (new ETag / Last-Modified)")
        if journal is None:
            self._check_space(size)
            journal = Journal(self.journal_path, size, self.chunk_size, self.sha256, verdicts=dict(self.pool.verdicts))
            self._fresh_part()
        for m in self.pool.usable():
            if m.validator and not m.unstable:
                journal.validators.setdefault(m.url, {"validator": m.validator})
        journal.commit()
        self.journal = journal
        if self.chunk_hashes is not None and len(self.chunk_hashes) != journal.num_chunks:
            raise VerificationError(f"{self.name}: manifest lists {len(self.chunk_hashes)} chunk hashes but the file "
                                    f"has {journal.num_chunks} chunks of {self.chunk_size} bytes; fix chunk_hashes")
        self.resumed = sum(journal.chunk_range(i)[1] - journal.chunk_range(i)[0] + 1 for i in journal.chunks)
        if journal.chunks or journal.partials:
            log.info("%s: resuming, %d of %d chunks already on disk%s", self.name, len(journal.chunks),
                     journal.num_chunks, f" (and {len(journal.partials)} in part)" if journal.partials else "")
        try:
            digest = self._transfer(journal)
        except MirrorsExhaustedError:
            if self.pool.files.has_next() and self.pool.files.disproved():
                raise WrongFile("could not be fetched (every mirror serving it failed on evidence)") from None
            raise
        if self.sha256 and digest != self.sha256:
            digest = self._mismatch(digest)
        return TransferResult(size, digest, self.fetched, self.resumed, self.pool.report(), self.sink_error,
                              self.extra, self.restarted)

    def _part_bytes(self) -> int:
        try:
            return self.part.stat().st_size
        except OSError:
            return 0

    def _restart(self, journal: Journal | None, why: str) -> None:
        """A partial download that cannot be reused: say so in one line (a warning: --quiet and --json show it)
        and keep the reason for the result. Returns None, the journal the transfer goes on with."""
        kept = journal.kept_bytes() if journal is not None and self.part.exists() else self._part_bytes()
        self.restarted = f"partial download of {human(kept)} not reused: {why}; starting over"
        log.warning("%s: %s", self.name, self.restarted)
        return None

    def _rechunk(self, journal: Journal) -> Journal:
        """Resume whatever --chunk-size this run has. Without manifest chunk hashes the partial keeps the chunk
        size it began with (nothing to re-read, nothing lost); with them, their chunk size is required and the
        kept bytes are re-verified into it (zoo/transfer/rechunk.py)."""
        if self.chunk_hashes is None:
            log.info("%s: resuming in the partial download's %s chunks (the chunk size it began with)", self.name,
                     human(journal.chunk_size))
            self.chunk_size = journal.chunk_size
            return journal
        from zoo.transfer.rechunk import rechunk

        try:
            fd = os.open(self.part, os.O_RDONLY)
        except OSError as exc:
            return self._restart(journal, f"the partial file cannot be read ({exc.strerror})")
        try:
            new, lost = rechunk(journal, self.chunk_size, fd, self.chunk_hashes, self.pool.files.distrusted())
        finally:
            os.close(fd)
        log.info("%s: the partial download re-verified into the manifest's %s chunks%s", self.name,
                 human(self.chunk_size), f" ({human(lost)} of it did not verify or fit them and is fetched again)" if lost else "")
        return new

    def _mismatch(self, digest: str) -> str:
        """The sha256 failed: another size's turn if this file looks wrong as a whole, else locate and repair."""
        self.board = None  # the workers are gone; the repair makes its own requests
        if self.chunk_hashes is None:
            self.pool.settle_fallback()  # the origin is another witness now (or serves another size), if held back
        why = "failed the sha256"
        other = self.pool.files.has_next() and self.chunk_hashes is None
        served = {s[2] for spans in self.journal.spans.values() for s in spans}
        if other and not served & self.pool.files.distrusted() and not any(self.checks.suspicion[u] for u in served):
            raise WrongFile(why)  # its mirrors agreed on every sample: the file itself is wrong, not some bytes
        self.fd = os.open(self.part, os.O_RDWR)
        try:
            return repair(self, digest)
        except HashMismatchError:
            if other:
                raise WrongFile(why) from None
            self.discard()
            raise
        finally:
            os.close(self.fd)
            self.journal.close()

    def _next_file(self, why: str) -> int:
        size = self.pool.files.next_group(f"its {self.pool.size}-byte file {why}")
        log.warning("%s: %s %s; trying the %s file of %s", self.name, self.pool.files.tried[-1], why, human(size),
                    ", ".join(m.host for m in self.pool.usable()))
        self.sink_error = None
        if self.sink_restart is not None:
            self.sink_restart()  # the streamed bytes were the wrong file's
        if self.progress is not None and hasattr(self.progress, "restart"):
            self.progress.restart(size)
        return size

    def _plausible(self, size: int) -> str | None:
        """Why a file of `size` bytes cannot be the one the manifest's chunk hashes describe, or None."""
        if self.chunk_hashes is None:
            return None
        n, cs = len(self.chunk_hashes), self.chunk_size
        if (n - 1) * cs < size <= n * cs or (n == 1 and size == 0):
            return None
        return f"the manifest's {n} chunk hashes of {cs} bytes need {(n - 1) * cs + 1} to {n * cs} bytes"

    def _check_space(self, size: int) -> None:
        """A fresh partial download of `size` bytes must fit (the preflight checked the first size; a size tried
        later, or a transfer started without the preflight, is checked here before anything is allocated)."""
        where = existing_ancestor(self.part.parent)
        try:
            free = shutil.disk_usage(where).free + (self.part.stat().st_blocks * 512 if self.part.exists() else 0)
        except OSError:
            return
        if size > free and not self.pool.files.verify():  # nobody can serve the end of that claim: it lied
            if self.pool.files.has_next():
                raise WrongFile("is a claim its mirrors cannot serve the end of")
            raise self.pool.exhausted()
        if size > free:
            raise not_enough(where, f"{human(size)} for {self.name} ({self.pool.files.reason})", free)

    # ---- setup ----------------------------------------------------------------------------------------------
    def _changed_everywhere(self, journal: Journal) -> bool:
        """Drop mirrors whose validator differs from the one recorded when the partial file began (unless their
        ETag changes on every request); True when that leaves none."""
        changed = []
        for m in self.pool.usable():
            old = journal.validators.get(m.url, {}).get("validator")
            if m.validator and old and old != m.validator and not self.pool.recheck_validator(m):
                self.pool.drop(m, f"changed since the partial download began ({old} -> {m.validator})")
                changed.append(m)
        if changed and not self.pool.usable():
            for m in changed:
                m.alive, m.reason = True, ""
            return True
        return False

    def _fresh_part(self) -> None:
        try:
            self.part.parent.mkdir(parents=True, exist_ok=True)
            with open(self.part, "wb") as f:
                f.truncate(0)  # sparse growth by pwrite; a full disk shows up on the chunk that hits it
        except OSError as exc:
            raise self.disk_error(exc, "creating") from None

    # ---- the transfer ---------------------------------------------------------------------------------------
    def _transfer(self, journal: Journal) -> str:
        self.board = ChunkBoard(journal.num_chunks, set(journal.chunks))
        self.checks = CrossCheck(self)
        self.pool.vetted = self.checks.vetted
        self.fd = os.open(self.part, os.O_RDWR)
        self.resumed += partials.resume(self, journal)
        workers = [threading.Thread(target=self._worker, name=f"zoo-conn-{k}", daemon=True)
                   for k in range(max(1, self.opts.connections))]
        for w in workers:
            w.start()
        clean = False
        try:
            digest = run_cursor(self)
            clean = True
            return digest
        finally:
            self.board.stop()
            http.cancel([w.ident for w in workers])  # a worker blocked in a read (a race, a tarpit) stops now
            deadline = time.monotonic() + EXIT_GRACE
            for w in workers:
                w.join(max(0.0, deadline - time.monotonic()))
            partials.save_all(self)  # what arrived of the chunks in flight stays resumable
            if any(w.is_alive() for w in workers):
                # stragglers may still write: nothing more is journaled, and the fd stays open until they end
                journal.close(final=True)
                if clean:
                    log.info("%s: %d connection(s) still closing", self.name, sum(w.is_alive() for w in workers))
            else:
                os.close(self.fd)
                journal.close()

    def _worker(self) -> None:
        board = self.board
        while True:
            job = None
            with board.cond:
                while not board.stopping and not (board.pending and self.pool.can_serve()):
                    job = strategies.steal_candidate(self)
                    if job is not None:
                        break
                    board.cond.wait(0.25)
                if board.stopping:
                    return
                if job is None:
                    job = ("chunk", board.pending.pop(0), None)
                    board.inflight.add(job[1])
                else:
                    board.racing.add(job[1])
            kind, i, m = job
            try:
                if kind == "chunk":
                    strategies.fetch_chunk(self, i)
                elif kind == "split":
                    strategies.split(self, i, m)
                else:
                    strategies.race(self, i, m)
            except strategies.Fatal:
                return
            except BaseException as exc:  # noqa: BLE001 - any failure here must stop the whole transfer
                board.fail(exc if isinstance(exc, Exception) else strategies.Fatal(str(exc)))
                return
            finally:
                with board.cond:
                    (board.inflight if kind == "chunk" else board.racing).discard(i)
                    board.cond.notify_all()

    # ---- called by the parts --------------------------------------------------------------------------------
    def settle(self, i: int, partial: Partial, data: bytes | None = None) -> bool:
        """Chunk i's bytes are all there: check and commit them. False when they were rejected (fetch again)."""
        board = self.board
        urls = partial.urls()
        digest = partial.hasher.hexdigest()
        if urls & self.pool.files.distrusted():
            with board.cond:  # bytes from a mirror convicted (or set aside) while this chunk was in flight
                board.partials.pop(i, None)
            return False
        if self.chunk_hashes is not None and digest != self.chunk_hashes[i]:
            with board.cond:
                board.partials.pop(i, None)
                if len(urls) > 1:
                    board.whole.add(i)  # which source lied is unknown: refetch it from one mirror only
            if len(urls) == 1:
                self.convict(self.pool.by_url(next(iter(urls))), f"served chunk {i} with a wrong xxh3-128 hash",
                             requeue=False)
            else:
                log.info("%s: chunk %d failed its hash; it came from %d mirrors, refetching it from one",
                         self.name, i, len(urls))
            return False
        if self._commit(i, digest, partial.spans, data):
            self.checks.after_commit(partial.spans)
        return True

    def _commit(self, i: int, digest: str, spans: list, data: bytes | None = None) -> bool:
        """Make chunk i durable and journaled (writing `data` first for a race winner); False if already done."""
        with self.board.lock_for(i):
            if i in self.board.done:
                return False
            try:
                if data is not None:
                    os.pwrite(self.fd, data, self.journal.chunk_range(i)[0])
                os.fdatasync(self.fd)  # data durable before the journal claims it
                self.journal.commit(i, digest, spans)
            except OSError as exc:
                raise self.disk_error(exc, "saving the journal of") from None
            self.board.finish(i)
            return True

    def outvoted(self, m: Mirror, reason: str) -> None:
        """Two mirrors that agree outvoted m on a range. With a sha256 to decide, number is not proof: m is set
        aside as serving another version of the file (its turn comes if theirs fails) and what it served is
        refetched; without one, the vote is all there is and m is convicted."""
        if self.sha256 is None:
            return self.convict(m, reason)
        if self.pool.files.park_variant(m, reason):
            log.warning("%s: %s was %s; it serves another version of the file and gets its turn if this one fails "
                        "the sha256", self.name, m.host, reason)
            self.pool.wake()
            self._refetch(m)

    def convict(self, m: Mirror | None, reason: str, requeue: bool = True) -> None:
        """Drop m on evidence, remember why in the journal, and refetch what it served (without chunk hashes the
        chunks it served cannot be trusted)."""
        if m is None:
            return
        self.pool.convict(m, reason)
        self.journal.verdicts[m.url] = reason
        self._refetch(m, requeue)

    def _refetch(self, m: Mirror, requeue: bool = True) -> None:
        board = self.board
        for i in self._partly_served_by(m):  # a chunk in flight starts again without its bytes (see fetch_chunk)
            self.journal.forget_partial(i)
        if board is None or not requeue:  # before the transfer, forgotten chunks are simply fetched with the rest
            for i in self._served_by(m) if requeue else []:
                self.journal.forget(i)
            self.journal.commit()
            return
        # decided under the board's lock: once the cursor has read the last chunk, nothing is refetched and the
        # chunks keep their provenance, so a sha256 mismatch is located and repaired from it
        with board.cond:
            bad = [] if board.stopping else self._served_by(m)
            for i in bad:
                self.journal.forget(i)
            self.journal.commit()
            if bad:
                log.warning("%s: refetching %d chunk(s) %s served", self.name, len(bad), m.host)
                board.requeue(bad)

    def _served_by(self, m: Mirror) -> list[int]:
        return [i for i, spans in list(self.journal.spans.items()) if any(s[2] == m.url for s in spans)]

    def _partly_served_by(self, m: Mirror) -> list[int]:
        return [i for i, p in list(self.journal.partials.items()) if any(s[2] == m.url for s in p[2])]

    def count(self, n: int, extra: bool = False) -> None:
        with self._count_lock:
            self.fetched += n
            self.extra += n if extra else 0
        if self.progress:
            self.progress(n)
            if hasattr(self.progress, "note"):
                busy = sorted({m.host for m in self.mirrors if m.active > 0})
                self.progress.note(f"{len(busy)} mirror{'s' if len(busy) != 1 else ''}: {', '.join(busy)[:60]}")

    def feed(self, view: memoryview) -> None:
        if self.sink is None or self.sink_error:
            return
        try:
            self.sink(view)
        except Exception as exc:  # the archive is judged after the hash; a bad mirror may have caused this
            self.stop_sink(f"{type(exc).__name__}: {exc}")

    def stop_sink(self, why: str) -> None:
        if self.sink is not None and not self.sink_error:
            log.info("%s: streaming extraction stopped (%s); will extract after verification", self.name, why)
        self.sink_error = self.sink_error or why

    def _wake(self) -> None:
        if self.board is not None:
            with self.board.cond:
                self.board.cond.notify_all()

    def disk_error(self, exc: OSError, doing: str) -> DiskError:
        if exc.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT):
            return DiskError(f"{self.name}: disk full while {doing} {self.part} ({os.strerror(exc.errno)}); the "
                             "partial download and its journal are kept: free space and run the same command to resume")
        if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
            return DiskError(f"{self.name}: cannot write {self.part} ({os.strerror(exc.errno)}); choose a writable "
                             "--data-dir or MMF_DATA_DIR")
        return DiskError(f"{self.name}: {doing} {self.part} failed: {exc}")

    def discard(self) -> None:
        for p in (self.part, self.journal_path):
            try:
                p.unlink()
            except FileNotFoundError:
                pass
