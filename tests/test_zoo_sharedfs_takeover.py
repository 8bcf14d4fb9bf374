"""Taking over the lock of a holder that stopped, on a data dir where flock fails (tests/sharedfs.py), with real
processes of different host names (MMF_ZOO_HOSTNAME) and real signals: a holder SIGKILLed on another machine loses
its lock once its heartbeat stopped for the lease (MMF_ZOO_LOCK_LEASE, shortened here), one on this machine at once;
a live holder never does; a frozen one (SIGSTOP) does, and says so when it wakes. mmf train's save-dir lock is one
of these locks too."""
from __future__ import annotations

import os
import re
import selectors
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tests.sharedfs import built, node_fetch, shared  # noqa: F401 (fixtures)
from tests.zoo_helpers import ROOT, make_zoo, run_mmf
from zoo.testing.faultserver import FaultServer, Faults


def _journal_bytes(data: Path) -> int:
    from zoo.journal import Journal

    journals = [Journal.load(p) for p in data.rglob("*.journal.json")]
    return sum(j.kept_bytes() for j in journals if j)


@pytest.mark.parametrize("shared", ["noflock"], indirect=True)
@pytest.mark.parametrize("where", ["other host", "same host"])
def test_a_killed_holder_is_taken_over(shared, where, tmp_path):
    """Another host's holder SIGKILLed mid-download: its pid cannot be checked from here, so its lock is taken over
    once its heartbeat has stopped for the lease; on the same host, at once (its pid is gone). The download then
    resumes from what the killed holder journaled."""
    data, extra_env, _ = shared
    zoo = make_zoo(tmp_path, feature_bytes=8 << 20)
    env = {**extra_env, "MMF_ZOO_LOCK_LEASE": "3"}
    with FaultServer(zoo.mirror, faults=Faults(rate_bps=1_000_000)) as srv:
        holder = node_fetch(zoo, data, srv.url, "nodeA", env)
        deadline = time.monotonic() + 60
        while _journal_bytes(data) < (1 << 20) and holder.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert holder.poll() is None, "the holder finished before it could be killed"
        holder.send_signal(signal.SIGKILL)
        holder.wait()
        srv.faults[0].update(rate_bps=None)
        waiter = node_fetch(zoo, data, srv.url, "nodeB" if where == "other host" else "nodeA", env)
        _, err = waiter.communicate(timeout=120)
    assert waiter.returncode == 0, err[-2000:]
    took = [line for line in err.splitlines() if "took over the lock on toyset" in line]
    assert took and f"from pid {holder.pid} on nodeA" in took[0], err
    if where == "other host":
        silent = re.search(r"no heartbeat for (\d+) s \(MMF_ZOO_LOCK_LEASE=3\)", took[0])
        assert silent and int(silent.group(1)) >= 3, took[0]
        assert re.search(rf"waiting for toyset\S*: locked by pid {holder.pid} on nodeA", err), err
    else:
        assert "its process is gone" in took[0] and "waiting for" not in err, err
    assert "resuming" in err, err  # the killed holder's journaled chunks were kept
    verified = run_mmf("zoo", "verify", "toyset", "--zoo", str(zoo.manifest), "--data-dir", str(data), env=env)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    print(took[0])


HOLD = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from zoo.lock import resource_lock
    lock, role, seconds = Path(sys.argv[1]), sys.argv[2], float(sys.argv[3])
    with resource_lock(lock, "the shared resource", say=lambda m: print(m, flush=True)):
        print("acquired; the holder had released:", (lock.parent / "released").exists(), flush=True)
        if role == "holder":
            time.sleep(seconds)
            (lock.parent / "released").touch()
""")


@pytest.mark.parametrize("shared", ["noflock"], indirect=True)
def test_a_live_holder_on_another_host_is_never_taken_over(shared):
    """A holder that outlives its lease several times over keeps its lock: its heartbeat shows it alive."""
    data, extra_env, _ = shared
    data.mkdir(parents=True, exist_ok=True)
    lock = data / "resource.lock"
    env = {**os.environ, **extra_env, "MMF_ZOO_LOCK_LEASE": "2"}
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(lock), "holder", "9"], cwd=ROOT, text=True,
                              env={**env, "MMF_ZOO_HOSTNAME": "nodeA"}, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE)
    assert "acquired" in holder.stdout.readline()
    waiter = subprocess.run([sys.executable, "-c", HOLD, str(lock), "waiter", "0"], cwd=ROOT, text=True,
                            env={**env, "MMF_ZOO_HOSTNAME": "nodeB"}, capture_output=True, timeout=120)
    h_out, h_err = holder.communicate(timeout=60)
    assert holder.returncode == 0 and waiter.returncode == 0, (h_err, waiter.stderr)
    assert f"locked by pid {holder.pid} on nodeA" in waiter.stdout, waiter.stdout
    assert "acquired; the holder had released: True" in waiter.stdout, waiter.stdout + waiter.stderr
    assert "took over the lock" not in waiter.stderr and "was taken over by" not in h_err, (waiter.stderr, h_err)


def _line_with(stream, text: str, timeout: float) -> str | None:
    """The first line of `stream` (a pipe) containing `text`, read as it comes; None after `timeout` s. Reads the
    descriptor itself: a buffered readline() may pull the wanted line into Python's buffer along with an earlier
    one, after which select() never reports it (this test failed that way under load)."""
    fd, seen = stream.fileno(), b""
    sel = selectors.DefaultSelector()
    sel.register(fd, selectors.EVENT_READ)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if sel.select(timeout=max(0.0, deadline - time.monotonic())):
            chunk = os.read(fd, 65536)
            seen += chunk
            for line in seen.decode(errors="replace").splitlines():
                if text in line:
                    return line
            if not chunk:
                return None
    return None


@pytest.mark.parametrize("shared", ["noflock"], indirect=True)
def test_a_frozen_holder_learns_its_lock_was_taken_over(shared):
    """A holder stopped (SIGSTOP: a node frozen, a process paused) for over the lease loses its lock to a waiter on
    another host; resumed, it says so at its next heartbeat instead of believing it still holds it."""
    data, extra_env, _ = shared
    data.mkdir(parents=True, exist_ok=True)
    lock = data / "resource.lock"
    env = {**os.environ, **extra_env, "MMF_ZOO_LOCK_LEASE": "2"}
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(lock), "holder", "120"], cwd=ROOT, text=True,
                              env={**env, "MMF_ZOO_HOSTNAME": "nodeA"}, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE)
    try:
        assert "acquired" in holder.stdout.readline()
        holder.send_signal(signal.SIGSTOP)
        try:
            waiter = subprocess.run([sys.executable, "-c", HOLD, str(lock), "waiter", "0"], cwd=ROOT, text=True,
                                    env={**env, "MMF_ZOO_HOSTNAME": "nodeB"}, capture_output=True, timeout=120)
        finally:
            holder.send_signal(signal.SIGCONT)
        said = _line_with(holder.stderr, "held by this process was taken over by", timeout=60)
    finally:
        holder.kill()
        holder.communicate()
    assert waiter.returncode == 0 and "acquired; the holder had released: False" in waiter.stdout, waiter.stderr
    assert f"took over the lock on the shared resource from pid {holder.pid} on nodeA" in waiter.stderr
    assert said and f"the lock {lock}.soft held by this process was taken over by " in said, said


SAVE_DIR = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from mmftrain import distributed
    from mmftrain.run import hold_save_dir
    with hold_save_dir(Path(sys.argv[1]), distributed.DistInfo()):
        print("training", flush=True)
        time.sleep(float(sys.argv[2]))
""")


@pytest.mark.parametrize("shared", ["noflock"], indirect=True)
def test_a_save_dir_where_flock_fails_is_still_protected(shared):
    """mmf train's save-dir lock (mmftrain.run.hold_save_dir) where flock fails: a second run there is refused,
    naming the first, instead of both training unprotected with a warning."""
    data, extra_env, _ = shared
    save_dir = data / "save"
    env = {**os.environ, **extra_env}
    first = subprocess.Popen([sys.executable, "-c", SAVE_DIR, str(save_dir), "30"], cwd=ROOT, text=True,
                             env={**env, "MMF_ZOO_HOSTNAME": "nodeA"}, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert "training" in first.stdout.readline()
        second = subprocess.run([sys.executable, "-c", SAVE_DIR, str(save_dir), "0"], cwd=ROOT, text=True,
                                env={**env, "MMF_ZOO_HOSTNAME": "nodeB"}, capture_output=True, timeout=120)
    finally:
        first.kill()
        _, first_err = first.communicate()
    assert second.returncode != 0 and "training" not in second.stdout
    assert f"env.save_dir={save_dir} is locked by pid {first.pid} on nodeA" in second.stderr, second.stderr
    assert "could not lock" not in first_err + second.stderr
