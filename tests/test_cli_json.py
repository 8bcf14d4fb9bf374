"""--json on fetch, list, info, verify and pack: exactly one JSON document on stdout in every outcome; on failure
`{"error": {"message", "exit_code", "kind"}, "result"}` with the same message as the one stderr line."""
import json

import pytest
import typer

from tests.zoo_helpers import make_zoo, run_mmf
from zoo.testing.faultserver import FaultServer, Faults


def one_doc(r):
    return json.loads(r.stdout)  # json.loads refuses a second document or trailing text


def failed(r, code: int, kind: str | None = None) -> dict:
    doc = one_doc(r)
    assert r.returncode == code, (r.returncode, r.stderr)
    err = doc["error"]
    assert err["exit_code"] == code and isinstance(err["kind"], str) and err["message"], doc
    if kind is not None:
        assert err["kind"] == kind, doc
    assert r.stderr.strip().splitlines()[-1].endswith(err["message"]), r.stderr
    assert "Traceback" not in r.stderr
    return doc


@pytest.fixture
def toy(tmp_path):
    zoo = make_zoo(tmp_path)
    return zoo, tmp_path / "data", ["--zoo", str(zoo.manifest), "--data-dir", str(tmp_path / "data")]


def test_fetch_unknown_key(toy):
    zoo, data, common = toy
    doc = failed(run_mmf("zoo", "fetch", "toysett", *common, "--json"), 1, "unknown_key")
    assert "toyset" in doc["error"]["message"] and doc["result"] is None


def test_fetch_every_mirror_gone(toy):
    zoo, data, common = toy
    with FaultServer(zoo.mirror, faults=Faults(not_found=True)) as srv:
        r = run_mmf("zoo", "fetch", "toyset", *common, "--mirror", srv.url, "--json", "--stall-timeout", "2")
        assert sum(srv.stats.requests.values()) > 0  # the mirror was asked and said 404
    failed(r, 3)


def test_fetch_usage_error(toy):
    zoo, data, common = toy
    failed(run_mmf("zoo", "fetch", "toyset", *common, "--connections", "0", "--json"), 1, "usage")


def test_fetch_disk_and_lock_failures(toy, tmp_path):
    from zoo.lock import resource_lock

    zoo, data, common = toy
    afile = tmp_path / "afile"
    afile.write_text("mine")
    failed(run_mmf("zoo", "fetch", "toyset", "--zoo", str(zoo.manifest), "--data-dir", str(afile), "--mirror",
                   str(zoo.mirror), "--json"), 4, "disk")
    assert afile.read_text() == "mine"
    state = data / "datasets/toyset/defaults/features/.mmfzoo"
    with resource_lock(state / "features.tar.gz.lock", "test holder"):
        failed(run_mmf("zoo", "fetch", "toyset", *common, "--mirror", str(zoo.mirror), "--lock-timeout", "1",
                       "--json"), 5, "lock_timeout")


def test_success_then_verify_info_pack_and_damage(toy, tmp_path):
    zoo, data, common = toy
    r = run_mmf("zoo", "fetch", "toyset", *common, "--mirror", str(zoo.mirror), "--json")
    assert r.returncode == 0 and {x["status"] for x in one_doc(r)} == {"installed"}  # the shape scripts read
    v = run_mmf("zoo", "verify", "toyset", *common, "--json")
    assert v.returncode == 0 and [c["ok"] for c in one_doc(v)["checks"]] == [True] * 3, v.stderr
    info = run_mmf("zoo", "info", "toyset", *common, "--json")
    doc = one_doc(info)
    assert info.returncode == 0 and doc["key"] == "toyset.defaults"
    assert {r["state"] for r in doc["resources"]} == {"installed"} and len(doc["resources"]) == 3
    p = run_mmf("zoo", "pack", "toyset", *common, "-o", str(tmp_path / "toy.pack"), "--json")
    assert p.returncode == 0 and one_doc(p)["pack"] == str(tmp_path / "toy.pack") and p.stderr == ""
    assert len(one_doc(p)["resources"]) == 3
    (data / "datasets/toyset/defaults/annotations/imdb_val.npy").write_bytes(b"damaged")
    doc = failed(run_mmf("zoo", "verify", "toyset", *common, "--json"), 2, "verification")
    bad = [c for c in doc["result"]["checks"] if not c["ok"]]
    assert [c["file_name"] for c in bad] == ["annotations.tar.gz"] and "--repair" in doc["error"]["message"]
    failed(run_mmf("zoo", "pack", "toysett", *common, "-o", str(tmp_path / "again.pack"), "--json"), 1, "unknown_key")
    assert not (tmp_path / "again.pack").exists()


def test_info_list_failures(toy, tmp_path):
    zoo, data, common = toy
    failed(run_mmf("zoo", "info", "nope", *common, "--json"), 1, "unknown_key")
    broken = tmp_path / "broken.yaml"
    broken.write_text("toyset: [unclosed\n")
    failed(run_mmf("zoo", "list", "--zoo", str(broken), "--json"), 1, "manifest")
    failed(run_mmf("zoo", "list", "--json", "--bogus"), 1, "usage")
    failed(run_mmf("zoo", "verify", "--json"), 1, "usage")


def _finish_exit(fn, capsys):
    from zoo.outcome import finish

    with pytest.raises(typer.Exit) as exc:
        finish(fn, as_json=True)
    out, err = capsys.readouterr()
    return exc.value.exit_code, json.loads(out), err


def test_an_unexpected_exception_is_still_one_document(capsys):
    def bug():
        return {}["missing"]

    from zoo.errors import INTERNAL

    code, doc, err = _finish_exit(bug, capsys)
    assert code == INTERNAL == doc["error"]["exit_code"] and doc["error"]["kind"] == "internal"
    assert "KeyError" in doc["error"]["message"] and "Traceback" in err  # the traceback is for the bug report


def test_an_interrupt_is_one_document(capsys):
    def interrupted():
        raise KeyboardInterrupt()

    from zoo.errors import INTERRUPTED

    code, doc, err = _finish_exit(interrupted, capsys)
    assert code == INTERRUPTED == doc["error"]["exit_code"] and doc["error"]["kind"] == "interrupted"
    assert "resume" in doc["error"]["message"] and err.strip().startswith("interrupted:")


def test_an_error_carries_its_details_and_result(capsys):
    from zoo.errors import OfflineError
    from zoo.errors import with_result

    def offline():
        exc = OfflineError("features.tar.gz needs the network; run without --offline")
        exc.details = {"cause": "offline", "mirrors": {"http://m/": "refused"}}
        raise with_result(exc, [{"file_name": "annotations.tar.gz", "status": "installed"}])

    code, doc, err = _finish_exit(offline, capsys)
    assert code == 3 and doc["error"]["kind"] == "offline" and doc["error"]["details"]["cause"] == "offline"
    assert doc["result"] == [{"file_name": "annotations.tar.gz", "status": "installed"}]
    assert err == "error: features.tar.gz needs the network; run without --offline\n"
