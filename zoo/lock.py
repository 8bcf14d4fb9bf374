"""Inter-process locks per resource, with the holder named, and how far it got, while others wait.

Where flock works the lock is an flock (filelock.FileLock): it dies with its process, so a SIGKILLed fetch never
blocks the next one. Lock files are never deleted (deleting them races with waiters). Where flock does not work
(NFS without a lock daemon, Lustre without -o flock, FUSE filesystems that refuse it: flock fails, or does not
answer; NFS mounted with nolock / local_lock=flock|all: flock works, for this machine only) the lock is a heartbeat
lock file (zoo/softlock.py), said once per process and filesystem in a warning; MMF_ZOO_SOFT_LOCK=1 chooses it
everywhere. Every process sharing a data dir must use the same kind: they do, as the kind follows the filesystem,
unless MMF_ZOO_SOFT_LOCK (or the NFS mount options) differ between them.
"""
from __future__ import annotations

import json
import logging
import os
import re
import secrets
import threading
import time
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

import filelock

try:
    import fcntl
except ImportError:  # Windows: filelock's own locks, no flock to probe
    fcntl = None

from zoo import hostid
from zoo.errors import DiskError, LockTimeoutError
from zoo.softlock import LEASE_ENV, SoftLock, lease_seconds

log = logging.getLogger("zoo")

SOFT_ENV = "MMF_ZOO_SOFT_LOCK"  # 1: heartbeat lock files everywhere, flock never
PROBE_SECONDS = 10.0  # a flock that has not answered by then (a hard NFS mount whose lock daemon is gone) never will
_flock_checked: dict[int, str | None] = {}  # st_dev -> why flock does not work there (None: it does)
_checking = threading.Lock()


def _holder(info_path: Path) -> dict:
    try:
        info = json.loads(info_path.read_text())
        return info if isinstance(info, dict) else {}
    except (OSError, ValueError):
        return {}


def _describe(info: dict) -> str:
    if not info:
        return "another process"
    return f"pid {info.get('pid')} on {info.get('host')} ({info.get('cmd', '?')}, since {info.get('since', '?')})"


def _try_flock(directory: Path) -> str | None:
    """Why flock does not work in `directory` (None: it does, or no file can be made there to tell)."""
    if fcntl is None:
        return None
    probe = directory / f".flock-probe-{os.getpid()}-{secrets.token_hex(8)}"
    try:
        fd = os.open(probe, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError:
        return None  # the lock itself will say why nothing can be created here
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # a fresh private file: any error means flock is unusable
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    except OSError as exc:
        return f"flock failed: {exc.strerror or exc}"
    finally:
        os.close(fd)
        probe.unlink(missing_ok=True)


def _mount_point(path: Path) -> Path:
    path = path.resolve()
    try:
        dev = path.stat().st_dev
        while path.parent != path and path.parent.stat().st_dev == dev:
            path = path.parent
    except OSError:
        pass  # a parent we may not look into: name the folder as far as we got
    return path


def node_local_flock(fstype: str, options: str) -> str | None:
    """Why flock on a mount of `fstype` with these options locks only this machine (None: it does not): NFS mounted
    with nolock / local_lock=flock|all keeps flock locks in the client, so flock succeeds and excludes nobody on
    another node."""
    if not fstype.startswith("nfs"):
        return None
    opts = set(options.split(","))
    local = next((o for o in ("local_lock=all", "local_lock=flock", "nolock") if o in opts), None)
    return f"flock there locks this machine only ({fstype} mounted with {local})" if local else None


def _mount_of(directory: Path) -> tuple[str, str] | None:
    """(fstype, options) of the mount holding `directory`, from /proc/self/mountinfo (Linux)."""
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
        path = str(directory.resolve())
    except OSError:
        return None
    best, found = -1, None
    for line in lines:
        head, _, tail = line.partition(" - ")
        fields, rest = head.split(), tail.split()
        if len(fields) < 5 or len(rest) < 3:
            continue
        point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), fields[4])  # \040 is a space
        inside = path == point or path.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= best:
            best, found = len(point), (rest[0], f"{fields[5]},{rest[2]}")
    return found


def flock_problem(directory: Path) -> str | None:
    """Why flock cannot lock files in `directory` (None: it can), found once per process and filesystem; the first
    time it cannot, a warning names the filesystem and the fallback."""
    try:
        dev = os.stat(directory).st_dev
    except OSError:
        return None
    with _checking:
        if dev in _flock_checked:
            return _flock_checked[dev]
        answer: list[str | None] = []
        probe = threading.Thread(target=lambda: answer.append(_try_flock(directory)), daemon=True)
        probe.start()
        probe.join(PROBE_SECONDS)
        why = answer[0] if answer else f"flock did not answer within {PROBE_SECONDS:g} s"
        mount = None if why else _mount_of(directory)
        why = why or (node_local_flock(*mount) if mount else None)
        _flock_checked[dev] = why
    if why:
        log.warning("locks on %s: %s; using heartbeat lock files instead (a holder on another machine silent for "
                    "%g s is taken over: %s)", _mount_point(directory), why, lease_seconds(), LEASE_ENV)
    return why


def _make_lock(path: Path, what: str):
    """(the lock, where its holder is named): an flock where flock works, else a heartbeat lock file beside it."""
    lease = lease_seconds()
    if os.environ.get(SOFT_ENV, "") in ("", "0") and not flock_problem(path.parent):
        return filelock.FileLock(str(path)), path.with_name(path.name + ".holder")
    soft = path.with_name(path.name + ".soft")  # not the flock file: one left by flock runs would look held

    def broken(record: dict, why: str) -> None:
        log.warning("took over the lock on %s from %s: %s", what, _describe(record), why)

    return SoftLock(soft, lease, on_break=broken), soft


@contextmanager
def resource_lock(path: Path, what: str, timeout: float | None = None, say=None,
                  progress: Callable[[], str | None] | None = None):
    """Hold the lock at `path` for the block. Waiters say who holds it and, from `progress()`, how far the holder
    got, at once and then every zoo.progress.PERIOD seconds (info messages: --quiet silences them; a lock timeout
    is still an error)."""
    from zoo import progress as progress_lines

    say = say or (lambda msg: log.info(msg))
    path.parent.mkdir(parents=True, exist_ok=True)
    lock, info_path = _make_lock(path, what)
    start, next_note, wait = time.monotonic(), 0.0, 0.0
    while True:
        try:
            lock.acquire(timeout=wait)  # first try without waiting, so a waiter says at once who holds it
            break
        except filelock.Timeout:
            info = _holder(info_path)
            waited, wait = time.monotonic() - start, 1.0
            if waited >= next_note:
                got = progress() if progress else None
                say(f"waiting for {what}: locked by {_describe(info)}" + (f"; {got}" if got else ""))
                next_note = waited + progress_lines.PERIOD
            if timeout is not None and waited > timeout:
                after = f"still locked by {_describe(info)} after {timeout:.0f}s" if timeout else \
                    f"locked by {_describe(info)}"
                gone = f" (if that process is gone, its lock is taken over {lock.lease:g} s after its last " \
                    f"heartbeat: {LEASE_ENV})" if isinstance(lock, SoftLock) else ""
                raise LockTimeoutError(f"{what} is {after}; wait for it to finish (or stop it) and run again{gone}") \
                    from None
        except PermissionError:
            raise DiskError(f"cannot create lock {path}: permission denied; choose a writable --data-dir") from None
        except OSError as exc:
            raise DiskError(f"cannot create lock {path}: {exc.strerror or exc}; choose a writable --data-dir") from None
    try:
        if not isinstance(lock, SoftLock):  # a soft lock's file is its record
            try:
                info_path.write_text(json.dumps(hostid.holder_record()))
            except OSError:
                pass
        yield
    finally:
        lock.release()
