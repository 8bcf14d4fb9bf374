"""End-to-end training on the synthetic TextVQA (mmfdata.synth) with the real trainer, in subprocesses.

Covers: exact resume after SIGKILL, SIGTERM -> checkpoint + clean exit, inference predictions on an answer-less
test split, a 2-process gloo (torchrun) evaluation equal to the 1-process one; a save dir holding another run
refused byte for byte, a damaged checkpoint detected and an intact one resumed, evaluation without weights refused,
and the logging/output config keys acting (train.log, TensorBoard, report dir, ...).
"""
import json
import re
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


@pytest.mark.slow  # ~19 s; test_cluster_preempt checks a resume batch for batch in the default run
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
    assert "resumed from" in resumed.stderr and "at update 8" in resumed.stderr
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
    assert "Traceback" not in err and "SIGTERM received" in err
    ckpt = torch.load(tmp_path / "current.ckpt", weights_only=True)
    assert 3 <= ckpt["num_updates"] < 500
    assert ckpt["num_updates"] == max(train_records(tmp_path))
    assert {"model", "optimizer", "lr_scheduler", "fp16_scaler", "rng", "sampler", "config"} <= set(ckpt)
    assert not list(tmp_path.glob(".*.tmp"))  # no temp file left behind


def test_checkpoint_write_failing_mid_run_stops_it_promptly_and_resume_works(data_dir, tmp_path):
    """A full disk under the background checkpoint writer (RLIMIT_FSIZE set on the running process, so writes
    fail with EFBIG as they would with ENOSPC): the run stops within a few updates with one error line, the
    previous checkpoint stays intact and listed, and the run resumes from it once there is room again."""
    import resource

    import torch

    steps = ["training.max_updates=400", "training.checkpoint_interval=8"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(train_cmd(data_dir, tmp_path, *steps), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)
    first = tmp_path / "models" / "model_8.ckpt"
    deadline = time.time() + 180
    while not (first.exists() and (tmp_path / "current.ckpt").exists()) and proc.poll() is None:
        assert time.time() < deadline, "no first checkpoint"
        time.sleep(0.01)
    size = first.stat().st_size
    resource.prlimit(proc.pid, resource.RLIMIT_FSIZE, (size // 2, size // 2))  # the "disk" fills up now
    out, err = proc.communicate(timeout=180)
    assert proc.returncode == 1, err[-2000:]
    line = one_line(err)
    assert "writing checkpoint" in line and "File too large" in line, err  # fired
    assert "checkpoint.resume=true" in line
    # noticed at once: the next save (update 24) or the end (400) would have been far later
    assert 16 <= max(train_records(tmp_path)) < 24
    saved = torch.load(tmp_path / "current.ckpt", weights_only=True)
    assert saved["num_updates"] == 8 and saved["periodic_checkpoints"] == ["models/model_8.ckpt"]
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == ["model_8.ckpt"]
    assert not list(tmp_path.rglob(".*.tmp"))

    resumed = run(train_cmd(data_dir, tmp_path, "training.max_updates=24", "training.checkpoint_interval=8",
                            "checkpoint.resume=true"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "at update 8" in resumed.stderr
    assert sorted(train_records(tmp_path)) == list(range(1, 25))


def test_resume_accepts_compute_only_model_keys_and_older_checkpoints_but_not_another_model(data_dir, tmp_path):
    """checkpoint.resume=true refuses another model, but not a change of how the same model computes
    (incremental decoding, the trimmed last layer), nor a checkpoint written before those keys existed."""
    import torch

    first = run(train_cmd(data_dir, tmp_path, "training.max_updates=8", "training.checkpoint_interval=8"))
    assert first.returncode == 0, first.stderr[-3000:]
    other = run(train_cmd(data_dir, tmp_path, "training.max_updates=12", "checkpoint.resume=true",
                          "model_config.m4c.mmt.num_hidden_layers=2"))
    assert other.returncode == 1 and "different model or data (model_config.m4c.mmt.num_hidden_layers" in \
        other.stderr, other.stderr[-2000:]

    # a checkpoint of a version without the compute-only keys (its config simply lacks them)
    ckpt = torch.load(tmp_path / "current.ckpt", weights_only=True)
    for key in ("incremental_decoding", "trim_last_layer"):
        del ckpt["config"]["model_config"]["m4c"][key]
    torch.save(ckpt, tmp_path / "current.ckpt")
    resumed = run(train_cmd(data_dir, tmp_path, "training.max_updates=12", "checkpoint.resume=true",
                            "model_config.m4c.incremental_decoding=false"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "at update 8" in resumed.stderr and "model_config.m4c.trim_last_layer" in resumed.stderr
    assert max(train_records(tmp_path)) == 12


def test_a_second_run_in_a_save_dir_in_use_is_refused_and_the_first_goes_on(data_dir, tmp_path):
    """Two `mmf train` in one save dir (a requeued job while the first still runs) would interleave checkpoints
    and logs: the second is refused at once, naming the first; once the first is SIGKILLed, the lock is gone."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    first = subprocess.Popen(train_cmd(data_dir, tmp_path, "training.max_updates=500",
                                       "training.checkpoint_interval=4"),
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    try:
        wait_for_update(tmp_path, first, 5)
        second = run(train_cmd(data_dir, tmp_path, "training.max_updates=500", "checkpoint.resume=true"))
        assert second.returncode == 1 and "Traceback" not in second.stderr, second.stderr[-2000:]
        assert second.stderr.strip().splitlines() == [line for line in second.stderr.strip().splitlines()
                                                      if line.startswith("error: env.save_dir=")]
        assert f"is locked by pid {first.pid} " in second.stderr and "wait for it to finish" in second.stderr
        assert second.stderr.strip().endswith("or choose another env.save_dir")
        reached = max(train_records(tmp_path))
        wait_for_update(tmp_path, first, reached + 3)  # the first run goes on, alone
        assert first.poll() is None
    finally:
        first.kill()
        first.wait(timeout=30)
    resumed = run(train_cmd(data_dir, tmp_path, "training.max_updates=12", "training.checkpoint_interval=4",
                            "checkpoint.resume=true"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stderr


def test_a_save_dir_that_cannot_be_locked_trains_with_a_warning(data_dir, tmp_path):
    """Where the lock cannot be taken (here its file is a folder; on some NFS mounts flock fails) training goes
    on unprotected, and says so."""
    from mmftrain.run import SAVE_DIR_LOCK

    (tmp_path / SAVE_DIR_LOCK).mkdir(parents=True)
    r = run(train_cmd(data_dir, tmp_path, "training.max_updates=2"))
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"could not lock env.save_dir={tmp_path}" in r.stdout + r.stderr
    assert max(train_records(tmp_path)) == 2


def test_checkpoints_that_will_not_fit_on_the_disk_are_warned_about_at_the_start(data_dir, tmp_path):
    """checkpoint.max_to_keep=-1 (MMF's default: keep all) with many checkpoints ahead: the run says at once how
    much its checkpoints will need against the free space, and which max_to_keep would fit."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(train_cmd(data_dir, tmp_path, "training.max_updates=1000000000000",
                                      "training.checkpoint_interval=1000", "checkpoint.max_to_keep=-1"),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    wait_for_update(tmp_path, proc, 1)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    line = next((x for x in out.splitlines() if "checkpoints: this run will write" in x), None)
    assert line is not None, out[-2000:]
    assert "1000000000 more periodic checkpoints" in line and "checkpoint.max_to_keep=-1 keeps 1000000000" in line
    assert re.search(r"set checkpoint.max_to_keep=\d+ or raise training.checkpoint_interval", line), line

    quiet = run(train_cmd(data_dir, tmp_path / "fits", "training.max_updates=4", "training.checkpoint_interval=2",
                          "checkpoint.max_to_keep=-1"))
    assert quiet.returncode == 0 and "checkpoints: this run will write" not in quiet.stdout + quiet.stderr


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


@pytest.mark.slow  # ~15 s; test_train_resize compares 2 and 1 processes in the default run
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


def _descendants(pid: int) -> list[int]:
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        kids = parents.get(todo.pop(), [])
        found += kids
        todo += kids
    return found


def test_two_process_run_stops_together_when_rank0_cannot_write_a_checkpoint(data_dir, tmp_path):
    """A full disk under rank 0's checkpoint writer: both ranks stop (no rank left waiting in a collective),
    with rank 0's error, and the first checkpoint stays intact."""
    import resource

    import torch

    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                             f"--master_port={free_port()}",
                             *train_cmd(data_dir, tmp_path, "training.max_updates=400",
                                        "training.checkpoint_interval=4")[1:]],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    first = tmp_path / "models" / "model_4.ckpt"
    deadline = time.time() + 180
    while not first.exists() and proc.poll() is None:
        assert time.time() < deadline, "no first checkpoint"
        time.sleep(0.01)
    size = first.stat().st_size
    ranks = _descendants(proc.pid)
    for pid in ranks:
        resource.prlimit(pid, resource.RLIMIT_FSIZE, (size // 2, size // 2))
    out, err = proc.communicate(timeout=180)  # a rank left waiting would hang here
    assert proc.returncode != 0 and len(ranks) >= 2
    assert "writing checkpoint" in err and "File too large" in err, err[-3000:]  # the fault fired, on rank 0
    assert "error: rank 0 could not write a checkpoint" in err  # rank 1 stopped by the check, not by a dead peer
    assert max(train_records(tmp_path)) < 400
    assert torch.load(tmp_path / "current.ckpt", weights_only=True)["num_updates"] == 4


def files_of(folder) -> dict:
    """{relative path: bytes} of every file under `folder`, but the save-dir lock (its holder note names the
    last process that held it)."""
    from mmftrain.run import SAVE_DIR_LOCK

    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(Path(folder).rglob("*"))
            if p.is_file() and not p.name.startswith(SAVE_DIR_LOCK)}


def one_line(stderr: str) -> str:
    """The failure's one error line: the only `error:` line, the last on stderr, no traceback (the log lines the run
    wrote before it failed share stderr, zoo.logfmt)."""
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1 and lines[-1] == errors[0] and "Traceback" not in stderr, stderr[-3000:]
    return errors[0]


def test_reused_save_dir_is_refused_and_the_old_run_stays_intact(data_dir, tmp_path):
    steps = ["training.max_updates=4", "training.checkpoint_interval=2"]
    first = run(train_cmd(data_dir, tmp_path, *steps))
    assert first.returncode == 0, first.stderr[-3000:]
    before = files_of(tmp_path)
    assert {"config.yaml", "current.ckpt", "models/model_2.ckpt", "models/model_4.ckpt", "metrics.jsonl"} <= set(before)

    again = run(train_cmd(data_dir, tmp_path, *steps))  # a new run, same folder, no resume
    assert again.returncode == 1
    line = one_line(again.stderr)
    assert "holds another run" in line and "checkpoint.resume=true" in line and "env.save_dir=" in line
    assert files_of(tmp_path) == before  # byte for byte, train.log included, and nothing added

    # a resume that would change the model: refused, config.yaml and checkpoints untouched; the error is in train.log
    changed = run(train_cmd(data_dir, tmp_path, "training.max_updates=6", "checkpoint.resume=true",
                            "model_config.m4c.mmt.num_hidden_layers=2"))
    assert changed.returncode == 1
    assert "different model" in one_line(changed.stderr) and "model_config.m4c.mmt.num_hidden_layers" in changed.stderr
    after = files_of(tmp_path)
    log_text = after.pop("train.log").decode()
    assert after == {k: v for k, v in before.items() if k != "train.log"}
    assert "error: checkpoint.resume=true would continue" in log_text and "Traceback" in log_text

    # the explicit overwrite on bad data: fails before touching the old run
    bad = run(train_cmd(data_dir, tmp_path, "env.overwrite_save_dir=true", *steps) + [f"env.data_dir={tmp_path}/nope"])
    assert bad.returncode == 1 and "cannot build dataset" in one_line(bad.stderr)
    after = files_of(tmp_path)
    log_text = after.pop("train.log").decode()
    assert after == {k: v for k, v in before.items() if k != "train.log"}
    assert f"data_dir={tmp_path}/nope" in log_text and "cannot build dataset" in log_text and "Traceback" in log_text

    # ... and on good data: the old run's files are replaced by the new run's
    new = run(train_cmd(data_dir, tmp_path, "env.overwrite_save_dir=true", "training.max_updates=3",
                        "training.checkpoint_interval=3"))
    assert new.returncode == 0, new.stderr[-3000:]
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == ["model_3.ckpt"]
    assert max(train_records(tmp_path)) == 3 and "max_updates: 3" in (tmp_path / "config.yaml").read_text()


def test_damaged_current_checkpoint_is_detected_and_an_intact_one_resumed(data_dir, tmp_path):
    import torch

    from mmftrain.checkpoint import verify
    from tests.test_checkpoint import flip_inside_largest_member

    first = run(train_cmd(data_dir, tmp_path, "training.max_updates=6", "training.checkpoint_interval=3"))
    assert first.returncode == 0, first.stderr[-3000:]
    assert torch.load(tmp_path / "best.ckpt", weights_only=True)["num_updates"] == 6
    loss_before = train_records(tmp_path)[6]["train/total_loss"]
    flip_inside_largest_member(tmp_path / "current.ckpt")
    damaged = (tmp_path / "current.ckpt").read_bytes()
    assert verify(tmp_path / "current.ckpt")  # the fault is in place

    resumed = run(train_cmd(data_dir, tmp_path, "training.max_updates=9", "training.checkpoint_interval=3",
                            "checkpoint.resume=true"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    out = resumed.stderr
    warning = next(line for line in out.splitlines() if "is damaged" in line)
    assert "current.ckpt" in warning and "best.ckpt" in warning and "kept as" in warning
    assert "resumed from" in out and "at update 6" in out and "trust_pickle" not in out + resumed.stderr
    kept = list(tmp_path.glob("current.ckpt.damaged-*"))
    assert len(kept) == 1 and kept[0].read_bytes() == damaged  # the evidence, untouched
    state = torch.load(tmp_path / "current.ckpt", weights_only=True)
    assert state["num_updates"] == 9 and verify(tmp_path / "current.ckpt") is None
    for slot in state["optimizer"]["state"].values():  # sane values, not a corrupted 1e16
        assert torch.isfinite(slot["exp_avg"]).all() and slot["exp_avg"].abs().max() < 1e3
    losses = [r["train/total_loss"] for u, r in train_records(tmp_path).items() if u > 6]
    assert len(losses) == 3 and all(0 < v < 1.5 * loss_before for v in losses)  # continues, no blow-up


def test_fallback_resumes_the_newest_intact_checkpoint_and_never_overwrites_later_ones(data_dir, tmp_path):
    """current.ckpt damaged, best.ckpt from an early update, intact periodic files after it: the run resumes from
    the newest intact periodic file, not from best; with checkpoint.resume_best=true (the user's choice) it
    starts from best and the later checkpoints are moved aside, byte for byte, instead of being overwritten."""
    import shutil

    import torch

    from mmftrain.checkpoint import verify
    from tests.test_checkpoint import flip_inside_largest_member

    base = tmp_path / "base"
    first = run(train_cmd(data_dir, base, "training.max_updates=8", "training.checkpoint_interval=2",
                          "checkpoint.max_to_keep=-1"))
    assert first.returncode == 0, first.stderr[-3000:]
    models = base / "models"
    assert sorted(p.name for p in models.iterdir()) == [f"model_{u}.ckpt" for u in (2, 4, 6, 8)]
    shutil.copyfile(models / "model_2.ckpt", base / "best.ckpt")  # the metric peaked early: best is update 2
    flip_inside_largest_member(base / "current.ckpt")
    assert verify(base / "current.ckpt")  # the fault is in place
    saved = {p.name: p.read_bytes() for p in models.iterdir()}

    fallback = tmp_path / "fallback"
    shutil.copytree(base, fallback)
    resumed = run(train_cmd(data_dir, fallback, "training.max_updates=10", "training.checkpoint_interval=2",
                            "checkpoint.max_to_keep=-1",
                            "checkpoint.resume=true"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    out = resumed.stderr
    warning = next(line for line in out.splitlines() if "is damaged" in line)
    assert "current.ckpt" in warning and "model_8.ckpt" in warning and "kept as" in warning, warning
    assert re.search(r"resumed from \S*model_8\.ckpt at update 8", out), out[-3000:]
    assert min(u for u in train_records(fallback) if u > 8) == 9  # training went on from 8 (records 1-8 kept)
    for name, data in saved.items():  # the newer intact files than best.ckpt are untouched
        assert (fallback / "models" / name).read_bytes() == data, name
    assert torch.load(fallback / "current.ckpt", weights_only=True)["num_updates"] == 10
    assert not list(fallback.glob("superseded-*"))  # nothing was ahead of model_8

    chosen = tmp_path / "best"
    shutil.copytree(base, chosen)
    (chosen / "current.ckpt").write_bytes((models / "model_8.ckpt").read_bytes())  # intact current at 8 this time
    resumed = run(train_cmd(data_dir, chosen, "training.max_updates=6", "training.checkpoint_interval=2",
                            "checkpoint.resume=true", "checkpoint.resume_best=true", "checkpoint.max_to_keep=-1"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    out = resumed.stderr
    assert re.search(r"resumed from \S*best\.ckpt at update 2", out), out[-3000:]
    warning = next(line for line in out.splitlines() if "would be overwritten" in line)
    assert all(name in warning for name in ("current.ckpt", "model_4.ckpt", "model_6.ckpt", "model_8.ckpt"))
    [aside] = chosen.glob("superseded-*")
    assert (aside / "current.ckpt").read_bytes() == (models / "model_8.ckpt").read_bytes()
    for u in (4, 6, 8):  # the old trajectory's checkpoints, byte for byte
        assert (aside / "models" / f"model_{u}.ckpt").read_bytes() == saved[f"model_{u}.ckpt"]
    assert max(r["num_updates"] for r in read_metrics(aside)) >= 8  # the old trajectory's records too
    assert (chosen / "models" / "model_2.ckpt").read_bytes() == saved["model_2.ckpt"]
    assert (chosen / "models" / "model_4.ckpt").read_bytes() != saved["model_4.ckpt"]  # the new trajectory's
    assert torch.load(chosen / "current.ckpt", weights_only=True)["num_updates"] == 6


def test_an_output_dir_that_cannot_be_a_folder_is_one_error_line_before_training(data_dir, tmp_path):
    """save dir, report dir (written only after training) or log dir under a file: refused up front."""
    afile = tmp_path / "afile"
    afile.write_text("mine")
    cases = (("save_dir", afile, "is a file, not a folder"), ("save_dir", afile / "run" / "1",
             f"is under {afile}, which is a file"), ("report_dir", afile, "is a file, not a folder"),
             ("log_dir", afile / "logs", f"is under {afile}, which is a file"))
    for key, path, says in cases:
        save = path if key == "save_dir" else tmp_path / "save"
        r = run(train_cmd(data_dir, save, "training.max_updates=2", f"env.{key}={path}", run_type="train_val"))
        assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr[-2000:]
        assert r.stderr.strip().splitlines() == [f"error: env.{key}={path} {says}; choose another env.{key}"]
        assert not (tmp_path / "save").exists()  # refused before anything was written
    assert afile.read_text() == "mine"


def test_evaluation_without_weights_is_refused(data_dir, tmp_path):
    r = run(train_cmd(data_dir, tmp_path, run_type="inference"))
    assert r.returncode == 1
    line = one_line(r.stderr)
    assert "no weights were given" in line and "checkpoint.allow_random_init=true" in line
    assert not (tmp_path / "config.yaml").exists() and not (tmp_path / "reports").exists()

    ok = run(train_cmd(data_dir, tmp_path, "checkpoint.allow_random_init=true", "training.logger_level=warning",
                       run_type="inference"))
    assert ok.returncode == 0, ok.stderr[-3000:]
    assert "predictions written" not in ok.stderr  # logger_level=warning hides info lines
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert len(json.loads(Path(summary["reports"]["test/textvqa"]).read_text())) == 21


def test_logging_and_output_keys_act(data_dir, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    save, logs, reports = tmp_path / "save", tmp_path / "logs", tmp_path / "reports"
    r = run(train_cmd(data_dir, save, "training.max_updates=2", "training.checkpoint_interval=2",
                      "training.tensorboard=true", "training.detect_anomaly=true", "training.log_detailed_config=true",
                      f"env.log_dir={logs}", f"env.report_dir={reports}", "evaluation.predict=false",
                      "training.batch_size_per_device=4", "checkpoint.background_write=false",
                      "evaluation.use_cpu=true", run_type="train_val_test"))
    assert r.returncode == 0, r.stderr[-3000:]
    log_text = (logs / "train.log").read_text()
    assert not (save / "train.log").exists()
    assert r.stderr.strip().splitlines()[-1] in log_text  # the console's lines are in train.log
    assert "Anomaly Detection has been enabled" in log_text  # detect_anomaly, and Python warnings reach train.log
    assert "config:\n" in log_text and f"data_dir={data_dir}" in log_text
    assert re.search(r"lr: \d\.\d{3}e-0\d", log_text)  # warm-up learning rate readable, not 0.0000
    summary = json.loads((save / "summary.json").read_text())
    assert list(summary["reports"]) == ["test/textvqa"]  # predict=false: no val prediction file
    assert Path(summary["reports"]["test/textvqa"]).parent == reports
    assert "batch_size: 4\n" in (save / "config.yaml").read_text()  # 4 per device x 1 process
    events = EventAccumulator(str(save / "tensorboard"))
    events.Reload()
    assert [e.step for e in events.Scalars("train/total_loss")] == [1, 2]
    assert "val/textvqa/textvqa_accuracy" in events.Tags()["scalars"]
    import torch

    assert len(torch.load(save / "current.ckpt", weights_only=True)["git/commit"]) == 40
