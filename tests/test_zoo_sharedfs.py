"""A data dir shared by several machines (a cluster's NFS / Lustre): real `mmf zoo fetch` processes, each with its
own host name (MMF_ZOO_HOSTNAME), on one data dir, from a throttled loopback mirror; with flock, and where flock
fails (tests/sharedfs.py: a FUSE filesystem refusing flock, or an LD_PRELOAD shim refusing it). One process
downloads; the others wait, saying who holds the lock and how far it got; a lock whose holder was SIGKILLed on
another machine is taken over once its heartbeat stopped for the lease (MMF_ZOO_LOCK_LEASE); a live one never is."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from contextlib import ExitStack
from pathlib import Path

import pytest

from tests import sharedfs
from tests.zoo_helpers import ROOT, assert_tree, make_zoo, run_mmf
from zoo.testing.faultserver import FaultServer, Faults

# `mmf zoo fetch` with the waiters' note period (30 s) shortened to fit a test, as tests/test_xfer_library.py does
MMF = ("import sys, zoo.progress; zoo.progress.PERIOD = float(sys.argv.pop(1)); sys.argv[0] = 'mmf'; "
       "from mmfzoo_cli.main import main; main()")
WAITING = re.compile(r"waiting for toyset\S*: locked by pid (\d+) on (\S+) \(mmf zoo fetch toyset")
FALLBACK = "flock failed: No locks available; using heartbeat lock files instead"


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    return sharedfs.build(tmp_path_factory.mktemp("noflock"))


@pytest.fixture
def shared(request, built, tmp_path):
    """(data dir, extra env, the mount point a fallback warning names) on a filesystem of the parametrized kind."""
    kind = request.param
    with ExitStack() as stack:
        if kind == "flock":
            yield tmp_path / "shared", {}, None
        elif kind == "fuse":
            if not isinstance(built["fuse"], Path):
                pytest.skip(built["fuse"])
            mnt = stack.enter_context(sharedfs.fuse_mount(built["fuse"], tmp_path / "backing", tmp_path / "mnt"))
            yield mnt / "shared", {}, mnt
        else:
            if not isinstance(built["preload"], Path):
                pytest.skip(built["preload"])
            yield tmp_path / "shared", sharedfs.preload_env(built["preload"], tmp_path / "shared"), None


def _fetch(zoo, data, url, node, extra_env, *args, period="0.5"):
    env = {**os.environ, **extra_env, "MMF_ZOO_HOSTNAME": node}
    return subprocess.Popen([sys.executable, "-c", MMF, period, "zoo", "fetch", "toyset", "--zoo", str(zoo.manifest),
                             "--data-dir", str(data), "--mirror", url, "--chunk-size", "0.5", "--connections", "2", *args],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.parametrize("shared", ["flock", "fuse", "preload"], indirect=True)
def test_four_nodes_fetch_one_key_one_download(shared, tmp_path):
    data, extra_env, mount = shared
    zoo = make_zoo(tmp_path, feature_bytes=8 << 20)
    size = sum(p.stat().st_size for p in zoo.archives.values())
    nodes = [f"node{i}" for i in range(4)]
    with FaultServer(zoo.mirror, faults=Faults(rate_bps=1_500_000)) as srv:
        procs = {node: _fetch(zoo, data, srv.url, node, extra_env) for node in nodes}
        outs = {node: p.communicate(timeout=240) for node, p in procs.items()}
        srv.stats.wait_idle()
        sent, requests = sum(srv.stats.bytes_sent.values()), sum(srv.stats.requests.values())
    errs = {node: out[1] for node, out in outs.items()}
    assert [p.returncode for p in procs.values()] == [0] * 4, [e[-800:] for e in errs.values()]
    pids = {str(p.pid): node for node, p in procs.items()}
    waits = [(node, line) for node, err in errs.items() for line in err.splitlines() if WAITING.search(line)]
    print(f"{len(procs)} fetches: {sent} bytes in {requests} requests served for {size} bytes of archives "
          f"({sent / size:.3f}x)")
    print("\n".join(f"{node}: {line}" for node, line in waits[:8]))
    assert sent <= size * 1.05, f"{sent} bytes sent for {size} bytes of archives: more than one download"
    verified = run_mmf("zoo", "verify", "toyset", "--zoo", str(zoo.manifest), "--data-dir", str(data),
                       env=extra_env)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert_tree(data, zoo)
    assert waits, errs
    print("\n".join(f"== {n}\n{e}" for n, e in errs.items()))
    for node, line in waits:  # every waiter names the real holder: its pid, and that process's host name
        pid, host = WAITING.search(line).groups()
        assert pids.get(pid) == host and host != node, line
    # how far the holder got, read from the shared data dir while it downloaded
    moving = [int(m.group(1)) for _, line in waits for m in re.finditer(r"features\.tar\.gz [\d.]+ \w+ of "
                                                                       r"[\d.]+ MiB \((\d+)%\)", line)]
    assert any(0 < pct < 100 for pct in moving), waits
    assert all("retry" not in err.lower() for err in errs.values()), errs
    for node, err in errs.items():
        fallbacks = [line for line in err.splitlines() if FALLBACK in line]
        assert len(fallbacks) == (0 if "LD_PRELOAD" not in extra_env and mount is None else 1), (node, err)
        if mount is not None:
            assert f"locks on {mount}:" in fallbacks[0]
    assert not list(data.rglob("*.lock.soft*")), "a heartbeat lock file outlived its holder"


def _journal_bytes(data: Path) -> int:
    from zoo.journal import Journal

    journals = [Journal.load(p) for p in data.rglob("*.journal.json")]
    return sum(j.kept_bytes() for j in journals if j)


@pytest.mark.parametrize("shared", ["fuse", "preload"], indirect=True)
@pytest.mark.parametrize("where", ["other host", "same host"])
def test_a_killed_holder_is_taken_over(shared, where, tmp_path):
    """Another host's holder SIGKILLed mid-download: its pid cannot be checked from here, so its lock is taken over
    once its heartbeat has stopped for the lease; on the same host, at once (its pid is gone). The download then
    resumes from what the killed holder journaled."""
    data, extra_env, _ = shared
    zoo = make_zoo(tmp_path, feature_bytes=8 << 20)
    env = {**extra_env, "MMF_ZOO_LOCK_LEASE": "3"}
    with FaultServer(zoo.mirror, faults=Faults(rate_bps=1_000_000)) as srv:
        holder = _fetch(zoo, data, srv.url, "nodeA", env)
        deadline = time.monotonic() + 60
        while _journal_bytes(data) < (1 << 20) and holder.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert holder.poll() is None, "the holder finished before it could be killed"
        holder.send_signal(signal.SIGKILL)
        holder.wait()
        srv.faults[0].update(rate_bps=None)
        waiter = _fetch(zoo, data, srv.url, "nodeB" if where == "other host" else "nodeA", env)
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


@pytest.mark.parametrize("shared", ["fuse", "preload"], indirect=True)
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


def test_a_flock_that_never_answers_falls_back(built, tmp_path):
    """A hard NFS mount whose lock daemon is gone: flock blocks for ever. The probe gives up after PROBE_SECONDS
    (shortened here) and the heartbeat lock is used."""
    if not isinstance(built["preload"], Path):
        pytest.skip(built["preload"])
    code = textwrap.dedent("""
        import sys, zoo.lock
        from pathlib import Path
        zoo.lock.PROBE_SECONDS = 1
        with zoo.lock.resource_lock(Path(sys.argv[1]), "the resource"):
            print("held", Path(sys.argv[1] + ".soft").exists())
    """)
    r = subprocess.run([sys.executable, "-c", code, str(tmp_path / "r.lock")], cwd=ROOT, capture_output=True,
                       text=True, timeout=60, env={**os.environ, **sharedfs.preload_env(built["preload"], tmp_path,
                                                                                        hang=True)})
    assert r.returncode == 0 and "held True" in r.stdout, r.stderr
    assert "flock did not answer within 1 s; using heartbeat lock files instead" in r.stderr, r.stderr


def test_a_bad_lease_is_refused(tmp_path):
    zoo = make_zoo(tmp_path, feature_bytes=1 << 16)
    r = run_mmf("zoo", "fetch", "toyset", "--zoo", str(zoo.manifest), "--data-dir", str(tmp_path / "d"), "--mirror",
                str(zoo.mirror), env={"MMF_ZOO_LOCK_LEASE": "soon"})
    assert r.returncode == 1, r.stderr
    assert "MMF_ZOO_LOCK_LEASE='soon' is not a number of seconds" in r.stderr, r.stderr


@pytest.mark.parametrize("shared", ["fuse", "preload"], indirect=True)
def test_a_frozen_holder_learns_its_lock_was_taken_over(shared):
    """A holder stopped (SIGSTOP: a node frozen, a process paused) for over the lease loses its lock to a waiter on
    another host; resumed, it says so at its next heartbeat instead of believing it still holds it."""
    data, extra_env, _ = shared
    data.mkdir(parents=True, exist_ok=True)
    lock = data / "resource.lock"
    env = {**os.environ, **extra_env, "MMF_ZOO_LOCK_LEASE": "2"}
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(lock), "holder", "6"], cwd=ROOT, text=True,
                              env={**env, "MMF_ZOO_HOSTNAME": "nodeA"}, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE)
    assert "acquired" in holder.stdout.readline()
    holder.send_signal(signal.SIGSTOP)
    try:
        waiter = subprocess.run([sys.executable, "-c", HOLD, str(lock), "waiter", "0"], cwd=ROOT, text=True,
                                env={**env, "MMF_ZOO_HOSTNAME": "nodeB"}, capture_output=True, timeout=120)
    finally:
        holder.send_signal(signal.SIGCONT)
    _, h_err = holder.communicate(timeout=60)
    assert waiter.returncode == 0 and "acquired; the holder had released: False" in waiter.stdout, waiter.stderr
    assert f"took over the lock on the shared resource from pid {holder.pid} on nodeA" in waiter.stderr
    assert f"the lock {lock}.soft held by this process was taken over by " in h_err, h_err  # (the waiter is done)


SAVE_DIR = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from mmftrain import distributed
    from mmftrain.run import hold_save_dir
    with hold_save_dir(Path(sys.argv[1]), distributed.DistInfo()):
        print("training", flush=True)
        time.sleep(float(sys.argv[2]))
""")


@pytest.mark.parametrize("shared", ["fuse", "preload"], indirect=True)
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
