"""The transfer engine against a fault-injecting Range server on 127.0.0.1 (zoo/testing/faultserver.py)."""
from __future__ import annotations

import hashlib
import random
from pathlib import Path

import pytest
import xxhash

from zoo.testing.faultserver import FaultServer, Faults
from zoo.transfer import http
from zoo.errors import HashMismatchError, MirrorsExhaustedError, OfflineError
from zoo.journal import Journal
from zoo.transfer import Transfer, TransferOptions

CHUNK = 256 << 10
SIZE = 3 * (1 << 20) + 12345  # not a multiple of the chunk size


@pytest.fixture
def blob(tmp_path):
    data = random.Random(7).randbytes(SIZE)
    for name in ("a", "b", "c"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "blob.bin").write_bytes(data)
    return data


def _opts(**kw):
    base = dict(connections=4, chunk_size=CHUNK, stall_timeout=1.0, connect_timeout=2.0, backoff_base=0.05,
                backoff_cap=0.2)
    base.update(kw)
    return TransferOptions(**base)


def _run(tmp_path, urls, data, *, chunk_hashes=None, sha=True, **kw):
    part, journal = tmp_path / "out.part", tmp_path / "out.journal"
    t = Transfer("blob", urls, part, journal, sha256=hashlib.sha256(data).hexdigest() if sha else None,
                 chunk_hashes=chunk_hashes, opts=_opts(**kw))
    result = t.run()
    assert part.read_bytes() == data
    assert result.sha256 == hashlib.sha256(data).hexdigest()
    return result


def _chunk_hashes(data):
    return [xxhash.xxh3_128_hexdigest(data[i:i + CHUNK]) for i in range(0, len(data), CHUNK)]


def test_clean_parallel_download_uses_ranges(tmp_path, blob):
    with FaultServer(tmp_path / "a") as srv:
        result = _run(tmp_path, [srv.url_for("blob.bin")], blob)
        assert result.fetched == SIZE
        spans = srv.stats.ranges["blob.bin"]
        assert len(spans) >= SIZE // CHUNK  # one ranged GET per chunk (+ the 1-byte probe)
        assert srv.stats.peak_connections >= 2


def test_resets_resume_inside_the_chunk(tmp_path, blob):
    with FaultServer(tmp_path / "a", faults=Faults(reset_after=100_000, first_n=6)) as srv:
        result = _run(tmp_path, [srv.url_for("blob.bin")], blob)
    # a reset keeps what arrived: nothing received is fetched twice (the server may count bytes lost to the RST)
    assert result.fetched == SIZE
    assert srv.faults[0].used == 6


def test_stall_is_dropped_and_requeued(tmp_path, blob):
    with FaultServer(tmp_path / "a", faults=Faults(stall_after=50_000, stall_seconds=4, first_n=1)) as srv:
        _run(tmp_path, [srv.url_for("blob.bin")], blob, stall_timeout=0.5)
        assert srv.faults[0].used == 1


def test_503_and_429_retry_after_are_retried(tmp_path, blob):
    faults = Faults(status_sequence=[503, 503, (429, {"Retry-After": "1"})])
    with FaultServer(tmp_path / "a", faults=faults) as srv:
        _run(tmp_path, [srv.url_for("blob.bin")], blob)
        assert 429 in srv.stats.statuses["blob.bin"] and 503 in srv.stats.statuses["blob.bin"]


def test_404_mirror_is_dropped_other_mirror_serves(tmp_path, blob):
    with FaultServer(tmp_path / "a", faults=Faults(not_found=True)) as bad, FaultServer(tmp_path / "b") as good:
        result = _run(tmp_path, [bad.url_for("blob.bin"), good.url_for("blob.bin")], blob)
        assert "dropped" in result.mirrors[bad.url_for("blob.bin")]
        assert "404" in result.mirrors[bad.url_for("blob.bin")]
        assert bad.stats.bytes_sent["blob.bin"] == 0


def test_all_mirrors_dead_is_a_network_error_naming_them(tmp_path, blob):
    with FaultServer(tmp_path / "a", faults=Faults(forbidden=True)) as a, FaultServer(tmp_path / "b", faults=Faults(gone=True)) as b:
        with pytest.raises(MirrorsExhaustedError, match="403.*410|410.*403"):
            _run(tmp_path, [a.url_for("blob.bin"), b.url_for("blob.bin")], blob)


def test_corrupt_mirror_with_chunk_hashes_is_dropped_and_chunk_refetched(tmp_path, blob):
    bad_offsets = [CHUNK * i + 10 for i in range(SIZE // CHUNK + 1)]  # every chunk it serves is bad
    with FaultServer(tmp_path / "a", faults=Faults(corrupt=bad_offsets)) as bad, FaultServer(tmp_path / "b") as good:
        result = _run(tmp_path, [bad.url_for("blob.bin"), good.url_for("blob.bin")], blob,
                      chunk_hashes=_chunk_hashes(blob))
        assert "xxh3" in result.mirrors[bad.url_for("blob.bin")]
        assert bad.faults[0].used >= 1
        # only a few chunks refetched, not the file
        assert result.fetched <= SIZE + 4 * CHUNK


def test_corrupt_mirror_without_chunk_hashes_is_repaired_by_comparing_mirrors(tmp_path, blob):
    bad_offsets = [CHUNK * i + 1 for i in range(SIZE // CHUNK + 1)]  # every chunk it serves is bad
    with FaultServer(tmp_path / "a", faults=Faults(corrupt=bad_offsets)) as bad, FaultServer(tmp_path / "b") as good:
        result = _run(tmp_path, [bad.url_for("blob.bin"), good.url_for("blob.bin")], blob)
        assert "sha256" in result.mirrors[bad.url_for("blob.bin")]
        assert bad.faults[0].used >= 1 and bad.stats.bytes_sent["blob.bin"] > 0


def test_single_corrupt_source_fails_and_starts_over(tmp_path, blob):
    with FaultServer(tmp_path / "a", faults=Faults(corrupt=[5])) as bad:
        with pytest.raises(HashMismatchError, match="only one mirror"):
            _run(tmp_path, [bad.url_for("blob.bin")], blob)
        assert bad.faults[0].used >= 1
    assert not (tmp_path / "out.part").exists() and not (tmp_path / "out.journal").exists()


def test_server_ignoring_range_is_one_sequential_stream(tmp_path, blob):
    with FaultServer(tmp_path / "a", faults=Faults(ignore_range=True)) as srv:
        _run(tmp_path, [srv.url_for("blob.bin")], blob)
        assert srv.stats.statuses["blob.bin"].count(200) >= 1
        assert srv.stats.bytes_sent["blob.bin"] <= 2 * SIZE


def test_range_ignoring_mirror_is_not_used_when_ranged_ones_exist(tmp_path, blob):
    with FaultServer(tmp_path / "a", faults=Faults(ignore_range=True)) as plain, FaultServer(tmp_path / "b") as ranged:
        result = _run(tmp_path, [plain.url_for("blob.bin"), ranged.url_for("blob.bin")], blob)
        assert result.fetched == SIZE
        assert result.mirrors[plain.url_for("blob.bin")] == "ok (0 bytes)"


def test_etag_change_mid_transfer_never_mixes_bytes(tmp_path, blob):
    # after 3 requests the file is replaced on the server: If-Range makes it answer 200 -> the mirror is dropped
    with FaultServer(tmp_path / "a", faults=Faults(change_etag_after=3)) as srv:
        with pytest.raises(MirrorsExhaustedError, match="changed"):
            _run(tmp_path, [srv.url_for("blob.bin")], blob, sha=False, connections=1)
        # next run: the journal's validator no longer matches, so the file starts over with the new content
        new = bytes(b ^ 0x55 for b in blob)
        result = _run(tmp_path, [srv.url_for("blob.bin")], new, sha=False, connections=2)
        assert result.resumed == 0 and result.fetched == SIZE


def test_wrong_content_range_is_rejected(tmp_path, blob):
    with FaultServer(tmp_path / "a", faults=Faults(wrong_content_range=7)) as bad, FaultServer(tmp_path / "b") as good:
        result = _run(tmp_path, [bad.url_for("blob.bin"), good.url_for("blob.bin")], blob)
        assert "Content-Range" in result.mirrors[bad.url_for("blob.bin")]
        assert bad.faults[0].used >= 1


def test_html_error_page_with_200_is_rejected(tmp_path, blob):
    with FaultServer(tmp_path / "a", faults=Faults(html_200=True)) as bad:
        with pytest.raises(MirrorsExhaustedError, match="HTML"):
            _run(tmp_path, [bad.url_for("blob.bin")], blob)


def test_short_body_is_retried(tmp_path, blob):
    with FaultServer(tmp_path / "a", faults=Faults(short_body=True, first_n=3)) as srv:
        _run(tmp_path, [srv.url_for("blob.bin")], blob)
        assert srv.faults[0].used == 3


def test_resume_trusts_only_chunks_whose_hash_matches(tmp_path, blob):
    with FaultServer(tmp_path / "a") as srv:
        _run(tmp_path, [srv.url_for("blob.bin")], blob)
        journal = Journal.load(tmp_path / "out.journal")
        assert len(journal.chunks) == -(-SIZE // CHUNK)
        # damage one journaled chunk on disk and drop two from the journal: only those three are refetched
        with open(tmp_path / "out.part", "r+b") as f:
            f.seek(CHUNK * 4 + 3)
            f.write(b"\x00\x01")
        journal.forget(1)
        journal.forget(9)
        journal.commit()
        srv.stats.reset()
        result = _run(tmp_path, [srv.url_for("blob.bin")], blob)
        assert result.resumed == SIZE - 2 * CHUNK
        assert result.fetched == 3 * CHUNK
        assert srv.stats.bytes_sent["blob.bin"] <= 3 * CHUNK + http.SAMPLE  # + the probe's first block


def test_offline_refuses_http_and_names_the_resource(tmp_path, blob):
    with pytest.raises(OfflineError, match="blob.*offline"):
        Transfer("blob", ["http://127.0.0.1:9/blob.bin"], tmp_path / "p", tmp_path / "j",
                 opts=_opts(offline=True))


def test_local_folder_mirror(tmp_path, blob):
    _run(tmp_path, [(tmp_path / "a" / "blob.bin").as_uri()], blob)


def test_full_disk_keeps_journal_and_resumes(tmp_path, blob):
    """RLIMIT_FSIZE in a child process makes writes past 1 MiB fail like a full disk."""
    import subprocess
    import sys
    import textwrap

    with FaultServer(tmp_path / "a") as srv:
        code = textwrap.dedent(f"""
            import resource, signal, sys
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))
            from pathlib import Path
            from zoo.transfer import Transfer, TransferOptions
            from zoo.errors import DiskError
            t = Transfer("blob", ["{srv.url_for('blob.bin')}"], Path("{tmp_path}/out.part"), Path("{tmp_path}/out.journal"),
                         opts=TransferOptions(connections=1, chunk_size={CHUNK}))
            try:
                t.run()
            except DiskError as e:
                print("DISK", e); sys.exit(4)
        """)
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                              cwd=Path(__file__).resolve().parent.parent)
        assert proc.returncode == 4, proc.stderr
        assert "disk full" in proc.stdout and "resume" in proc.stdout
        journal = Journal.load(tmp_path / "out.journal")
        assert journal is not None and 0 < len(journal.chunks) < -(-SIZE // CHUNK)
        srv.stats.reset()
        result = _run(tmp_path, [srv.url_for("blob.bin")], blob, connections=1)
        assert result.resumed >= CHUNK and result.fetched <= SIZE - CHUNK


def test_resets_on_two_mirrors_keep_partial_bytes_across_the_switch(tmp_path, blob):
    # mirror a resets chunk 0 after 60 kB, then its file changes (dropped); b must finish chunk 0 from 60 kB on
    # (requests to a: the probe, its HEAD, then chunk 0, reset after 60 kB; the 4th sees the replaced file)
    rules = [Faults(reset_after=60_000, first_n=2), Faults(change_etag_after=3)]
    with FaultServer(tmp_path / "a", faults=rules) as a, FaultServer(tmp_path / "b") as b:
        result = _run(tmp_path, [a.url_for("blob.bin"), b.url_for("blob.bin")], blob, connections=1)
    # nothing that arrived was thrown away, whichever mirror finished a chunk (extra: cross-check samples)
    assert result.fetched - result.extra == SIZE
    journal = Journal.load(tmp_path / "out.journal")
    assert any(len(urls) == 2 for urls in journal.served_by.values())  # some chunk was finished elsewhere


def test_slow_chunk_is_raced_on_a_faster_mirror(tmp_path, blob):
    # the slow mirror is tried first (unmeasured), then its chunk would take ~2.5 s: the end game races it
    with FaultServer(tmp_path / "a", faults=Faults(rate_bps=100_000)) as slow, FaultServer(tmp_path / "b") as fast:
        result = _run(tmp_path, [slow.url_for("blob.bin"), fast.url_for("blob.bin")], blob, connections=2)
    assert slow.faults[0].used >= 1
    slow_bytes = int(result.mirrors[slow.url_for("blob.bin")].split("(")[1].split()[0])
    assert slow_bytes < CHUNK  # it never got to finish a chunk: the fast mirror won the race
    assert result.fetched <= SIZE + CHUNK


def test_flaky_mirror_failures_accumulate_until_dropped(tmp_path, blob):
    # every response resets after next to nothing (10 kB, under mirrors.ATTEMPT_PROGRESS): that is failing, not
    # progress, so the streak grows until the mirror is dropped (a link that moves real bytes between resets goes
    # on: tests/test_zoo_bad_link.py)
    with FaultServer(tmp_path / "a", faults=Faults(reset_after=10_000)) as flaky:
        with pytest.raises(MirrorsExhaustedError, match="failed 8 times in a row"):
            _run(tmp_path, [flaky.url_for("blob.bin")], blob, connections=1)
        assert flaky.faults[0].used >= 8
    journal = Journal.load(tmp_path / "out.journal")
    assert journal is not None  # the partial download stays resumable


def test_journal_ignores_a_record_torn_by_a_crash(tmp_path):
    j = Journal(tmp_path / "j", size=10 * CHUNK, chunk_size=CHUNK)
    j.commit()
    j.commit(0, "a" * 32, [[0, CHUNK - 1, "http://m1/"]])
    j.commit(3, "b" * 32, [[3 * CHUNK, 3 * CHUNK + 99, "http://m2/"], [3 * CHUNK + 100, 4 * CHUNK - 1, "http://m1/"]])
    j.close()
    with open(tmp_path / "j", "a") as f:
        f.write('[4, "cccccccc')  # the process died mid-append
    loaded = Journal.load(tmp_path / "j")
    assert loaded.chunks == {0: "a" * 32, 3: "b" * 32}
    assert loaded.served_by[3] == ["http://m1/", "http://m2/"]
    assert loaded.spans[3][0] == [3 * CHUNK, 3 * CHUNK + 99, "http://m2/"]  # provenance per byte range
    # appending is O(1): the header is not rewritten per chunk
    assert (tmp_path / "j").read_text().count("journal_version") == 1


def test_idle_connections_split_the_last_chunks(tmp_path):
    """Two 8 MiB chunks, four connections: the idle two take the upper halves of what is left (no refetch)."""
    data = random.Random(3).randbytes(16 << 20)
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "big.bin").write_bytes(data)
    with FaultServer(tmp_path / "s", faults=Faults(rate_bps=6_000_000)) as srv:
        part, journal = tmp_path / "big.part", tmp_path / "big.journal"
        result = Transfer("big", [srv.url_for("big.bin")], part, journal, sha256=hashlib.sha256(data).hexdigest(),
                          opts=_opts(connections=4, chunk_size=8 << 20, stall_timeout=5)).run()
        starts = [a for a, _ in srv.stats.ranges["big.bin"]]
    assert part.read_bytes() == data
    assert any(a % (8 << 20) for a in starts)  # some request began inside a chunk: a split
    assert result.fetched == len(data)


def test_given_mirrors_first_origin_only_as_fallback(tmp_path, blob, caplog):
    """--mirror roots come first; the origin (a default root) is not even probed while they can serve."""
    from zoo.manifest import Resource
    from zoo.mirrors import ORIGIN, Source, fallback_urls, mirror_roots, resource_sources, resource_urls

    # MMF's manifests carry the origin's absolute URL: it is re-rooted onto the given mirror, origin last
    res = Resource(url=ORIGIN + "datasets/x/blob.bin", file_name="blob.bin", category=None)
    roots = mirror_roots(["http://127.0.0.1:1/"], mirror_only=False, env={})
    urls = resource_urls(res, roots)
    assert urls == ["http://127.0.0.1:1/datasets/x/blob.bin", ORIGIN + "datasets/x/blob.bin"]
    assert fallback_urls(urls) == {ORIGIN + "datasets/x/blob.bin"}
    assert [s.origin for s in resource_sources(res, roots)] == [False, True]  # the flag travels with the URL
    with FaultServer(tmp_path / "a") as srv:
        sources = [Source(srv.url_for("blob.bin")), Source(ORIGIN + "datasets/x/blob.bin", origin=True)]
        t = Transfer("blob", sources, tmp_path / "out.part",
                     tmp_path / "out.journal", sha256=hashlib.sha256(blob).hexdigest(), opts=_opts())
        with caplog.at_level("INFO", logger="zoo"):
            result = t.run()
    origin = t.pool.by_url(ORIGIN + "datasets/x/blob.bin")
    assert origin.size is None and origin.failures == 0 and not origin.probed  # never contacted
    assert result.mirrors[origin.url] == "ok (0 bytes)"
    assert not [r for r in caplog.records if "retrying" in r.getMessage()]
