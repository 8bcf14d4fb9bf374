"""One readable screen: `mmf train`'s log lines never land on its progress bar's row, and `mmf zoo`, `mmf data` and
`mmf train` log in one format on one stream (stderr; stdout is for results)."""
import os
import re
import subprocess

import yaml

from tests.test_train_e2e import data_dir, train_cmd  # noqa: F401 (data_dir is a fixture)
from tests.zoo_helpers import ROOT, make_zoo, run_mmf
from zoo.testing.faultserver import FaultServer

LINE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d \| (INFO|WARNING|ERROR) \| (zoo|mmfdata|mmftrain|py\.warnings) : ")


def screen(raw: str) -> list[str]:
    """The rows a terminal shows for `raw`: '\r' returns to the row's start and overwrites, '\n' moves down,
    ESC[A (tqdm's cursor-up for stacked bars) moves up."""
    rows: list[list[str]] = [[]]
    y = x = 0
    i = 0
    while i < len(raw):
        if raw.startswith("\x1b[A", i):
            y, i = max(0, y - 1), i + 3
            continue
        ch = raw[i]
        i += 1
        if ch == "\n":
            y, x = y + 1, 0
            while len(rows) <= y:
                rows.append([])
        elif ch == "\r":
            x = 0
        else:
            row = rows[y]
            row.extend(" " * (x - len(row) + 1) if x >= len(row) else "")
            row[x] = ch
            x += 1
    return ["".join(row).rstrip() for row in rows]


def test_log_lines_and_the_progress_bar_share_the_screen(data_dir, tmp_path):  # noqa: F811
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "COLUMNS": "160"}
    # both streams into one pipe, as a terminal shows them
    r = subprocess.run(train_cmd(data_dir, tmp_path / "save", "training.max_updates=6", "training.progress_bar=true",
                                 "training.checkpoint_interval=1000"),
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:]
    rows = screen(r.stdout)
    assert any("upd" in row and "|" in row and "%" in row for row in rows), rows  # the bar was drawn
    logged = [row for row in rows if " : progress: " in row]
    assert len(logged) == 6, rows  # log_interval=1
    for row in rows:
        if " | INFO | " in row or " | WARNING | " in row:
            assert LINE.match(row), f"a log line shares its row with something else: {row!r}"


def test_zoo_data_and_train_log_in_one_format_on_stderr(data_dir, tmp_path):  # noqa: F811
    zoo = make_zoo(tmp_path, feature_bytes=1 << 16)
    manifest = yaml.safe_load(zoo.manifest.read_text())
    del manifest["toyset"]["defaults"]["resources"]["extras"][0]["hashcode"]  # the zoo warns about it
    zoo.manifest.write_text(yaml.safe_dump(manifest))
    with FaultServer(zoo.mirror) as srv:
        fetched = run_mmf("zoo", "fetch", "toyset", "--zoo", str(zoo.manifest), "--data-dir", str(tmp_path / "d"),
                          "--mirror", srv.url)
    assert fetched.returncode == 0, fetched.stderr[-2000:]
    packed = run_mmf("data", "pack", "textvqa", "--splits", "val", "--data-dir", str(data_dir), cwd=ROOT)
    assert packed.returncode == 0, packed.stderr[-2000:]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    trained = subprocess.run(train_cmd(data_dir, tmp_path / "save", "training.max_updates=1"), capture_output=True,
                             text=True, env=env, timeout=300)
    assert trained.returncode == 0, trained.stderr[-2000:]
    for name, result, logger in (("zoo fetch", fetched, "zoo"), ("data pack", packed, "mmfdata"),
                                 ("train", trained, "mmftrain")):
        lines = [line for line in screen(result.stderr) if LINE.match(line)]
        assert any(f"| {logger} : " in line for line in lines), (name, result.stderr[-2000:])
        assert not any(LINE.match(line) for line in result.stdout.splitlines()), (name, result.stdout[-2000:])
    assert any(LINE.match(line) and "no hashcode" in line for line in screen(fetched.stderr)), fetched.stderr
    assert not [line for line in packed.stderr.splitlines() if line.startswith("INFO mmfdata")]
