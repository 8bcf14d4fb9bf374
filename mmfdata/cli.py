"""`mmf data ...` commands. No torch/numpy at import time: `mmf --help` must stay fast and torch-free."""
from __future__ import annotations


import typer

app = typer.Typer(no_args_is_help=True, add_completion=False,
                  help="Prepare TextVQA / ST-VQA data: pack the fast store, write synthetic data.")


def _fail(err: Exception) -> None:
    typer.echo(f"error: {err}", err=True)
    raise typer.Exit(1)


def _need_extra(command: str) -> None:
    from zoo.extras import MissingExtra, require

    try:
        require(command)
    except MissingExtra as e:
        _fail(e)


def _logging() -> None:
    from zoo.logfmt import to_console

    to_console("mmfdata", "zoo")  # pack reads zoo install records (trust): their warnings too


@app.command()
def synth(
    out: str = typer.Option(..., "--out", help="Folder to write (becomes a data_dir)."),
    questions: int = typer.Option(200, "--questions", help="Train questions."),
    val_questions: int = typer.Option(None, "--val-questions", help="Default: max(8, questions / 5)."),
    test_questions: int = typer.Option(None, "--test-questions", help="Default: max(8, questions / 5)."),
    stvqa_questions: int = typer.Option(0, "--stvqa-questions", help="Also write ST-VQA with this many."),
    images: int = typer.Option(None, "--images", help="Distinct train images (default questions / 2)."),
    seed: int = typer.Option(0, "--seed"),
    archive: bool = typer.Option(False, "--archive", help="Write zoo archives + manifest.yaml instead."),
) -> None:
    """Write a synthetic dataset in MMF's on-disk layout (learnable; real feature shapes)."""
    _need_extra("mmf data synth")
    from .errors import DataError
    from .synth import write_synthetic

    from zoo.fsutil import folder_problem

    if questions < 1:
        _fail(ValueError(f"--questions must be >= 1, got {questions}"))
    problem = folder_problem(out)
    if problem:
        _fail(ValueError(f"--out {out} {problem}; choose another folder"))
    try:
        res = write_synthetic(out, questions, seed, archive, val_questions, test_questions,
                              stvqa_questions=stvqa_questions, images=images)
    except (DataError, OSError) as e:
        _fail(e)
    if archive:
        typer.echo(f"manifest: {res['manifest']}\narchives: {res['archive_root']}")
    else:
        typer.echo(f"data_dir: {res['data_dir']}  ({res['questions']})")


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def pack(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="Dataset: textvqa or stvqa. Then any `key=value` config overrides."),
    splits: str = typer.Option("train,val,test", "--splits", help="Comma-separated splits."),
    data_dir: str = typer.Option(None, "--data-dir", help="MMF data_dir (default: env.data_dir, as `mmf train`)."),
    config: str = typer.Option(None, "--config", help="The config= you train with (default: the M4C project "
                                                      "config of NAME)."),
    variant: str = typer.Option(None, "--variant", help="e.g. joint_with_stvqa (adds ST-VQA train)."),
    trust_pickle: bool = typer.Option(False, "--trust-pickle", help="Read pickles from an unverified install."),
    force: bool = typer.Option(False, "--force", help="Rebuild even if the store is up to date."),
) -> None:
    """Convert installed imdb + LMDB features into the packed, memory-mapped store `mmf train` prefers.

    The dataset_config is resolved exactly as `mmf train config=... datasets=NAME model=m4c key=value ...` resolves
    it (same files, same overrides), so the store packed here is the one training finds fresh.
    """
    _need_extra("mmf data pack")
    _logging()
    wanted = [s.strip() for s in splits.split(",") if s.strip()]
    bad = [s for s in wanted if s not in ("train", "val", "test")]
    if bad or not wanted:
        _fail(ValueError(f"--splits must list train, val and/or test, got {splits!r}"))
    overrides = list(ctx.args)
    odd = [a for a in overrides if "=" not in a]
    if odd:
        _fail(ValueError(f"unexpected argument {odd[0]!r}: config overrides are key=value, e.g. "
                         f"dataset_config.{name}.processors.text_processor.params.max_seq_length=24"))
    from .build import pack_dataset
    from .configs import run_config
    from .errors import DataError

    try:
        cfg = run_config(name, config=config, variant=variant, overrides=overrides, data_dir=data_dir)
        dirs = pack_dataset(name, cfg["dataset_config"][name], str(cfg["env"]["data_dir"]), wanted,
                            trust_pickle=trust_pickle or bool(cfg["training"]["trust_pickle"]), force=force)
    except (DataError, ValueError, OSError) as e:
        _fail(e)
    for d in dirs:
        typer.echo(d)
