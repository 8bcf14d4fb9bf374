"""Entry points `mmf` and `mmf_run`.

Sub-apps are imported eagerly but their modules keep heavy imports (torch, numpy) inside command bodies.
"""
from __future__ import annotations

import sys

import typer

from zoo.cli import app as zoo_app

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    help="MMF-compatible zoo manager and M4C trainer for TextVQA / ST-VQA.",
)
app.add_typer(zoo_app, name="zoo")

try:  # the data and training packages are mounted when present
    from mmfdata.cli import app as data_app

    app.add_typer(data_app, name="data")
except ImportError:  # pragma: no cover - only while the package is being built
    pass

_PASSTHROUGH = {"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []}


@app.command(context_settings=_PASSTHROUGH)
def train(ctx: typer.Context) -> None:
    """Train / evaluate M4C with MMF-style `key=value` options (config=..., datasets=..., run_type=...)."""
    from mmftrain.cli import run_from_argv

    raise typer.Exit(run_from_argv(list(ctx.args)))


@app.command()
def demo(out: str = typer.Option("mmf-demo", "--out", help="Folder for the demo's data, checkpoints and reports."),
         questions: int = typer.Option(1200, "--questions", help="Synthetic train questions."),
         updates: int = typer.Option(300, "--updates", help="Training updates of the small M4C.")) -> None:
    """Run fetch -> pack -> train -> evaluate -> predict end to end on embedded synthetic data (CPU, no internet)."""
    from mmfzoo_cli.demo import demo_command

    raise typer.Exit(demo_command(out, questions, updates))


try:
    from mmftrain.cli import register_extra_commands

    register_extra_commands(app)
except ImportError:  # pragma: no cover
    pass


def main() -> None:
    app()


def mmf_run() -> None:
    """MMF's `mmf_run` spelling: every argument is a training option."""
    from mmftrain.cli import run_from_argv

    sys.exit(run_from_argv(sys.argv[1:]))
