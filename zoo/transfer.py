"""The transfer engine: one file, many mirrors, N connections, crash-safe and verified as it arrives.

Flow: probe a mirror for size and validator -> split into chunks -> workers fetch chunks with Range (+If-Range),
spread over healthy mirrors by measured speed -> each finished chunk is hashed (xxh3-128), fsynced and journaled ->
an in-order cursor reads the contiguous prefix back (page cache), feeds the whole-file sha256 and an optional sink
(the streaming extractor) -> at the end sha256 is compared with the manifest. See zoo/journal.py for the
crash-safety invariant and zoo/http.py for what is accepted from a server.
"""
from __future__ import annotations

import errno
import hashlib
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import xxhash

from zoo import http
from zoo.errors import DiskError, HashMismatchError, MirrorsExhaustedError, OfflineError, VerificationError
from zoo.journal import Journal
from zoo.mirrors import Mirror, is_local

log = logging.getLogger("zoo")
BLOCK = 1 << 20
MiB = 1 << 20


@dataclass
class TransferOptions:
    connections: int = 8
    chunk_size: int = 8 * MiB
    stall_timeout: float = 30.0
    connect_timeout: float = 10.0
    backoff_base: float = 0.5
    backoff_cap: float = 30.0
    max_failures: int = 8  # consecutive transient failures before a mirror is dropped
    offline: bool = False


@dataclass
class TransferResult:
    size: int
    sha256: str
    fetched: int  # bytes received from the network (or local mirrors) in this run
    resumed: int  # bytes of the partial file reused from an earlier run
    mirrors: dict[str, str] = field(default_factory=dict)  # url -> "ok (N bytes)" or the reason it was dropped
    sink_error: str | None = None


class _Fatal(Exception):
    pass


class _Lost(Exception):
    """Another connection (an end-game race) finished this chunk first."""


@dataclass
class _Partial:  # progress inside a chunk kept across retries and mirrors, so a reset refetches nothing
    done: int
    hasher: object
    mirrors: set = field(default_factory=set)  # every mirror that contributed bytes (for the repair pass)
    mirror: str = ""  # serving it right now
    since: float = 0.0  # when the current attempt started
    done_at_start: int = 0
    limit: int | None = None  # absolute last byte this connection fetches when another one took the rest
    tail: "_Tail | None" = None


@dataclass
class _Tail:  # the upper part of a chunk, fetched by an idle connection to shorten the end of a transfer
    start: int
    end: int
    event: threading.Event = field(default_factory=threading.Event)
    data: bytes | None = None
    mirror: str = ""


class Transfer:
    """Download `mirrors` -> `part` with a journal. Use `run()`; it raises ZooError subclasses on failure."""

    def __init__(self, name: str, urls: list[str], part: Path, journal_path: Path, *, size: int | None = None,
                 sha256: str | None = None, chunk_hashes: list[str] | None = None, chunk_size: int | None = None,
                 opts: TransferOptions | None = None, progress: Callable[[int], None] | None = None,
                 sink: Callable[[memoryview], None] | None = None):
        self.name, self.part, self.journal_path = name, Path(part), Path(journal_path)
        self.opts = opts or TransferOptions()
        self.expected_size, self.sha256, self.chunk_hashes = size, sha256, chunk_hashes
        self.chunk_size = chunk_size or self.opts.chunk_size
        self.progress, self.sink = progress, sink
        self.mirrors = [Mirror(u) for u in dict.fromkeys(urls)]
        if self.opts.offline:
            remote = [m for m in self.mirrors if not is_local(m.url)]
            for m in remote:
                m.drop("offline mode")
            if not any(m.alive for m in self.mirrors):
                raise OfflineError(f"{name}: needs the network ({remote[0].url if remote else 'no URL'}) but offline "
                                   "mode is on; install it with `mmf zoo fetch KEY --from PATH` or drop --offline")
        self.cond = threading.Condition()
        self.fetched = 0
        self.error: BaseException | None = None
        self.sink_error: str | None = None

    # ---- public ---------------------------------------------------------------------------------------------
    def run(self) -> TransferResult:
        size, first = self._probe_size()
        journal = Journal.load(self.journal_path)
        if journal and (journal.size != size or journal.chunk_size != self.chunk_size or not self.part.exists()):
            log.info("%s: partial download does not match (size/chunk size changed); starting over", self.name)
            journal = None
        if journal and self._changed_since(journal):
            log.warning("%s: the file changed on every mirror since the partial download began; starting over", self.name)
            journal = None
            for m in self.mirrors:
                if m.reason.startswith("changed since"):
                    m.alive, m.reason = True, ""
        if journal is None:
            journal = Journal(self.journal_path, size, self.chunk_size, self.sha256)
            self._fresh_part(size)
        for m in self.mirrors:
            if m.validator and m.alive:
                journal.validators.setdefault(m.url, {"validator": m.validator})
        journal.commit()
        self.journal = journal
        if self.chunk_hashes is not None and len(self.chunk_hashes) != journal.num_chunks:
            raise VerificationError(f"{self.name}: manifest lists {len(self.chunk_hashes)} chunk hashes but the file "
                                    f"has {journal.num_chunks} chunks of {self.chunk_size} bytes; fix chunk_hashes")
        resumed = sum(journal.chunk_range(i)[1] - journal.chunk_range(i)[0] + 1 for i in journal.chunks)
        if resumed:
            log.info("%s: resuming, %d of %d chunks already on disk", self.name, len(journal.chunks), journal.num_chunks)
        digest = self._transfer(journal, first)
        if self.sha256 and digest != self.sha256:
            digest = self._repair(journal, digest)
        return TransferResult(size, digest, self.fetched, resumed, self._mirror_report(), self.sink_error)

    # ---- probing --------------------------------------------------------------------------------------------
    def _probe_size(self) -> tuple[int, Mirror | None]:
        """Ask mirrors in order for size and validator until one answers; drop those that refuse."""
        while True:
            alive = [m for m in self.mirrors if m.alive]
            if not alive:
                raise self._exhausted()
            for m in alive:
                if m.backoff_until > time.monotonic():
                    continue
                if not self._probe(m):
                    continue
                if self.expected_size is not None and m.size != self.expected_size:
                    self._drop(m, f"serves {m.size} bytes, the manifest says {self.expected_size}")
                    continue
                return m.size, m
            wait = min((m.backoff_until for m in self.mirrors if m.alive), default=0) - time.monotonic()
            if wait > 0:
                time.sleep(min(wait, 5))

    def _probe(self, m: Mirror) -> bool:
        """Learn a mirror's size and validator; False (and the mirror dropped or backed off) when it fails."""
        try:
            http.probe(m, self.opts)
            return True
        except http.Permanent as exc:
            self._drop(m, str(exc))
        except http.Transient as exc:
            self._transient(m, exc)
        return False

    def _changed_since(self, journal: Journal) -> bool:
        """Drop mirrors whose validator differs from the one recorded when the partial file began."""
        changed = 0
        for m in self.mirrors:
            old = journal.validators.get(m.url, {}).get("validator")
            if m.validator and old and old != m.validator:
                self._drop(m, f"changed since the partial download began ({old} -> {m.validator})")
                changed += 1
        return changed > 0 and not any(m.alive for m in self.mirrors)

    def _fresh_part(self, size: int) -> None:
        try:
            self.part.parent.mkdir(parents=True, exist_ok=True)
            with open(self.part, "wb") as f:
                f.truncate(0)  # sparse growth by pwrite; a full disk shows up on the chunk that hits it
        except OSError as exc:
            raise self._disk_error(exc, "creating") from None

    # ---- the transfer ---------------------------------------------------------------------------------------
    def _transfer(self, journal: Journal, first: Mirror | None) -> str:
        n = journal.num_chunks
        self.pending = [i for i in range(n) if i not in journal.chunks]
        self.done = set(journal.chunks)  # journaled; re-checked by the cursor before use
        self.checked: set[int] = set()
        self.inflight: set[int] = set()
        self.partials: dict[int, _Partial] = {}
        self.bad_for: dict[int, set[str]] = {}
        self.racing: set[int] = set()
        self.raced_bytes = 0
        self.chunk_locks: dict[int, threading.Lock] = {}
        self.finished = False
        self.fd = os.open(self.part, os.O_RDWR)
        try:
            workers = [threading.Thread(target=self._worker, name=f"zoo-conn-{k}", daemon=True)
                       for k in range(max(1, self.opts.connections))]
            for w in workers:
                w.start()
            try:
                digest = self._cursor(journal)
            finally:
                with self.cond:
                    self.finished = True
                    self.cond.notify_all()
                for w in workers:
                    w.join(timeout=self.opts.stall_timeout + 5)
            return digest
        finally:
            os.close(self.fd)
            journal.close()

    def _cursor(self, journal: Journal) -> str:
        """Read chunks back in order: verify resumed ones, feed sha256 and the sink."""
        sha = hashlib.sha256()
        buf = bytearray(BLOCK)
        for i in range(journal.num_chunks):
            self._wait_for(i)
            start, end = journal.chunk_range(i)
            if i not in self.checked:
                # resumed from an earlier run: trust it only if the bytes on disk still hash as recorded
                if self._hash_on_disk(start, end) != journal.chunks.get(i):
                    log.warning("%s: chunk %d on disk does not match its journal entry; refetching", self.name, i)
                    journal.forget(i)
                    journal.commit()
                    with self.cond:
                        self.done.discard(i)
                        self.pending.insert(0, i)
                        self.cond.notify_all()
                    self._wait_for(i)
            pos = start
            while pos <= end:
                k = os.preadv(self.fd, [memoryview(buf)[: min(BLOCK, end - pos + 1)]], pos)
                view = memoryview(buf)[:k]
                sha.update(view)
                self._feed(view)
                pos += k
        return sha.hexdigest()

    def _wait_for(self, i: int) -> None:
        with self.cond:
            while i not in self.done and self.error is None:
                if i not in self.inflight and not any(m.alive for m in self.mirrors):
                    self.error = self._exhausted(chunk=i)  # nobody is left to fetch it
                    break
                self.cond.wait(0.5)
            if self.error is not None:
                raise self.error

    def _feed(self, view: memoryview) -> None:
        if self.sink is None or self.sink_error:
            return
        try:
            self.sink(view)
        except Exception as exc:  # the archive is judged after the hash; a bad mirror may have caused this
            self.sink_error = f"{type(exc).__name__}: {exc}"
            log.info("%s: streaming extraction stopped (%s); will extract after verification", self.name, exc)

    def _hash_on_disk(self, start: int, end: int) -> str:
        h = xxhash.xxh3_128()
        pos = start
        while pos <= end:
            data = os.pread(self.fd, min(BLOCK * 4, end - pos + 1), pos)
            if not data:
                break
            h.update(data)
            pos += len(data)
        return h.hexdigest()

    def _worker(self) -> None:
        while True:
            race = None
            with self.cond:
                while not self.finished and self.error is None and not self._claimable():
                    race = self._race_candidate()
                    if race is not None:
                        break
                    self.cond.wait(0.25)
                if self.finished or self.error is not None:
                    return
                if race is None:
                    i = self.pending.pop(0)
                    self.inflight.add(i)
                else:
                    kind, i, mirror = race
                    self.racing.add(i)
            try:
                if race is None:
                    self._fetch_chunk(i)
                elif kind == "split":
                    self._split(i, mirror)
                else:
                    self._race(i, mirror)
            except BaseException as exc:  # noqa: BLE001 - any failure here must stop the whole transfer
                with self.cond:
                    self.error = self.error or (exc if isinstance(exc, Exception) else _Fatal(str(exc)))
                    self.cond.notify_all()
                return
            finally:
                with self.cond:
                    (self.inflight if race is None else self.racing).discard(i)
                    self.cond.notify_all()

    def _claimable(self) -> bool:
        return bool(self.pending) and any(m.alive for m in self.mirrors)

    def _pick(self, i: int) -> Mirror | None:
        """The healthy, range-capable mirror with the best expected speed that has not failed this chunk."""
        now = time.monotonic()
        bad = self.bad_for.get(i, set())
        alive = [m for m in self.mirrors if m.alive and m.url not in bad]
        ranged = [m for m in alive if m.ranges is not False]
        pool = ranged or alive
        ready = [m for m in pool if m.backoff_until <= now]
        if not ready:
            return None
        return max(ready, key=lambda m: (m.score(), -self.mirrors.index(m)))

    def _fetch_chunk(self, i: int) -> None:
        journal = self.journal
        while True:
            if self.error is not None or self.finished:
                return
            m = self._pick(i)
            if m is None:
                if not any(m2.alive and m2.url not in self.bad_for.get(i, ()) for m2 in self.mirrors):
                    raise self._exhausted(chunk=i)
                time.sleep(0.05)
                continue
            if m.ranges is None:
                if not self._probe(m):
                    continue
                if m.size != journal.size:
                    self._drop(m, f"serves {m.size} bytes, expected {journal.size}")
                    continue
                known = journal.validators.get(m.url, {}).get("validator")
                if known and m.validator and known != m.validator:
                    self._drop(m, f"changed since the partial download began ({known} -> {m.validator})")
                    continue
                if m.validator and m.url not in journal.validators:
                    journal.validators[m.url] = {"validator": m.validator}
                    journal.commit()  # header rewrite: a later resume must know this mirror's validator
            if m.ranges is False:
                self._sequential(m)
                return
            start, end = journal.chunk_range(i)
            with self.cond:
                partial = self.partials.setdefault(i, _Partial(0, xxhash.xxh3_128()))
                partial.mirror, partial.since, partial.done_at_start = m.url, time.monotonic(), partial.done
            with m.lock:
                m.active += 1
            t0, got0 = time.monotonic(), partial.done
            try:
                with http.open_range(m, start + partial.done, end, self.opts) as stream:
                    self._copy(stream, start + partial.done, end, partial, i, m.url)
            except _Lost:
                return
            except http.Permanent as exc:
                self._drop(m, str(exc))
                continue
            except http.Transient as exc:
                m.record(partial.done - got0, time.monotonic() - t0, completed=False)
                self._transient(m, exc)
                continue
            finally:
                with m.lock:
                    m.active -= 1
            m.record(partial.done - got0, time.monotonic() - t0, completed=True)
            if start + partial.done <= end:  # stopped at the limit: another connection fetched the rest
                try:
                    if not self._join_tail(i, partial):
                        continue
                except _Lost:
                    return
            digest = partial.hasher.hexdigest()
            if self.chunk_hashes is not None and digest != self.chunk_hashes[i]:
                # which of its sources was bad is unknown: blame them all for this chunk, refetch it whole
                self.bad_for.setdefault(i, set()).update(partial.mirrors)
                with self.cond:
                    self.partials.pop(i, None)
                for url in partial.mirrors:
                    self._drop(next(x for x in self.mirrors if x.url == url), f"served chunk {i} with a wrong xxh3-128 hash")
                continue
            if self._commit(i, digest, partial.mirrors):
                with self.cond:
                    self.partials.pop(i, None)
            return

    def _copy(self, stream, pos: int, end: int, partial: _Partial, i: int, url: str) -> None:
        lock = self._chunk_lock(i)
        while pos <= (end if partial.limit is None else partial.limit):
            data = stream.read(min(BLOCK, end - pos + 1))
            if not data:
                raise http.Transient(f"connection closed after {partial.done} bytes of the chunk")
            with lock:  # a race winner may have finished the chunk: never write over its bytes
                if i in self.done:
                    raise _Lost()
                limit = end if partial.limit is None else partial.limit
                if pos > limit:
                    break
                data = data[: limit - pos + 1]  # a split moved the limit while this block was in flight
                try:
                    os.pwrite(self.fd, data, pos)
                except OSError as exc:
                    raise self._disk_error(exc, "writing") from None
                partial.hasher.update(data)
                partial.done += len(data)
                partial.mirrors.add(url)
            pos += len(data)
            self._count(len(data))
            if self.error is not None:
                raise _Fatal("stopped")

    def _chunk_lock(self, i: int) -> threading.Lock:
        with self.cond:
            return self.chunk_locks.setdefault(i, threading.Lock())

    def _commit(self, i: int, digest: str, mirrors, data: bytes | None = None) -> bool:
        """Make chunk i durable and journaled (writing `data` first for a race winner); False if already done."""
        with self._chunk_lock(i):
            if i in self.done:
                return False
            try:
                if data is not None:
                    os.pwrite(self.fd, data, self.journal.chunk_range(i)[0])
                os.fdatasync(self.fd)  # data durable before the journal claims it
                self.journal.commit(i, digest, list(mirrors))
            except OSError as exc:
                raise self._disk_error(exc, "saving the journal of") from None
            with self.cond:
                self.done.add(i)
                self.checked.add(i)
                self.cond.notify_all()
            return True

    # ---- end game: a slow chunk is raced on a faster mirror ---------------------------------------------------
    def _race_candidate(self) -> tuple[int, Mirror] | None:
        """(chunk, mirror) worth racing now, or None. Called with self.cond held, when nothing is pending.

        A chunk is raced only when a ready mirror other than its current one would finish the whole chunk in
        less than half the time the current connection needs for the rest, and raced bytes stay under 5% of
        the file, so the tail gets shorter without refetching much.
        """
        if not self.inflight:
            return None
        split = self._split_candidate()
        if split is not None:
            return split
        if self.raced_bytes > 0.05 * self.journal.size:
            return None
        now, best = time.monotonic(), None
        for i in self.inflight - self.racing - self.done:
            p = self.partials.get(i)
            if p is None or not p.mirror:
                continue
            start, end = self.journal.chunk_range(i)
            left = end - start + 1 - p.done
            elapsed = now - p.since
            rate = (p.done - p.done_at_start) / elapsed if elapsed > 0.2 else None
            eta = left / rate if rate else (float("inf") if elapsed > 1.0 else None)
            if eta is None or left < (end - start + 1) // 8:  # nearly done: not worth a second copy
                continue
            for m in self.mirrors:
                if m.url == p.mirror or not m.alive or m.ranges is False or not m.rate or m.backoff_until > now:
                    continue
                if m.url in self.bad_for.get(i, ()):
                    continue
                mine = (end - start + 1) / m.rate
                if mine * 2 < eta and (best is None or eta - mine > best[0]):
                    best = (eta - mine, i, m)
        if best is None:
            return None
        self.raced_bytes += self.journal.chunk_range(best[1])[1] - self.journal.chunk_range(best[1])[0] + 1
        return "race", best[1], best[2]

    def _split_candidate(self):
        """An in-flight chunk with >= 2 MiB still to come: an idle connection takes its upper half."""
        best = None
        for i in self.inflight - self.racing - self.done:
            p = self.partials.get(i)
            if p is None or p.tail is not None or not p.mirror:
                continue
            start, end = self.journal.chunk_range(i)
            left = (end if p.limit is None else p.limit) - (start + p.done) + 1
            if left >= (2 << 20) and (best is None or left > best[0]):
                best = (left, i)
        if best is None:
            return None
        now = time.monotonic()
        ready = [m for m in self.mirrors if m.alive and m.ranges and m.backoff_until <= now
                 and m.url not in self.bad_for.get(best[1], ())]
        if not ready:
            return None
        return "split", best[1], max(ready, key=lambda m: (m.score(), -self.mirrors.index(m)))

    def _split(self, i: int, m: Mirror) -> None:
        """Fetch the upper half of what chunk i still lacks into memory; its owner appends it in order."""
        p = self.partials.get(i)
        start, end = self.journal.chunk_range(i)
        with self._chunk_lock(i):
            if p is None or i in self.done or p.tail is not None:
                return
            limit = end if p.limit is None else p.limit
            pos = start + p.done
            if limit - pos + 1 < (2 << 20):
                return
            cut = pos + (limit - pos + 1) // 2
            tail = _Tail(cut, limit)
            p.tail, p.limit = tail, cut - 1
        with m.lock:
            m.active += 1
        try:
            t0 = time.monotonic()
            tail.data = self._read_range(m, cut, limit)
            tail.mirror = m.url
            if tail.data is not None:
                m.record(len(tail.data), time.monotonic() - t0, completed=True)
        finally:
            with m.lock:
                m.active -= 1
            tail.event.set()

    def _join_tail(self, i: int, partial: _Partial) -> bool:
        """Append the tail another connection fetched; False (and no limit) when it failed: fetch it yourself."""
        tail = partial.tail
        if tail is None:
            partial.limit = None
            return False
        while not tail.event.wait(0.5):
            if self.error is not None or self.finished:
                raise _Fatal("stopped")
        start, _ = self.journal.chunk_range(i)
        with self._chunk_lock(i):
            partial.tail, partial.limit = None, None
            if i in self.done:
                raise _Lost()
            if tail.data is None or start + partial.done != tail.start or len(tail.data) != tail.end - tail.start + 1:
                return False
            try:
                os.pwrite(self.fd, tail.data, tail.start)
            except OSError as exc:
                raise self._disk_error(exc, "writing") from None
            partial.hasher.update(tail.data)
            partial.done += len(tail.data)
            partial.mirrors.add(tail.mirror)
        return True

    def _race(self, i: int, m: Mirror) -> None:
        """Fetch chunk i whole into memory from m; if it verifies and nobody finished first, it wins."""
        start, end = self.journal.chunk_range(i)
        t0 = time.monotonic()
        data = self._read_range(m, start, end)
        if data is None or i in self.done:
            return
        m.record(len(data), time.monotonic() - t0, completed=True)
        digest = xxhash.xxh3_128_hexdigest(data)
        if self.chunk_hashes is not None and digest != self.chunk_hashes[i]:
            self._drop(m, f"served chunk {i} with a wrong xxh3-128 hash")
            return
        if self._commit(i, digest, [m.url], data):
            log.info("%s: chunk %d finished by a faster mirror (%s)", self.name, i, m.host)

    def _sequential(self, m: Mirror) -> None:
        """A mirror that ignores Range: one stream from byte 0, keeping only chunks not yet on disk."""
        journal = self.journal
        with self.cond:  # this worker owns every chunk now; the others go idle
            self.pending.clear()
        try:
            with http.open_full(m, self.opts) as stream:
                for i in range(journal.num_chunks):
                    start, end = journal.chunk_range(i)
                    if i in self.done:
                        http.discard(stream, end - start + 1)
                        continue
                    partial = _Partial(0, xxhash.xxh3_128())
                    try:
                        self._copy(stream, start, end, partial, i, m.url)
                    except _Lost:
                        http.discard(stream, end - start + 1 - partial.done)
                        continue
                    digest = partial.hasher.hexdigest()
                    if self.chunk_hashes is not None and digest != self.chunk_hashes[i]:
                        raise http.Permanent(f"served chunk {i} with a wrong xxh3-128 hash")
                    self._commit(i, digest, [m.url])
        except (http.Permanent, http.Transient) as exc:
            if isinstance(exc, http.Permanent):
                self._drop(m, str(exc))
            else:
                self._transient(m, exc)
            with self.cond:
                self.pending = [i for i in range(journal.num_chunks) if i not in self.done]
                self.cond.notify_all()

    # ---- whole-file hash failure ----------------------------------------------------------------------------
    def _repair(self, journal: Journal, digest: str) -> str:
        """sha256 failed without chunk hashes: refetch each chunk from another mirror, then find which mirror's
        chunks, swapped for the alternatives, give the right sha256. Alternatives go to a sparse side file."""
        others = [m for m in self.mirrors if m.alive and m.ranges is not False]
        sources = {u for urls in journal.served_by.values() for u in urls}
        if self.chunk_hashes is not None or len({m.url for m in others} | sources) < 2:
            self._discard(journal)
            raise HashMismatchError(
                f"{self.name}: sha256 is {digest}, the manifest says {self.sha256}; "
                + ("every chunk matched its chunk hash, so the manifest's hashcode is likely outdated"
                   if self.chunk_hashes is not None else
                   "only one mirror was available, so the bad bytes cannot be located")
                + "; the partial file was deleted, run the fetch again (add a --mirror to help)")
        log.warning("%s: sha256 mismatch; comparing chunks with a second mirror to find the bad ones", self.name)
        alt_path = self.part.with_name(self.part.name + ".alt")
        diffs: dict[int, tuple[list, str, str]] = {}  # chunk -> (served by, alt mirror, alt hash)
        with open(alt_path, "wb") as alt_file:
            for i in range(journal.num_chunks):
                served = journal.served_by.get(i, [])
                alt = next((m for m in others if m.url not in served), None)
                if alt is None:
                    continue
                start, end = journal.chunk_range(i)
                data = self._read_range(alt, start, end)
                if data is None:
                    continue
                h = xxhash.xxh3_128_hexdigest(data)
                if h != journal.chunks.get(i):
                    alt_file.seek(start)
                    alt_file.write(data)
                    diffs[i] = (served, alt.url, h)
        try:
            for suspect in sorted({u for d in diffs.values() for u in d[0]}):
                swap = {i for i, d in diffs.items() if suspect in d[0]}
                if self._sha_with(journal, alt_path, swap) == self.sha256:
                    with open(alt_path, "rb") as src, open(self.part, "r+b") as dst:
                        for i in sorted(swap):
                            start, end = journal.chunk_range(i)
                            src.seek(start)
                            dst.seek(start)
                            dst.write(src.read(end - start + 1))
                            journal.chunks[i], journal.served_by[i] = diffs[i][2], [diffs[i][1]]
                        dst.flush()
                        os.fsync(dst.fileno())
                    journal.commit()
                    for m in self.mirrors:
                        if m.url == suspect:
                            self._drop(m, "served bytes that failed the sha256 (found by comparing chunks)")
                    self.sink_error = self.sink_error or "the streamed bytes were repaired"
                    return self.sha256
        finally:
            alt_path.unlink(missing_ok=True)
        self._discard(journal)
        raise HashMismatchError(f"{self.name}: sha256 is {digest}, the manifest says {self.sha256}, and comparing "
                                "mirrors did not locate the bad bytes; the partial file was deleted, run the fetch again")

    def _read_range(self, m: Mirror, start: int, end: int) -> bytes | None:
        data = bytearray()
        try:
            with http.open_range(m, start, end, self.opts) as stream:
                while len(data) < end - start + 1:
                    block = stream.read(min(BLOCK, end - start + 1 - len(data)))
                    if not block:
                        return None
                    data += block
        except (http.Permanent, http.Transient):
            return None
        self._count(len(data))
        return bytes(data)

    def _sha_with(self, journal: Journal, alt_path: Path, swap: set[int]) -> str:
        sha = hashlib.sha256()
        with open(self.part, "rb") as main, open(alt_path, "rb") as alt:
            for i in range(journal.num_chunks):
                start, end = journal.chunk_range(i)
                f = alt if i in swap else main
                f.seek(start)
                sha.update(f.read(end - start + 1))
        return sha.hexdigest()

    # ---- helpers --------------------------------------------------------------------------------------------
    def _count(self, n: int) -> None:
        with self.cond:
            self.fetched += n
        if self.progress:
            self.progress(n)
            if hasattr(self.progress, "note"):
                busy = sorted({m.host for m in self.mirrors if m.active > 0})
                self.progress.note(f"{len(busy)} mirror{'s' if len(busy) != 1 else ''}: {', '.join(busy)[:60]}")

    def _drop(self, m: Mirror, reason: str) -> None:
        if m.drop(reason):
            log.warning("%s: dropping mirror %s: %s", self.name, m.url, reason)
        with self.cond:
            self.cond.notify_all()

    def _transient(self, m: Mirror, exc: Exception) -> None:
        if m.failures + 1 >= self.opts.max_failures:
            self._drop(m, f"failed {self.opts.max_failures} times in a row (last: {exc})")
            return
        delay = m.transient(self.opts.backoff_base, self.opts.backoff_cap, getattr(exc, "retry_after", None))
        log.info("%s: %s: %s; retrying in %.1fs", self.name, m.host, exc, delay)

    def _exhausted(self, chunk: int | None = None) -> MirrorsExhaustedError:
        reasons = "; ".join(f"{m.url}: {m.reason}" for m in self.mirrors) or "no URL"
        what = f" (chunk {chunk})" if chunk is not None else ""
        return MirrorsExhaustedError(f"{self.name}: no mirror left{what}: {reasons}. The partial download is kept; "
                                     "run again later or add --mirror NAME|URL")

    def _disk_error(self, exc: OSError, doing: str) -> DiskError:
        if exc.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT):
            return DiskError(f"{self.name}: disk full while {doing} {self.part} ({os.strerror(exc.errno)}); the "
                             "partial download and its journal are kept: free space and run the same command to resume")
        if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
            return DiskError(f"{self.name}: cannot write {self.part} ({os.strerror(exc.errno)}); choose a writable "
                             "--data-dir or MMF_DATA_DIR")
        return DiskError(f"{self.name}: {doing} {self.part} failed: {exc}")

    def _discard(self, journal: Journal) -> None:
        for p in (self.part, self.journal_path):
            try:
                p.unlink()
            except FileNotFoundError:
                pass

    def _mirror_report(self) -> dict[str, str]:
        return {m.url: (f"ok ({m.bytes} bytes)" if m.alive else f"dropped: {m.reason}") for m in self.mirrors}
