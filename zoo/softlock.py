"""A lock file for filesystems where flock does not work (NFS without a lock daemon, Lustre without -o flock,
some FUSE filesystems): the lock is a file created with O_CREAT|O_EXCL (atomic on NFSv3 and later) that names its
holder, kept alive by a heartbeat.

The holder touches the file every `beat` seconds (a daemon thread) and removes it on release. A waiter takes the
file over only when
- it was written on this machine (zoo/hostid.py) and its process is gone, or
- it came from another machine (or cannot be read) and the waiter has seen it unchanged for the lease
  (MMF_ZOO_LOCK_LEASE, default 120 s), and for at least 4 of the holder's own heartbeats; the waiter times this on
  its own monotonic clock, comparing no clock of another host, and opens the file each time it looks (NFS's
  close-to-open consistency: a cached mtime never hides a heartbeat).
A live holder on this machine is never taken over; one on another machine only once its heartbeat has stopped for
the lease. Taking over is done under a second O_EXCL file (`<lock>.break`), so two waiters never both break one
lock, nor one of them the other's new lock.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import secrets
import threading
import time
from collections.abc import Callable
from pathlib import Path

import filelock

from zoo import hostid
from zoo.errors import UsageError

log = logging.getLogger("zoo")

LEASE_ENV = "MMF_ZOO_LOCK_LEASE"
LEASE_DEFAULT = 120.0  # seconds without a heartbeat before another machine's lock is taken over
BEAT_MAX = 10.0  # seconds between two heartbeats (a quarter of the lease when that is shorter)
POLL = 0.5  # seconds between two looks at a held lock


def lease_seconds() -> float:
    raw = os.environ.get(LEASE_ENV, "").strip()
    if not raw:
        return LEASE_DEFAULT
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0 < value < 1e7:
        raise UsageError(f"{LEASE_ENV}={raw!r} is not a number of seconds above 0; set it to how long a lock "
                         f"holder on another machine may go without a heartbeat (default {LEASE_DEFAULT:g}) or unset it")
    return value


def beat_for(lease: float) -> float:
    return min(BEAT_MAX, lease / 4)


def read_record(path: Path) -> tuple[dict, tuple | None]:
    """The lock file's record ({} while it is being written or unreadable) and what identifies this version of it
    (None when there is no lock file): opened and read, so that NFS revalidates it."""
    try:
        with open(path, "rb") as f:
            data = f.read(64 * 1024)
            st = os.fstat(f.fileno())
    except FileNotFoundError:
        return {}, None
    except OSError:
        return {}, ("unreadable",)
    try:
        record = json.loads(data)
        record = record if isinstance(record, dict) else {}
    except ValueError:
        record = {}
    return record, (st.st_ino, st.st_mtime_ns, st.st_ctime_ns, hashlib.sha256(data).hexdigest())


class SoftLock:
    """The `filelock` interface that zoo.lock uses (acquire(timeout) raising filelock.Timeout, release) over a
    heartbeat lock file. `on_break(record, why)` is told when a stale lock is taken over."""

    def __init__(self, path: Path, lease: float, on_break: Callable[[dict, str], None] | None = None):
        self.path, self.guard = Path(path), Path(f"{path}.break")
        self.lease, self.beat = lease, beat_for(lease)
        self.on_break = on_break or (lambda record, why: None)
        self._seen: dict[Path, tuple[tuple, float]] = {}  # file -> (its version, when this process first saw it)
        self._token: str | None = None
        self._stop: threading.Event | None = None

    def holder(self) -> dict:
        return read_record(self.path)[0]

    def acquire(self, timeout: float) -> None:
        deadline = time.monotonic() + max(0.0, timeout)
        while not self._create():
            self._break_if_stale()
            if self._create():
                return
            left = deadline - time.monotonic()
            if left <= 0:
                raise filelock.Timeout(str(self.path))
            time.sleep(min(POLL, left))

    def release(self) -> None:
        if self._stop is not None:
            self._stop.set()
        if self._token is not None and read_record(self.path)[0].get("token") == self._token:
            self.path.unlink(missing_ok=True)
        self._token, self._stop = None, None

    def _create(self) -> bool:
        token = secrets.token_hex(8)
        record = {**hostid.holder_record(), "beat": self.beat, "lease": self.lease, "token": token}
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return False
        try:
            os.write(fd, json.dumps(record).encode())
            os.fsync(fd)
        except OSError:
            os.close(fd)
            self.path.unlink(missing_ok=True)  # a lock without its record would cost every waiter a lease
            raise
        os.close(fd)
        self._token, self._stop = token, threading.Event()
        threading.Thread(target=self._heartbeat, args=(token, self._stop), daemon=True,
                         name=f"zoo-lock-heartbeat {self.path.name}").start()
        return True

    def _heartbeat(self, token: str, stop: threading.Event) -> None:
        while not stop.wait(self.beat):
            record, version = read_record(self.path)
            if version is not None and version[0] == "unreadable":
                continue  # a transient error (an NFS server restarting): the next beat tries again
            if record.get("token") != token:
                if not stop.is_set():
                    log.warning("the lock %s held by this process was taken over by %s: its heartbeat stopped for "
                                "over %g s (%s); another process may now work on the same files", self.path,
                                _who(record), self.lease, LEASE_ENV)
                return
            try:
                os.utime(self.path)
            except OSError:
                continue

    def _unchanged_for(self, path: Path, version: tuple) -> float:
        now = time.monotonic()
        seen = self._seen.get(path)
        if seen is None or seen[0] != version:
            self._seen[path] = (version, now)
            return 0.0
        return now - seen[1]

    def _stale(self, record: dict, version: tuple) -> str | None:
        age = self._unchanged_for(self.path, version)
        state = hostid.process_state(record)
        if state == "gone":
            return "its process is gone"
        if state == "alive":
            return None
        try:
            their_beat = float(record.get("beat") or 0)
        except (TypeError, ValueError):
            their_beat = 0.0
        if age >= max(self.lease, 4 * their_beat):
            _stopped.add(_identity(record))
            return f"no heartbeat for {age:.0f} s ({LEASE_ENV}={self.lease:g})"
        if record and _identity(record) in _stopped and age >= 2 * their_beat:
            # the other locks of a holder whose heartbeat already stopped for a lease: no lease each
            return f"no heartbeat for {age:.0f} s, and its other lock had none for {LEASE_ENV}={self.lease:g} s"
        return None

    def _break_if_stale(self) -> None:
        record, version = read_record(self.path)
        why = None if version is None else self._stale(record, version)
        if why is None or not self._take_guard():
            return
        try:
            if read_record(self.path)[1] == version:  # still the very file judged stale
                self.path.unlink(missing_ok=True)
                self.on_break(record, why)
        finally:
            self.guard.unlink(missing_ok=True)

    def _take_guard(self) -> bool:
        try:
            fd = os.open(self.guard, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            # a breaker holds it for milliseconds; one left for a whole lease died mid-break
            record, version = read_record(self.guard)
            if version is not None and self._unchanged_for(self.guard, version) >= self.lease:
                self.guard.unlink(missing_ok=True)
            return False
        try:
            os.write(fd, json.dumps(hostid.machine()).encode())
        finally:
            os.close(fd)
        return True


_stopped: set[tuple] = set()  # holders (_identity) whose heartbeat this process saw stop for a whole lease


def _identity(record: dict) -> tuple:
    return tuple(str(record.get(k)) for k in ("host", "boot", "pidns", "pid", "start"))


def _who(record: dict) -> str:
    return f"pid {record.get('pid')} on {record.get('host')}" if record else "another process"
