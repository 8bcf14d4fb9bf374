"""Inter-process locks per resource (filelock), with the holder named while others wait.

flock-based locks die with their process, so a SIGKILLed fetch never blocks the next one. Lock files are never
deleted (deleting them races with waiters). Where flock is not honoured (some NFS mounts), MMF_ZOO_SOFT_LOCK=1
switches to filelock's SoftFileLock; a stale soft lock whose holder pid is gone on this host is broken.
"""
from __future__ import annotations

import json
import logging
import os
import socket
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import filelock

from zoo.errors import DiskError, LockTimeoutError

log = logging.getLogger("zoo")


def _holder(info_path: Path) -> dict:
    try:
        return json.loads(info_path.read_text())
    except (OSError, ValueError):
        return {}


def _describe(info: dict) -> str:
    if not info:
        return "another process"
    return f"pid {info.get('pid')} on {info.get('host')} ({info.get('cmd', '?')}, since {info.get('since', '?')})"


def _pid_gone(info: dict) -> bool:
    if info.get("host") != socket.gethostname() or not info.get("pid"):
        return False
    try:
        os.kill(int(info["pid"]), 0)
        return False
    except ProcessLookupError:
        return True
    except OSError:
        return False


@contextmanager
def resource_lock(path: Path, what: str, timeout: float | None = None, say=None):
    """Hold the lock at `path` for the block; waiters say who holds it every 30 s (an info message: --quiet
    silences it; a lock timeout is still an error)."""
    say = say or (lambda msg: log.info(msg))
    path.parent.mkdir(parents=True, exist_ok=True)
    info_path = path.with_name(path.name + ".holder")
    soft = os.environ.get("MMF_ZOO_SOFT_LOCK", "") not in ("", "0")
    lock = (filelock.SoftFileLock if soft else filelock.FileLock)(str(path))
    start, next_note, wait = time.monotonic(), 0.0, 0.0
    while True:
        try:
            lock.acquire(timeout=wait)  # first try without waiting, so a waiter says at once who holds it
            break
        except filelock.Timeout:
            info = _holder(info_path)
            if soft and _pid_gone(info):
                say(f"breaking stale lock on {what} left by {_describe(info)}")
                Path(path).unlink(missing_ok=True)
                continue
            waited, wait = time.monotonic() - start, 1.0
            if waited >= next_note:
                say(f"waiting for {what}: locked by {_describe(info)}")
                next_note = waited + 30
            if timeout is not None and waited > timeout:
                after = f"still locked by {_describe(info)} after {timeout:.0f}s" if timeout else \
                    f"locked by {_describe(info)}"
                raise LockTimeoutError(f"{what} is {after}; wait for it to finish (or stop it) and run again") \
                    from None
        except PermissionError:
            raise DiskError(f"cannot create lock {path}: permission denied; choose a writable --data-dir") from None
        except OSError as exc:
            raise DiskError(f"cannot create lock {path}: {exc.strerror or exc}; choose a writable --data-dir") from None
    try:
        try:
            info_path.write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                             "cmd": " ".join(Path(sys.argv[0]).name.split() + sys.argv[1:])[:200],
                                             "since": time.strftime("%H:%M:%S")}))
        except OSError:
            pass
        yield
    finally:
        lock.release()
