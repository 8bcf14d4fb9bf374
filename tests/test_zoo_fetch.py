"""`mmf zoo fetch` end to end, as a user runs it: real subprocesses, a fault-injecting mirror, real archives."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
import time
import io
import shutil
from pathlib import Path

import pytest
import yaml

from zoo.testing.faultserver import FaultServer, Faults
from tests.zoo_helpers import ROOT, assert_tree, make_zoo, run_mmf, sha256, tar_gz


def fetch(zoo, data, *extra, mirror=None, key="toyset"):
    args = ["zoo", "fetch", key, "--zoo", str(zoo.manifest), "--data-dir", str(data), "--quiet",
            "--chunk-size", "0.5", "--stall-timeout", "2"]
    if mirror:
        args += ["--mirror", mirror]
    return run_mmf(*args, *extra)


def built(data, rel):
    return json.loads((data / rel / ".built.json").read_text())


def test_fetch_installs_mmf_layout_and_markers_then_is_idempotent(tmp_path):
    zoo = make_zoo(tmp_path)
    data = tmp_path / "data"
    with FaultServer(zoo.mirror) as srv:
        r = fetch(zoo, data, mirror=srv.url)
        assert r.returncode == 0, r.stderr
        assert_tree(data, zoo)
        for rel in ("datasets/toyset/defaults/features", "datasets/toyset/defaults/annotations", "datasets/toyset/defaults"):
            marker = built(data, rel)
            assert sorted(marker) == ["created_at", "version"]  # exactly MMF's keys
            assert marker["version"] == "1.0_2026_11_26"  # safe_dump quoted it, so it stays a string
        # archives kept next to the data, as MMF does
        assert (data / "datasets/toyset/defaults/features/features.tar.gz").is_file()
        srv.stats.reset()
        r = fetch(zoo, data, "--json", mirror=srv.url)
        assert r.returncode == 0
        assert {x["status"] for x in json.loads(r.stdout)} == {"already installed"}
        assert sum(srv.stats.bytes_sent.values()) == 0
        v = run_mmf("zoo", "verify", "toyset", "--zoo", str(zoo.manifest), "--data-dir", str(data))
        assert v.returncode == 0 and v.stdout.count("\nok ") + v.stdout.startswith("ok ") == 3, v.stdout


def test_verify_detects_a_damaged_extracted_file(tmp_path):
    zoo = make_zoo(tmp_path)
    data = tmp_path / "data"
    r = fetch(zoo, data, mirror=str(zoo.mirror))  # a plain local folder works as a mirror
    assert r.returncode == 0, r.stderr
    victim = data / "datasets/toyset/defaults/annotations/imdb_val.npy"
    victim.write_bytes(victim.read_bytes()[:100])
    v = run_mmf("zoo", "verify", "toyset", "--zoo", str(zoo.manifest), "--data-dir", str(data))
    assert v.returncode == 2 and "imdb_val.npy" in v.stdout and "mmf zoo verify --repair toyset" in v.stderr


def _verify(zoo, data, *extra):
    return run_mmf("zoo", "verify", "toyset", "--zoo", str(zoo.manifest), "--data-dir", str(data), *extra)


def _stamps(root: Path) -> dict:
    return {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in root.rglob("*") if p.is_file()}


def test_byte_flip_is_caught_by_verify_and_mended_by_repair_alone(tmp_path):
    zoo = make_zoo(tmp_path)
    data = tmp_path / "data"
    assert fetch(zoo, data, mirror=str(zoo.mirror)).returncode == 0
    victim = data / "datasets/toyset/defaults/features/open_images/detectron.lmdb/data.mdb"
    st = victim.stat()
    raw = bytearray(victim.read_bytes())
    raw[len(raw) // 2] ^= 0xFF  # same size, same mtime: only the content tells
    victim.write_bytes(bytes(raw))
    os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns))
    (data / "datasets/toyset/defaults/annotations/dropped.npy").write_bytes(b"not ours")
    (data / "datasets/toyset/defaults/annotations/imdb_val.npy").unlink()
    v = _verify(zoo, data)
    assert v.returncode == 2
    assert "BAD toyset.defaults: features.tar.gz: open_images/detectron.lmdb/data.mdb: content differs" in v.stdout
    assert "imdb_val.npy: missing" in v.stdout and "extra file dropped.npy" in v.stdout
    assert "ok  toyset.defaults: extras.tar.gz" in v.stdout
    extras = data / "datasets/toyset/defaults/extras"
    untouched = _stamps(extras)
    rep = _verify(zoo, data, "--repair", "--offline")  # offline: the kept archives are enough
    assert rep.returncode == 2 and "extra file dropped.npy" in rep.stdout, rep.stdout + rep.stderr  # still reported
    assert "repaired toyset.defaults: features.tar.gz" in rep.stdout
    assert "repaired toyset.defaults: annotations.tar.gz" in rep.stdout and "repaired toyset.defaults: extras" not in rep.stdout
    assert_tree(data, zoo)
    assert _stamps(extras) == untouched  # the healthy resource was not re-extracted
    assert (data / "datasets/toyset/defaults/annotations/dropped.npy").exists()  # never deletes the user's files


def test_repair_without_kept_archive_fetches_again_and_reports_extra_files(tmp_path):
    zoo = make_zoo(tmp_path)
    data = tmp_path / "data"
    with FaultServer(zoo.mirror) as srv:
        assert fetch(zoo, data, "--delete-archives", mirror=srv.url).returncode == 0
        (data / "datasets/toyset/defaults/features/open_images/planted.lmdb").mkdir()
        (data / "datasets/toyset/defaults/features/open_images/planted.lmdb/data.mdb").write_bytes(b"x")
        v = _verify(zoo, data)
        assert v.returncode == 2 and "extra file open_images/planted.lmdb/data.mdb" in v.stdout
        victim = data / "datasets/toyset/defaults/annotations/imdb_train.npy"
        victim.write_bytes(b"damaged")
        srv.stats.reset()
        rep = _verify(zoo, data, "--repair", "--mirror", srv.url)
        assert "repaired toyset.defaults: annotations.tar.gz" in rep.stdout, rep.stdout + rep.stderr
        sent = dict(srv.stats.bytes_sent)
    assert set(sent) == {"datasets/toyset/defaults/annotations/annotations.tar.gz"}  # only the damaged resource
    assert_tree(data, zoo)
    assert rep.returncode == 2 and "extra file open_images/planted.lmdb/data.mdb" in rep.stdout  # reported, kept


def test_fetch_mends_a_deleted_file_instead_of_saying_installed(tmp_path):
    zoo = make_zoo(tmp_path)
    data = tmp_path / "data"
    assert fetch(zoo, data, mirror=str(zoo.mirror)).returncode == 0
    (data / "datasets/toyset/defaults/annotations/imdb_val.npy").unlink()
    info = run_mmf("zoo", "info", "toyset", "--zoo", str(zoo.manifest), "--data-dir", str(data))
    assert "[damaged: imdb_val.npy missing; run `mmf zoo verify --repair toyset`]" in info.stdout, info.stdout
    r = fetch(zoo, data, "--json", "--offline")
    assert r.returncode == 0, r.stderr
    status = {x["file_name"]: x["status"] for x in json.loads(r.stdout)}
    assert status["annotations.tar.gz"].startswith("installed") and status["extras.tar.gz"] == "already installed"
    assert_tree(data, zoo)


def test_archive_member_never_replaces_a_users_folder(tmp_path):
    zoo = make_zoo(tmp_path)
    data = tmp_path / "data"
    mine = data / "datasets/toyset/defaults/annotations/imdb_val.npy"
    mine.mkdir(parents=True)  # the user's folder where the archive has a file
    (mine / "notes.txt").write_text("mine")
    r = fetch(zoo, data, mirror=str(zoo.mirror))
    assert r.returncode == 2 and "would replace the existing folder" in r.stderr and "imdb_val.npy" in r.stderr
    assert (mine / "notes.txt").read_text() == "mine"
    assert not (data / "datasets/toyset/defaults/annotations/imdb_train.npy").exists()  # stopped before any rename
    shutil.rmtree(mine)
    (data / "datasets/toyset/defaults/extras").write_text("the user's file where the archive has a folder")
    r = fetch(zoo, data, mirror=str(zoo.mirror))
    assert r.returncode == 2 and "would replace the existing file" in r.stderr
    assert (data / "datasets/toyset/defaults/extras").is_file()


def test_a_new_version_may_replace_what_the_resource_itself_installed(tmp_path):
    """The folder/file clash check refuses only what this resource did not install: upgrades still work."""
    zoo = make_zoo(tmp_path)
    data = tmp_path / "data"
    assert fetch(zoo, data, mirror=str(zoo.mirror)).returncode == 0
    path = zoo.mirror / "datasets/toyset/defaults/annotations/annotations.tar.gz"
    tar_gz(path, {"imdb_val.npy/part0.npy": b"now a folder", "imdb_train.npy": b"v2"})  # file -> folder
    m = yaml.safe_load(zoo.manifest.read_text())
    m["toyset"]["defaults"]["version"] = "2.0"
    m["toyset"]["defaults"]["resources"]["annotations"][0].update(hashcode=sha256(path), size=path.stat().st_size)
    zoo.manifest.write_text(yaml.safe_dump(m))
    r = fetch(zoo, data, mirror=str(zoo.mirror))
    assert r.returncode == 0, r.stderr
    ann = data / "datasets/toyset/defaults/annotations"
    assert (ann / "imdb_val.npy/part0.npy").read_bytes() == b"now a folder" and (ann / "imdb_train.npy").read_bytes() == b"v2"


def test_quiet_is_quiet_while_waiting_for_a_lock(tmp_path):
    from zoo.lock import resource_lock

    zoo = make_zoo(tmp_path)
    data = tmp_path / "data"
    state = data / "datasets/toyset/defaults/features/.mmfzoo"
    with resource_lock(state / "features.tar.gz.lock", "test holder"):
        quiet = fetch(zoo, data, "--lock-timeout", "1", mirror=str(zoo.mirror))
        loud = run_mmf("zoo", "fetch", "toyset", "--zoo", str(zoo.manifest), "--data-dir", str(data),
                       "--mirror", str(zoo.mirror), "--lock-timeout", "1")
    assert quiet.returncode == 5 and loud.returncode == 5
    assert "waiting for" in loud.stderr  # the note exists ...
    assert "waiting for" not in quiet.stderr and quiet.stderr.count("\n") == 1  # ... and --quiet drops it


def test_torch_home_gives_one_data_dir_for_every_command(tmp_path):
    from mmftrain.config import build_config  # `mmf train` and `mmf data pack` both resolve it
    from zoo.datadir import default_data_dir

    env = {"TORCH_HOME": str(tmp_path / "th"), "HOME": str(tmp_path / "home")}
    expected = tmp_path / "th/mmf/data"
    assert default_data_dir(env) == expected
    cfg = build_config(["datasets=textvqa", "model=m4c"], environ=env)
    assert Path(cfg["env"]["data_dir"]).expanduser() == expected  # mmf train, mmf data pack
    probe = ("import json; from mmftrain.config import build_config as b; from zoo.datadir import default_data_dir "
             "as z; print(json.dumps([b(['datasets=textvqa', 'model=m4c'])['env']['data_dir'], str(z())]))")
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         env={**os.environ, "MMF_DATA_DIR": "", "MMF_CACHE_DIR": "", **env}, check=True)
    assert [str(Path(p).expanduser()) for p in json.loads(out.stdout)] == [str(expected)] * 2  # train/pack, zoo
    r = run_mmf("zoo", "fetch", "toyset", "--zoo", str(make_zoo(tmp_path).manifest), "--mirror",
                str(tmp_path / "mirror"), "--quiet", env={"MMF_DATA_DIR": "", "MMF_CACHE_DIR": "", **env})
    assert r.returncode == 0, r.stderr
    assert (expected / "datasets/toyset/defaults/annotations/imdb_train.npy").is_file()
    with_mmf = {**env, "MMF_DATA_DIR": str(tmp_path / "explicit")}
    assert default_data_dir(with_mmf) == tmp_path / "explicit"
    assert build_config(["datasets=textvqa", "model=m4c"], environ=with_mmf)["env"]["data_dir"] == str(tmp_path / "explicit")


def test_delete_archives_and_no_extract(tmp_path):
    zoo = make_zoo(tmp_path)
    d1, d2 = tmp_path / "d1", tmp_path / "d2"
    assert fetch(zoo, d1, "--delete-archives", mirror=str(zoo.mirror)).returncode == 0
    assert_tree(d1, zoo)
    assert not list(d1.rglob("*.tar.gz"))
    r = fetch(zoo, d2, "--no-extract", mirror=str(zoo.mirror))
    assert r.returncode == 0, r.stderr
    assert (d2 / "datasets/toyset/defaults/features/features.tar.gz").is_file()
    assert not list(d2.rglob(".built.json"))  # MMF must not think archives alone are built
    assert not (d2 / "datasets/toyset/defaults/features/open_images").exists()


def _manifest_with(zoo, **changes):
    m = yaml.safe_load(zoo.manifest.read_text())
    item = m["toyset"]["defaults"]["resources"]["features"][0]
    item.update(changes)
    zoo.manifest.write_text(yaml.safe_dump(m))


def test_wrong_hash_is_exit_2_and_nothing_published(tmp_path):
    zoo = make_zoo(tmp_path)
    _manifest_with(zoo, hashcode="0" * 64)
    data = tmp_path / "data"
    with FaultServer(zoo.mirror) as srv:
        r = fetch(zoo, data, mirror=srv.url)
    assert r.returncode == 2, r.stderr
    assert "sha256" in r.stderr and "Traceback" not in r.stderr
    feats = data / "datasets/toyset/defaults/features"
    assert not (feats / "open_images").exists() and not (feats / ".built.json").exists()
    assert not (feats / "features.tar.gz").exists()


def test_html_page_served_as_archive_is_refused(tmp_path):
    zoo = make_zoo(tmp_path)
    data = tmp_path / "data"
    with FaultServer(zoo.mirror, faults=Faults(glob="*features*", html_200=True)) as srv:
        r = fetch(zoo, data, mirror=srv.url)
        assert srv.faults[0].used > 0  # the HTML page was served
    assert r.returncode == 3 and "HTML" in r.stderr
    assert not (data / "datasets/toyset/defaults/features/open_images").exists()


def _evil_zoo(tmp_path, members_or_builder):
    zoo = make_zoo(tmp_path)
    path = zoo.mirror / "datasets/toyset/defaults/features/features.tar.gz"
    if callable(members_or_builder):
        members_or_builder(path)
    else:
        tar_gz(path, members_or_builder)
    _manifest_with(zoo, hashcode=sha256(path), size=path.stat().st_size)
    return zoo


def _symlink_escape(path):
    with tarfile.open(path, "w:gz") as tf:
        info = tarfile.TarInfo("open_images/link")
        info.type, info.linkname = tarfile.SYMTYPE, "../../../../../../etc"
        tf.addfile(info)
        data = b"owned"
        info = tarfile.TarInfo("open_images/link/evil.txt")
        info.size = len(data)
        tf.addfile(info, io.BytesIO(data))


def _truncated(path):
    tar_gz(path, {"open_images/big.bin": os.urandom(600_000)})
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])


def _bomb(path):
    tar_gz(path, {"open_images/zeros.bin": bytes(64 << 20)})


@pytest.mark.parametrize("builder,phrase", [
    ({"../../escaped.txt": b"x"}, ".."),
    ({"/tmp/abs-escape.txt": b"x"}, "absolute"),
    (_symlink_escape, "outside"),
    (_truncated, "cannot be read to the end"),
], ids=["traversal", "absolute", "symlink", "truncated"])
def test_unsafe_or_corrupt_archives_are_refused(tmp_path, builder, phrase):
    zoo = _evil_zoo(tmp_path, builder)
    data = tmp_path / "data"
    r = fetch(zoo, data, mirror=str(zoo.mirror))
    assert r.returncode == 2, r.stderr
    assert phrase in r.stderr.lower() and "Traceback" not in r.stderr
    assert not (tmp_path / "escaped.txt").exists() and not Path("/tmp/abs-escape.txt").exists()
    feats = data / "datasets/toyset/defaults/features"
    assert not (feats / ".built.json").exists() and not (feats / "open_images").exists()
    assert not list((feats / ".mmfzoo").glob("extract-*"))  # no temp tree left behind


def test_lone_bad_mirror_folder_bomb_is_stopped_while_streaming(tmp_path):
    """A lone mirror serves a folder bomb where the manifest's archive should be (same size, other bytes): the
    streaming extractor, fed before the sha256 can judge, counts every folder against its budget and stops, its temp
    tree goes at once, and the sha256 then refuses the body: exit 2, nothing published. (A 4 MiB cap keeps the test
    fast; test_extract.py shows the default budget, bound to the bytes received, on a loopback stream.)"""
    from zoo.archive.limits import BLOCK

    cap = 4 << 20
    zoo = make_zoo(tmp_path)
    path = zoo.mirror / "datasets/toyset/defaults/features/features.tar.gz"
    with tarfile.open(path, "w:gz") as tf:
        for i in range(20_000):
            info = tarfile.TarInfo(f"open_images/d{i:06d}")
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            tf.addfile(info)
        pad = os.urandom(128 << 10)
        info = tarfile.TarInfo("open_images/pad.bin")
        info.size = len(pad)
        tf.addfile(info, io.BytesIO(pad))
    size = path.stat().st_size
    _manifest_with(zoo, size=size)  # the manifest's sha256 is still the real archive's
    data = tmp_path / "data"
    feats = data / "datasets/toyset/defaults/features"
    peak = 0
    # 64 KiB chunks at 100 KB/s: the cursor feeds the extractor chunk by chunk for ~2 s before the sha256 is known
    faults = Faults(glob="*features*", rate_bps=100_000)
    with FaultServer(zoo.mirror, faults=faults) as srv:
        proc = subprocess.Popen([sys.executable, "-m", "mmfzoo_cli", "zoo", "fetch", "toyset", "--zoo",
                                 str(zoo.manifest), "--data-dir", str(data), "--mirror", srv.url, "--mirror-only",
                                 "--connections", "1", "--chunk-size", "0.0625"],
                                cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env={**os.environ, "MMF_ZOO_MAX_EXTRACT_BYTES": str(cap)})
        while proc.poll() is None:  # the temp tree, measured while the fetch runs
            state = feats / ".mmfzoo"
            for tmp in list(state.glob("extract-*")) if state.is_dir() else []:
                peak = max(peak, sum(len(d) + len(f) for _, d, f in os.walk(tmp)))
            time.sleep(0.02)
        out, err = proc.communicate()
        assert faults.used > 0 and srv.stats.bytes_sent["datasets/toyset/defaults/features/features.tar.gz"] >= size
    assert proc.returncode == 2 and "sha256" in err and "Traceback" not in err, err
    stopped = [line for line in err.splitlines() if "streaming extraction stopped" in line]
    assert stopped and f"in {cap // BLOCK + 1} files, folders and links" in stopped[0], err
    assert peak <= cap // BLOCK + 1, peak  # bounded by the budget, not the 20,000 folders
    assert not (feats / "open_images").exists() and not list((feats / ".mmfzoo").glob("extract-*"))


def test_bomb_guard_uses_declared_extracted_size(tmp_path):
    zoo = _evil_zoo(tmp_path, _bomb)
    _manifest_with(zoo, extracted_size=1000)
    r = fetch(zoo, tmp_path / "data", mirror=str(zoo.mirror))
    assert r.returncode == 2 and "limit" in r.stderr.lower(), r.stderr


def test_read_only_data_dir_is_exit_4(tmp_path):
    if os.geteuid() == 0:
        # root ignores permission bits: use a read-only bind of a tmpfs-less path instead -> a file as data dir
        data = tmp_path / "not-a-dir"
        data.write_text("")
    else:
        data = tmp_path / "ro"
        data.mkdir()
        data.chmod(0o500)
    zoo = make_zoo(tmp_path)
    r = fetch(zoo, data / "sub", mirror=str(zoo.mirror))
    assert r.returncode == 4, r.stderr
    assert "data-dir" in r.stderr and "Traceback" not in r.stderr


def test_preflight_refuses_before_any_byte(tmp_path):
    zoo = make_zoo(tmp_path)
    _manifest_with(zoo, size=None, extracted_size=10 ** 15)  # a petabyte tree cannot fit
    m = yaml.safe_load(zoo.manifest.read_text())
    m["toyset"]["defaults"]["resources"]["features"][0].pop("size")
    zoo.manifest.write_text(yaml.safe_dump(m))
    with FaultServer(zoo.mirror) as srv:
        r = fetch(zoo, tmp_path / "data", mirror=srv.url)
        assert r.returncode == 4 and "not enough space" in r.stderr and "free" in r.stderr, r.stderr
        from zoo.transfer.http import SAMPLE
        # only the probes: size, validator and the first SAMPLE bytes (content sniffing), never the payload
        assert 0 < sum(srv.stats.bytes_sent.values()) <= 2 * SAMPLE


def test_mmf_built_data_is_respected(tmp_path):
    zoo = make_zoo(tmp_path)
    data = tmp_path / "data"
    for rel in ("datasets/toyset/defaults/features", "datasets/toyset/defaults/annotations", "datasets/toyset/defaults"):
        (data / rel).mkdir(parents=True, exist_ok=True)
        (data / rel / ".built.json").write_text(json.dumps({"created_at": "2021-01-01 00:00:00",
                                                           "version": "1.0_2026_11_26"}))
    r = fetch(zoo, data, "--json", "--offline")
    assert r.returncode == 0, r.stderr
    assert {x["status"] for x in json.loads(r.stdout)} == {"built by MMF"}


def test_offline_refuses_network_and_names_the_resource(tmp_path):
    zoo = make_zoo(tmp_path)
    r = fetch(zoo, tmp_path / "data", "--offline", mirror="http://127.0.0.1:9/")
    assert r.returncode == 3 and "offline" in r.stderr and ".tar.gz" in r.stderr
    r = run_mmf("zoo", "fetch", "toyset", "--zoo", str(zoo.manifest), "--data-dir", str(tmp_path / "d"),
                "--mirror", "http://127.0.0.1:9/", env={"MMF_ZOO_OFFLINE": "1"})
    assert r.returncode == 3 and "offline" in r.stderr


def test_offline_install_from_folder_and_from_pack(tmp_path):
    zoo = make_zoo(tmp_path)
    # a folder of archives downloaded by hand, flat, renamed folders: matched by file name + sha256
    hand = tmp_path / "downloads"
    hand.mkdir()
    for rel, path in zoo.archives.items():
        (hand / rel.replace("/", "_")).mkdir()
        (hand / rel.replace("/", "_") / path.name).write_bytes(path.read_bytes())
    d1 = tmp_path / "d1"
    r = fetch(zoo, d1, "--from", str(hand), mirror="http://127.0.0.1:9/")
    assert r.returncode == 0, r.stderr
    assert_tree(d1, zoo)
    pack = tmp_path / "toy.pack"
    r = run_mmf("zoo", "pack", "toyset", "--zoo", str(zoo.manifest), "--data-dir", str(d1), "-o", str(pack))
    assert r.returncode == 0, r.stderr
    # the pack carries its manifest entries: install it with no --zoo at all
    d2 = tmp_path / "d2"
    r = run_mmf("zoo", "fetch", "toyset", "--from", str(pack), "--data-dir", str(d2), "--quiet")
    assert r.returncode == 0, r.stderr
    assert_tree(d2, zoo)
    r = run_mmf("zoo", "fetch", "toyset", "--zoo", str(zoo.manifest), "--from", str(tmp_path / "nothing-here"),
                "--data-dir", str(tmp_path / "d3"))
    assert r.returncode == 3 and "nothing-here" in r.stderr


def test_single_archive_from_and_missing_resource_is_named(tmp_path):
    zoo = make_zoo(tmp_path)
    only = zoo.archives["datasets/toyset/defaults/features/features.tar.gz"]
    r = fetch(zoo, tmp_path / "d", "--from", str(only))
    assert r.returncode == 3 and "annotations.tar.gz" in r.stderr and "not in --from" in r.stderr


def test_nginx_mirror_serves_a_real_install(tmp_path):
    from zoo.testing.nginxserver import NginxServer

    zoo = make_zoo(tmp_path, feature_bytes=6 << 20)
    with NginxServer(zoo.mirror) as ngx:
        r = fetch(zoo, tmp_path / "data", "--connections", "4", mirror=ngx.url)
        assert r.returncode == 0, r.stderr
    assert_tree(tmp_path / "data", zoo)


def test_two_mirrors_one_404_one_corrupt_one_good(tmp_path):
    zoo = make_zoo(tmp_path, feature_bytes=4 << 20, chunk_hash_size=1 << 19)
    size = zoo.archives["datasets/toyset/defaults/features/features.tar.gz"].stat().st_size
    corrupt = [o for o in range(100, size, 1 << 19)]
    with FaultServer(zoo.mirror, faults=Faults(not_found=True)) as gone, \
            FaultServer(zoo.mirror, faults=Faults(glob="*features*", corrupt=corrupt)) as bad, \
            FaultServer(zoo.mirror) as good:
        r = run_mmf("zoo", "fetch", "toyset", "--zoo", str(zoo.manifest), "--data-dir", str(tmp_path / "data"),
                    "--mirror", gone.url, "--mirror", bad.url, "--mirror", good.url, "--chunk-size", "0.5", "--json")
        assert r.returncode == 0, r.stderr
        feats = next(x for x in json.loads(r.stdout) if x["file_name"] == "features.tar.gz")
        reasons = " ".join(feats["mirrors"].values())
        assert "404" in reasons and "xxh3" in reasons
        assert gone.faults[0].used > 0 and bad.faults[0].used > 0  # both faults fired
    assert_tree(tmp_path / "data", zoo)


def test_mirrors_command_reports_latency_throughput_and_dead_mirrors(tmp_path):
    zoo = make_zoo(tmp_path, feature_bytes=4 << 20)
    with FaultServer(zoo.mirror, faults=Faults(rate_bps=8e6)) as slow, FaultServer(zoo.mirror, faults=Faults(gone=True)) as dead:
        r = run_mmf("zoo", "mirrors", "toyset", "--zoo", str(zoo.manifest), "--mirror", slow.url, "--mirror",
                    dead.url, "--mirror-only", "--sample", "2", "--json")
    assert r.returncode == 0, r.stderr
    rows = {row["url"].split("/datasets")[0] + "/": row for row in json.loads(r.stdout)}
    assert rows[slow.url]["ok"] and 2 < rows[slow.url]["mb_per_s"] < 12  # the 8 MB/s cap, measured
    assert rows[slow.url]["size"] == zoo.archives["datasets/toyset/defaults/features/features.tar.gz"].stat().st_size
    assert not rows[dead.url]["ok"] and "410" in rows[dead.url]["detail"]


def test_full_disk_mid_fetch_then_resume_after_space_is_freed(tmp_path):
    """RLIMIT_FSIZE makes every write past 2 MiB fail as on a full disk (EFBIG, handled like ENOSPC)."""
    import resource
    import signal
    import subprocess
    import sys

    from tests.zoo_helpers import ROOT

    zoo = make_zoo(tmp_path, feature_bytes=6 << 20)
    data = tmp_path / "data"
    cmd = [sys.executable, "-m", "mmfzoo_cli", "zoo", "fetch", "toyset", "--zoo", str(zoo.manifest), "--data-dir",
           str(data), "--quiet", "--chunk-size", "0.5", "--connections", "2"]

    def small_disk():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (2 << 20, 2 << 20))

    with FaultServer(zoo.mirror) as srv:
        r = subprocess.run(cmd + ["--mirror", srv.url], cwd=ROOT, capture_output=True, text=True, timeout=120,
                           preexec_fn=small_disk)
        assert r.returncode == 4, r.stderr
        assert "disk full" in r.stderr and "resume" in r.stderr and "Traceback" not in r.stderr
        feats = data / "datasets/toyset/defaults/features"
        assert not (feats / ".built.json").exists()
        srv.stats.reset()
        r = subprocess.run(cmd + ["--mirror", srv.url, "--json"], cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        rep = next(x for x in json.loads(r.stdout) if x["file_name"] == "features.tar.gz")
        assert rep["resumed"] >= (1 << 20) and rep["fetched"] + rep["resumed"] == rep["size"]
    assert_tree(data, zoo)


def test_failed_refetch_leaves_built_data_intact(tmp_path):
    zoo = make_zoo(tmp_path)
    data = tmp_path / "data"
    assert fetch(zoo, data, mirror=str(zoo.mirror)).returncode == 0
    marker = (data / "datasets/toyset/defaults/features/.built.json").read_text()
    # the mirror now serves a different file under the same name: --force must not damage what is built
    evil = zoo.archives["datasets/toyset/defaults/features/features.tar.gz"]
    raw = bytearray(evil.read_bytes())
    raw[len(raw) // 2] ^= 0xFF  # same size, different bytes
    evil.write_bytes(bytes(raw))
    r = fetch(zoo, data, "--force", mirror=str(zoo.mirror))
    assert r.returncode == 2 and "sha256" in r.stderr
    assert_tree(data, zoo)
    assert (data / "datasets/toyset/defaults/features/.built.json").read_text() == marker


def test_resource_without_hashcode_is_fetched_with_a_warning(tmp_path):
    zoo = make_zoo(tmp_path)
    m = yaml.safe_load(zoo.manifest.read_text())
    m["toyset"]["defaults"]["resources"]["extras"][0].pop("hashcode")
    zoo.manifest.write_text(yaml.safe_dump(m))
    r = run_mmf("zoo", "fetch", "toyset", "--zoo", str(zoo.manifest), "--data-dir", str(tmp_path / "d"),
                "--mirror", str(zoo.mirror))
    assert r.returncode == 0, r.stderr
    assert "extras.tar.gz has no hashcode" in r.stderr
    assert_tree(tmp_path / "d", zoo)


def test_hash_command_prints_a_resource_ready_to_paste(tmp_path):
    """`mmf zoo hash` output, pasted as-is under a category list, is a valid resource that fetches."""
    import textwrap

    from tests.zoo_helpers import chunk_hashes
    from zoo.manifest import parse_manifest

    zoo = make_zoo(tmp_path)
    path = zoo.archives["datasets/toyset/defaults/features/features.tar.gz"]
    r = run_mmf("zoo", "hash", str(path), "--chunk-size", "1",
                "--url", "mmf://datasets/toyset/defaults/features/features.tar.gz")
    assert r.returncode == 0, r.stderr
    manifest = tmp_path / "pasted.yaml"
    manifest.write_text("toyset:\n  defaults:\n    version: '2'\n    resources:\n      features:\n"
                        + textwrap.indent(r.stdout, "      "))
    entry = parse_manifest(manifest, "datasets").entries["toyset.defaults"]
    assert entry.invalid is None, entry.invalid
    (res,) = entry.resources
    assert res.hashcode == sha256(path) and res.size == path.stat().st_size and res.category == "features"
    assert res.chunk_hashes["xxh3_128"] == chunk_hashes(path, 1 << 20)
    got = run_mmf("zoo", "fetch", "toyset", "--zoo", str(manifest), "--data-dir", str(tmp_path / "d"),
                  "--mirror", str(zoo.mirror), "--mirror-only", "--quiet")
    assert got.returncode == 0, got.stderr
    assert_tree(tmp_path / "d", zoo, cats=("features",))


def test_folder_mirror_of_zoo_serve_is_a_working_mirror(tmp_path):
    from zoo.serve import FolderMirror

    zoo = make_zoo(tmp_path, feature_bytes=2 << 20)
    with FolderMirror(zoo.mirror) as srv:
        r = fetch(zoo, tmp_path / "data", "--connections", "3", mirror=srv.url)
        assert r.returncode == 0, r.stderr
        import requests

        resp = requests.get(srv.url + "../../etc/passwd")
        assert resp.status_code == 404
        resp = requests.get(srv.url + "datasets/toyset/defaults/extras.tar.gz", headers={"Range": "bytes=2-5"})
        assert resp.status_code == 206 and resp.content == zoo.archives["datasets/toyset/defaults/extras.tar.gz"].read_bytes()[2:6]
    assert_tree(tmp_path / "data", zoo)


def test_chunk_hash_sidecar_url_is_used_and_catches_a_corrupt_mirror(tmp_path):
    from tests.zoo_helpers import chunk_hashes

    zoo = make_zoo(tmp_path, feature_bytes=3 << 20)
    rel = "datasets/toyset/defaults/features/features.tar.gz"
    archive = zoo.archives[rel]
    (zoo.mirror / "features.chunks.json").write_text(json.dumps({"xxh3_128": chunk_hashes(archive, 1 << 19)}))
    size = archive.stat().st_size
    with FaultServer(zoo.mirror, faults=Faults(glob="*features.tar.gz", corrupt=list(range(50, size, 1 << 19)))) as bad, \
            FaultServer(zoo.mirror) as good:
        _manifest_with(zoo, chunk_hashes={"chunk_size": 1 << 19, "url": good.url_for("features.chunks.json")})
        r = run_mmf("zoo", "fetch", "toyset", "--zoo", str(zoo.manifest), "--data-dir", str(tmp_path / "data"),
                    "--mirror", bad.url, "--mirror", good.url, "--json")
        assert r.returncode == 0, r.stderr
        feats = next(x for x in json.loads(r.stdout) if x["file_name"] == "features.tar.gz")
        assert "xxh3" in feats["mirrors"][bad.url + rel]  # caught per chunk by the sidecar's hashes
        assert bad.faults[0].used > 0
    assert_tree(tmp_path / "data", zoo)


def test_interrupted_extraction_is_redone_from_the_kept_archive_offline(tmp_path):
    import shutil

    zoo = make_zoo(tmp_path)
    data = tmp_path / "data"
    assert fetch(zoo, data, mirror=str(zoo.mirror)).returncode == 0
    feats = data / "datasets/toyset/defaults/features"
    # as if killed after the verified archive was placed, halfway through publishing its tree
    shutil.rmtree(feats / "open_images/detectron.lmdb")
    (feats / ".mmfzoo/features.tar.gz.installed.json").unlink()
    (feats / ".built.json").unlink()
    r = fetch(zoo, data, "--offline", "--json", mirror="http://127.0.0.1:9/")
    assert r.returncode == 0, r.stderr
    statuses = {x["file_name"]: x["status"] for x in json.loads(r.stdout)}
    assert statuses["features.tar.gz"] == "installed (kept archive)"
    assert_tree(data, zoo)
    assert (feats / ".built.json").is_file()


def test_a_data_dir_that_is_or_sits_under_a_file_is_refused_before_any_request(tmp_path):
    import subprocess
    import sys

    from tests.zoo_helpers import ROOT

    zoo = make_zoo(tmp_path, feature_bytes=1 << 20)
    afile = tmp_path / "afile"
    afile.write_text("mine")
    with FaultServer(zoo.mirror) as srv:
        for data, says in ((afile, "is a file, not a folder"), (afile / "data", f"is under {afile}, which is a file")):
            r = subprocess.run([sys.executable, "-m", "mmfzoo_cli", "zoo", "fetch", "toyset", "--zoo", str(zoo.manifest),
                                "--data-dir", str(data), "--mirror", srv.url], cwd=ROOT, capture_output=True,
                               text=True, timeout=120)
            assert r.returncode == 4 and "Traceback" not in r.stderr, r.stderr
            assert f"error: data dir {data} {says}; pass another --data-dir" in r.stderr
        assert sum(srv.stats.requests.values()) == 0  # refused before the network
    assert afile.read_text() == "mine"


@pytest.mark.parametrize("option", [["--chunk-size", "0"], ["--chunk-size", "-1"], ["--stall-timeout", "0"],
                                    ["--connections", "0"]])
def test_fetch_options_that_would_spin_are_usage_errors(option, tmp_path):
    """1-byte chunks (a 34 GB archive as 34 G journal entries) or a 0 s stall timeout (every connection 'stalled'
    at once) are refused before anything starts."""
    import subprocess
    import sys

    from tests.zoo_helpers import ROOT

    r = subprocess.run([sys.executable, "-m", "mmfzoo_cli", "zoo", "fetch", "textvqa", "--offline", "--data-dir",
                        str(tmp_path / "data"), *option], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and f"Invalid value for '{option[0]}'" in r.stderr, r.stderr  # usage: README's 1
    assert not (tmp_path / "data").exists()
