"""A fetch that fails part-way says, in its --json error document's `result`, what finished and what failed.

The toy entry's features archive on the mirror is corrupted (same size, other bytes): the fetch installs the
annotations and extras, then refuses the features (hash mismatch, exit 2). Real archives, real CLI subprocess.
"""
from __future__ import annotations

import json

from tests.zoo_helpers import make_zoo, run_mmf


def test_a_failed_fetch_reports_what_finished_and_what_failed(tmp_path):
    toy = make_zoo(tmp_path / "toy", feature_bytes=40_000)
    feats = next(p for p in toy.archives.values() if p.name == "features.tar.gz")
    raw = bytearray(feats.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    feats.write_bytes(bytes(raw))
    data = tmp_path / "data"
    r = run_mmf("zoo", "fetch", "toyset", "--zoo", str(toy.manifest), "--mirror", str(toy.mirror), "--mirror-only",
                "--data-dir", str(data), "--json")
    doc = json.loads(r.stdout)
    assert r.returncode == 2 and doc["error"]["exit_code"] == 2, r.stdout + r.stderr  # the fault fired
    result = doc["result"]
    assert isinstance(result, list), doc
    by_name = {item["file_name"]: item for item in result}
    failed = by_name["features.tar.gz"]
    assert failed["status"] == "failed" and failed["error"] == doc["error"]["message"], failed
    finished = [item for item in result if item is not failed]
    assert {i["file_name"] for i in finished} == {"annotations.tar.gz", "extras.tar.gz"}, result
    for item in finished:
        assert item["status"] == "installed" and item["sha256"] and item["error"] is None, item
    assert (data / "datasets/toyset/defaults/annotations/imdb_train.npy").is_file()
    assert not (data / "datasets/toyset/defaults/features/open_images").exists()  # nothing unverified published
    # a second run finishes the job and prints the success shape: the list of reports
    feats.write_bytes(bytes(raw[:len(raw) // 2]) + bytes([raw[len(raw) // 2] ^ 0xFF]) + bytes(raw[len(raw) // 2 + 1:]))
    r = run_mmf("zoo", "fetch", "toyset", "--zoo", str(toy.manifest), "--mirror", str(toy.mirror), "--mirror-only",
                "--data-dir", str(data), "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    assert sorted(i["status"] for i in json.loads(r.stdout)) == ["already installed", "already installed", "installed"]


def test_an_interrupted_fetch_reports_what_finished_and_what_was_interrupted(tmp_path):
    import signal
    import subprocess
    import sys
    import time

    from tests.zoo_helpers import ROOT
    from zoo.testing.faultserver import FaultServer, Faults

    toy = make_zoo(tmp_path / "toy", feature_bytes=3 << 20)
    data = tmp_path / "data"
    slow = Faults(glob="*features.tar.gz", rate_bps=50_000)
    with FaultServer(toy.mirror, faults=slow) as srv:
        proc = subprocess.Popen([sys.executable, "-m", "mmfzoo_cli", "zoo", "fetch", "toyset", "--zoo",
                                 str(toy.manifest), "--data-dir", str(data), "--mirror", srv.url, "--mirror-only",
                                 "--json"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 60
        while len(list(data.rglob("*.installed.json"))) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(0.5)
        assert proc.poll() is None and slow.used >= 1, "the slow features transfer was not under way"
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    doc = json.loads(out)
    assert proc.returncode == 143 and doc["error"]["kind"] == "terminated", out + err
    status = {item["file_name"]: item["status"] for item in doc["result"]}
    assert status == {"annotations.tar.gz": "installed", "extras.tar.gz": "installed",
                      "features.tar.gz": "interrupted"}, doc["result"]
