"""Usage errors of every `mmf` command (not only `mmf zoo`) follow the one exit-code table, zoo.errors.EXIT_CODES:
USAGE (1) and one `error:` line on stderr, never click's 2, which the table gives to a verification failure."""
from __future__ import annotations

import pytest

from tests.zoo_helpers import run_mmf
from zoo.errors import EXIT_CODES, USAGE


@pytest.mark.parametrize("args, names", [
    (("data", "synth"), "--out"),  # a missing option
    (("data", "pack", "--no-such-option"), None),  # mmf data pack takes extra arguments: its own error
    (("data", "no-such-command"), "no-such-command"),
    (("demo", "--questions", "many"), "--questions"),  # a bad value
    (("plot",), "save_dir"),  # a missing argument
    (("no-such-command",), "no-such-command"),
    (("train", "--no-such-option"), "--no-such-option"),
])
def test_usage_errors_exit_with_the_tables_usage_code_in_one_line(tmp_path, args, names):
    assert EXIT_CODES[2].startswith("verification failure")  # why click's 2 would lie
    r = run_mmf(*args, cwd=tmp_path, env={"COLUMNS": "200"})
    lines = r.stderr.strip().splitlines()
    assert r.returncode == USAGE, (r.returncode, r.stderr)
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    assert names is None or names in lines[0], lines[0]
