"""bench/fetch.py cannot rot: a smoke run on a tiny archive (real servers, real subprocesses), and its tree check."""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tarfile

import pytest

from tests.zoo_helpers import ROOT

SCRIPT = ROOT / "bench" / "fetch.py"


def _bench_module():
    spec = importlib.util.spec_from_file_location("bench_fetch", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["bench_fetch"] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


def test_tree_check_catches_missing_and_changed_files(tmp_path):
    bench = _bench_module()
    archive = bench.build_archive(tmp_path / "cache", 0.5)
    assert archive.tree_bytes >= 512 * 1024 and len(archive.files) >= 2
    assert archive.sha256 == bench.sha256_file(archive.path)
    again = bench.build_archive(tmp_path / "cache", 0.5)  # cached: same file, not rebuilt
    assert again.path.stat().st_mtime_ns == archive.path.stat().st_mtime_ns
    tree = tmp_path / "tree"
    with tarfile.open(archive.path) as tf:
        tf.extractall(tree, filter="data")
    assert bench.check_tree(tree, archive) is None
    first, second = sorted(archive.files)[:2]
    victim = tree / first
    data = bytearray(victim.read_bytes())
    data[-1] ^= 0xFF
    victim.write_bytes(bytes(data))
    assert "wrong content" in bench.check_tree(tree, archive)
    victim.unlink()
    (tree / second).unlink()
    assert bench.check_tree(tree, archive).startswith(f"missing {first}")


@pytest.mark.slow  # a bench smoke run
def test_smoke_run_all_scenarios_on_a_tiny_archive(tmp_path):
    out = tmp_path / "results.json"
    r = subprocess.run(
        [sys.executable, str(SCRIPT), "--size-mib", "3", "--cache-dir", str(tmp_path / "cache"),
         "--caps", "4,4,1", "--chunk-size", "0.125", "--reset-after-kib", "64", "--stall-seconds", "1.2",
         "--fault-every-mb", "0.1", "--timeout", "60", "--json-out", str(out)],
        capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert r.returncode == 0, r.stdout + r.stderr
    report = json.loads(out.read_text())
    got = {(x["scenario"], x["contender"]): x for x in report["results"]}
    size = report["archive_size"]
    has_nginx = bool(shutil.which("nginx")) or os.path.exists("/usr/sbin/nginx")
    has_aria2 = bool(shutil.which("aria2c"))
    for sc in ("A", "B", "C") if has_nginx else ("A", "C"):
        engine = got[(sc, "mmf zoo fetch")]
        assert engine["ok"], engine["problem"]
        assert engine["fetched"] >= size  # the servers' counters saw the whole archive go out
        assert engine["wall"] > 0 and engine["cpu"] > 0 and engine["rss_mib"] > 10
        if has_aria2:
            assert got[(sc, "aria2c")]["ok"], got[(sc, "aria2c")]["problem"]
    assert got[("A", "mmf approach")]["ok"] and got[("A", "mmf approach")]["fetched"] >= size
    if has_nginx:
        assert got[("B", "local pigz|tar")]["ok"] and got[("B", "local pigz|tar")]["fetched"] is None
    # the fault clock really hit the engine's requests (128 KiB chunks, reset after 64 KiB), and it still got
    # the right tree; the three mirrors all served a share in A
    assert got[("C", "mmf zoo fetch")]["faults"] >= 3
    assert len(got[("A", "mmf zoo fetch")]["per_mirror"]) == 3
    assert sum(got[("A", "mmf zoo fetch")]["per_mirror"]) == got[("A", "mmf zoo fetch")]["fetched"]
    labels = [t[0] for t in report["targets"]]
    assert len(labels) == 7 and all(t[2] in ("PASS", "MISS", "n/a") for t in report["targets"])
    for label in labels:
        assert label in r.stdout
    assert "mmf zoo fetch" in r.stdout and "fetched/size" in r.stdout
