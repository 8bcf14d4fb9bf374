"""`mmf data pack` builds from the config `mmf train` resolves (YAML files + overrides), and the packed store is
keyed on content, not on where the data dir lives."""
from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys

import lmdb
import numpy as np
import pytest

from mmfdata import LmdbDataset, PackedDataset, build_dataset, default_dataset_config, pack_dataset
from mmfdata import fingerprint as fp
from mmfdata.configs import run_config
from mmfdata.synth import write_synthetic

MMF = [sys.executable, "-c", "from mmfzoo_cli.main import main; main()"]
STORE = "packed/textvqa/defaults/annotations/imdb_train_ocr_en"
SEQ = "dataset_config.textvqa.processors.text_processor.params.max_seq_length"


def mmf(*args):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([*MMF, *args], capture_output=True, text=True, timeout=300, env=env)


@pytest.fixture
def data(tmp_path):
    out = tmp_path / "data"
    write_synthetic(str(out), questions=32, seed=4, val_questions=8, test_questions=8)
    return out


def user_yaml(tmp_path, seq: int) -> str:
    """A researcher's config: the small M4C plus one processor changed in YAML."""
    path = tmp_path / "my.yaml"
    path.write_text("includes:\n- projects/m4c/configs/textvqa/tiny.yaml\ndataset_config:\n  textvqa:\n"
                    f"    processors:\n      text_processor:\n        params:\n          max_seq_length: {seq}\n")
    return str(path)


def test_a_yaml_processor_override_changes_what_pack_builds_and_train_uses_it(tmp_path, data):
    config = user_yaml(tmp_path, 24)
    r = mmf("data", "pack", "textvqa", "--config", config, "--data-dir", str(data), "--splits", "train")
    assert r.returncode == 0, r.stderr
    index = json.loads((data / STORE / "index.json").read_text())
    assert index["params"]["max_seq_length"] == 24
    assert np.load(data / STORE / "text.npy").shape == (32, 24)
    # the config mmf train resolves from the same file finds the store fresh; the project default does not
    same = build_dataset("textvqa", run_config("textvqa", config=config, data_dir=str(data))["dataset_config"]
                         ["textvqa"], "train", str(data))
    assert isinstance(same, PackedDataset) and same.get_batch(np.arange(2))["text"].shape == (2, 24)
    assert isinstance(build_dataset("textvqa", default_dataset_config("textvqa"), "train", str(data)), LmdbDataset)
    r = mmf("train", f"config={config}", "datasets=textvqa", "model=m4c", "run_type=train",
            f"env.data_dir={data}", f"env.save_dir={tmp_path / 'save'}", "env.fetch_missing_data=false",
            "training.batch_size=8", "training.max_updates=2", "training.evaluation_interval=1000")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "textvqa/train: packed store not used" not in r.stderr + r.stdout  # it trained on the store packed above
    assert "textvqa/val: packed store not used" in r.stderr + r.stdout  # (val was not packed: the check can fail)


def test_a_key_value_override_reaches_pack_and_a_bad_key_is_refused(data):
    r = mmf("data", "pack", "textvqa", "--data-dir", str(data), "--splits", "train", f"{SEQ}=16")
    assert r.returncode == 0, r.stderr
    assert np.load(data / STORE / "text.npy").shape == (32, 16)
    r = mmf("data", "pack", "textvqa", "--data-dir", str(data), "--splits", "train",
            "dataset_config.textvqa.processors.text_processor.params.max_seq_lenght=16")
    assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1
    assert "unknown config key" in r.stderr and "max_seq_length" in r.stderr


def test_the_data_dir_comes_from_the_config_as_in_train(tmp_path, data):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MMF_DATA_DIR": str(data)}
    r = subprocess.run([*MMF, "data", "pack", "textvqa", "--splits", "val"], capture_output=True, text=True,
                       timeout=300, env=env)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == [str(data / "packed/textvqa/defaults/annotations/imdb_val_ocr_en")]


def test_a_copied_data_dir_reuses_its_packed_store(tmp_path, data):
    cfg = default_dataset_config("textvqa")
    pack_dataset("textvqa", cfg, str(data), ["train"])
    copy = tmp_path / "elsewhere" / "data"
    shutil.copytree(data, copy, copy_function=shutil.copy)  # new mtimes: the content has to be hashed
    mdb = "datasets/textvqa/defaults/features/open_images/detectron.lmdb/data.mdb"
    assert os.stat(copy / mdb).st_mtime_ns != os.stat(data / mdb).st_mtime_ns
    index = (copy / STORE / "index.json").read_bytes()
    assert isinstance(build_dataset("textvqa", cfg, "train", str(copy)), PackedDataset)
    r = mmf("data", "pack", "textvqa", "--data-dir", str(copy), "--splits", "train")
    assert r.returncode == 0 and "up to date" in r.stderr, r.stderr
    assert (copy / STORE / "index.json").read_bytes() == index  # not repacked
    # a changed record in the copy makes the copy's store stale
    env = lmdb.open(str(copy / os.path.dirname(mdb)), subdir=True, map_size=1 << 30)
    with env.begin(write=True) as txn:
        key = pickle.loads(txn.get(b"keys"))[0]
        rec = pickle.loads(txn.get(key))
        rec["features"] = rec["features"] + 1
        txn.put(key, pickle.dumps(rec))
    env.close()
    # (the edited store no longer matches its install record, so reading it takes the user's explicit trust)
    assert isinstance(build_dataset("textvqa", cfg, "train", str(copy), trust_pickle=True), LmdbDataset)
    assert isinstance(build_dataset("textvqa", cfg, "train", str(data)), PackedDataset)  # the original is intact


def test_big_files_are_sampled_and_an_lmdb_write_still_shows(tmp_path, monkeypatch):
    """Above FULL_HASH_LIMIT only head, tail and spaced blocks are read; a committed LMDB write rewrites a meta
    page in the head, so it changes the sampled hash even when the changed value lies between the samples."""
    for name, value in (("FULL_HASH_LIMIT", 1 << 16), ("EDGE", 8192), ("SAMPLE", 4096), ("SAMPLES", 2)):
        monkeypatch.setattr(fp, name, value)
    path = tmp_path / "s.lmdb"
    env = lmdb.open(str(path), subdir=True, map_size=64 << 20)
    with env.begin(write=True) as txn:
        for i in range(200):
            txn.put(f"k{i:03d}".encode(), os.urandom(4000))
    for _ in range(4):  # until the file stops growing: later rewrites reuse freed pages, in place
        with env.begin(write=True) as txn:
            txn.put(b"k100", os.urandom(4000))
    env.close()
    before = fp.fingerprint(str(path))
    assert before["size"] > 1 << 16 and before["xxh3_128"].startswith("s:")
    env = lmdb.open(str(path), subdir=True, map_size=64 << 20)
    with env.begin(write=True) as txn:
        txn.put(b"k100", os.urandom(4000))  # same size, a page in the middle
    env.close()
    os.utime(path / "data.mdb", ns=(before["mtime_ns"], before["mtime_ns"] + 1))
    assert os.path.getsize(path / "data.mdb") == before["size"]
    assert fp.still_matches(before, str(path)) == f"{path / 'data.mdb'} changed content"
    small = tmp_path / "small.txt"
    small.write_bytes(b"a" * 1000)
    rec = fp.fingerprint(str(small))
    small.write_bytes(b"a" * 999 + b"b")
    assert "changed content" in fp.still_matches(rec, str(small)) and not rec["xxh3_128"].startswith("s:")
