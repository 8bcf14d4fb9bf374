"""The trainer consumes what the zoo installs: missing zoo_requirements are fetched (MMF's behaviour), and a
missing dataset with no reachable mirror is one clear error."""
import json
import os
import subprocess
import sys

from tests.zoo_helpers import ROOT

MICRO = ["model_config.m4c.mmt.num_hidden_layers=1", "training.batch_size=8", "training.max_updates=3",
         "training.evaluation_interval=1000", "training.log_interval=1", "training.warmup_iterations=1",
         "training.lr_steps=[]"]


def _train(data_dir, save_dir, env):
    return subprocess.run([sys.executable, "-m", "mmftrain.cli", "config=projects/m4c/configs/textvqa/tiny.yaml",
                           "datasets=textvqa", "model=m4c", "run_type=train", f"env.data_dir={data_dir}",
                           f"env.save_dir={save_dir}", *MICRO], capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, "OMP_NUM_THREADS": "1", **env}, timeout=300)


def test_training_fetches_missing_zoo_requirements_through_a_mirror(tmp_path):
    from mmfdata.synth import write_synthetic
    from zoo.serve import FolderMirror

    synth = write_synthetic(str(tmp_path / "src"), questions=40, seed=1, archive=True)
    data = tmp_path / "data"
    with FolderMirror(synth["archive_root"]) as mirror:
        r = _train(data, tmp_path / "save", {"MMF_DATASET_ZOO": synth["manifest"], "MMF_ZOO_MIRRORS": mirror.url})
    assert r.returncode == 0, r.stderr[-3000:]
    assert "is not installed" in r.stdout + r.stderr
    for rel in ("datasets/textvqa/defaults/features", "datasets/textvqa/ocr_en/features"):
        assert json.loads((data / rel / ".built.json").read_text())["version"]


def test_missing_dataset_without_a_mirror_is_one_clear_error(tmp_path):
    from mmfdata.synth import write_synthetic

    synth = write_synthetic(str(tmp_path / "src"), questions=20, seed=1, archive=True)
    r = _train(tmp_path / "empty", tmp_path / "save", {"MMF_DATASET_ZOO": synth["manifest"]})
    assert r.returncode == 1
    assert "needs zoo data textvqa.defaults" in r.stderr and "Traceback" not in r.stderr
