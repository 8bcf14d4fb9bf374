"""Launchers (issue 20): `mmftrain.distributed.detect_launch` as a pure function of the environment (torchrun, srun
without torchrun, one process), SLURM host lists; then real launches: two processes started by hand with the
SLURM_* variables srun sets (no torchrun) train a run on gloo, a SIGUSR1 to one of them stops both at one update
and the job requeues once; a worker SIGKILLed under `torchrun --max-restarts=1` makes the group restart and resume.
"""
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mmftrain import distributed
from tests.test_train_e2e import _descendants, data_dir, train_cmd, train_records  # noqa: F401 (a fixture)

# what srun sets for task 1 of 4 on the second node of a two-node step
SRUN = {"SLURM_JOB_ID": "4815162342", "SLURM_PROCID": "1", "SLURM_NTASKS": "4", "SLURM_LOCALID": "1",
        "SLURM_NODELIST": "gpu[007-008]", "SLURM_JOB_NODELIST": "gpu[007-008]"}


# ---- detection
def test_no_launcher_is_one_process():
    assert distributed.detect_launch({}) == distributed.Launch("single", 0, 1, 0)
    # --local_rank picks the GPU
    assert distributed.detect_launch({"LOCAL_RANK": "3"}) == distributed.Launch("single", 0, 1, 3)


def test_torchrun():
    env = {"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "MASTER_ADDR": "n1", "MASTER_PORT": "29400",
           "TORCHELASTIC_RESTART_COUNT": "2"}
    launch = distributed.detect_launch(env)
    assert (launch.launcher, launch.rank, launch.world, launch.local_rank, launch.restarts) == ("torchrun", 3, 4, 1, 2)
    assert launch.init_method == "env://"  # torchrun's own rendezvous variables


def test_srun_without_torchrun():
    launch = distributed.detect_launch(SRUN)
    assert launch == distributed.Launch("slurm", 1, 4, 1, "gpu007", 15000 + 2342, "4815162342", 0)
    assert launch.init_method == "tcp://gpu007:17342"


def test_torchrun_variables_win_over_slurm_ones():
    launch = distributed.detect_launch({**SRUN, "RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0"})
    assert (launch.launcher, launch.rank, launch.world, launch.job_id) == ("torchrun", 0, 2, "4815162342")


def test_a_slurm_allocation_of_one_task_is_one_process():
    launch = distributed.detect_launch({**SRUN, "SLURM_PROCID": "0", "SLURM_NTASKS": "1", "SLURM_LOCALID": "0"})
    assert (launch.launcher, launch.world, launch.job_id) == ("single", 1, "4815162342")
    # a batch shell or salloc without srun: no SLURM_PROCID, whatever the allocation's task count
    no_task = {k: v for k, v in SRUN.items() if k != "SLURM_PROCID"}
    assert distributed.detect_launch(no_task).launcher == "single"


def test_the_step_wins_over_the_allocation():
    env = {**SRUN, "SLURM_STEP_NUM_TASKS": "2", "SLURM_STEP_NODELIST": "gpu008", "SLURM_PROCID": "0"}
    launch = distributed.detect_launch(env)
    assert (launch.world, launch.master_addr) == (2, "gpu008")


def test_master_address_and_port_given_win():
    launch = distributed.detect_launch({**SRUN, "MASTER_ADDR": "10.0.0.5", "MASTER_PORT": "23456"})
    assert (launch.master_addr, launch.master_port) == ("10.0.0.5", 23456)
    assert distributed.detect_launch({**SRUN, "MASTER_ADDR": "fe80::1"}).init_method == "tcp://[fe80::1]:17342"


def test_node_list_order_and_port_without_job_id():
    env = {k: v for k, v in SRUN.items() if k not in ("SLURM_NODELIST", "SLURM_JOB_ID")}
    assert distributed.detect_launch(env).master_addr == "gpu007"  # SLURM_JOB_NODELIST alone
    assert distributed.detect_launch(env).master_port == 29500  # no job id to derive a port from: torchrun's default


def test_restarts_count_slurm_requeues():
    assert distributed.detect_launch({**SRUN, "SLURM_RESTART_COUNT": "1"}).restarts == 1


@pytest.mark.parametrize("env, names", [
    ({"WORLD_SIZE": "two"}, "WORLD_SIZE='two'"),
    ({"RANK": "2", "WORLD_SIZE": "2"}, "rank 2 of 2"),
    ({**SRUN, "SLURM_PROCID": "4"}, "SLURM_PROCID/SLURM_NTASKS say rank 4 of 4"),
    ({**SRUN, "SLURM_LOCALID": "-1"}, "SLURM_LOCALID='-1'"),
    ({**SRUN, "SLURM_NODELIST": "gpu[007-"}, "SLURM_NODELIST='gpu[007-' is not a SLURM host list"),
    ({k: v for k, v in SRUN.items() if "NODELIST" not in k}, "set MASTER_ADDR"),
    ({**SRUN, "MASTER_PORT": "70000"}, "MASTER_PORT=70000 is not a TCP port"),
])
def test_bad_launcher_variables_are_one_clear_error(env, names):
    with pytest.raises(distributed.LaunchError) as caught:
        distributed.detect_launch(env)
    assert names in str(caught.value) and "\n" not in str(caught.value)


@pytest.mark.parametrize("text, hosts", [
    ("node01", ["node01"]),
    ("node[01-03,07]", ["node01", "node02", "node03", "node07"]),
    ("a[8-10],b,c[1]", ["a8", "a9", "a10", "b", "c1"]),  # a range is as wide as its first number
    ("r[1-2]-n[09-10]", ["r1-n09", "r1-n10", "r2-n09", "r2-n10"]),
    ("10.1.0.[3-4]", ["10.1.0.3", "10.1.0.4"]),
])
def test_host_lists(text, hosts):
    assert list(distributed.expand_hostlist(text)) == hosts


@pytest.mark.parametrize("text", ["n[1-", "n]1[", "n[[1]]", "n[a-b]", "n[3-1]", "n[]", "a,,b", ""])
def test_malformed_host_lists(text):
    with pytest.raises(ValueError):
        list(distributed.expand_hostlist(text))


def test_the_first_host_of_a_huge_list_costs_nothing():
    assert next(distributed.expand_hostlist("n[0000000-9999999]")) == "n0000000"


# ---- real launches
STEPS = ["training.max_updates=14", "training.checkpoint_interval=1000"]


def clean_env(**extra) -> dict:
    """This environment without any launcher's variables (a test may itself run under one), plus `extra`."""
    drop = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "LOCAL_WORLD_SIZE", "GROUP_RANK")
    env = {k: v for k, v in os.environ.items()
           if k not in drop and not k.startswith(("SLURM_", "TORCHELASTIC_"))}
    return {**env, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **extra}


def slurm_job_with_free_port() -> str:
    """A job id whose derived rendezvous port (15000 + its last 4 digits) is free here."""
    for _ in range(200):
        port = 15000 + int.from_bytes(os.urandom(2), "big") % 10000
        with socket.socket() as s:
            try:
                s.bind(("", port))
            except OSError:
                continue
        return f"77{port - 15000:04d}"
    raise AssertionError("no free port in 15000..24999")


def srun_by_hand(cmd: list[str], job: str, tmp_path: Path, **extra) -> list[subprocess.Popen]:
    """Two tasks as srun starts them on one node: same command, SLURM_PROCID 0 and 1 (no torchrun)."""
    procs = []
    for rank in (0, 1):
        env = clean_env(SLURM_JOB_ID=job, SLURM_PROCID=str(rank), SLURM_NTASKS="2", SLURM_LOCALID=str(rank),
                        SLURM_NODELIST="127.0.0.[1-2]", **extra)  # the first host of the list meets the others
        with open(tmp_path / f"task{rank}.err", "w") as err:
            procs.append(subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, text=True, env=env))
    return procs


def fake_scontrol(tmp_path: Path) -> tuple[Path, Path]:
    """A stand-in for SLURM's scontrol, first on PATH: appends its arguments to a file. Returns (bin, record)."""
    bin_dir, record = tmp_path / "bin", tmp_path / "scontrol.calls"
    bin_dir.mkdir()
    script = bin_dir / "scontrol"
    script.write_text(f'#!/bin/sh\necho "$@" >> "{record}"\n')
    script.chmod(0o755)
    return bin_dir, record


def test_two_srun_tasks_train_and_a_sigusr1_to_one_stops_both_and_requeues_once(data_dir, tmp_path):
    """The srun launch end to end on gloo: a SIGUSR1 to task 1 only (`scancel --signal=USR1` may reach one task)
    stops both at the same update (the next multiple of 10 both agree at), both exit 138 with current.ckpt of
    that update on disk, global rank 0 alone requeues the job (it got no signal itself), and the same two commands
    resume and finish the run."""
    import torch

    save = tmp_path / "save"
    cmd = train_cmd(data_dir, save, *STEPS, "checkpoint.resume=true", "training.requeue=true")
    bin_dir, record = fake_scontrol(tmp_path)
    path = f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"
    job = slurm_job_with_free_port()
    tasks = srun_by_hand(cmd, job, tmp_path, PATH=path)
    try:
        deadline = time.time() + 180
        while not (save / "metrics.jsonl").exists() or max(train_records(save), default=0) < 2:
            assert time.time() < deadline and all(p.poll() is None for p in tasks), \
                (tmp_path / "task0.err").read_text()[-3000:]
            time.sleep(0.05)
        tasks[1].send_signal(signal.SIGUSR1)
        codes = [p.wait(timeout=120) for p in tasks]
    finally:
        for p in tasks:
            p.kill() if p.poll() is None else None
    err0 = (tmp_path / "task0.err").read_text()
    assert codes == [138, 138], err0[-3000:]
    assert f"meeting the other tasks at 127.0.0.1:{15000 + int(job[-4:])}" in err0  # the derived rendezvous
    ckpt = torch.load(save / "current.ckpt", weights_only=True)
    assert ckpt["world_size"] == 2 and len(ckpt["rng"]) == 2
    stop = ckpt["num_updates"]
    assert stop == 10 == max(train_records(save)), err0[-3000:]  # both stopped at the update they agreed at
    assert "SIGUSR1 received" in err0 and "SIGUSR1 received" in (save / "train.log.rank1").read_text()
    assert record.read_text() == f"requeue {job}\n"  # once, by global rank 0
    assert f"requeued SLURM job {job}" in err0

    tasks = srun_by_hand(cmd, job, tmp_path, PATH=path, SLURM_RESTART_COUNT="1")  # what the requeued job runs
    codes = [p.wait(timeout=180) for p in tasks]
    err0 = (tmp_path / "task0.err").read_text()
    assert codes == [0, 0], err0[-3000:]
    assert f"at update {stop} " in err0 and "resumed from" in err0
    assert sorted(train_records(save)) == list(range(1, 15))
    summary = json.loads((save / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["train"]["num_updates"] == 14
    assert record.read_text() == f"requeue {job}\n"  # a finished run does not requeue


def test_a_killed_worker_under_torchrun_max_restarts_resumes_the_group(data_dir, tmp_path):
    """`torchrun --standalone --nproc_per_node=2 --max-restarts=1` with the cluster recipe (checkpoint.resume=true):
    rank 0 (the save dir's lock holder) SIGKILLed once the first checkpoint is on disk; torchrun restarts both
    workers with the same command, which resume from the newest intact checkpoint and finish the run."""
    save = tmp_path / "save"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "--max-restarts=1",
           *train_cmd(data_dir, save, "training.max_updates=40", "training.checkpoint_interval=4",
                      "checkpoint.resume=true")[1:]]
    with open(tmp_path / "torchrun.err", "w") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, text=True, env=clean_env())
    try:
        deadline = time.time() + 180
        while not (save / "current.ckpt").exists():
            assert time.time() < deadline and proc.poll() is None, (tmp_path / "torchrun.err").read_text()[-3000:]
            time.sleep(0.02)
        rank0 = [pid for pid in _descendants(proc.pid) if _environ(pid).get("RANK") == "0"]
        assert len(rank0) == 1
        killed_at = max(train_records(save))
        os.kill(rank0[0], signal.SIGKILL)
        code = proc.wait(timeout=240)
    finally:
        proc.kill() if proc.poll() is None else None
    out = (tmp_path / "torchrun.err").read_text()
    assert code == 0, out[-3000:]
    assert killed_at < 40  # the kill came mid-run
    restarted = out[out.index("resumed from"):]  # the restarted group's log
    resumed_at = int(restarted.split(" at update ", 1)[1].split()[0])
    assert resumed_at >= 4 and resumed_at % 4 == 0  # from a checkpoint of the first group
    summary = json.loads((save / "summary.json").read_text())
    assert summary["train"]["num_updates"] == 40 and summary["world_size"] == 2
    assert sorted(train_records(save)) == list(range(1, 41))


def _environ(pid: int) -> dict:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return {}
    return dict(item.split("=", 1) for item in raw.decode(errors="replace").split("\0") if "=" in item)
