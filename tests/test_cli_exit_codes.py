"""One exit-code table, zoo.errors.EXIT_CODES: README's table, `mmf zoo --help` and every exit agree with it. A usage
error is 1 (README's number), not click's 2, which here means a verification failure; -q is on every subcommand."""
import re

import pytest
import typer

from tests.zoo_helpers import ROOT, make_zoo, run_mmf
from zoo import errors


def _readme_table() -> dict:
    text = (ROOT / "README.md").read_text()
    return {int(code): meaning for code, meaning in re.findall(r"^\| (\d+) \| (.+?) \|$", text, re.M)}


def _subclasses(cls):
    for sub in cls.__subclasses__():
        yield sub
        yield from _subclasses(sub)


def test_readme_table_is_the_code_table():
    assert _readme_table() == errors.EXIT_CODES


def test_every_error_class_exits_with_a_documented_code_and_a_documented_kind():
    readme = (ROOT / "README.md").read_text()
    for cls in [errors.ZooError, *_subclasses(errors.ZooError)]:
        assert cls.exit_code in errors.EXIT_CODES, cls
        assert f"`{errors.kind_of(cls)}`" in readme, f"README does not name --json's error kind of {cls.__name__}"


def test_help_shows_the_same_table():
    r = run_mmf("zoo", "--help", env={"COLUMNS": "400"})
    assert r.returncode == 0, r.stderr
    flat = " ".join(re.sub(r"[│╭╮╰╯─]", " ", r.stdout).split())
    for code, meaning in errors.EXIT_CODES.items():
        assert f"{code} {meaning}" in flat, (code, flat[:3000])


@pytest.mark.parametrize("args", [
    ["zoo", "fetch", "toyset", "--chunk-size", "0"],  # a value out of range
    ["zoo", "fetch"],  # a missing argument
    ["zoo", "list", "--bogus"],  # an unknown option
    ["zoo", "info"],
    ["zoo", "verify", "toyset", "--repair=maybe"],
    ["zoo", "pack", "toyset"],  # -o is required
    ["zoo", "fetchh", "toyset"],  # an unknown command
    ["zoo", "--bogus"],
])
def test_usage_errors_exit_1_with_one_line(args, tmp_path):
    r = run_mmf(*args, "--data-dir", str(tmp_path / "data")) if args[1:2] != ["--bogus"] else run_mmf(*args)
    assert r.returncode == errors.USAGE == 1, (r.returncode, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "--help" in lines[0], r.stderr
    assert r.stdout == "" and not (tmp_path / "data").exists()


def test_quiet_is_an_option_of_every_zoo_command():
    from zoo.cli import app

    group = typer.main.get_command(app)
    missing = [name for name, cmd in group.commands.items()
               if not any("--quiet" in p.opts and "-q" in p.opts for p in cmd.params)]
    assert missing == []


def test_quiet_keeps_only_failures(tmp_path):
    zoo = make_zoo(tmp_path)
    data = tmp_path / "data"
    common = ["--zoo", str(zoo.manifest), "--data-dir", str(data)]
    r = run_mmf("zoo", "fetch", "toyset", *common, "--mirror", str(zoo.mirror), "-q")
    assert r.returncode == 0 and r.stdout == "" and r.stderr == "", r.stderr
    loud = run_mmf("zoo", "verify", "toyset", *common)
    ok_lines = [line[:3] for line in loud.stdout.splitlines()]
    assert loud.returncode == 0 and ok_lines == ["ok "] * 3  # the lines -q drops exist
    quiet = run_mmf("zoo", "verify", "toyset", *common, "-q")
    assert quiet.returncode == 0 and quiet.stdout == "" and quiet.stderr == ""
    packed = run_mmf("zoo", "pack", "toyset", *common, "-o", str(tmp_path / "toy.pack"), "-q")
    assert packed.returncode == 0 and packed.stdout == "" and packed.stderr == "", packed.stderr
    assert (tmp_path / "toy.pack").is_file()
    (data / "datasets/toyset/defaults/annotations/imdb_val.npy").write_bytes(b"damaged")
    bad = run_mmf("zoo", "verify", "toyset", *common, "-q")
    assert bad.returncode == 2 and bad.stdout.splitlines() == [line for line in bad.stdout.splitlines()
                                                               if line.startswith("BAD")] != []
    assert "imdb_val.npy" in bad.stdout and len(bad.stderr.strip().splitlines()) == 1
