"""In-process unit tests of the transfer engine's parts: the journal, a mirror's health record (back-off on a fake
clock), the origin flag carried with each URL, the transport against the fault server, and re-chunking."""
from __future__ import annotations

import os
import random

import pytest
import xxhash

from zoo.journal import Journal
from zoo.manifest import Resource
from zoo.mirrors import ORIGIN, Source, mirror_roots, resource_sources
from zoo.testing.faultserver import FaultServer, Faults
from zoo.transfer import TransferOptions, http
from zoo.transfer.mirror import ATTEMPT_PROGRESS, Mirror
from zoo.transfer.pool import mirrors_for
from zoo.transfer.rechunk import rechunk

OPTS = TransferOptions(connect_timeout=2, stall_timeout=2)


# ---- a mirror's health: back-off on a fake clock ---------------------------------------------------------------
class FakeClock:
    def __init__(self, now: float = 1000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_backoff_doubles_with_full_jitter_up_to_the_cap():
    clock, asked = FakeClock(), []

    def widest(lo, hi):  # full jitter draws from [0, bound]: take the bound, and record what was asked
        asked.append((lo, hi))
        return hi

    m = Mirror("http://m/", clock=clock, jitter=widest)
    delays = [m.transient(0.5, 30.0) for _ in range(7)]
    assert delays == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]
    assert all(lo == 0 for lo, _ in asked)
    assert m.backoff_until == clock.now + 30.0 and m.failures == 7
    clock.now += 31
    m.record(ATTEMPT_PROGRESS, 0.1, completed=False)  # real progress ends the streak
    assert m.failures == 0 and m.transient(0.5, 30.0) == 1.0


def test_retry_after_wins_over_the_backoff_and_never_shortens_it():
    clock = FakeClock()
    m = Mirror("http://m/", clock=clock, jitter=lambda lo, hi: hi)
    assert m.transient(0.5, 30.0, retry_after=7.0) == 7.0
    assert m.backoff_until == clock.now + 7.0
    m.transient(0.5, 30.0, retry_after=1.0)
    assert m.backoff_until == clock.now + 7.0  # a later, shorter answer does not bring it forward


def test_drop_keeps_the_first_reason():
    m = Mirror("http://m/")
    assert m.drop("HTTP 404") and not m.drop("something later")
    assert not m.alive and m.reason == "HTTP 404"


# ---- the origin flag travels with the URL -----------------------------------------------------------------------
def test_origin_flag_is_carried_not_looked_up():
    res = Resource(url=ORIGIN + "datasets/x/a.tar.gz", file_name="a.tar.gz", category=None)
    sources = resource_sources(res, mirror_roots(["http://127.0.0.1:1/"], mirror_only=False, env={}))
    assert [(s.url.startswith(ORIGIN), s.origin) for s in sources] == [(False, False), (True, True)]
    held = mirrors_for(sources)
    assert [m.fallback for m in held] == [False, True]
    assert [m.fallback for m in mirrors_for([Source(ORIGIN + "x", origin=True)])] == [False]  # alone: not held back
    assert [m.fallback for m in mirrors_for([ORIGIN + "x", "http://other/x"])] == [False, False]  # plain strings


# ---- the transport against the fault server ----------------------------------------------------------------------
@pytest.fixture
def served(tmp_path):
    data = random.Random(3).randbytes(100_000)
    (tmp_path / "f.bin").write_bytes(data)
    return tmp_path, data


def test_probe_learns_size_validator_ranges_and_first_bytes(served):
    root, data = served
    with FaultServer(root) as srv:
        m = Mirror(srv.url_for("f.bin"))
        http.probe(m, OPTS)
    assert (m.size, m.ranges, m.head) == (len(data), True, data[:http.SAMPLE])
    assert m.validator


def test_status_codes_are_sorted_into_permanent_and_transient(served):
    root, _ = served
    rules = [Faults(status_sequence=[404]), Faults(status_sequence=[(503, {"Retry-After": "3"})]),
             Faults(status_sequence=[403])]
    with FaultServer(root, faults=rules) as srv:
        outcomes = []
        for _ in range(3):
            try:
                http.probe(Mirror(srv.url_for("f.bin")), OPTS)
                outcomes.append("ok")
            except http.Permanent as exc:
                outcomes.append(("permanent", str(exc)))
            except http.Transient as exc:
                outcomes.append(("transient", exc.retry_after))
        assert all(r.used == 1 for r in srv.faults)  # each fault fired
    assert outcomes[0][0] == "permanent" and "404" in outcomes[0][1]
    assert outcomes[1] == ("transient", 3.0)
    assert outcomes[2][0] == "permanent" and "403" in outcomes[2][1]


def test_a_wrong_content_range_is_refused(served):
    root, _ = served
    with FaultServer(root, faults=Faults(wrong_content_range=True, first_n=1)) as srv:
        m = Mirror(srv.url_for("f.bin"), size=100_000, ranges=True)
        with pytest.raises(http.Permanent, match="Content-Range"):
            with http.open_range(m, 10, 99, OPTS) as stream:
                stream.read(10)
        assert srv.faults[0].used == 1


def test_a_file_replaced_on_the_mirror_answers_changed(served):
    root, data = served
    with FaultServer(root, faults=Faults(change_etag_after=1)) as srv:
        m = Mirror(srv.url_for("f.bin"))
        http.probe(m, OPTS)
        with pytest.raises(http.Changed):
            with http.open_range(m, 0, 999, OPTS) as stream:
                stream.read(1000)


def test_failures_read_as_one_clause_without_library_names():
    with pytest.raises(http.Unreachable) as info:
        http.probe(Mirror("http://still-nosuch.invalid/f"), OPTS)
    text = str(info.value)
    assert text.startswith("cannot resolve still-nosuch.invalid")  # then the resolver's words, where it gives any
    assert "Pool(" not in text and "Max retries" not in text


# ---- the journal ---------------------------------------------------------------------------------------------------
def test_journal_round_trip_and_a_whole_record_supersedes_a_partial(tmp_path):
    j = Journal(tmp_path / "j", size=10_000, chunk_size=4096, sha256="ab")
    j.commit()
    j.commit_partial(1, 100, "p1", [[4096, 4195, "http://a/"]])
    j.commit(0, "h0", [[0, 4095, "http://a/"]])
    j.commit_partial(2, 50, "p2", [[8192, 8241, "http://b/"]])
    j.commit(2, "h2", [[8192, 9999, "http://b/"]])
    j.close()
    back = Journal.load(tmp_path / "j")
    assert back.chunks == {0: "h0", 2: "h2"} and back.partials == {1: (100, "p1", [[4096, 4195, "http://a/"]])}
    assert back.kept_bytes() == 4096 + (10_000 - 8192) + 100
    assert back.served_by == {0: ["http://a/"], 2: ["http://b/"]}


def test_journal_refuses_a_partial_record_that_does_not_fit_its_chunk(tmp_path):
    j = Journal(tmp_path / "j", size=10_000, chunk_size=4096)
    j.commit()
    j.close()
    with open(tmp_path / "j", "a") as f:
        f.write('{"partial": 1, "done": 5000, "xxh3_128": "x", "spans": [[4096, 9095, "u"]]}\n')  # > chunk
        f.write('{"partial": 9, "done": 10, "xxh3_128": "x", "spans": [[0, 9, "u"]]}\n')  # no such chunk
    assert Journal.load(tmp_path / "j").partials == {}


# ---- re-chunking a partial download ---------------------------------------------------------------------------------
def test_rechunk_keeps_what_verifies_and_starts_each_new_chunk(tmp_path):
    data = random.Random(5).randbytes(40_000)
    part = tmp_path / "p"
    part.write_bytes(data)
    old = Journal(tmp_path / "j", size=len(data), chunk_size=5_000)
    for i in (0, 1, 2, 3, 7):  # old 5 is missing
        a, b = old.chunk_range(i)
        old.chunks[i], old.spans[i] = xxhash.xxh3_128_hexdigest(data[a:b + 1]), [[a, b, "u"]]
    old.partials[4] = (1000, xxhash.xxh3_128_hexdigest(data[20_000:21_000]), [[20_000, 20_999, "u"]])
    old.chunks[6] = "not its hash"  # rotted: dropped on re-verification, so old 7 follows a gap in new chunk 3
    old.spans[6] = [[30_000, 34_999, "u"]]
    fd = os.open(part, os.O_RDONLY)
    try:
        new, lost = rechunk(old, 10_000, fd, None, set())
    finally:
        os.close(fd)
    assert set(new.chunks) == {0, 1}
    assert new.partials == {2: (1000, xxhash.xxh3_128_hexdigest(data[20_000:21_000]), [[20_000, 20_999, "u"]])}
    assert new.chunks[1] == xxhash.xxh3_128_hexdigest(data[10_000:20_000])
    assert lost == 5_000 + 5_000  # the rotted old chunk 6 and old chunk 7 behind it


# ---- one record of the verdicts on mirrors -----------------------------------------------------------------------------
def test_every_verdict_on_a_mirror_lands_in_one_record(served):
    from zoo.transfer.pool import MirrorPool
    from zoo.transfer.verdicts import CONVICTED, DROPPED, SUSPECT, UNREACHABLE

    root, data = served
    with FaultServer(root) as srv:
        missing, good = srv.url_for("missing.bin"), srv.url_for("f.bin")
        pool = MirrorPool("t:f.bin", [missing, "http://nosuch-too.invalid/f.bin", good], OPTS, lambda: None)
        assert pool.settle(None) == len(data)
        pool.judge.pass_(pool.by_url(good), SUSPECT, "disagreed once")
        pool.convict(pool.by_url(good), "served bad bytes")
    kinds = [(v.url, v.kind) for v in pool.judge.record]
    assert (missing, DROPPED) in kinds and ("http://nosuch-too.invalid/f.bin", UNREACHABLE) in kinds
    assert kinds[-2:] == [(good, SUSPECT), (good, CONVICTED)]
    assert pool.verdicts == {good: "served bad bytes"}  # what the journal keeps: convictions only
    assert "404" in pool.by_url(missing).reason and pool.by_url(good).suspect == "disagreed once"
