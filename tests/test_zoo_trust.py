"""Pickle trust: only bytes the zoo verified (listed in a verified install record, content unchanged) or that the
user explicitly trusts are ever unpickled. Every payload below would create a file if unpickled: its absence proves
no code ran, and the explicit-trust case proves the payload does fire."""
from __future__ import annotations

import io
import json
import os
import pickle
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
import yaml

import zoo
from mmfdata.errors import UntrustedPickleError
from mmfdata.imdb import load_imdb
from mmfdata.lmdb_features import LmdbFeatureReader
from mmfdata.trust import require_trusted
from tests.payload import Payload
from tests.zoo_helpers import sha256


def _evil_npy(path: Path, proof: Path) -> Path:
    np.save(path, np.array([Payload(proof)], dtype=object), allow_pickle=True)
    return path


def _good_npy() -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.array([{"version": 1}, {"image_id": "a", "question_id": 1}], dtype=object), allow_pickle=True)
    return buf.getvalue()


def _evil_lmdb(folder: Path, proof: Path) -> Path:
    import lmdb

    env = lmdb.open(str(folder), subdir=True, map_size=1 << 20)
    with env.begin(write=True) as txn:
        txn.put(b"keys", pickle.dumps(Payload(proof)))
    env.close()
    return folder


def _tgz(path: Path, members: dict[str, bytes]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


def _install(tmp_path: Path, *, hashcode: bool = True) -> Path:
    """A real `zoo.fetch` of a small dataset (annotations + features) from a folder mirror; returns the data dir."""
    mirror = tmp_path / "mirror"
    ann = _tgz(mirror / "datasets/trustset/defaults/annotations/annotations.tar.gz",
               {"imdb_train.npy": _good_npy()})
    feats = _tgz(mirror / "datasets/trustset/defaults/features/features.tar.gz",
                 {"open_images/detectron.lmdb/data.mdb": os.urandom(4096)})
    res = {}
    for cat, path in (("annotations", ann), ("features", feats)):
        item = {"url": f"mmf://datasets/trustset/defaults/{cat}/{path.name}", "file_name": path.name}
        if hashcode:
            item["hashcode"] = sha256(path)
        res[cat] = [item]
    manifest = tmp_path / "datasets.yaml"
    manifest.write_text(yaml.safe_dump({"trustset": {"defaults": {"version": "1", "resources": res}}}))
    data = tmp_path / "data"
    zoo.fetch("trustset", data_dir=data, mirrors=[str(mirror)], zoo_paths=[manifest])
    return data


ANN = "datasets/trustset/defaults/annotations"
FEATS = "datasets/trustset/defaults/features"


def test_verified_install_is_trusted_and_explicit_trust_runs_the_payload(tmp_path):
    data = _install(tmp_path)
    require_trusted(str(data / ANN / "imdb_train.npy"), False)  # listed, verified, unchanged
    require_trusted(str(data / FEATS / "open_images/detectron.lmdb"), False)
    proof = tmp_path / "proof"
    evil = _evil_npy(tmp_path / "evil.npy", proof)
    with pytest.raises(Exception):
        load_imdb(str(evil), trust_pickle=True)  # not an imdb, but it was unpickled ...
    assert proof.exists()  # ... so the payload works: its absence elsewhere means no code ran


def test_dropped_imdb_in_an_installed_folder_is_refused(tmp_path):
    data = _install(tmp_path)
    proof = tmp_path / "proof"
    evil = _evil_npy(data / ANN / "imdb_evil.npy", proof)
    with pytest.raises(UntrustedPickleError, match="not listed in any zoo install record") as info:
        load_imdb(str(evil))
    assert "\n" not in str(info.value) and "--trust-pickle" in str(info.value)
    assert not proof.exists()


def test_extra_lmdb_in_a_features_folder_is_refused(tmp_path):
    data = _install(tmp_path)
    proof = tmp_path / "proof"
    store = _evil_lmdb(data / FEATS / "open_images/evil.lmdb", proof)
    with pytest.raises(UntrustedPickleError, match="not listed"):
        LmdbFeatureReader(str(store))
    # an extra file slipped into an installed LMDB folder taints it too
    shutil.copy(store / "data.mdb", data / FEATS / "open_images/detectron.lmdb/extra.mdb")
    with pytest.raises(UntrustedPickleError, match="extra.mdb is not listed"):
        LmdbFeatureReader(str(data / FEATS / "open_images/detectron.lmdb"))
    assert not proof.exists()
    with pytest.raises(Exception):
        LmdbFeatureReader(str(store), trust_pickle=True).read("x")  # trusted: the keys are unpickled ...
    assert proof.exists()  # ... and the payload fires, so the refusals above did stop code from running


def test_overwritten_installed_imdb_is_refused(tmp_path):
    data = _install(tmp_path)
    proof = tmp_path / "proof"
    target = data / ANN / "imdb_train.npy"
    _evil_npy(tmp_path / "evil.npy", proof)
    os.replace(tmp_path / "evil.npy", target)  # a different file under the installed name
    with pytest.raises(UntrustedPickleError, match="damaged or changed since install.*verify --repair trustset"):
        load_imdb(str(target))
    # same size, same mtime, one byte flipped in place (the stamp check falls back to hashing on ctime)
    data2 = _install(tmp_path / "b")
    target2 = data2 / ANN / "imdb_train.npy"
    st = target2.stat()
    raw = bytearray(target2.read_bytes())
    raw[-1] ^= 1
    target2.write_bytes(bytes(raw))
    os.utime(target2, ns=(st.st_atime_ns, st.st_mtime_ns))
    with pytest.raises(UntrustedPickleError, match="content differs"):
        load_imdb(str(target2))
    assert not proof.exists()


def test_markers_outside_an_install_grant_nothing(tmp_path):
    proof = tmp_path / "proof"
    stray = tmp_path / "stray"
    stray.mkdir()
    (stray / ".built.json").write_text(json.dumps({"created_at": "now", "version": "1"}))
    evil = _evil_npy(stray / "imdb.npy", proof)
    with pytest.raises(UntrustedPickleError, match="not inside a zoo install"):
        load_imdb(str(evil))
    # a forged record beside the file, outside any datasets/<name>/<variation> tree: still nothing
    (stray / ".mmfzoo").mkdir()
    row = [evil.name, evil.stat().st_size, "0" * 32, [0, 0, 0]]
    (stray / ".mmfzoo/x.installed.json").write_text(json.dumps({"format": 2, "verified": True, "files": [row]}))
    with pytest.raises(UntrustedPickleError, match="not inside a zoo install"):
        load_imdb(str(evil))
    # a marker-only folder inside a data dir layout (MMF-built or hand-made): not trusted either
    mmf_built = tmp_path / "data/datasets/x/defaults/annotations"
    mmf_built.mkdir(parents=True)
    (mmf_built / ".built.json").write_text(json.dumps({"created_at": "now", "version": "1"}))
    with pytest.raises(UntrustedPickleError, match="not listed"):
        load_imdb(str(_evil_npy(mmf_built / "imdb.npy", proof)))
    assert not proof.exists()


def test_a_record_others_can_write_is_ignored(tmp_path):
    data = _install(tmp_path)
    state = data / ANN / ".mmfzoo"
    state.chmod(0o777)  # anyone could have forged what is in there
    with pytest.raises(UntrustedPickleError, match="not listed"):
        require_trusted(str(data / ANN / "imdb_train.npy"), False)


def test_resources_without_a_hashcode_are_installed_but_not_trusted(tmp_path):
    data = _install(tmp_path, hashcode=False)
    assert (data / ANN / "imdb_train.npy").is_file()
    with pytest.raises(UntrustedPickleError, match="no hashcode in the manifest"):
        load_imdb(str(data / ANN / "imdb_train.npy"))


def test_detectron_weights_need_a_verified_install(tmp_path):
    from mmftrain.errors import CheckpointError
    from mmftrain.models import load_fc7_weights

    proof = tmp_path / "proof"
    folder = tmp_path / "data/models/detectron.vmb_weights"
    folder.mkdir(parents=True)
    (folder / ".built.json").write_text(json.dumps({"created_at": "now", "version": 1.0}))
    for name in ("fc7_w.pkl", "fc7_b.pkl"):
        (folder / name).write_bytes(pickle.dumps(Payload(proof)))
    with pytest.raises(CheckpointError, match="not listed in any zoo install record"):
        load_fc7_weights(None, folder)
    assert not proof.exists()
    with pytest.raises(Exception):
        load_fc7_weights(None, folder, trust_pickle=True)
    assert proof.exists()  # with the user's trust the pickle is read (and the payload fires)
