"""`mmf data ...` commands. No torch/numpy at import time: `mmf --help` must stay fast and torch-free."""
from __future__ import annotations

import logging
import sys

import typer

app = typer.Typer(no_args_is_help=True, add_completion=False,
                  help="Prepare TextVQA / ST-VQA data: pack the fast store, write synthetic data.")


def default_data_dir() -> str:
    """MMF's env.data_dir, the one definition shared with `mmf zoo` and `mmf train` (honours TORCH_HOME)."""
    from zoo.datadir import default_data_dir as _default

    return str(_default())


def _fail(err: Exception) -> None:
    typer.echo(f"error: {err}", err=True)
    raise typer.Exit(1)


def _logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)


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
    from .errors import DataError
    from .synth import write_synthetic

    if questions < 1:
        _fail(ValueError(f"--questions must be >= 1, got {questions}"))
    try:
        res = write_synthetic(out, questions, seed, archive, val_questions, test_questions,
                              stvqa_questions=stvqa_questions, images=images)
    except (DataError, OSError) as e:
        _fail(e)
    if archive:
        typer.echo(f"manifest: {res['manifest']}\narchives: {res['archive_root']}")
    else:
        typer.echo(f"data_dir: {res['data_dir']}  ({res['questions']})")


@app.command()
def pack(
    name: str = typer.Argument(..., help="Dataset: textvqa or stvqa."),
    splits: str = typer.Option("train,val,test", "--splits", help="Comma-separated splits."),
    data_dir: str = typer.Option(None, "--data-dir", help="MMF data_dir (default $MMF_DATA_DIR or MMF's)."),
    variant: str = typer.Option(None, "--variant", help="e.g. joint_with_stvqa (adds ST-VQA train)."),
    trust_pickle: bool = typer.Option(False, "--trust-pickle", help="Read pickles from an unverified install."),
    force: bool = typer.Option(False, "--force", help="Rebuild even if the store is up to date."),
) -> None:
    """Convert installed imdb + LMDB features into the packed, memory-mapped store `build_dataset` prefers."""
    _logging()
    from .build import pack_dataset
    from .configs import default_dataset_config
    from .errors import DataError

    wanted = [s.strip() for s in splits.split(",") if s.strip()]
    bad = [s for s in wanted if s not in ("train", "val", "test")]
    if bad or not wanted:
        _fail(ValueError(f"--splits must list train, val and/or test, got {splits!r}"))
    try:
        cfg = default_dataset_config(name, variant)
        dirs = pack_dataset(name, cfg, data_dir or default_data_dir(), wanted, trust_pickle=trust_pickle,
                            force=force)
    except (DataError, ValueError, OSError) as e:
        _fail(e)
    for d in dirs:
        typer.echo(d)
