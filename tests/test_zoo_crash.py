"""Crashes and concurrency with real processes: SIGKILL mid-fetch, then resume; four fetches of one key at once."""
from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time

from zoo.testing.faultserver import FaultServer, Faults
from tests.zoo_helpers import ROOT, assert_tree, make_zoo, run_mmf

CHUNK_MIB = 0.5
CONNS = 4


def _cmd(zoo, data, url):
    return [sys.executable, "-m", "mmf_cli", "zoo", "fetch", "toyset", "--zoo", str(zoo.manifest), "--data-dir",
            str(data), "--mirror", url, "--quiet", "--chunk-size", str(CHUNK_MIB), "--connections", str(CONNS)]


def test_sigkill_at_random_moments_then_finish(tmp_path):
    zoo = make_zoo(tmp_path, feature_bytes=32 << 20)
    size = sum(p.stat().st_size for p in zoo.archives.values())
    data = tmp_path / "data"
    rng = random.Random(1234)
    kills = 0
    # 4 connections x 2 MB/s: the features archive takes several seconds, so kills land mid-transfer
    with FaultServer(zoo.mirror, faults=Faults(rate_bps=2_000_000)) as srv:
        for _ in range(4):
            proc = subprocess.Popen(_cmd(zoo, data, srv.url), cwd=ROOT, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.PIPE)
            time.sleep(rng.uniform(0.6, 1.6))
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                kills += 1
            proc.wait()
            # nothing half-done is ever visible as built
            feats = data / "datasets/toyset/defaults/features"
            if (feats / ".built.json").exists():
                assert_tree(data, zoo, cats=("features",))
        srv.faults[0].update(rate_bps=None)
        r = subprocess.run(_cmd(zoo, data, srv.url), cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        srv.stats.wait_idle()
        sent = sum(srv.stats.bytes_sent.values())
    assert kills >= 3
    assert_tree(data, zoo)
    refetched = sent - size
    bound = kills * CONNS * CHUNK_MIB * (1 << 20)
    print(f"kills={kills} size={size} sent={sent} refetched={refetched} bound={bound}")
    assert refetched <= bound, f"refetched {refetched} bytes over {kills} kills; bound {bound}"


def test_four_concurrent_fetches_one_transfer(tmp_path):
    zoo = make_zoo(tmp_path, feature_bytes=8 << 20)
    size = sum(p.stat().st_size for p in zoo.archives.values())
    data = tmp_path / "data"
    with FaultServer(zoo.mirror, faults=Faults(rate_bps=8_000_000)) as srv:
        procs = [subprocess.Popen(_cmd(zoo, data, srv.url), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True) for _ in range(4)]
        outs = [p.communicate(timeout=180) for p in procs]
        srv.stats.wait_idle()
        sent = sum(srv.stats.bytes_sent.values())
    assert [p.returncode for p in procs] == [0, 0, 0, 0], [o[1][-500:] for o in outs]
    assert_tree(data, zoo)
    assert sent <= size * 1.05 + 4 * 3, f"{sent} bytes sent for {size} bytes of archives: more than one transfer"
    assert any("waiting for" in o[1] and "locked by pid" in o[1] for o in outs)


def test_lock_of_a_killed_process_does_not_block(tmp_path):
    zoo = make_zoo(tmp_path, feature_bytes=8 << 20)
    data = tmp_path / "data"
    with FaultServer(zoo.mirror, faults=Faults(rate_bps=1_000_000)) as srv:
        proc = subprocess.Popen(_cmd(zoo, data, srv.url), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(1.0)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        srv.faults[0].update(rate_bps=None)
        r = run_mmf("zoo", "fetch", "toyset", "--zoo", str(zoo.manifest), "--data-dir", str(data), "--mirror",
                    srv.url, "--quiet", "--lock-timeout", "20", timeout=60)
        assert r.returncode == 0, r.stderr
    assert_tree(data, zoo)
