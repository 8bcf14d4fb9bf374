"""Trust that nothing copied can grant: an install record counts only if this user's zoo wrote it at that path
(the per-user trust store, `zoo.truststore`), and `mmf zoo adopt` re-verifies a copied install against its archive.

The installed imdb is a payload that creates a file when unpickled. A real `zoo.fetch` from a folder mirror
installs it into data dir A (from a manifest whose sha256 matches, so A trusts it); every forgery below must leave
the proof file absent, and the adopted (or re-installed) case shows the same payload does fire.
"""
from __future__ import annotations

import io
import json
import os
import shutil
from pathlib import Path

import pytest
import yaml

import zoo
from mmfdata.errors import UntrustedPickleError
from mmfdata.imdb import load_imdb
from mmfdata.trust import require_trusted
from tests.payload import Payload, evil_imdb
from tests.zoo_helpers import run_mmf, sha256, tar_gz
from zoo.fsutil import xxh3_file
from zoo.records import stamp

ANN = "datasets/trustset/defaults/annotations"


def _install(tmp_path: Path, proof: Path):
    """A verified install of `trustset` (annotations with the payload imdb, features) into tmp_path/A."""
    mirror = tmp_path / "mirror"
    ann = tar_gz(mirror / f"{ANN}/annotations.tar.gz", {"imdb_train.npy": evil_imdb(proof)})
    feats = tar_gz(mirror / "datasets/trustset/defaults/features/features.tar.gz",
                   {"open_images/detectron.lmdb/data.mdb": os.urandom(4096)})
    res = {cat: [{"url": f"mmf://{p.relative_to(mirror)}", "file_name": p.name, "hashcode": sha256(p)}]
           for cat, p in (("annotations", ann), ("features", feats))}
    manifest = tmp_path / "datasets.yaml"
    manifest.write_text(yaml.safe_dump({"trustset": {"defaults": {"version": "1", "resources": res}}}))
    zoo.fetch("trustset", data_dir=tmp_path / "A", mirrors=[str(mirror)], zoo_paths=[manifest])
    return tmp_path / "A", manifest, mirror


def _refused(imdb: Path, proof: Path, match: str) -> str:
    with pytest.raises(UntrustedPickleError, match=match) as info:
        load_imdb(str(imdb))
    assert not proof.exists(), "the payload ran"
    assert "\n" not in str(info.value)
    return str(info.value)


def _adopt(manifest, data, *extra):
    return run_mmf("zoo", "adopt", "trustset", "--zoo", str(manifest), "--data-dir", str(data), *extra)


def _adopt_then_payload_runs(manifest, data, proof: Path) -> None:
    """After `mmf zoo adopt`, the imdb is trusted: loading it unpickles the payload, which creates `proof`."""
    r = _adopt(manifest, data)
    assert r.returncode == 0, r.stdout + r.stderr
    with pytest.raises(Exception):
        load_imdb(str(data / ANN / "imdb_train.npy"))
    assert proof.exists()


def test_a_copied_data_dir_is_not_trusted_until_adopted(tmp_path):
    proof = tmp_path / "proof"
    a, manifest, _ = _install(tmp_path, proof)
    require_trusted(str(a / ANN / "imdb_train.npy"), False)  # A: this user's zoo installed it here
    b = tmp_path / "B"
    shutil.copytree(a, b, symlinks=True)  # records, markers, archives and all (copy2 keeps the mtimes)
    msg = _refused(b / ANN / "imdb_train.npy", proof, "not written by this user's zoo at this path")
    assert "run `mmf zoo adopt trustset.defaults`" in msg and "--trust-pickle" in msg, msg
    # the zoo's own commands say so too
    v = run_mmf("zoo", "verify", "trustset", "--zoo", str(manifest), "--data-dir", str(b))
    assert v.returncode == 2 and "mmf zoo adopt trustset.defaults" in v.stdout, v.stdout
    f = run_mmf("zoo", "fetch", "trustset", "--zoo", str(manifest), "--data-dir", str(b), "--offline")
    assert f.returncode == 0 and "not trusted" in f.stderr and "mmf zoo adopt" in f.stderr, f.stderr
    assert not proof.exists()
    r = _adopt(manifest, b)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.count("ok ") == 2 and "adopted" in r.stdout, r.stdout
    v = run_mmf("zoo", "verify", "trustset", "--zoo", str(manifest), "--data-dir", str(b))
    assert v.returncode == 0, v.stdout
    with pytest.raises(Exception):
        load_imdb(str(b / ANN / "imdb_train.npy"))  # not an imdb, but now trusted: unpickled ...
    assert proof.exists()  # ... so the payload fires: its absence above means no code ran


def test_a_forged_record_grants_nothing(tmp_path):
    proof = tmp_path / "proof"
    folder = tmp_path / "data" / ANN
    folder.mkdir(parents=True)
    imdb = folder / "imdb_train.npy"
    imdb.write_bytes(evil_imdb(proof))
    (folder / ".built.json").write_text(json.dumps({"created_at": "now", "version": "1"}))
    (folder / ".mmfzoo").mkdir()
    record = {"format": 2, "key": "trustset.defaults", "version": "1", "url": "mmf://x", "sha256": "0" * 64,
              "verified": True, "extracted": True, "top_level": [imdb.name], "archive_kept": False,
              "files": [[imdb.name, imdb.stat().st_size, xxh3_file(imdb), stamp(imdb)]]}
    rec = folder / ".mmfzoo/annotations.tar.gz.installed.json"
    rec.write_text(json.dumps(record))
    rec.chmod(0o600)
    msg = _refused(imdb, proof, "not written by this user's zoo")
    assert "mmf zoo adopt trustset.defaults" in msg


def test_an_edited_record_and_a_record_in_another_folder_grant_nothing(tmp_path):
    proof = tmp_path / "proof"
    a, manifest, _ = _install(tmp_path, proof / "never")
    # a file dropped beside the verified ones, and the record edited to list it (exact size, hash and stamp)
    dropped = a / ANN / "imdb_val.npy"
    dropped.write_bytes(evil_imdb(proof))
    rec_path = a / ANN / ".mmfzoo/annotations.tar.gz.installed.json"
    rec = json.loads(rec_path.read_text())
    rec["files"].append([dropped.name, dropped.stat().st_size, xxh3_file(dropped), stamp(dropped)])
    rec_path.write_text(json.dumps(rec, indent=1))
    msg = _refused(dropped, proof, "changed after this user's zoo wrote it")
    assert "mmf zoo adopt trustset.defaults" in msg
    # the same edited record moved into another folder of the same data dir, whose own record it replaces
    feats = a / "datasets/trustset/defaults/features"
    shutil.copy(dropped, feats / dropped.name)
    rec["files"][-1][3] = stamp(feats / dropped.name)
    (feats / ".mmfzoo/features.tar.gz.installed.json").write_text(json.dumps(rec))
    _refused(feats / dropped.name, proof, "changed after this user's zoo wrote it")


def test_a_state_folder_linked_to_a_trusted_one_grants_nothing(tmp_path):
    proof = tmp_path / "proof"
    a, manifest, _ = _install(tmp_path, proof)
    b = tmp_path / "B"
    shutil.copytree(a, b)
    shutil.rmtree(b / ANN / ".mmfzoo")
    os.symlink(a / ANN / ".mmfzoo", b / ANN / ".mmfzoo")  # B's folder borrowing A's registered record
    _refused(b / ANN / "imdb_train.npy", proof, "not listed")


def test_a_data_dir_reached_through_a_symlink_stays_trusted(tmp_path):
    a, _, _ = _install(tmp_path, tmp_path / "proof")
    link = tmp_path / "link"
    os.symlink(a, link)
    require_trusted(str(link / ANN / "imdb_train.npy"), False)  # the same real record, the same real file
    require_trusted(str(link / "datasets/trustset/defaults/features/open_images/detectron.lmdb"), False)


def test_adopt_rehashes_the_archive_and_ignores_the_copied_record(tmp_path):
    proof = tmp_path / "proof"
    a, manifest, _ = _install(tmp_path, proof / "never")
    b = tmp_path / "B"
    shutil.copytree(a, b)
    # the copy's imdb swapped, and its (copied) record rewritten to agree with the swap
    imdb = b / ANN / "imdb_train.npy"
    imdb.write_bytes(evil_imdb(proof) + b"\0" * 16)
    rec_path = b / ANN / ".mmfzoo/annotations.tar.gz.installed.json"
    rec = json.loads(rec_path.read_text())
    rec["files"] = [[imdb.name, imdb.stat().st_size, xxh3_file(imdb), stamp(imdb)]]
    rec_path.write_text(json.dumps(rec))
    r = _adopt(manifest, b)
    assert r.returncode == 2, r.stdout + r.stderr
    assert "BAD trustset.defaults: annotations.tar.gz:" in r.stdout and "differ from its archive" in r.stdout
    assert "mmf zoo verify --repair trustset.defaults" in r.stdout and "ok  trustset.defaults: features" in r.stdout
    _refused(imdb, proof, "not written by this user's zoo")
    require_trusted(str(b / "datasets/trustset/defaults/features/open_images/detectron.lmdb"), False)  # adopted
    # what the BAD line says to do: re-install from the kept (verified) archive, offline
    r = run_mmf("zoo", "verify", "--repair", "trustset", "--zoo", str(manifest), "--data-dir", str(b), "--offline")
    assert r.returncode == 0, r.stdout + r.stderr
    assert imdb.read_bytes() == (a / ANN / "imdb_train.npy").read_bytes()
    require_trusted(str(imdb), False)


def test_adopt_without_the_archive_names_it_and_repair_reinstalls(tmp_path):
    proof = tmp_path / "proof"
    a, manifest, mirror = _install(tmp_path, proof)
    b = tmp_path / "B"
    shutil.copytree(a, b)
    (b / ANN / "annotations.tar.gz").unlink()
    r = _adopt(manifest, b)
    assert r.returncode == 2 and "annotations.tar.gz" in r.stdout and "which is not there" in r.stdout, r.stdout
    assert "mmf zoo verify --repair trustset.defaults" in r.stdout
    _refused(b / ANN / "imdb_train.npy", proof, "not written by this user's zoo")
    r = run_mmf("zoo", "verify", "--repair", "trustset", "--zoo", str(manifest), "--data-dir", str(b),
                "--mirror", str(mirror))
    assert r.returncode == 0, r.stdout + r.stderr
    with pytest.raises(Exception):
        load_imdb(str(b / ANN / "imdb_train.npy"))
    assert proof.exists()  # re-installed by this user's zoo: trusted


def test_a_copied_synthetic_data_dir_names_its_command(tmp_path):
    from mmfdata.synth import write_synthetic

    write_synthetic(str(tmp_path / "A"), questions=8, seed=1)
    imdb = "datasets/textvqa/defaults/annotations/imdb_train_ocr_en.npy"
    require_trusted(str(tmp_path / "A" / imdb), False)
    shutil.copytree(tmp_path / "A", tmp_path / "B")
    with pytest.raises(UntrustedPickleError, match="write it again here with `mmf data synth`"):
        require_trusted(str(tmp_path / "B" / imdb), False)


def test_a_trust_store_others_can_write_grants_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("MMF_ZOO_TRUST_DIR", str(tmp_path / "store"))
    a, _, _ = _install(tmp_path, tmp_path / "proof")
    require_trusted(str(a / ANN / "imdb_train.npy"), False)
    (tmp_path / "store").chmod(0o777)
    with pytest.raises(UntrustedPickleError, match="writable by others"):
        require_trusted(str(a / ANN / "imdb_train.npy"), False)


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to make another user's install")
def test_another_users_install_is_adopted_read_only(tmp_path):
    proof = tmp_path / "proof"
    a, manifest, _ = _install(tmp_path, proof)
    lab = tmp_path / "lab"
    shutil.copytree(a, lab)
    for dirpath, dirnames, filenames in os.walk(lab):
        for name in [dirpath, *(os.path.join(dirpath, n) for n in dirnames + filenames)]:
            os.lchown(name, 65534, 65534)  # the shared data dir of another user (nobody)
    before = sorted((p, p.stat().st_mtime_ns) for p in lab.rglob("*"))
    imdb = lab / ANN / "imdb_train.npy"
    msg = _refused(imdb, proof, "belongs to another user")  # their records are not ours to believe
    assert "mmf zoo adopt trustset.defaults" in msg
    r = _adopt(manifest, lab)
    assert r.returncode == 0 and "read-only" in r.stdout, r.stdout + r.stderr
    assert sorted((p, p.stat().st_mtime_ns) for p in lab.rglob("*")) == before  # nothing written there
    require_trusted(str(imdb), False)
    imdb.write_bytes(imdb.read_bytes())  # its owner rewrites it (same bytes, new ctime): adopt again
    _refused(imdb, proof, "changed since you adopted it")


def test_an_install_by_mmf_itself_is_adopted_from_its_kept_archives(tmp_path):
    proof = tmp_path / "proof"
    a, manifest, _ = _install(tmp_path, proof)
    for state in a.rglob(".mmfzoo"):
        shutil.rmtree(state)  # what MMF leaves: archives, extracted files, .built.json, no record of ours
    msg = _refused(a / ANN / "imdb_train.npy", proof, "not listed in any zoo install record")
    assert "if MMF installed it, run `mmf zoo adopt trustset.defaults`" in msg, msg
    _adopt_then_payload_runs(manifest, a, proof)


def test_no_trust_installs_and_verifies_but_trusts_only_after_adopt(tmp_path):
    proof = tmp_path / "proof"
    _, manifest, mirror = _install(tmp_path, proof)  # builds the mirror and the manifest (and installs into A)
    data = tmp_path / "C"
    # a third party's manifest: the data is wanted, its pickles not (yet)
    r = run_mmf("zoo", "fetch", "trustset", "--zoo", str(manifest), "--data-dir", str(data), "--mirror", str(mirror),
                "--no-trust")
    assert r.returncode == 0 and "installed with --no-trust" in r.stderr, r.stderr
    msg = _refused(data / ANN / "imdb_train.npy", proof, "installed with --no-trust")
    assert "mmf zoo adopt trustset.defaults" in msg
    _adopt_then_payload_runs(manifest, data, proof)


def test_a_zoo_checkpoint_in_a_copied_data_dir_is_not_unpickled_until_adopted(tmp_path):
    import torch

    from mmftrain.distributed import DistInfo
    from mmftrain.errors import CheckpointError
    from mmftrain.run import Stages, resolve_start

    proof = tmp_path / "proof"
    buf = io.BytesIO()
    torch.save({"model": {"w": torch.zeros(2)}, "extra": Payload(proof)}, buf)
    archive = tar_gz(tmp_path / "mirror/models/evilnet/evilnet.tar.gz", {"model.pth": buf.getvalue()})
    manifest = tmp_path / "models.yaml"  # a model zoo: the file name says so
    manifest.write_text(yaml.safe_dump({"evilnet": {"version": "1", "resources": [
        {"url": "mmf://models/evilnet/evilnet.tar.gz", "file_name": archive.name, "hashcode": sha256(archive)}]}}))
    zoo.fetch("evilnet", data_dir=tmp_path / "A", mirrors=[str(tmp_path / "mirror")], zoo_paths=[manifest])
    shutil.copytree(tmp_path / "A", tmp_path / "B")

    def start(data_dir):  # `mmf train checkpoint.resume_zoo=evilnet env.data_dir=...`
        cfg = {"run_type": "train", "env": {"data_dir": str(data_dir), "model_zoo": str(manifest)},
               "training": {"trust_pickle": False},
               "checkpoint": {"resume": False, "resume_best": False, "resume_file": None, "resume_zoo": "evilnet"}}
        return resolve_start(cfg, tmp_path / "save", DistInfo(), Stages.of("train"))

    with pytest.raises(CheckpointError, match="holds pickled objects") as info:
        start(tmp_path / "B")
    assert "run `mmf zoo adopt evilnet`" in str(info.value) and "\n" not in str(info.value)
    assert not proof.exists()
    start(tmp_path / "A")  # this user's verified install: fully unpickled ...
    assert proof.exists()  # ... so the payload fires


def test_adopting_what_is_not_installed_says_so(tmp_path):
    _, manifest, _ = _install(tmp_path, tmp_path / "proof")  # installed in A; C holds nothing
    r = _adopt(manifest, tmp_path / "C")
    assert r.returncode == 2 and r.stdout.count("BAD") == 2, r.stdout + r.stderr
    assert "is not installed in" in r.stdout and "mmf zoo fetch trustset.defaults" in r.stdout, r.stdout
    assert "put it back" not in r.stdout  # not asked for an archive it never had


def test_an_install_by_another_user_is_named_as_such(tmp_path, monkeypatch):
    """Records owned by root (a lab's shared data dir installed by an admin) read by another user: the refusal
    says whose install it is and that adopt re-verifies it for this user."""
    proof = tmp_path / "proof"
    a, _, _ = _install(tmp_path, proof)
    owner = os.lstat(a / ANN / ".mmfzoo").st_uid
    if owner not in (0, os.getuid()):
        pytest.skip("records must belong to this user or root")
    monkeypatch.setattr(os, "getuid", lambda: owner + 4242)  # another user, reading records root (or we) wrote
    monkeypatch.setenv("MMF_ZOO_TRUST_DIR", str(tmp_path / "other-user-store"))
    if owner != 0:
        msg = _refused(a / ANN / "imdb_train.npy", proof, "belongs to another user")
    else:
        msg = _refused(a / ANN / "imdb_train.npy", proof, "installed by another user")
    assert "mmf zoo adopt trustset.defaults" in msg, msg
