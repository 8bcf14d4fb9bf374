"""Preemption-safe `mmf train` (issue 20): SIGUSR1 and SIGTERM to a real run finish the update, put current.ckpt of
that update on disk and exit 128 + the signal; the identical command (the cluster recipe: checkpoint.resume=true)
resumes and ends as the uninterrupted run does, batch for batch. training.requeue=true inside a SLURM job
(SLURM_JOB_ID; `scontrol` is a stand-in script first on PATH) requeues the job on SIGUSR1 once the checkpoint is on
disk, never on SIGTERM, and says so clearly when scontrol fails. A restarted command waits for the save dir's
lock its dying predecessor may still hold; one without checkpoint.resume=true is refused, saying why.
"""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.test_cluster_launch import clean_env, fake_scontrol
from tests.test_train_e2e import data_dir, train_cmd, train_records, wait_for_update  # noqa: F401 (a fixture)

STEPS = ["training.max_updates=12", "training.checkpoint_interval=1000"]
RECIPE = [*STEPS, "checkpoint.resume=true"]


@pytest.fixture(scope="module")
def reference(data_dir, tmp_path_factory):  # noqa: F811
    """The uninterrupted run's per-update records."""
    save = tmp_path_factory.mktemp("reference")
    r = subprocess.run(train_cmd(data_dir, save, *STEPS), capture_output=True, text=True, timeout=240,
                       env=clean_env())
    assert r.returncode == 0, r.stderr[-3000:]
    return train_records(save)


def stop_with(sig, cmd, save, env, after=3):
    """Start `cmd`, send `sig` once update `after` is logged; returns (exit code, stderr, seconds signal->exit)."""
    with open(save.parent / f"{save.name}.err", "w+") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, text=True, env=env)
        try:
            wait_for_update(save, proc, after)
            sent = time.monotonic()
            proc.send_signal(sig)
            code = proc.wait(timeout=120)
            took = time.monotonic() - sent
        finally:
            proc.kill() if proc.poll() is None else None
        err.seek(0)
        return code, err.read(), took


@pytest.mark.parametrize("sig, code", [(signal.SIGUSR1, 138),
                                       pytest.param(signal.SIGTERM, 143, marks=pytest.mark.slow)])  # the same path
def test_a_signal_checkpoints_the_update_and_the_same_command_resumes_it(data_dir, reference, tmp_path, sig, code):
    import torch

    save = tmp_path / "save"
    cmd = train_cmd(data_dir, save, *RECIPE)
    got, err, took = stop_with(sig, cmd, save, clean_env())
    assert got == code, err[-3000:]
    stop = torch.load(save / "current.ckpt", weights_only=True)["num_updates"]
    assert stop == max(train_records(save)) and 3 <= stop < 12  # the checkpoint is of the update it stopped at
    assert f"{sig.name} received: saved {save / 'current.ckpt'} at update {stop}" in err and "Traceback" not in err
    print(f"{sig.name}: exit {got} {took:.2f} s after the signal, at update {stop}")

    # restarted by its launcher without the recipe's checkpoint.resume=true: refused, saying why
    bare = subprocess.run(train_cmd(data_dir, save, *STEPS), capture_output=True, text=True, timeout=120,
                          env=clean_env(SLURM_JOB_ID="31337", SLURM_RESTART_COUNT="2"))
    assert bare.returncode == 1 and f"error: env.save_dir={save} holds another run (" in bare.stderr
    assert ("(this command was restarted 2 time(s) by its launcher: a command that a cluster may requeue or restart "
            "must carry checkpoint.resume=true); continue it with checkpoint.resume=true") in bare.stderr

    again = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=clean_env())
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"at update {stop} " in again.stderr and "resumed from" in again.stderr
    records = train_records(save)
    assert sorted(records) == sorted(reference) == list(range(1, 13))
    for update, record in records.items():  # the same batches and losses as without the stop
        assert record["batch_qid_sum"] == reference[update]["batch_qid_sum"], update
        assert record["train/total_loss"] == pytest.approx(reference[update]["train/total_loss"], rel=1e-5, abs=1e-6)
    assert json.loads((save / "summary.json").read_text())["train"]["num_updates"] == 12


SCONTROL = '''#!/bin/sh
# a stand-in for SLURM's scontrol: records its arguments and the checkpoint on disk when it is called
echo "$@" >> "{record}"
cp "{save}/current.ckpt" "{record}.ckpt"
{fail}
'''


@pytest.mark.parametrize("sig, fails", [(signal.SIGUSR1, False), (signal.SIGUSR1, True), (signal.SIGTERM, False)])
def test_training_requeue_requeues_the_slurm_job_after_its_checkpoint(data_dir, tmp_path, sig, fails):
    import torch

    save = tmp_path / "save"
    bin_dir, record = fake_scontrol(tmp_path)
    fail = 'echo "scontrol: error: Requeue of JobId=31337 not allowed" >&2; exit 1' if fails else "exit 0"
    (bin_dir / "scontrol").write_text(SCONTROL.format(record=record, save=save, fail=fail))
    env = clean_env(SLURM_JOB_ID="31337", PATH=f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")
    got, err, _ = stop_with(sig, train_cmd(data_dir, save, *RECIPE, "training.requeue=true"), save, env)
    assert got == 128 + sig.value, err[-3000:]  # the exit code does not depend on the requeue
    stop = torch.load(save / "current.ckpt", weights_only=True)["num_updates"]
    if sig == signal.SIGTERM:  # scancel's signal, and SLURM's own preemption: never a requeue
        assert not record.exists() and "requeued" not in err and "could not requeue" not in err
        return
    assert record.read_text() == "requeue 31337\n"
    # what scontrol found on disk when it was called: the complete checkpoint of the update the run stopped at
    assert torch.load(f"{record}.ckpt", weights_only=True)["num_updates"] == stop
    if fails:
        assert ("ERROR | mmftrain : training.requeue=true: could not requeue SLURM job 31337: scontrol requeue 31337 "
                "exited with 1: scontrol: error: Requeue of JobId=31337 not allowed; submit the same command again to "
                f"continue from update {stop} (its checkpoint is on disk)") in err, err[-3000:]
    else:
        assert f"requeued SLURM job 31337 (scontrol requeue); it continues from update {stop}" in err


def stop_while_loading(sig, cmd, err_path, env):
    """Start `cmd` and deliver `sig` while it builds its data and model: the run logs its run_type line just before
    that; it is frozen there (SIGSTOP), `sig` is queued and delivered on SIGCONT. Returns (exit code, stderr)."""
    with open(err_path, "w+") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, text=True, env=env)
        try:
            deadline = time.monotonic() + 120
            while "run_type=" not in err_path.read_text():
                assert proc.poll() is None and time.monotonic() < deadline, err_path.read_text()[-3000:]
                time.sleep(0.02)
            proc.send_signal(signal.SIGSTOP)
            proc.send_signal(sig)
            proc.send_signal(signal.SIGCONT)
            code = proc.wait(timeout=120)
        finally:
            proc.kill() if proc.poll() is None else None
        return code, err_path.read_text()


def test_sigusr1_while_loading_data_exits_138_and_requeues(data_dir, tmp_path):  # noqa: F811
    """Before: SIGUSR1 (SLURM's time-limit warning) during start-up killed the run by the signal's default action,
    without a word and without the requeue training.requeue=true asks for."""
    save = tmp_path / "save"
    bin_dir, record = fake_scontrol(tmp_path)
    env = clean_env(SLURM_JOB_ID="31337", PATH=f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")
    cmd = train_cmd(data_dir, save, *RECIPE, "training.requeue=true")
    code, err = stop_while_loading(signal.SIGUSR1, cmd, tmp_path / "err.txt", env)
    assert code == 138, err[-3000:]
    assert "SIGUSR1 received outside the training loop: stopped" in err and "Traceback" not in err
    assert record.read_text() == "requeue 31337\n"
    assert "requeued SLURM job 31337 (scontrol requeue); it continues from the run's last checkpoint" in err
    assert not (save / "current.ckpt").exists() and not (save / "metrics.jsonl").exists()  # nothing trained

    again = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env)  # the requeued job
    assert again.returncode == 0, again.stderr[-3000:]
    assert json.loads((save / "summary.json").read_text())["train"]["num_updates"] == 12


def test_training_requeue_without_resume_is_refused_at_submission(data_dir, tmp_path):
    r = subprocess.run(train_cmd(data_dir, tmp_path / "save", *STEPS, "training.requeue=true"), capture_output=True,
                       text=True, timeout=120, env=clean_env(SLURM_JOB_ID="31337"))
    assert r.returncode == 1, r.stderr[-3000:]
    assert r.stderr.strip().splitlines()[-1] == (
        "error: training.requeue=true reruns this same command after SLURM's time-limit warning; add "
        "checkpoint.resume=true so the rerun continues the run")
    assert not (tmp_path / "save").exists()


def test_a_restarted_command_waits_for_the_lock_of_its_dying_predecessor(data_dir, tmp_path):
    """A requeued or restarted command (SLURM_RESTART_COUNT, TORCHELASTIC_RESTART_COUNT) may meet its predecessor's
    save dir lock still held (a process finishing its exit, a lock on NFS outliving a dead node): it waits for it,
    where a second run started by hand is refused at once. The holder's stale .holder file blocks nothing."""
    from mmftrain.run import SAVE_DIR_LOCK

    save = tmp_path / "save"
    save.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from pathlib import Path; "
                               "from zoo.lock import resource_lock\n"
                               f"with resource_lock(Path({str(save / SAVE_DIR_LOCK)!r}), 'the old job'):\n"
                               "    print('held', flush=True); time.sleep(600)"],
                              stdout=subprocess.PIPE, text=True, env=clean_env())
    try:
        assert holder.stdout.readline() == "held\n"
        refused = subprocess.run(train_cmd(data_dir, save, *RECIPE), capture_output=True, text=True, timeout=120,
                                 env=clean_env(SLURM_JOB_ID="31337"))
        assert refused.returncode == 1 and f"is locked by pid {holder.pid} " in refused.stderr

        with open(tmp_path / "requeued.err", "w+") as err:
            requeued = subprocess.Popen(train_cmd(data_dir, save, *RECIPE), stdout=subprocess.DEVNULL, stderr=err,
                                        env=clean_env(SLURM_JOB_ID="31337", SLURM_RESTART_COUNT="1"))
            deadline = time.time() + 120
            while f"locked by pid {holder.pid}" not in (tmp_path / "requeued.err").read_text():
                assert time.time() < deadline and requeued.poll() is None, (tmp_path / "requeued.err").read_text()
                time.sleep(0.05)
            holder.kill()  # the old job's process ends; its .holder file stays behind
            holder.wait()
            assert (save / f"{SAVE_DIR_LOCK}.holder").exists()
            assert requeued.wait(timeout=240) == 0, (tmp_path / "requeued.err").read_text()[-3000:]
    finally:
        holder.kill()
    assert json.loads((save / "summary.json").read_text())["train"]["num_updates"] == 12
    assert "waiting for env.save_dir=" in (tmp_path / "requeued.err").read_text()
