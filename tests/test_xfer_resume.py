"""Resume whatever the options: a partial download is reused under another --chunk-size / --connections, and a
partial that really cannot be reused (the remote file changed) is said on stderr, also under --quiet / --json."""
from __future__ import annotations

import hashlib
import json
import logging
import random
import signal
import subprocess
import sys
import time

import pytest
import xxhash

from tests.zoo_helpers import ROOT, assert_tree, make_zoo, run_mmf
from zoo.transfer import http
from zoo.journal import Journal
from zoo.testing.faultserver import FaultServer, Faults
from zoo.transfer import Transfer, TransferOptions

CHUNK = 256 << 10
SIZE = 3 * (1 << 20) + 12345


@pytest.fixture
def blob(tmp_path):
    data = random.Random(11).randbytes(SIZE)
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "blob.bin").write_bytes(data)
    return data


def _transfer(tmp_path, url, data, *, sha=True, **kw):
    opts = dict(connections=4, chunk_size=CHUNK, stall_timeout=2.0, connect_timeout=2.0, backoff_base=0.05,
                backoff_cap=0.2)
    opts.update({k: v for k, v in kw.items() if k != "chunk_hashes"})
    return Transfer("blob", [url], tmp_path / "out.part", tmp_path / "out.journal",
                    sha256=hashlib.sha256(data).hexdigest() if sha else None,
                    chunk_hashes=kw.get("chunk_hashes"), chunk_size=opts["chunk_size"],
                    opts=TransferOptions(**opts))


def _interrupted(tmp_path, srv, data, forget=(1, 9)):
    """A finished download whose journal then loses some chunks: what an interrupted one looks like."""
    _transfer(tmp_path, srv.url_for("blob.bin"), data).run()
    journal = Journal.load(tmp_path / "out.journal")
    for i in forget:
        journal.forget(i)
    journal.commit()
    srv.stats.reset()
    return journal


def test_other_chunk_size_and_connections_reuse_the_partial(tmp_path, blob, caplog):
    with FaultServer(tmp_path / "a") as srv:
        _interrupted(tmp_path, srv, blob)
        caplog.set_level(logging.INFO, logger="zoo")
        result = _transfer(tmp_path, srv.url_for("blob.bin"), blob, chunk_size=1 << 20, connections=8).run()
        assert (tmp_path / "out.part").read_bytes() == blob
        assert result.restarted is None
        assert result.resumed == SIZE - 2 * CHUNK
        assert srv.stats.bytes_sent["blob.bin"] <= 2 * CHUNK + http.SAMPLE  # only the two missing chunks
        assert "starting over" not in caplog.text


def test_manifest_chunk_hashes_rechunk_and_reverify_the_kept_bytes(tmp_path, blob, caplog):
    new_chunk = 1 << 20
    hashes = [xxhash.xxh3_128_hexdigest(blob[i:i + new_chunk]) for i in range(0, SIZE, new_chunk)]
    with FaultServer(tmp_path / "a") as srv:
        _interrupted(tmp_path, srv, blob, forget=(1,))  # old chunk 1 missing: new chunk 0 keeps only old chunk 0
        with open(tmp_path / "out.part", "r+b") as f:  # old chunk 9 (in new chunk 2) rotted on disk
            f.seek(9 * CHUNK + 5)
            f.write(b"\xff\x00")
        caplog.set_level(logging.INFO, logger="zoo")
        result = _transfer(tmp_path, srv.url_for("blob.bin"), blob, chunk_size=new_chunk,
                           chunk_hashes=hashes).run()
        assert (tmp_path / "out.part").read_bytes() == blob
        assert result.restarted is None
        # new chunks 1 and 3 whole; 0 and 2 keep their first 256 KiB (old chunk 0, old chunk 8) as partials:
        # old chunks 2-3 follow a gap and old 9 rotted, so 10-11 follow a gap too
        assert result.resumed == (SIZE - 3 * new_chunk) + new_chunk + 2 * CHUNK
        sent = srv.stats.bytes_sent["blob.bin"]
        assert sent <= 2 * (new_chunk - CHUNK) + http.SAMPLE, sent
        assert "is fetched again" in caplog.text


def test_changed_remote_file_is_said_once_and_reported(tmp_path, blob, caplog):
    with FaultServer(tmp_path / "a") as srv:
        _interrupted(tmp_path, srv, blob)
        bigger = blob + b"appended by the publisher"
        (tmp_path / "a" / "blob.bin").write_bytes(bigger)
        caplog.set_level(logging.WARNING, logger="zoo")
        result = _transfer(tmp_path, srv.url_for("blob.bin"), bigger, sha=False).run()
        assert (tmp_path / "out.part").read_bytes() == bigger
        assert result.restarted and f"size {SIZE} -> {len(bigger)}" in result.restarted
        lines = [r.getMessage() for r in caplog.records if "not reused" in r.getMessage()]
        assert len(lines) == 1 and "starting over" in lines[0] and "\n" not in lines[0]


def test_cli_quiet_and_json_say_why_a_partial_is_not_reused(tmp_path):
    zoo = make_zoo(tmp_path, feature_bytes=1 << 20)
    data = tmp_path / "data"
    with FaultServer(zoo.mirror) as srv:
        state = data / "datasets/toyset/defaults/features/.mmfzoo"
        state.mkdir(parents=True)
        (state / "features.tar.gz.part").write_bytes(b"\x1f\x8b" + b"x" * 300_000)  # no journal: unverifiable
        r = run_mmf("zoo", "fetch", "toyset", "--zoo", str(zoo.manifest), "--data-dir", str(data), "--mirror",
                    srv.url, "--json", timeout=120)
    assert r.returncode == 0, r.stderr
    rows = {x["file_name"]: x for x in json.loads(r.stdout)}
    assert "journal is missing" in rows["features.tar.gz"]["restarted"]
    assert rows["annotations.tar.gz"]["restarted"] is None
    said = [line for line in r.stderr.splitlines() if "not reused" in line]
    assert len(said) == 1 and "features.tar.gz" in said[0], r.stderr
    assert_tree(data, zoo)


def _kept(data) -> tuple[int, int]:
    journal = Journal.load(next((data / "datasets").rglob("features.tar.gz.journal.json")))
    return (journal.kept_bytes(), journal.size) if journal else (0, 1)


def test_interrupted_at_40_percent_with_1mib_1conn_rerun_with_defaults(tmp_path):
    """The issue's bar: a rerun with default options fetches <= 1.1x the missing bytes."""
    zoo = make_zoo(tmp_path, feature_bytes=12 << 20)
    data = tmp_path / "data"
    with FaultServer(zoo.mirror, faults=Faults(glob="*features*", rate_bps=3_000_000)) as srv:
        cmd = [sys.executable, "-m", "mmfzoo_cli", "zoo", "fetch", "toyset", "--zoo", str(zoo.manifest),
               "--data-dir", str(data), "--mirror", srv.url, "--quiet", "--chunk-size", "1", "--connections", "1"]
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            journals = list(data.rglob("features.tar.gz.journal.json")) if data.exists() else []
            if journals:
                kept, size = _kept(data)
                if kept >= 0.4 * size:
                    break
            time.sleep(0.05)
        assert proc.poll() is None, "finished before the interrupt"
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 130, err
        kept, size = _kept(data)
        assert 0.35 * size <= kept < 0.7 * size
        srv.faults[0].update(rate_bps=None)
        srv.stats.reset()
        r = run_mmf("zoo", "fetch", "toyset", "--zoo", str(zoo.manifest), "--data-dir", str(data), "--mirror",
                    srv.url, "--json", timeout=120)
        sent = srv.stats.bytes_sent["datasets/toyset/defaults/features/features.tar.gz"]
    assert r.returncode == 0, r.stderr
    row = next(x for x in json.loads(r.stdout) if x["file_name"] == "features.tar.gz")
    assert row["restarted"] is None and row["resumed"] >= kept - (1 << 20)
    missing = size - kept
    assert sent <= 1.1 * missing + http.SAMPLE, (sent, missing)
    assert_tree(data, zoo)
    print(f"kept {kept} of {size}; rerun sent {sent} for {missing} missing ({sent / missing:.3f}x)")
