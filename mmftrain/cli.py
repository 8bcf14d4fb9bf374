"""`mmf train ...` (MMF's `mmf_run ...` arguments) and `mmf plot`.

No torch import at module level (keeps `mmf --help` fast)."""
from __future__ import annotations

import os
import sys

USAGE = """usage: mmf train config=CONFIG.yaml datasets=textvqa model=m4c run_type=train_val [key=value ...]

Options are MMF's mmf_run ones: config= (relative to cwd, else to the project's configs/), datasets= (alias
dataset=, comma separated), model=, run_type= (train, val, test, train_val, train_inference, inference), and any
config key as a.b.c=value or a.b[0]=value (e.g. training.batch_size=32 env.save_dir=./save checkpoint.resume=true), or as
alternating `key value` words; before them MMF's flags -co/--config_override '{training: {seed: 3}}' (a YAML/JSON
mapping over the config file) and --local_rank N.
A save dir holds one run: checkpoint.resume=true continues it (from the newest intact checkpoint); a new run needs
another env.save_dir (or env.overwrite_save_dir=true). val/test/inference need weights: checkpoint.resume_file=,
checkpoint.resume_zoo= or checkpoint.resume=true.
Env: MMF_DATA_DIR, MMF_SAVE_DIR, MMF_CACHE_DIR, MMF_LOG_DIR, MMF_REPORT_DIR, MMF_TENSORBOARD_LOGDIR.
Multi-GPU: torchrun --nproc_per_node=N -m mmftrain.cli ..., or under SLURM `srun mmf train ...` with one task per GPU
(SLURM_PROCID/SLURM_NTASKS/SLURM_LOCALID; rendezvous on the first node, MASTER_PORT or 15000 + the job id's last 4
digits); torchrun's variables win over SLURM's.
Cluster recipe: always pass checkpoint.resume=true (it starts fresh while the save dir has no checkpoint), so a
requeued or restarted identical command continues the run. SIGINT, SIGTERM and SIGUSR1 finish the current update
(with several processes: the next update all agree on, at most 10 later), write current.ckpt, wait until it is on
disk and exit. training.requeue=true (needs checkpoint.resume=true): on SIGUSR1 (sbatch --signal=USR1@90) inside a
SLURM job, rank 0 then runs `scontrol requeue $SLURM_JOB_ID`; SIGTERM (scancel, SLURM's own preemption) never
requeues. torchrun passes SIGTERM on to its workers (and kills them after --shutdown_timeout, 30 s); SIGUSR1 kills
the torchrun agent itself unless --signals_to_handle lists it: under SLURM, launch with srun.
Exit codes: 0 done; 1 error (one line on stderr); 128 + the signal when a signal stopped training after writing its
checkpoint: 130 SIGINT, 143 SIGTERM, 138 SIGUSR1: rerun the same command to continue. Non-zero, so that neither
SLURM nor a script takes the run for finished (torchrun counts it as a failed worker: --max-restarts restarts the
group, which resumes).
Example: mmf train config=projects/m4c/configs/textvqa/defaults.yaml datasets=textvqa model=m4c run_type=train_val
"""


def run_from_argv(argv: list[str]) -> int:
    """Parse MMF-style options, run, and return the process exit code (1 with one line on a bad input)."""
    if any(a in ("-h", "--help", "help") for a in argv):
        print(USAGE)
        return 0
    from mmfconfig.errors import ConfigError

    from zoo.extras import MissingExtra, require

    try:
        require("mmf train")
    except MissingExtra as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    from mmftrain.errors import TrainError

    try:
        from mmfconfig.resolve import build_config, mmf_flags

        local_rank = mmf_flags(argv)[0].get("local_rank")
        if local_rank is not None:  # torch.distributed.launch's way; torchrun's env var, if set, says the same
            os.environ.setdefault("LOCAL_RANK", str(local_rank))
        from mmftrain.distributed import detect_launch

        launch = detect_launch(os.environ)  # srun's processes know their number only from SLURM_* variables
        notes: list[str] = []  # config warnings, logged once the run's log is set up (so train.log keeps them)
        cfg = build_config(argv, {**os.environ, "WORLD_SIZE": str(launch.world)}, say=notes.append)
        from mmftrain.run import run

        summary = run(cfg, notes, pack_args(cfg, argv), argv)
    except (TrainError, ConfigError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return exit_code(summary.get("interrupted"))


def exit_code(stopped_by: str | None) -> int:
    """0 for a finished run; 128 + the signal's number (a shell's code for a process the signal ended) for a run
    that a signal stopped, its checkpoint on disk (see USAGE)."""
    if not stopped_by:
        return 0
    import signal

    try:
        return 128 + signal.Signals[stopped_by].value
    except KeyError:
        return 1


def pack_args(cfg: dict, argv: list[str]) -> list[str]:
    """What `mmf data pack NAME` needs besides the data dir to resolve this run's dataset_config as the run does:
    its config file and its dataset_config overrides (the other keys do not change the packed store)."""
    from mmftrain.config import mmf_flags, split_argv

    overrides = split_argv(mmf_flags(argv)[1])[1]
    config = ["--config", str(cfg["config"])] if cfg.get("config") else []
    return config + [f"{key}={value}" for key, value in overrides if key.startswith("dataset_config.")]


def register_extra_commands(app) -> None:
    """Add `mmf plot SAVE_DIR` to the main typer app."""
    import typer

    @app.command()
    def plot(save_dir: str = typer.Argument(..., help="env.save_dir of a run (holds metrics.jsonl)"),
             out: str = typer.Option(None, "--out", help="PNG path (default SAVE_DIR/training_curves.png)")) -> None:
        """Plot training loss and val metrics over updates from SAVE_DIR/metrics.jsonl into a PNG."""
        from mmftrain.errors import TrainError
        from mmftrain.plot import plot_run
        from zoo.extras import MissingExtra, require

        try:
            require("mmf plot")
            path = plot_run(save_dir, out)
        except (TrainError, MissingExtra) as e:
            typer.echo(f"error: {e}", err=True)
            raise typer.Exit(1)
        typer.echo(str(path))


def main() -> None:
    """`python -m mmftrain.cli ...` (what torchrun launches)."""
    sys.exit(run_from_argv(sys.argv[1:]))


if __name__ == "__main__":
    main()
