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
