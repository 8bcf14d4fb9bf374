"""Which machine this process runs on, as lock records name it, and whether a recorded process is gone.

A lock record names its holder by pid and host. A pid means something only on its own machine, so a waiter judges a
holder by its pid only when the record was written on this machine: the same host name, the same boot (a node
rebooted under the same name reuses pids) and the same pid namespace (containers sharing a host name do not share
pids). Anything else is another machine, judged by its heartbeat alone (zoo/softlock.py).
"""
from __future__ import annotations

import os
import socket
import sys
import time
from functools import cache

HOST_ENV = "MMF_ZOO_HOSTNAME"  # overrides the host name in lock records (nodes that share one; tests)


def host() -> str:
    """This machine's name in lock records and messages: MMF_ZOO_HOSTNAME, else the system's host name."""
    return os.environ.get(HOST_ENV, "").strip() or socket.gethostname()


@cache
def _boot_id() -> str | None:
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip() or None
    except OSError:
        return None


@cache
def _pid_namespace() -> int | None:
    try:
        return os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return None


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (/proc/PID/stat field 22): a reused pid has another."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def machine() -> dict:
    """The fields a lock record carries to say where its pid lives (and which process it was)."""
    return {"pid": os.getpid(), "host": host(), "boot": _boot_id(), "pidns": _pid_namespace(),
            "start": _start_time(os.getpid())}


def holder_record() -> dict:
    """What a lock holder writes about itself: where it runs, which command, since when (its local time)."""
    return {**machine(), "cmd": " ".join(os.path.basename(sys.argv[0]).split() + sys.argv[1:])[:200],
            "since": time.strftime("%H:%M:%S")}


def same_machine(record: dict) -> bool:
    """Whether `record` (a lock record) was written on this machine, so that its pid can be checked here. A record
    without boot / pidns (an older version's) is judged by its host name alone, as it always was."""
    here = machine()
    return record.get("host") == here["host"] and all(
        record.get(k) is None or record.get(k) == here[k] for k in ("boot", "pidns"))


def process_state(record: dict) -> str:
    """'alive' or 'gone' for a record written on this machine (by its pid and, where recorded, start time);
    'unknown' for another machine's or an unreadable record: only its heartbeat can tell."""
    try:
        pid = int(record.get("pid") or 0)
    except (TypeError, ValueError):
        return "unknown"
    if pid <= 0 or not same_machine(record):
        return "unknown"
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return "gone"
    except OSError:
        return "alive"  # exists, owned by another user
    start = record.get("start")
    return "gone" if start is not None and _start_time(pid) not in (None, start) else "alive"
