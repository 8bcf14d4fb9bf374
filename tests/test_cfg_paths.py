"""Paths as MMF resolves them (`get_absolute_path`: the working directory first, then the project's files; a path
found nowhere is an error naming the places tried), and the zoo's layout answering where a key lives for
checkpoint.resume_zoo and the processors' search lists, with MMF's cache dir from zoo.datadir."""
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import zoo
from mmfconfig.errors import ConfigError
from mmfconfig.paths import zoo_manifests
from mmfconfig.resolve import build_config
from tests.zoo_helpers import ROOT, sha256, tar_gz

M4C = ["config=projects/m4c/configs/textvqa/defaults.yaml", "datasets=textvqa", "model=m4c", "run_type=train"]


def test_a_relative_env_dataset_zoo_is_found_in_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "my_zoo.yaml").write_text("mine: {}\n")
    cfg = build_config(M4C + ["env.dataset_zoo=my_zoo.yaml"], environ={})
    assert cfg["env"]["dataset_zoo"] == str(tmp_path / "my_zoo.yaml")
    assert zoo_manifests(cfg) == [("datasets", str(tmp_path / "my_zoo.yaml"))]  # what the trainer's fetches get
    shipped = build_config(M4C, environ={})  # MMF's spelling of the built-in one still finds it
    assert Path(shipped["env"]["dataset_zoo"]).is_file() and zoo_manifests(shipped) == []


@pytest.mark.parametrize("key", ["env.dataset_zoo", "env.model_zoo"])
def test_a_missing_manifest_is_an_error_naming_the_places_tried(tmp_path, monkeypatch, key):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as info:
        build_config(M4C + [f"{key}=my_zoo.yaml"], environ={})
    message = str(info.value)
    assert message.startswith(f"{key}=my_zoo.yaml not found (tried {tmp_path / 'my_zoo.yaml'}, ")
    assert "configs/my_zoo.yaml" in message and "\n" not in message


def test_folders_are_expanded_once_against_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    cfg = build_config(M4C + ["env.data_dir=./data", "env.save_dir=~/runs/a", "checkpoint.resume_file=w.ckpt"],
                       environ={})
    assert cfg["env"]["data_dir"] == str(tmp_path / "data")
    assert cfg["env"]["save_dir"] == str(tmp_path / "home" / "runs" / "a")
    assert cfg["checkpoint"]["resume_file"] == str(tmp_path / "w.ckpt")


def test_the_effective_batch_is_computed_by_the_resolver():
    cfg = build_config(M4C + ["training.batch_size_per_device=6"], environ={"WORLD_SIZE": "4"})
    assert cfg["training"]["batch_size"] == 24


def test_training_fetches_from_a_relative_env_dataset_zoo(tmp_path):
    """The issue's case: a relative env.dataset_zoo was resolved against the package, so the built-in manifest
    was used and its archive failed the sha256. Now the user's manifest in the working directory is used."""
    from mmfdata.synth import write_synthetic
    from zoo.serve import FolderMirror

    synth = write_synthetic(str(tmp_path / "src"), questions=24, seed=1, archive=True)
    work = tmp_path / "work"
    work.mkdir()
    shutil.copy(synth["manifest"], work / "my_zoo.yaml")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "MMF_ZOO_MIRROR_ONLY": "1"}
    with FolderMirror(synth["archive_root"]) as mirror:
        r = subprocess.run([sys.executable, "-m", "mmftrain.cli", "config=projects/m4c/configs/textvqa/tiny.yaml",
                            "datasets=textvqa", "model=m4c", "run_type=train", "env.data_dir=data",
                            "env.save_dir=save", "env.dataset_zoo=my_zoo.yaml", "training.max_updates=1",
                            "training.batch_size=8", "model_config.m4c.mmt.num_hidden_layers=1",
                            "training.warmup_iterations=1", "training.lr_steps=[]", "training.log_interval=1"],
                           cwd=work, env={**env, "MMF_ZOO_MIRRORS": mirror.url}, capture_output=True, text=True,
                           timeout=300)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    assert json.loads((work / "data/datasets/textvqa/defaults/features/.built.json").read_text())["version"]
    assert (work / "save" / "summary.json").is_file()


# ---- checkpoint.resume_zoo asks the zoo's layout
def model_zoo(tmp_path: Path, version: str = "1", name: str = "models.yaml") -> tuple[Path, Path]:
    """A model zoo shaped like MMF's: m4c.textvqa.with_tiny, and m4c.textvqa.defaults as its alias."""
    import torch

    buf = io.BytesIO()
    torch.save({"model": {"w": torch.full((2,), float(version))}}, buf)
    archive = tar_gz(tmp_path / f"mirror{version}/models/m4c/m4c.tiny.tar.gz", {"m4c_tiny.pth": buf.getvalue()})
    manifest = tmp_path / name
    entry = {"version": version, "resources": [{"url": "mmf://models/m4c/m4c.tiny.tar.gz",
                                                 "file_name": archive.name, "hashcode": sha256(archive)}]}
    aliased = {"with_tiny": entry, "defaults": "${m4c.textvqa.with_tiny}"}
    manifest.write_text(yaml.safe_dump({"m4c": {"textvqa": aliased}}))
    return manifest, archive.parents[2]


def start(data_dir: Path, manifest: Path, key: str, save: Path):
    from mmftrain.distributed import DistInfo
    from mmftrain.run import Stages, resolve_start

    cfg = {"run_type": "train", "env": {"data_dir": str(data_dir), "model_zoo": str(manifest)},
           "training": {"trust_pickle": False},
           "checkpoint": {"resume": False, "resume_best": False, "resume_file": None, "resume_zoo": key}}
    return resolve_start(cfg, save, DistInfo(), Stages.of("train"))


@pytest.mark.parametrize("name", ["models.yaml", "lab_zoo.yaml"])  # env.model_zoo is a model zoo whatever its name
def test_resume_zoo_finds_what_mmf_zoo_fetch_installed_under_env_model_zoo(tmp_path, name):
    manifest, mirror = model_zoo(tmp_path, name=name)
    data = tmp_path / "data"
    zoo.fetch("m4c.textvqa", data_dir=data, mirrors=[str(mirror)], zoo_paths=[("models", manifest)])
    installed = data / "models" / "m4c.textvqa.defaults" / "m4c_tiny.pth"  # MMF's rule: the key as typed
    assert installed.is_file() and not (data / "models" / "m4c.textvqa").exists()
    point = start(data, manifest, "m4c.textvqa", tmp_path / "save")  # no mirror now: nothing may be fetched
    assert point.path == installed and point.model_only
    assert float(point.contents["model"]["w"][0]) == 1.0


def test_resume_zoo_fetches_when_the_installed_version_is_not_the_manifests(tmp_path, monkeypatch):
    manifest, mirror = model_zoo(tmp_path)
    data = tmp_path / "data"
    zoo.fetch("m4c.textvqa", data_dir=data, mirrors=[str(mirror)], zoo_paths=[manifest])
    assert zoo.place("m4c.textvqa", data, [manifest]).current
    manifest, mirror = model_zoo(tmp_path, version="2")  # the manifest moved on
    place = zoo.place("m4c.textvqa", data, [manifest])
    assert (place.installed, place.version, place.current) == ("1", "2", False)
    monkeypatch.setenv("MMF_ZOO_MIRRORS", str(mirror))
    point = start(data, manifest, "m4c.textvqa", tmp_path / "save")
    assert float(point.contents["model"]["w"][0]) == 2.0  # the new version's weights, fetched
    assert zoo.place("m4c.textvqa", data, [manifest]).installed == "2"


def test_resume_zoo_is_validated_against_env_model_zoo(tmp_path):
    manifest, _ = model_zoo(tmp_path)
    cfg = build_config(M4C + ["checkpoint.resume_zoo=m4c.textvqa.with_tiny", f"env.model_zoo={manifest}"],
                       environ={})
    assert cfg["checkpoint"]["resume_zoo"] == "m4c.textvqa.with_tiny"
    with pytest.raises(ConfigError, match="checkpoint.resume_zoo: no zoo entry is called 'm4c.textvqa.with_tiny'"):
        build_config(M4C + ["checkpoint.resume_zoo=m4c.textvqa.with_tiny"], environ={})


# ---- the processors' search lists
def test_fasttext_is_looked_for_in_mmfs_cache_dir_under_torch_home(tmp_path, monkeypatch):
    from mmfdata.processors import fasttext_candidates

    monkeypatch.delenv("MMF_CACHE_DIR", raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    found = fasttext_candidates("wiki.en.bin", "/d/datasets", "/d", "textvqa")
    assert str(tmp_path / "torch" / "mmf" / "wiki.en.bin") in found


def test_zoo_installs_in_the_search_lists_are_where_the_zoo_puts_them(tmp_path):
    from mmfdata.processors import bert_vocab_candidates, fasttext_candidates

    data = str(tmp_path / "data")
    assert os.path.join(data, "models", "bert-base-uncased", "vocab.txt") in \
        bert_vocab_candidates(None, data + "/datasets", data, "textvqa")
    found = fasttext_candidates("wiki.en.bin", data + "/datasets", data, "textvqa")
    for key in ("fasttext.defaults", "fasttext.wiki_en"):  # `mmf zoo fetch fasttext` -> fasttext.defaults
        assert os.path.join(data, "models", key, "wiki.en.bin") in found


def test_a_relative_vocab_file_is_looked_for_in_the_working_directory_first(tmp_path, monkeypatch):
    from mmfdata.processors import bert_vocab_candidates

    monkeypatch.chdir(tmp_path)
    found = bert_vocab_candidates("my_vocab.txt", "/d/datasets", "/d", "textvqa")
    assert found == [str(tmp_path / "my_vocab.txt"), "/d/datasets/my_vocab.txt"]


def test_mmfdata_errors_ask_the_zoo_layout_which_key_owns_a_path():
    from mmfdata.errors import repair_advice
    from zoo.layout import install_name, key_of_path

    for kind, key in (("datasets", "textvqa.ocr_en"), ("models", "m4c.textvqa.defaults")):
        path = f"/data/{kind}/{install_name(kind, key)}/features/x.lmdb"
        assert key_of_path(path) == key
    assert "mmf zoo verify --repair textvqa.ocr_en" in repair_advice("/data/datasets/textvqa/ocr_en/features/x.mdb")


def test_batch_size_per_device_under_torchrun_gives_the_global_batch(tmp_path):
    """The effective batch is computed where the config is built (torchrun's WORLD_SIZE), and what the run saves
    and trains with is that global batch: 4 per device x 2 processes."""
    import socket

    from mmfdata.synth import write_synthetic

    write_synthetic(str(tmp_path / "data"), questions=32, seed=2, val_questions=8, test_questions=8)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={port}",
                        "-m", "mmftrain.cli", "config=projects/m4c/configs/textvqa/tiny.yaml", "datasets=textvqa",
                        "model=m4c", "run_type=train", f"env.data_dir={tmp_path / 'data'}",
                        f"env.save_dir={tmp_path / 'save'}", "training.batch_size_per_device=4",
                        "training.max_updates=2", "training.warmup_iterations=1", "training.lr_steps=[]",
                        "training.log_interval=1", "model_config.m4c.mmt.num_hidden_layers=1",
                        "env.fetch_missing_data=false"], cwd=ROOT, capture_output=True, text=True, timeout=300,
                       env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)})
    assert r.returncode == 0, r.stderr[-3000:]
    saved = yaml.safe_load((tmp_path / "save" / "config.yaml").read_text())
    assert saved["training"]["batch_size"] == 8 and saved["training"]["batch_size_per_device"] == 4
