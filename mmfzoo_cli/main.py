"""The `mmf` entry point (MMF's `mmf_run key=value ...` is `mmf train key=value ...`).

Sub-apps are imported eagerly but their modules keep heavy imports (torch, numpy) inside command bodies.
"""
from __future__ import annotations

import typer

from zoo.cli import app as zoo_app, plug_run_keys
from zoo.outcome import ZooGroup

app = typer.Typer(
    cls=ZooGroup,  # every command's usage errors (mmf data, train, demo, plot too) follow zoo.errors.EXIT_CODES
    no_args_is_help=True,
    add_completion=False,
    help="MMF-compatible zoo manager and M4C trainer for TextVQA / ST-VQA.",
)
app.add_typer(zoo_app, name="zoo")


def _keys_for_run(argv, zoo_paths, data_dir):
    """`mmf zoo pack --for`: the keys a run reads (mmfdata.needs; numpy- and torch-free)."""
    from mmfdata.needs import keys_for_run

    return keys_for_run(argv, zoo_paths, data_dir)


plug_run_keys(_keys_for_run)


def _print_version(value: bool) -> None:
    if value:
        from zoo.project import version

        typer.echo(f"mmf-zoo {version()}")
        raise typer.Exit(0)


@app.callback()
def _options(show_version: bool = typer.Option(False, "--version", "-V", is_eager=True, callback=_print_version,
                                                help="Print this project's version and exit.")) -> None:
    """MMF-compatible zoo manager and M4C trainer for TextVQA / ST-VQA."""

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

