"""Prerequisites are checked in the order a user fixes them (data files, then the BERT vocab, then the fastText
vectors) and each error names the zoo key that installs the missing thing, or the option to point at a file."""
from __future__ import annotations

import os
import shutil
import struct
import subprocess
import sys
import tomllib

import pytest

from mmfdata import DataConfigError, DataFileError, build_dataset, default_dataset_config, pack_dataset
from mmfdata.fasttext import FASTTEXT_EXTRA, FASTTEXT_MAGIC, FASTTEXT_ZOO_KEY, load_fasttext
from tests.data_helpers import copy_synth

MMF = [sys.executable, "-c", "from mmfzoo_cli.main import main; main()"]
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXTRAS = "datasets/textvqa/defaults/extras"


def mmf(*args, timeout=300):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([*MMF, *args], capture_output=True, text=True, timeout=timeout, env=env)


def test_the_keys_the_errors_name_are_in_the_zoo():
    from zoo.manifest import load_zoo

    zoo = load_zoo()
    for key in ("textvqa.defaults", "textvqa.ocr_en", "bert-base-uncased", FASTTEXT_ZOO_KEY):
        assert zoo.resolve(key).resources


def test_fasttext_extra_is_declared_and_named():
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        extras = tomllib.load(f)["project"]["optional-dependencies"]
    assert any(req.split(">")[0].split("=")[0].strip() == "fasttext" for req in extras["fasttext"])
    assert "mmf-zoo[fasttext]" in FASTTEXT_EXTRA


def test_pack_without_data_names_the_data_keys_not_the_vocab(tmp_path):
    r = mmf("data", "pack", "textvqa", "--data-dir", str(tmp_path / "nothing"))
    assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "data dir" in r.stderr and "does not exist" in r.stderr
    assert "`mmf zoo fetch textvqa.defaults textvqa.ocr_en`" in r.stderr
    assert "BERT" not in r.stderr and "fastText" not in r.stderr


def test_train_without_data_names_the_data_keys_not_the_vocab(tmp_path):
    r = mmf("train", "config=projects/m4c/configs/textvqa/tiny.yaml", "datasets=textvqa", "model=m4c",
            "run_type=train", f"env.data_dir={tmp_path / 'nothing'}", f"env.save_dir={tmp_path / 'save'}",
            "env.fetch_missing_data=false")
    assert r.returncode == 1, r.stderr
    error = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert len(error) == 1 and "`mmf zoo fetch textvqa.defaults textvqa.ocr_en`" in error[0], r.stderr
    assert "BERT" not in error[0]


def test_only_missing_files_of_the_split_are_listed(tmp_path):
    data = copy_synth(str(tmp_path / "data"))
    os.remove(os.path.join(data, "datasets/textvqa/defaults/annotations/imdb_test_ocr_en.npy"))
    shutil.rmtree(os.path.join(data, "datasets/textvqa/ocr_en"))
    shutil.rmtree(os.path.join(data, "datasets/textvqa/defaults/extras/vocabs"))  # BERT vocab too: checked later
    with pytest.raises(DataFileError) as err:
        pack_dataset("textvqa", default_dataset_config("textvqa"), data, ["train", "test"])
    msg = str(err.value)
    assert "textvqa: 3 data file(s) missing" in msg and "imdb_test_ocr_en.npy" in msg
    assert "ocr_en_frcn_features.lmdb" in msg and "fixed_answer_vocab_textvqa_5k.txt" in msg
    assert "`mmf zoo fetch textvqa.defaults textvqa.ocr_en`" in msg and "BERT" not in msg


def test_vocab_is_checked_before_the_vectors_and_names_its_key_and_option(tmp_path):
    data = copy_synth(str(tmp_path / "data"))
    os.remove(os.path.join(data, EXTRAS, "vocabs/bert-base-uncased-vocab.txt"))
    os.remove(os.path.join(data, EXTRAS, "fasttext/wiki.en.npy"))
    with pytest.raises(DataFileError) as err:
        build_dataset("textvqa", default_dataset_config("textvqa"), "val", data)
    msg = str(err.value)
    assert msg.startswith("no BERT vocab.txt for textvqa") and "`mmf zoo fetch bert-base-uncased`" in msg
    assert "dataset_config.textvqa.processors.text_processor.params.vocab_file" in msg


def test_missing_vectors_name_the_fasttext_key_the_extra_and_the_option(tmp_path):
    data = copy_synth(str(tmp_path / "data"))
    os.remove(os.path.join(data, EXTRAS, "fasttext/wiki.en.npy"))
    with pytest.raises(DataFileError) as err:
        build_dataset("textvqa", default_dataset_config("textvqa"), "val", data)
    msg = str(err.value)
    assert msg.startswith("no fastText model/vectors for textvqa") and "`mmf zoo fetch fasttext.wiki_en`" in msg
    assert "mmf-zoo[fasttext]" in msg
    assert "dataset_config.textvqa.processors.context_processor.params.model_file" in msg


def test_the_zoo_install_folders_are_where_the_advice_leads(tmp_path):
    """After `mmf zoo fetch bert-base-uncased` / `fasttext.wiki_en` the files sit in models/<key>/: found there."""
    data = copy_synth(str(tmp_path / "data"))
    bert, ft = os.path.join(data, "models/bert-base-uncased"), os.path.join(data, "models", FASTTEXT_ZOO_KEY)
    os.makedirs(bert)
    os.makedirs(ft)
    os.replace(os.path.join(data, EXTRAS, "vocabs/bert-base-uncased-vocab.txt"), os.path.join(bert, "vocab.txt"))
    for name in ("wiki.en.npy", "wiki.en.vocab.txt"):
        os.replace(os.path.join(data, EXTRAS, "fasttext", name), os.path.join(ft, name))
    ds = build_dataset("textvqa", default_dataset_config("textvqa"), "val", data, prefer_packed=False)
    assert ds.procs.files["bert_vocab"] == os.path.join(bert, "vocab.txt")
    assert ds.procs.files["fasttext"] == os.path.join(ft, "wiki.en.npy")


def test_a_bin_model_without_the_package_names_the_extra(tmp_path, monkeypatch):
    path = tmp_path / "wiki.en.bin"
    path.write_bytes(struct.pack("<ii", FASTTEXT_MAGIC, 12) + b"\0" * 64)
    monkeypatch.setitem(sys.modules, "fasttext", None)  # what `import fasttext` does without the package
    with pytest.raises(DataFileError) as err:
        load_fasttext(str(path))
    assert "pip install 'mmf-zoo[fasttext]'" in str(err.value) and "model_file" in str(err.value)


@pytest.mark.parametrize("key,value", [
    ("processors.text_processor.params.mask_probability", 0.15),
    ("processors.context_processor.type", "glove"),
    ("use_images", True),
    ("processors.copy_processor.params.max_length", 50),
])
def test_unsupported_options_are_refused_not_ignored(tmp_path, key, value):
    node = cfg = default_dataset_config("textvqa")
    *path, last = key.split(".")
    for part in path:
        node = node[part]
    node[last] = value
    with pytest.raises(DataConfigError, match=f"dataset_config.textvqa.{key}={value!r}"):
        build_dataset("textvqa", cfg, "val", str(tmp_path / "no-data-needed"))
