"""Preemption (issue 20): how long `mmf train` takes from a stop signal to its exit, and what a stop loses.

    python bench/preempt.py                     # 5 stops each: 1 process SIGUSR1, SIGTERM; 2 srun tasks SIGUSR1
    python bench/preempt.py --repeats 3 --cases 1:USR1,2:USR1

Each stop starts the tiny M4C of the tests on synthetic TextVQA (CPU; two processes meet on gloo with the SLURM_*
variables srun would set, no torchrun), sends the signal once update --after is logged (to the last task only with
two processes: a signal that reaches one task), and reports per case the median and range of: seconds from the
signal to the exit of every process, updates run after the signal (with several processes the ranks agree on a
stop every 10 updates), and updates lost = updates logged - the update of current.ckpt (0: the checkpoint is of
the update the run stopped at). Exit codes are checked (128 + the signal). Nothing is asserted on time.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.test_cluster_launch import slurm_job_with_free_port  # noqa: E402  (one owner of the port rule's probe)

TINY = "projects/m4c/configs/textvqa/tiny.yaml"
MICRO = ["model_config.m4c.mmt.num_hidden_layers=1", "training.batch_size=8", "training.evaluation_interval=100000",
         "evaluation.batch_size=40", "training.warmup_iterations=5", "training.lr_steps=[]",
         "training.log_interval=1", "training.checkpoint_interval=100000", "training.max_updates=100000",
         "env.fetch_missing_data=false", "checkpoint.resume=true"]


def synthetic(root: Path) -> Path:
    from mmfdata.build import pack_dataset
    from mmfdata.configs import default_dataset_config
    from mmfdata.synth import write_synthetic

    out = root / "data"
    write_synthetic(str(out), questions=96, seed=3, val_questions=37, test_questions=21)
    pack_dataset("textvqa", default_dataset_config("textvqa"), str(out))
    return out


def logged_updates(save: Path) -> int:
    path = save / "metrics.jsonl"
    if not path.exists():
        return 0
    updates = [json.loads(line).get("num_updates", 0) for line in path.read_text().splitlines() if line.strip()]
    return max(updates, default=0)


def stop_once(data: Path, save: Path, ranks: int, sig: signal.Signals, after: int) -> dict:
    cmd = [sys.executable, "-m", "mmftrain.cli", f"config={TINY}", "datasets=textvqa", "model=m4c", "run_type=train",
           f"env.data_dir={data}", f"env.save_dir={save}", *MICRO]
    base = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "TORCHELASTIC_"))
            and k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    base.update(OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    job = slurm_job_with_free_port()
    procs = []
    for rank in range(ranks):
        env = dict(base)
        if ranks > 1:
            env.update(SLURM_JOB_ID=job, SLURM_PROCID=str(rank), SLURM_NTASKS=str(ranks), SLURM_LOCALID=str(rank),
                       SLURM_NODELIST="localhost")
        procs.append(subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env))
    try:
        while logged_updates(save) < after:
            if any(p.poll() is not None for p in procs):
                raise SystemExit(f"training exited early; see {save}/train.log")
            time.sleep(0.01)
        at_signal = logged_updates(save)
        sent = time.monotonic()
        procs[-1].send_signal(sig)
        codes = [p.wait(timeout=300) for p in procs]
        took = time.monotonic() - sent
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    import torch

    stopped = torch.load(save / "current.ckpt", weights_only=True)["num_updates"]
    if codes != [128 + sig.value] * ranks:
        raise SystemExit(f"exit codes {codes}, expected {128 + sig.value} each; see {save}/train.log")
    return {"seconds": took, "after_signal": stopped - at_signal, "lost": logged_updates(save) - stopped}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--cases", default="1:USR1,1:TERM,2:USR1", help="RANKS:SIGNAL,...")
    parser.add_argument("--after", type=int, default=3, help="signal once this update is logged")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="mmf-preempt-bench-") as tmp:
        data = synthetic(Path(tmp))
        print(f"{'case':<16} {'signal->exit s (median, min-max)':<34} {'updates after signal':<22} updates lost")
        for case in args.cases.split(","):
            ranks, name = case.split(":")
            sig = signal.Signals["SIG" + name]
            runs = [stop_once(data, Path(tmp) / f"save-{case}-{i}".replace(":", "-"), int(ranks), sig, args.after)
                    for i in range(args.repeats)]
            secs = [r["seconds"] for r in runs]
            after = [r["after_signal"] for r in runs]
            print(f"{ranks} proc {sig.name:<9} {statistics.median(secs):6.2f} ({min(secs):.2f}-{max(secs):.2f})"
                  f"{'':<17} {statistics.median(after):>4} ({min(after)}-{max(after)}){'':<12} "
                  f"{max(r['lost'] for r in runs)}")


if __name__ == "__main__":
    main()
