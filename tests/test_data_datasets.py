"""Round trips on synthetic data in MMF's layout: LMDB path, packed path, joint training, errors."""
from __future__ import annotations

import json
import logging
import os
import pickle
import shutil

import numpy as np
import pytest

from mmfdata import (ConcatDataset, DataError, DataFileError, FeatureKeyError, LmdbDataset, PackedDataset,
                     UntrustedPickleError, build_dataset, default_dataset_config, pack_dataset)
from mmfdata.batch import MAX_DECODE_STEPS, MAX_OCR
from tests.data_helpers import batches_equal, copy_synth, shared_synth

TV = "datasets/textvqa/defaults"


@pytest.fixture(scope="module")
def packed_copy(tmp_path_factory):
    """A private synthetic install with every split packed (joint config, so ST-VQA train is packed too)."""
    data = copy_synth(str(tmp_path_factory.mktemp("packed") / "data"))
    pack_dataset("textvqa", default_dataset_config("textvqa", "joint_with_stvqa"), data)
    return data


def test_lmdb_batch_follows_the_contract():
    ds = build_dataset("textvqa", default_dataset_config("textvqa"), "train", shared_synth(), prefer_packed=False)
    assert isinstance(ds, LmdbDataset) and len(ds) == 48 and ds.name == "textvqa" and ds.split == "train"
    assert ds.answer_vocab[0] == "<pad>" and {"<s>", "</s>", "<unk>"} <= set(ds.answer_vocab)
    b = ds.get_batch(np.arange(0, 48, 5))
    n = 10
    shapes = {"question_id": (n,), "text": (n, 20), "text_len": (n,), "obj_feat": (n, 100, 2048),
              "obj_bbox": (n, 100, 4), "obj_num": (n,), "ocr_feat": (n, MAX_OCR, 2048), "ocr_fasttext": (n, 50, 300),
              "ocr_phoc": (n, 50, 604), "ocr_bbox": (n, 50, 4), "ocr_num": (n,), "image_id": (n,),
              "train_prev_inds": (n, MAX_DECODE_STEPS), "train_loss_mask": (n, 12), "target_seq": (n, 12),
              "target_first_inds": (n, 60), "target_first_scores": (n, 60), "ocr_tokens": (n,), "gt_answers": (n,)}
    dtypes = {"obj_feat": np.float16, "ocr_feat": np.float16, "ocr_fasttext": np.float16, "ocr_phoc": np.float16,
              "obj_bbox": np.float32, "ocr_bbox": np.float32, "train_loss_mask": np.float32,
              "target_first_scores": np.float32, "image_id": object, "ocr_tokens": object, "gt_answers": object}
    assert set(b) == set(shapes)
    for key, shape in shapes.items():
        assert b[key].shape == shape, key
        assert b[key].dtype == dtypes.get(key, np.int64), key
    assert (b["obj_num"] == 100).all() and (b["ocr_num"] == [len(t) for t in b["ocr_tokens"]]).all()
    assert (b["text"][:, 0] == 101).all() and all(len(a) == 10 for a in b["gt_answers"])
    # synthetic answers are one word (copied OCR word or vocab class): answer + EOS steps are trained
    assert (b["train_loss_mask"][:, :2] == 1).all() and (b["train_prev_inds"][:, 0] == 1).all()


def test_lmdb_values_come_from_the_feature_store():
    data = shared_synth()
    ds = build_dataset("textvqa", default_dataset_config("textvqa"), "val", data, prefer_packed=False)
    b = ds.get_batch(np.array([3]))
    key = f"train/{b['image_id'][0]}".encode()  # TextVQA keys: image_path without .jpg
    with ds.obj_reader.env.begin() as txn:  # py-lmdb allows one environment per path and process
        rec = pickle.loads(txn.get(key))
    assert np.array_equal(b["obj_feat"][0], rec["features"].astype(np.float16))


def test_test_split_has_no_targets():
    ds = build_dataset("textvqa", default_dataset_config("textvqa"), "test", shared_synth(), prefer_packed=False)
    b = ds.get_batch(np.arange(4))
    assert all(a == [] for a in b["gt_answers"]) and not b["train_loss_mask"].any()
    assert (b["target_first_inds"] == -1).all() and not b["train_prev_inds"].any()


def test_packed_and_lmdb_batches_are_identical(packed_copy):
    cfg = default_dataset_config("textvqa")
    for split, idx in (("train", np.array([5, 0, 47, 5, 12, 33])), ("val", np.arange(9)), ("test", np.arange(9))):
        packed = build_dataset("textvqa", cfg, split, packed_copy, seed=7)
        lmdb_ds = build_dataset("textvqa", cfg, split, packed_copy, seed=7, prefer_packed=False)
        assert isinstance(packed, PackedDataset) and isinstance(lmdb_ds, LmdbDataset)
        for epoch in (0, 3):
            packed.set_epoch(epoch)
            lmdb_ds.set_epoch(epoch)
            assert batches_equal(packed.get_batch(idx), lmdb_ds.get_batch(idx)) == [], (split, epoch)


def test_seed_and_epoch_change_only_the_sampled_sequence(packed_copy):
    cfg = default_dataset_config("textvqa")
    a = build_dataset("textvqa", cfg, "train", packed_copy, seed=1)
    b = build_dataset("textvqa", cfg, "train", packed_copy, seed=2)
    idx = np.arange(48)
    x, y = a.get_batch(idx), b.get_batch(idx)
    assert set(batches_equal(x, y)) <= {"train_prev_inds", "target_seq"}
    assert batches_equal(x, a.get_batch(idx)) == []


def test_joint_training_concatenates_textvqa_and_stvqa(packed_copy):
    cfg = default_dataset_config("textvqa", "joint_with_stvqa")
    joint = build_dataset("textvqa", cfg, "train", packed_copy)
    slow = build_dataset("textvqa", cfg, "train", packed_copy, prefer_packed=False)
    assert isinstance(joint, ConcatDataset) and len(joint) == 48 + 16 and joint.name == "textvqa"
    idx = np.array([63, 0, 50, 47, 48, 10])
    b = joint.get_batch(idx)
    assert batches_equal(b, slow.get_batch(idx)) == []
    tv = build_dataset("textvqa", default_dataset_config("textvqa"), "train", packed_copy).get_batch(np.array([0, 10]))
    assert batches_equal({k: v[[1, 5]] for k, v in b.items() if k not in ("train_prev_inds", "target_seq")},
                         {k: v for k, v in tv.items() if k not in ("train_prev_inds", "target_seq")}) == []
    assert b["question_id"][0] > 100000  # ST-VQA question ids of the synthetic data


def test_stvqa_feature_paths_get_the_split_prefix():
    ds = build_dataset("stvqa", default_dataset_config("stvqa"), "test", shared_synth(), prefer_packed=False)
    assert all(p.startswith("test_task3/") for p in ds.feature_paths)
    assert ds.get_batch(np.arange(3))["obj_feat"].any()


def test_packed_batch_buffers_are_not_reused_while_held(packed_copy):
    ds = build_dataset("textvqa", default_dataset_config("textvqa"), "train", packed_copy)
    first = ds.get_batch(np.arange(8))
    keep = first["obj_feat"].copy()
    for _ in range(6):
        ds.get_batch(np.arange(20, 28))
    assert np.array_equal(first["obj_feat"], keep)
    del first
    a = ds.get_batch(np.arange(8))["obj_feat"].copy()
    assert np.array_equal(a, keep)


def test_stale_pack_falls_back_to_lmdb_and_says_so(tmp_path, caplog):
    data = copy_synth(str(tmp_path / "data"))
    cfg = default_dataset_config("textvqa")
    pack_dataset("textvqa", cfg, data, ["val"])
    assert isinstance(build_dataset("textvqa", cfg, "val", data), PackedDataset)
    vocab = os.path.join(data, TV, "extras/vocabs/fixed_answer_vocab_textvqa_5k.txt")
    with open(vocab, "a") as f:
        f.write("newword\n")
    with caplog.at_level(logging.WARNING, logger="mmfdata"):
        ds = build_dataset("textvqa", cfg, "val", data)
    assert isinstance(ds, LmdbDataset)
    assert "falling back to the LMDB path" in caplog.text and "mmf data pack textvqa --splits val" in caplog.text
    pack_dataset("textvqa", cfg, data, ["val"])
    assert isinstance(build_dataset("textvqa", cfg, "val", data), PackedDataset)


def test_interrupted_pack_resumes_to_the_same_store(tmp_path, caplog):
    data = copy_synth(str(tmp_path / "data"))
    cfg = default_dataset_config("textvqa")
    (store,) = pack_dataset("textvqa", cfg, data, ["train"])
    before = {f: open(os.path.join(store, f), "rb").read() for f in ("obj_feat.npy", "ocr_feat.npy")}
    index = json.load(open(os.path.join(store, "index.json")))
    # what a run killed after 10 of 24 images leaves behind: a .partial folder with a checkpoint
    partial = store + ".partial"
    shutil.copytree(store, partial)
    os.remove(os.path.join(partial, "index.json"))
    obj = np.load(os.path.join(partial, "obj_feat.npy"), mmap_mode="r+")
    obj[10:] = 0
    obj.flush()
    del obj
    with open(os.path.join(partial, "progress.json"), "w") as f:
        json.dump({"inputs": index["inputs"], "images": index["images"], "done": 10}, f)
    shutil.rmtree(store)
    with caplog.at_level(logging.INFO, logger="mmfdata"):
        pack_dataset("textvqa", cfg, data, ["train"])
    assert f"at image 10/{index['images']}" in caplog.text
    assert not os.path.exists(partial)
    for f, raw in before.items():
        assert open(os.path.join(store, f), "rb").read() == raw


def test_pickles_need_a_zoo_marker_or_explicit_trust(tmp_path):
    data = copy_synth(str(tmp_path / "data"))
    for dirpath, dirs, files in os.walk(data):
        if ".built.json" in files:
            os.remove(os.path.join(dirpath, ".built.json"))
        if ".mmfzoo" in dirs:  # the install records are what grants trust
            shutil.rmtree(os.path.join(dirpath, ".mmfzoo"))
            dirs.remove(".mmfzoo")
    cfg = default_dataset_config("textvqa")
    with pytest.raises(UntrustedPickleError, match="imdb_val_ocr_en.npy.*trust_pickle=True"):
        build_dataset("textvqa", cfg, "val", data)
    with pytest.raises(UntrustedPickleError):
        pack_dataset("textvqa", cfg, data, ["val"])
    ds = build_dataset("textvqa", cfg, "val", data, trust_pickle=True)
    assert ds.get_batch(np.arange(2))["obj_feat"].any()
    (store,) = pack_dataset("textvqa", cfg, data, ["val"], trust_pickle=True)
    assert isinstance(build_dataset("textvqa", cfg, "val", data), PackedDataset)  # packed store: no pickle


def test_missing_feature_key_names_the_key(tmp_path):
    import lmdb

    data = copy_synth(str(tmp_path / "data"))
    path = os.path.join(data, "datasets/textvqa/ocr_en/features/ocr_en_frcn_features.lmdb")
    env = lmdb.open(path, subdir=True)
    with env.begin(write=True) as txn:
        keys = pickle.loads(txn.get(b"keys"))
        victim = keys[0]
        txn.delete(victim)
        txn.put(b"keys", pickle.dumps(keys[1:]))
    env.close()
    cfg = default_dataset_config("textvqa")
    with pytest.raises(FeatureKeyError, match=victim.decode()):  # edited by hand: no longer zoo-verified
        pack_dataset("textvqa", cfg, data, ["train", "val", "test"], trust_pickle=True)


def test_corrupt_and_missing_files_give_clear_errors(tmp_path):
    data = copy_synth(str(tmp_path / "data"))
    cfg = default_dataset_config("textvqa")
    imdb = os.path.join(data, TV, "annotations/imdb_val_ocr_en.npy")
    raw = open(imdb, "rb").read()
    open(imdb, "wb").write(raw[: len(raw) // 2])
    with pytest.raises(UntrustedPickleError, match="imdb_val_ocr_en.npy is damaged or changed since install"):
        build_dataset("textvqa", cfg, "val", data)  # the trust check sees the damage before any unpickling
    with pytest.raises(DataFileError, match="imdb_val_ocr_en.npy cannot be read.*damaged; run "
                                            "`mmf zoo verify --repair textvqa.defaults`"):
        build_dataset("textvqa", cfg, "val", data, trust_pickle=True)
    os.remove(imdb)
    with pytest.raises(DataFileError, match="1 data file.* missing: .*imdb_val_ocr_en.npy; run `mmf zoo fetch "
                                            "textvqa.defaults`"):
        build_dataset("textvqa", cfg, "val", data)
    shutil.rmtree(os.path.join(data, TV, "features/open_images/detectron.lmdb"))
    with pytest.raises(DataFileError, match="detectron.lmdb; run `mmf zoo fetch textvqa.defaults`"):
        build_dataset("textvqa", cfg, "train", data)


def test_corrupt_lmdb_is_reported(tmp_path):
    data = copy_synth(str(tmp_path / "data"))
    mdb = os.path.join(data, TV, "features/open_images/detectron.lmdb/data.mdb")
    open(mdb, "wb").write(b"\0" * 4096)
    ds = build_dataset("textvqa", default_dataset_config("textvqa"), "train", data, trust_pickle=True)
    with pytest.raises(DataFileError, match="detectron.lmdb"):
        ds.get_batch(np.arange(2))


def test_datasets_survive_pickling_for_spawned_workers(packed_copy):
    cfg = default_dataset_config("textvqa")
    idx = np.array([4, 2, 8])
    for prefer in (True, False):
        ds = build_dataset("textvqa", cfg, "val", packed_copy, seed=3, prefer_packed=prefer)
        ds.set_epoch(2)
        clone = pickle.loads(pickle.dumps(ds))
        assert batches_equal(clone.get_batch(idx), ds.get_batch(idx)) == []


@pytest.mark.parametrize("victim", ["none", "imdb", "fasttext", "bert_vocab"])
def test_damaged_files_name_the_repair_command_of_their_zoo_key(tmp_path, victim):
    """A damaged file is mended by `mmf zoo verify --repair <key>` (only that resource), not a 34 GB re-fetch."""
    data = copy_synth(str(tmp_path / "data"))
    files = {"imdb": f"{TV}/annotations/imdb_val_ocr_en.npy", "fasttext": f"{TV}/extras/fasttext/wiki.en.npy",
             "bert_vocab": f"{TV}/extras/vocabs/bert-base-uncased-vocab.txt"}
    if victim == "none":  # control: the intact install builds
        build_dataset("textvqa", default_dataset_config("textvqa"), "val", data, prefer_packed=False)
        return
    path = os.path.join(data, files[victim])
    raw = open(path, "rb").read()
    open(path, "wb").write(raw[: len(raw) // 3])
    with pytest.raises(DataError) as err:
        build_dataset("textvqa", default_dataset_config("textvqa"), "val", data, prefer_packed=False)
    msg = str(err.value)
    # a pickle is refused by the trust check before loading; its mend is the install record's own origin
    mend = "`mmf data synth`" if victim == "imdb" else "`mmf zoo verify --repair textvqa.defaults`"
    assert files[victim].split("/")[-1] in msg and mend in msg, msg
    assert "zoo fetch" not in msg and "corrupt" not in msg and "trust_pickle" not in msg
