"""Reruns are never blocked: a start that fails its start-up checks writes nothing that makes the corrected (or
identical) command refuse the save dir as "holds another run"; a run that stopped before its first update is not
another run. Real `mmf train` subprocesses on synthetic data."""
import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.test_train_e2e import data_dir, files_of, train_cmd  # noqa: F401 (data_dir is a fixture)

STEPS = ["training.max_updates=2", "training.checkpoint_interval=2", "training.tensorboard=true"]


def run(cmd, extra_path: Path | None = None):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    if extra_path is not None:  # ahead of everything: its modules shadow the installed ones
        env["PYTHONPATH"] = os.pathsep.join([str(extra_path), env.get("PYTHONPATH", "")])
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)


@pytest.fixture
def no_tensorboard(tmp_path):
    """A folder whose `tensorboard` package raises ImportError, as on an install without the extra."""
    shim = tmp_path / "shim" / "tensorboard"
    shim.mkdir(parents=True)
    (shim / "__init__.py").write_text("raise ImportError('tensorboard hidden by the test')\n")
    return shim.parent


def test_a_start_without_tensorboard_fails_clearly_and_the_identical_rerun_trains(data_dir, tmp_path,  # noqa: F811
                                                                                 no_tensorboard):
    save = tmp_path / "save"
    cmd = train_cmd(data_dir, save, *STEPS)
    failed = run(cmd, extra_path=no_tensorboard)
    assert failed.returncode == 1, failed.stderr[-3000:]
    error = failed.stderr.strip().splitlines()[-1]
    assert error.startswith("error: training.tensorboard=true needs the tensorboard package") and \
        "[tensorboard]" in error, failed.stderr[-3000:]  # the fault fired, and the line names the extra
    # nothing of the run in the save dir: no config.yaml, no metrics.jsonl, no TensorBoard folder
    assert set(files_of(save)) <= {"train.log"}, sorted(files_of(save))

    again = run(cmd)  # the same command, tensorboard installed
    assert again.returncode == 0, again.stderr[-3000:]
    assert (save / "current.ckpt").is_file() and list((save / "tensorboard").iterdir())


def test_a_run_that_stopped_before_its_first_update_does_not_block_the_rerun(data_dir, tmp_path):  # noqa: F811
    save = tmp_path / "save"
    save.mkdir()
    # what a start that failed after accepting its config left (an older version, or a crash before update 1)
    (save / "config.yaml").write_text("run_type: train\n")
    (save / "metrics.jsonl").write_text("")
    (save / "tensorboard").mkdir()
    r = run(train_cmd(data_dir, save, *STEPS))
    assert r.returncode == 0, r.stderr[-3000:]
    assert "stopped before its first update" in r.stdout + r.stderr
    assert "max_updates: 2" in (save / "config.yaml").read_text()
    records = [json.loads(line) for line in (save / "metrics.jsonl").read_text().splitlines()]
    assert max(rec["num_updates"] for rec in records) == 2


def test_a_run_with_a_logged_update_still_holds_its_save_dir(data_dir, tmp_path):  # noqa: F811
    save = tmp_path / "save"
    save.mkdir()
    (save / "config.yaml").write_text("run_type: train\n")
    (save / "metrics.jsonl").write_text(json.dumps({"num_updates": 1, "train/total_loss": 0.5}) + "\n")
    before = files_of(save)
    r = run(train_cmd(data_dir, save, *STEPS))
    assert r.returncode == 1 and "holds another run" in r.stderr
    assert files_of(save) == before


def test_a_linked_metrics_file_counts_as_a_run_and_is_left_alone(data_dir, tmp_path):  # noqa: F811
    save, elsewhere = tmp_path / "save", tmp_path / "elsewhere.jsonl"
    save.mkdir()
    elsewhere.write_text("")
    (save / "config.yaml").write_text("run_type: train\n")
    (save / "metrics.jsonl").symlink_to(elsewhere)
    r = run(train_cmd(data_dir, save, *STEPS))
    assert r.returncode == 1 and "holds another run" in r.stderr
    assert (save / "metrics.jsonl").is_symlink() and elsewhere.read_text() == ""
