"""End-to-end training on the synthetic TextVQA (mmfdata.synth) with the real trainer, in subprocesses.

Covers: exact resume after SIGKILL, SIGTERM -> checkpoint + clean exit, inference predictions on an answer-less
test split, and a 2-process gloo (torchrun) evaluation equal to the 1-process one.
"""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mmftrain.logs import read_metrics

TINY = "projects/m4c/configs/textvqa/tiny.yaml"
# A smaller model than tiny.yaml so each subprocess run takes seconds on 2 shared cores.
MICRO = ["model_config.m4c.mmt.num_hidden_layers=1", "training.batch_size=8",
         "training.evaluation_interval=1000", "evaluation.batch_size=40", "training.warmup_iterations=5",
         "training.lr_steps=[]", "training.log_interval=1",
         "env.fetch_missing_data=false"]  # synthetic data written directly, not installed by the zoo


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    from mmfdata.build import pack_dataset
    from mmfdata.configs import default_dataset_config
    from mmfdata.synth import write_synthetic

    out = tmp_path_factory.mktemp("synth")
    write_synthetic(str(out), questions=96, seed=3, val_questions=37, test_questions=21)
    pack_dataset("textvqa", default_dataset_config("textvqa"), str(out))
    return out


def train_cmd(data_dir, save_dir, *extra, run_type="train"):
    return [sys.executable, "-m", "mmftrain.cli", f"config={TINY}", "datasets=textvqa", "model=m4c",
            f"run_type={run_type}", f"env.data_dir={data_dir}", f"env.save_dir={save_dir}", *MICRO, *extra]


def run(cmd, timeout=240, **kw):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, **kw)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train_records(save_dir):
    return {r["num_updates"]: r for r in read_metrics(save_dir) if "train/total_loss" in r}


def wait_for_update(save_dir, proc, update, timeout=180):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if (Path(save_dir) / "metrics.jsonl").exists() and max(train_records(save_dir), default=0) >= update:
            return
        if proc.poll() is not None:
            raise AssertionError(f"training exited early: {proc.stderr.read()[-2000:]}")
        time.sleep(0.05)
    raise AssertionError("training did not reach the update in time")


def test_sigkill_then_resume_equals_uninterrupted_run(data_dir, tmp_path):
    steps = ["training.max_updates=24", "training.checkpoint_interval=8"]
    ref = run(train_cmd(data_dir, tmp_path / "ref", *steps))
    assert ref.returncode == 0, ref.stderr[-3000:]
    reference = train_records(tmp_path / "ref")
    assert sorted(reference) == list(range(1, 25))

    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(train_cmd(data_dir, tmp_path / "cut", *steps), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, env=env)
    wait_for_update(tmp_path / "cut", proc, 13)  # past the checkpoint at 8, before the one at 16
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert max(train_records(tmp_path / "cut")) < 24  # really cut short
    resumed = run(train_cmd(data_dir, tmp_path / "cut", *steps, "checkpoint.resume=true"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stdout and "at update 8" in resumed.stdout
    got = train_records(tmp_path / "cut")
    assert sorted(got) == list(range(1, 25))  # lines after the checkpoint were replaced, not duplicated
    for u in range(1, 25):
        assert got[u]["batch_qid_sum"] == reference[u]["batch_qid_sum"], f"update {u}: different batch"
        assert got[u]["train/total_loss"] == pytest.approx(reference[u]["train/total_loss"], rel=1e-5, abs=1e-6)
        assert got[u]["lr"] == pytest.approx(reference[u]["lr"])


def test_sigterm_saves_checkpoint_and_exits_cleanly(data_dir, tmp_path):
    import torch

    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(train_cmd(data_dir, tmp_path, "training.max_updates=500",
                                      "training.checkpoint_interval=1000"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    wait_for_update(tmp_path, proc, 3)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err[-2000:]
    assert "Traceback" not in err and "SIGTERM received" in out
    ckpt = torch.load(tmp_path / "current.ckpt", weights_only=True)
    assert 3 <= ckpt["num_updates"] < 500
    assert ckpt["num_updates"] == max(train_records(tmp_path))
    assert {"model", "optimizer", "lr_scheduler", "fp16_scaler", "rng", "sampler", "config"} <= set(ckpt)
    assert not list(tmp_path.glob(".*.tmp"))  # no temp file left behind


def test_val_and_inference_write_complete_prediction_files(data_dir, tmp_path):
    r = run(train_cmd(data_dir, tmp_path, "training.max_updates=4", "training.checkpoint_interval=4",
                      run_type="train_val"))
    assert r.returncode == 0, r.stderr[-3000:]
    for f in ["config.yaml", "current.ckpt", "best.ckpt", "m4c_final.pth", "metrics.jsonl", "train.log",
              "summary.json", "models/model_4.ckpt"]:
        assert (tmp_path / f).exists(), f
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["metrics"]["val/textvqa/num_questions"] == 37
    val_preds = json.loads(Path(summary["reports"]["val/textvqa"]).read_text())
    assert len(val_preds) == 37 and len({p["question_id"] for p in val_preds}) == 37
    assert set(val_preds[0]) == {"question_id", "image_id", "answer", "pred_source"}

    r = run(train_cmd(data_dir, tmp_path / "inf", f"checkpoint.resume_file={tmp_path / 'current.ckpt'}",
                      run_type="inference"))
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.loads((tmp_path / "inf" / "summary.json").read_text())
    preds = json.loads(Path(summary["reports"]["test/textvqa"]).read_text())
    assert len({p["question_id"] for p in preds}) == len(preds) == 21  # every test question, no answers needed
    assert "test/textvqa/textvqa_accuracy" not in summary["metrics"]


def test_two_process_gloo_matches_one_process(data_dir, tmp_path):
    r = run(train_cmd(data_dir, tmp_path / "train", "training.max_updates=6", "training.checkpoint_interval=6"))
    assert r.returncode == 0, r.stderr[-3000:]
    ckpt = tmp_path / "train" / "current.ckpt"
    single = run(train_cmd(data_dir, tmp_path / "one", f"checkpoint.resume_file={ckpt}", "evaluation.batch_size=8",
                           run_type="val"))
    assert single.returncode == 0, single.stderr[-3000:]
    ddp = run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}",
               *train_cmd(data_dir, tmp_path / "two", f"checkpoint.resume_file={ckpt}", "evaluation.batch_size=8",
                          run_type="val")[1:]])
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    one = json.loads((tmp_path / "one" / "summary.json").read_text())
    two = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert two["world_size"] == 2
    key = "val/textvqa/textvqa_accuracy"
    assert two["metrics"][key] == pytest.approx(one["metrics"][key], abs=1e-9)
    assert two["metrics"]["val/textvqa/num_questions"] == 37  # 37 is odd: nothing dropped, nothing repeated
    p1 = {p["question_id"]: p["answer"] for p in json.loads(Path(one["reports"]["val/textvqa"]).read_text())}
    p2 = {p["question_id"]: p["answer"] for p in json.loads(Path(two["reports"]["val/textvqa"]).read_text())}
    assert p1 == p2


def test_two_process_gloo_training_runs(data_dir, tmp_path):
    r = run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}",
             *train_cmd(data_dir, tmp_path, "training.max_updates=4", "training.checkpoint_interval=2")[1:]])
    assert r.returncode == 0, r.stderr[-3000:]
    recs = train_records(tmp_path)
    assert sorted(recs) == [1, 2, 3, 4]
    assert (tmp_path / "train.log.rank1").exists()
    import torch

    ckpt = torch.load(tmp_path / "current.ckpt", weights_only=True)
    assert ckpt["world_size"] == 2 and len(ckpt["rng"]) == 2 and ckpt["num_updates"] == 4
