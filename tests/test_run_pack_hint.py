"""The "packed store not used" warning prints the exact `mmf data pack` command for this run (its config file and
dataset_config overrides, its data dir); running that command makes the same run find its store fresh."""
import os
import re
import shlex
import subprocess
import sys

from tests.test_train_e2e import MICRO, TINY

OVERRIDE = "dataset_config.textvqa.processors.text_processor.params.max_seq_length=12"


def train(data, save):
    cmd = [sys.executable, "-m", "mmftrain.cli", f"config={TINY}", "datasets=textvqa", "model=m4c", "run_type=train",
           f"env.data_dir={data}", f"env.save_dir={save}", *MICRO, "training.max_updates=1", OVERRIDE]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)


def test_the_pack_hint_is_this_runs_command_and_it_works(tmp_path):
    from mmfdata.synth import write_synthetic

    data = tmp_path / "data"
    write_synthetic(str(data), questions=32, seed=1, val_questions=8, test_questions=8)
    first = train(data, tmp_path / "save1")
    assert first.returncode == 0, first.stderr[-3000:]
    hints = re.findall(r"textvqa/train: packed store not used .*Build it with `([^`]+)`", first.stderr)
    assert len(hints) == 1, first.stderr[-3000:]  # the fault (no store) fired
    hint = shlex.split(hints[0])
    assert hint[:3] == ["mmf", "data", "pack"] and "<" not in hints[0], hints[0]
    assert OVERRIDE in hint and "--config" in hint and str(data) in hint, hint

    packed = subprocess.run([sys.executable, "-m", "mmfzoo_cli", *hint[1:]], capture_output=True, text=True,
                            timeout=300, cwd=tmp_path)  # not the checkout: the config path must be absolute
    assert packed.returncode == 0, packed.stderr[-3000:]

    second = train(data, tmp_path / "save2")
    assert second.returncode == 0, second.stderr[-3000:]
    assert "textvqa/train: using packed store" in second.stderr, second.stderr[-3000:]
    assert "textvqa/train: packed store not used" not in second.stderr
