"""How every `mmf zoo` command ends: its exit code (zoo.errors.EXIT_CODES), one line on stderr when it failed, and,
with --json, exactly one JSON document on stdout whatever happened.

The JSON contract: exit 0 prints the command's result (fetch, list, verify: a list; info, pack: an object), the
shapes scripts already read; any other exit prints an object `{"error": {"message", "exit_code", "kind"},
"result": ...}` where `result` is what the command got to (verify's checks, say) or null. Usage errors (a bad
option, a missing argument) are routed here too, numbered USAGE, not click's 2 (a verification failure).
"""
from __future__ import annotations

import contextlib
import json
import sys
import traceback

import typer
from typer.core import TyperGroup

from zoo.errors import INTERNAL, INTERRUPTED, USAGE, UsageError, ZooError, kind_of

# click's UsageError, reached through a public name: typer vendors click in newer releases and imports it in older
ClickUsageError = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "UsageError")


def error_doc(message: str, exit_code: int, kind: str, result=None, details=None) -> dict:
    error = {"message": message, "exit_code": exit_code, "kind": kind}
    if isinstance(details, dict) and details:
        error["details"] = details
    return {"error": error, "result": result}


def emit_json(doc) -> None:
    typer.echo(json.dumps(doc, indent=1, default=str))


def with_result(exc: ZooError, result) -> ZooError:
    """Attach what a failing command got to, for --json's `result` (verify's checks beside its failure)."""
    exc.result = result
    return exc


def finish(fn, as_json: bool = False):
    """Run one command body: its result goes out as JSON (with --json), an error as one stderr line, its exit
    code and, with --json, the error document."""
    try:
        result = fn()
    except ZooError as exc:
        _fail(str(exc), exc.exit_code, exc.kind, as_json, getattr(exc, "result", None),
              getattr(exc, "details", None))
    except KeyboardInterrupt as exc:
        code = getattr(exc, "exit_code", INTERRUPTED)
        _fail(f"interrupted: {_kept(exc)}", code, "terminated" if code != INTERRUPTED else "interrupted",
              as_json, None, prefix="")
    except (typer.Exit, BrokenPipeError):  # a closed pipe (`| head`) is the reader's choice, handled by click
        raise
    except Exception as exc:  # a bug: the traceback is for the report, the line and code for scripts
        traceback.print_exc(file=sys.stderr)
        _fail(f"internal error: {type(exc).__name__}: {exc} (a bug: please report it with the traceback above)",
              INTERNAL, "internal", as_json, None, prefix="")
    if as_json:
        emit_json(result)
    return result


def _fail(message: str, code: int, kind: str, as_json: bool, result, details=None, prefix: str = "error: "):
    if as_json:
        emit_json(error_doc(message, code, kind, result, details))
    typer.echo(f"{prefix}{message}", err=True)
    raise typer.Exit(code) from None


def _kept(exc: BaseException) -> str:
    """What an interrupted fetch left to resume (the transfer attaches it to the KeyboardInterrupt)."""
    from zoo.fsutil import human

    kept = getattr(exc, "zoo_kept", None)
    if not kept:
        return "what was downloaded is kept and resumes on the next run"
    part, n, size = kept
    if n <= 0:  # never claim a partial download that does not exist
        return "nothing of the file in progress had arrived yet; run the same command to start again"
    return f"{human(n)} of {human(size)} kept in {part}; run the same command to resume"


@contextlib.contextmanager
def usage_errors(args):
    """click's usage errors as the zoo's: one line, exit USAGE, and a JSON document when --json was asked."""
    try:
        yield
    except ClickUsageError as exc:
        if type(exc).__name__ == "NoArgsIsHelpError":  # a bare `mmf zoo` / `mmf zoo fetch`: the help is the answer
            exc.exit_code = USAGE
            raise
        ctx = getattr(exc, "ctx", None)
        where = f" (see `{ctx.command_path if ctx is not None else 'mmf zoo'} --help`)"
        message = f"{exc.format_message()}{where}"
        if "--json" in args:
            emit_json(error_doc(message, USAGE, kind_of(UsageError), None))
        typer.echo(f"error: {message}", err=True)
        raise typer.Exit(USAGE) from None


class ZooGroup(TyperGroup):
    """The `mmf zoo` group: usage errors of the group and of every subcommand go through `usage_errors`."""

    def make_context(self, info_name, args, parent=None, **extra):
        with usage_errors(list(args)):
            return super().make_context(info_name, args, parent=parent, **extra)

    def invoke(self, ctx):
        with usage_errors([*getattr(ctx, "_protected_args", []), *ctx.args]):
            return super().invoke(ctx)
