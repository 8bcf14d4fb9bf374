"""`mmf data` commands through real subprocesses, and the synthetic archives + manifest."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tarfile

import numpy as np
import yaml

from mmfdata import build_dataset, default_dataset_config
from mmfdata.synth import write_synthetic
from tests.data_helpers import batches_equal

MMF = [sys.executable, "-c", "from mmfzoo_cli.main import main; main()"]


def run(*args, env=None):
    return subprocess.run([*MMF, *args], capture_output=True, text=True, timeout=300, env=env)


def test_data_cli_does_not_import_torch_or_numpy():
    code = "import sys, mmfdata.cli; print('torch' in sys.modules, 'numpy' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.split() == ["False", "False"], out.stderr


def test_synth_then_pack_via_cli(tmp_path):
    data = str(tmp_path / "data")
    r = run("data", "synth", "--out", data, "--questions", "12", "--seed", "5")
    assert r.returncode == 0, r.stderr
    assert os.path.isfile(os.path.join(data, "datasets/textvqa/defaults/annotations/imdb_train_ocr_en.npy"))
    assert json.load(open(os.path.join(data, "datasets/textvqa/defaults/.built.json"))).keys() == {"created_at", "version"}
    r = run("data", "pack", "textvqa", "--data-dir", data, "--splits", "train,val")
    assert r.returncode == 0, r.stderr
    stores = r.stdout.split()
    assert [os.path.basename(s) for s in stores] == ["imdb_train_ocr_en", "imdb_val_ocr_en"]
    assert all(os.path.isfile(os.path.join(s, "index.json")) for s in stores)
    r = run("data", "pack", "textvqa", "--data-dir", data, "--splits", "train")
    assert r.returncode == 0 and "up to date" in r.stderr


def test_cli_errors_are_one_line_and_nonzero(tmp_path):
    r = run("data", "pack", "textvqa", "--splits", "bogus", "--data-dir", str(tmp_path))
    assert r.returncode == 1 and r.stderr.strip().startswith("error:") and "bogus" in r.stderr
    r = run("data", "pack", "textvqa", "--data-dir", str(tmp_path / "nothing"))
    assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1
    assert "mmf zoo fetch" in r.stderr
    r = run("data", "synth", "--out", str(tmp_path / "x"), "--questions", "0")
    assert r.returncode == 1 and "--questions" in r.stderr


def _install(manifest: dict, archive_root: str, data_dir: str) -> None:
    """Install the archives the way MMF's builder does: features/annotations into their folder, extras in place."""
    for name, variations in manifest.items():
        for variation, node in variations.items():
            for category, resources in node["resources"].items():
                for res in resources:
                    path = os.path.join(archive_root, res["url"][len("mmf://"):])
                    raw = open(path, "rb").read()
                    assert hashlib.sha256(raw).hexdigest() == res["hashcode"] and len(raw) == res["size"]
                    dest = os.path.join(data_dir, "datasets", name, variation)
                    dest = dest if category == "extras" else os.path.join(dest, category)
                    os.makedirs(dest, exist_ok=True)
                    with tarfile.open(path) as tar:
                        assert all(not m.name.startswith(("/", "..")) for m in tar.getmembers())
                        tar.extractall(dest, filter="data")
                    with open(os.path.join(dest, ".built.json"), "w") as f:
                        json.dump({"created_at": "now", "version": node["version"]}, f)


def test_archives_install_into_the_same_layout(tmp_path):
    res = write_synthetic(str(tmp_path / "arch"), questions=10, seed=9, archive=True)
    assert res["data_dir"] is None and not os.path.exists(tmp_path / "arch" / "datasets")
    manifest = yaml.safe_load(open(res["manifest"]))
    tv = manifest["textvqa"]
    assert set(tv) == {"defaults", "ocr_en"} and set(tv["defaults"]["resources"]) == {"features", "annotations", "extras"}
    assert tv["defaults"]["resources"]["features"][0]["url"] == "mmf://datasets/textvqa/defaults/features/features.tar.gz"
    assert tv["ocr_en"]["resources"]["features"][0]["file_name"] == "features.tar.gz"
    installed = str(tmp_path / "installed")
    _install(manifest, res["archive_root"], installed)
    direct = write_synthetic(str(tmp_path / "direct"), questions=10, seed=9)
    cfg = default_dataset_config("textvqa")
    idx = np.arange(6)
    # installed by hand, as MMF does: no zoo install record, so the user's explicit trust
    a = build_dataset("textvqa", cfg, "train", installed, trust_pickle=True).get_batch(idx)
    b = build_dataset("textvqa", cfg, "train", direct["data_dir"]).get_batch(idx)
    assert batches_equal(a, b) == []
    again = write_synthetic(str(tmp_path / "arch2"), questions=10, seed=9, archive=True)
    assert yaml.safe_load(open(again["manifest"])) == manifest  # reproducible archives, stable hashes
