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
Multi-GPU: torchrun --nproc_per_node=N -m mmftrain.cli ...
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
        notes: list[str] = []  # config warnings, logged once the run's log is set up (so train.log keeps them)
        cfg = build_config(argv, say=notes.append)
        from mmftrain.run import run

        summary = run(cfg, notes, pack_args(cfg, argv), argv)
    except (TrainError, ConfigError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    interrupted = summary.get("interrupted")
    if interrupted:
        return {"SIGINT": 130, "SIGTERM": 143}.get(interrupted, 1)
    return 0


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
