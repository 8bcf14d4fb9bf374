"""Sizes before a fetch: `mmf zoo list` / `info` show download and extracted bytes from the manifest, else a HEAD
probe cached in the data dir (only with --probe: no network by default), else '?'; a fetch states its total first."""
import json
import socket
import threading
import time

import pytest
import yaml

from tests.zoo_helpers import make_zoo, run_mmf
from zoo.fsutil import human
from zoo.testing.faultserver import FaultServer, Faults


def _list(common, *extra, env=None):
    r = run_mmf("zoo", "list", *common, "--json", *extra, env=env)
    assert r.returncode == 0, r.stderr
    return {row["key"]: row for row in json.loads(r.stdout)}


def _archive_total(zoo):
    return sum(p.stat().st_size for p in zoo.archives.values())


@pytest.fixture
def unsized(tmp_path):
    """A zoo whose manifest has no sizes (as MMF's), served by a fault server named in MMF_ZOO_MIRRORS."""
    zoo = make_zoo(tmp_path, with_size=False)
    data = tmp_path / "data"
    data.mkdir()
    with FaultServer(zoo.mirror) as srv:
        yield zoo, data, ["--zoo", str(zoo.manifest), "--data-dir", str(data)], srv, {"MMF_ZOO_MIRRORS": srv.url}


def test_manifest_sizes_both_columns(tmp_path):
    zoo = make_zoo(tmp_path)
    m = yaml.safe_load(zoo.manifest.read_text())
    for items in m["toyset"]["defaults"]["resources"].values():
        items[0]["extracted_size"] = 1000
    zoo.manifest.write_text(yaml.safe_dump(m))
    common = ["--zoo", str(zoo.manifest), "--data-dir", str(tmp_path / "data")]
    row = _list(common)["toyset.defaults"]
    assert row["size"] == _archive_total(zoo) and row["extracted_size"] == 3000
    table = run_mmf("zoo", "list", *common).stdout
    line = next(x for x in table.splitlines() if x.startswith("toyset.defaults"))
    assert human(_archive_total(zoo)) in line and human(3000) in line and "extracted" in table


def test_no_network_without_probe_then_probe_caches(unsized):
    zoo, data, common, srv, env = unsized
    row = _list(common, env=env)["toyset.defaults"]
    assert row["size"] is None and sum(srv.stats.requests.values()) == 0  # listing never touches the network
    assert "--probe" in run_mmf("zoo", "list", *common, env=env).stderr  # ... and says how to learn the sizes
    row = _list(common, "--probe", env=env)["toyset.defaults"]
    assert row["size"] == _archive_total(zoo)
    toy = lambda: sum(n for rel, n in srv.stats.requests.items() if "/toyset/" in rel)  # noqa: E731
    assert toy() == 3  # one HEAD per resource (the built-in keys are probed too)
    assert (data / ".mmfzoo/probed-sizes.json").is_file()
    srv.set_faults(Faults(not_found=True))  # the cache answers now, without asking
    info = json.loads(run_mmf("zoo", "info", "toyset", *common, "--json", env=env).stdout)
    assert info["size"] == _archive_total(zoo) and {r["size_from"] for r in info["resources"]} == {"probe"}
    assert toy() == 3


def test_cached_size_is_per_sha256(unsized):
    zoo, data, common, srv, env = unsized
    _list(common, "--probe", env=env)
    m = yaml.safe_load(zoo.manifest.read_text())
    m["toyset"]["defaults"]["resources"]["features"][0]["hashcode"] = "ab" * 32  # a new file behind the same URL
    zoo.manifest.write_text(yaml.safe_dump(m))
    info = json.loads(run_mmf("zoo", "info", "toyset", *common, "--json", env=env).stdout)
    sizes = {r["file_name"]: r["size"] for r in info["resources"]}
    assert sizes["features.tar.gz"] is None and sizes["annotations.tar.gz"] is not None and info["size"] is None


@pytest.mark.parametrize("fault", [Faults(html_200=True), Faults(not_found=True), Faults(latency=60)])
def test_hostile_mirror_gives_unknown(unsized, fault):
    zoo, data, common, srv, env = unsized
    srv.set_faults(fault)
    t0 = time.monotonic()
    row = _list(common, "--probe", env=env)["toyset.defaults"]
    took = time.monotonic() - t0
    assert row["size"] is None and took < 30  # a tarpit costs the probe's deadline, not more
    assert sum(srv.stats.requests.values()) >= 1  # the mirror was asked ...
    assert fault.used >= 1 if not fault.latency else took >= 4  # ... and the fault answered (or held it)
    assert not (data / ".mmfzoo/probed-sizes.json").exists()


def test_planted_link_and_bad_cache(unsized, tmp_path):
    zoo, data, common, srv, env = unsized
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (data / ".mmfzoo").symlink_to(elsewhere)
    assert _list(common, "--probe", env=env)["toyset.defaults"]["size"] == _archive_total(zoo)  # shown, ...
    assert list(elsewhere.iterdir()) == []  # ... but nothing written through the link
    (data / ".mmfzoo").unlink()
    (data / ".mmfzoo").mkdir()
    key = "mmf://datasets/toyset/defaults/features/features.tar.gz " + yaml.safe_load(
        zoo.manifest.read_text())["toyset"]["defaults"]["resources"]["features"][0]["hashcode"]
    for garbage in (b"\xff\xfe not json", b"[1, 2]", json.dumps({key: {"size": -5}}).encode(),
                    json.dumps({key: {"size": True}}).encode(), json.dumps({key: {"size": 10**30}}).encode()):
        (data / ".mmfzoo/probed-sizes.json").write_bytes(garbage)
        r = run_mmf("zoo", "info", "toyset", *common, "--json", env=env)
        assert r.returncode == 0 and json.loads(r.stdout)["resources"][0]["size"] is None, (garbage, r.stderr)


def test_probe_refused_offline(unsized):
    zoo, data, common, srv, env = unsized
    r = run_mmf("zoo", "list", *common, "--probe", env={**env, "MMF_ZOO_OFFLINE": "1"})
    assert r.returncode == 1 and "MMF_ZOO_OFFLINE" in r.stderr and sum(srv.stats.requests.values()) == 0


def test_extracted_size_from_the_install_record_and_fetch_total_first(tmp_path):
    zoo = make_zoo(tmp_path)
    common = ["--zoo", str(zoo.manifest), "--data-dir", str(tmp_path / "data")]
    assert _list(common)["toyset.defaults"]["extracted_size"] is None  # not installed, no manifest field: '?'
    r = run_mmf("zoo", "fetch", "toyset", *common, "--mirror", str(zoo.mirror))
    assert r.returncode == 0, r.stderr
    first = next(line for line in r.stderr.splitlines() if "to fetch" in line)
    assert f"3 resource(s) to fetch: {human(_archive_total(zoo))}" in first
    assert r.stderr.index("to fetch") < r.stderr.index("%|")  # before any progress bar moved
    tree = sum(len(b) for files in zoo.trees.values() for b in files.values())
    row = _list(common)["toyset.defaults"]
    assert row["extracted_size"] == tree
    info = json.loads(run_mmf("zoo", "info", "toyset", *common, "--json").stdout)
    assert {r["extracted_size_from"] for r in info["resources"]} == {"record"}


def _raw_server(response: bytes):
    """A loopback server answering every request with `response` (headers no well-behaved server would send)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    hits = []

    def serve():
        while True:
            try:
                conn, _ = sock.accept()
            except OSError:
                return
            with conn:
                conn.recv(65536)
                hits.append(1)
                conn.sendall(response)

    threading.Thread(target=serve, daemon=True).start()
    return sock, f"http://127.0.0.1:{sock.getsockname()[1]}/x.tar.gz", hits


@pytest.mark.parametrize("length, want", [("-5", None), ("99999999999999999999999", None), ("0x10", None),
                                          ("\u0663", None), ("1e3", None), ("0" * 5000 + "7", 7), ("1234", 1234)])
def test_head_reads_only_a_plain_content_length(length, want):
    from zoo.transfer.http import head

    head_bytes = f"HTTP/1.1 200 OK\r\nContent-Length: {length}\r\nConnection: close\r\n\r\n".encode("utf-8")
    sock, url, hits = _raw_server(head_bytes)
    try:
        assert head(url, 5.0)[0] == want
        assert hits  # the server was asked
    finally:
        sock.close()
