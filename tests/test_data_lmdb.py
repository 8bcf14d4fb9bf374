"""The LMDB feature reader under concurrency and damage: one shared environment per store and process, opened
once however many loader threads reach their first read together; a damaged store is called damaged (and the
repair command named), anything else is not."""
from __future__ import annotations

import os
import pickle
import shutil
import threading

import lmdb
import numpy as np
import pytest

from mmfdata.errors import DataFileError
from mmfdata.lmdb_features import LmdbFeatureReader
from tests.data_helpers import copy_synth

THREADS = 8


def write_store(path: str, images: int = 40) -> list[str]:
    """A small MMF-style LMDB (pickled `keys` list + one pickled record per image); returns the feature paths."""
    env = lmdb.open(path, subdir=True, map_size=64 << 20)
    names = [f"train/img{i}" for i in range(images)]
    with env.begin(write=True) as txn:
        txn.put(b"keys", pickle.dumps([n.encode() for n in names]))
        for i, n in enumerate(names):
            txn.put(n.encode(), pickle.dumps({"features": np.full((3, 4), i, np.float32), "image_id": n}))
    env.close()
    return [n + ".npy" for n in names]


def read_together(readers: list, feature_path: str) -> list[BaseException]:
    """Every reader reads `feature_path` from its own thread, all released at the same instant."""
    barrier, errors = threading.Barrier(len(readers)), []

    def go(reader):
        barrier.wait()
        try:
            feats, _ = reader.read(feature_path)
            assert feats.shape == (3, 4)
        except BaseException as e:  # noqa: BLE001 - collected and asserted on below
            errors.append(e)

    threads = [threading.Thread(target=go, args=(r,)) for r in readers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    return errors


@pytest.mark.parametrize("shared_reader", [True, False])
def test_threads_reaching_their_first_read_together_all_succeed(tmp_path, shared_reader):
    # shared_reader: the loader threads of one dataset; else one reader per dataset (train + val) on one store
    failures = []
    for trial in range(25):  # each trial is a store this process has never opened: a first open every time
        path = str(tmp_path / f"store{trial}.lmdb")
        paths = write_store(path)
        readers = [LmdbFeatureReader(path, trust_pickle=True)] * THREADS if shared_reader else \
            [LmdbFeatureReader(path, trust_pickle=True) for _ in range(THREADS)]
        failures += read_together(readers, paths[trial])
    assert failures == []
    assert len({id(r.env) for r in readers}) == 1


def test_concurrent_reads_return_each_images_own_record(tmp_path):
    path = str(tmp_path / "s.lmdb")
    paths = write_store(path, images=64)
    reader = LmdbFeatureReader(path, trust_pickle=True)
    got: dict[int, float] = {}

    def work(part):
        for i in range(part, 64, 4):
            got[i] = float(reader.read(paths[i])[0][0, 0])

    threads = [threading.Thread(target=work, args=(p,)) for p in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert got == {i: float(i) for i in range(64)}


def test_an_environment_opened_elsewhere_is_not_called_corrupt(tmp_path):
    path = str(tmp_path / "s.lmdb")
    paths = write_store(path)
    other = lmdb.open(path, readonly=True, lock=False)  # another library in this process holds it open
    try:
        with pytest.raises(DataFileError) as err:
            LmdbFeatureReader(path, trust_pickle=True).read(paths[0])
    finally:
        other.close()
    msg = str(err.value)
    assert "already open" in msg and "cannot be opened" in msg
    assert not any(word in msg for word in ("corrupt", "damaged", "truncated", "zoo fetch", "--repair"))


TV = "datasets/textvqa/defaults/features/open_images/detectron.lmdb"


def test_a_truncated_store_is_damaged_not_a_crash(tmp_path):
    # a read past the end of a truncated data.mdb would kill the process with SIGBUS; it must be an error instead
    data = copy_synth(str(tmp_path / "data"))
    mdb = os.path.join(data, TV, "data.mdb")
    with open(mdb, "r+b") as f:
        f.truncate(os.path.getsize(mdb) // 2)
    reader = LmdbFeatureReader(os.path.join(data, TV), trust_pickle=True)  # past the trust check: the reader's own
    with pytest.raises(DataFileError, match="damaged .*truncated") as err:
        reader.key_for("train/anything.npy")
    assert "`mmf zoo verify --repair textvqa.defaults`" in str(err.value)


@pytest.mark.parametrize("damage", ["empty", "garbage"])
def test_an_unreadable_store_names_the_repair_command(tmp_path, damage):
    data = copy_synth(str(tmp_path / "data"))
    mdb = os.path.join(data, TV, "data.mdb")
    with open(mdb, "wb") as f:
        f.write(b"" if damage == "empty" else os.urandom(8192))
    with pytest.raises(DataFileError, match="is damaged") as err:
        LmdbFeatureReader(os.path.join(data, TV), trust_pickle=True).key_for("train/x.npy")
    assert "mmf zoo verify --repair textvqa.defaults" in str(err.value)
    assert "zoo fetch" not in str(err.value)


def test_a_damaged_record_names_the_record_and_the_repair(tmp_path):
    src = str(tmp_path / "s.lmdb")
    paths = write_store(src)
    path = str(tmp_path / "datasets/stvqa/ocr_en/features/s.lmdb")
    shutil.copytree(src, path)
    env = lmdb.open(path, subdir=True)
    with env.begin(write=True) as txn:
        txn.put(b"train/img3", b"\x80\x04not a pickle")
    env.close()
    reader = LmdbFeatureReader(path, trust_pickle=True)
    assert reader.read(paths[2])[0][0, 0] == 2
    with pytest.raises(DataFileError, match="record 'train/img3' is unreadable") as err:
        reader.read(paths[3])
    assert "mmf zoo verify --repair stvqa.ocr_en" in str(err.value)


def test_a_pickled_reader_reopens_lazily_and_shares_the_environment(tmp_path):
    path = str(tmp_path / "s.lmdb")
    paths = write_store(path)
    reader = LmdbFeatureReader(path, trust_pickle=True)
    reader.read(paths[0])
    clone = pickle.loads(pickle.dumps(reader))
    assert clone.read(paths[5])[0][0, 0] == 5 and clone.env is reader.env
