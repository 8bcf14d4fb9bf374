"""A data dir shared by several machines (a cluster's NFS / Lustre): real `mmf zoo fetch` processes, each with its
own host name (MMF_ZOO_HOSTNAME), on one data dir, from a throttled loopback mirror; with flock, and where flock
fails (tests/sharedfs.py: a FUSE filesystem refusing flock, or an LD_PRELOAD shim refusing it). One process
downloads; the others wait, saying who holds the lock and how far it got. (Taking over the lock of a holder that
stopped: tests/test_zoo_sharedfs_takeover.py.)"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests import sharedfs
from tests.sharedfs import built, node_fetch, shared  # noqa: F401 (fixtures)
from tests.zoo_helpers import ROOT, assert_tree, make_zoo, run_mmf
from zoo.testing.faultserver import FaultServer, Faults

WAITING = re.compile(r"waiting for toyset\S*: locked by pid (\d+) on (\S+) \(mmf zoo fetch toyset")
FALLBACK = "flock failed: No locks available; using heartbeat lock files instead"


@pytest.mark.parametrize("shared", ["flock", "fuse", "preload"], indirect=True)
def test_four_nodes_fetch_one_key_one_download(shared, tmp_path):
    data, extra_env, mount = shared
    zoo = make_zoo(tmp_path, feature_bytes=8 << 20)
    size = sum(p.stat().st_size for p in zoo.archives.values())
    nodes = [f"node{i}" for i in range(4)]
    with FaultServer(zoo.mirror, faults=Faults(rate_bps=1_500_000)) as srv:
        procs = {node: node_fetch(zoo, data, srv.url, node, extra_env) for node in nodes}
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


def test_nfs_mounted_without_shared_locks_counts_as_no_flock(tmp_path):
    """NFS mounted with nolock (or local_lock=flock|all) keeps flock in the client: it succeeds and excludes nobody on
    another node. No NFS can be mounted here, so the rule is checked on mount options as /proc/self/mountinfo shows
    them, and the mount lookup on this machine's real mounts."""
    from zoo.lock import _mount_of, node_local_flock

    nolock = "rw,relatime,vers=3,rsize=1048576,wsize=1048576,hard,nolock,proto=tcp,local_lock=all,addr=10.1.2.3"
    assert "nfs mounted with local_lock=all" in node_local_flock("nfs", nolock)
    assert "local_lock=flock" in node_local_flock("nfs4", "rw,vers=4.2,hard,proto=tcp,local_lock=flock,addr=10.1.2.3")
    assert node_local_flock("nfs4", "rw,vers=4.2,hard,proto=tcp,local_lock=none,addr=10.1.2.3") is None
    assert node_local_flock("ext4", "rw,nolock") is None
    fstype, options = _mount_of(tmp_path)
    assert fstype and "rw" in options.split(",") + ["rw"]
