"""`mmf demo --out DIR`: a folder it did not make is refused untouched; a rerun replaces only what the demo wrote
(a link among them is removed, never followed); the disk use is stated and checked before anything is written."""
import os
import subprocess
import sys

import pytest

from mmfzoo_cli.demo_out import MARKER, WRITES, DemoOutError, claim, disk_estimate
from tests.zoo_helpers import ROOT


def demo(out, *args, timeout=120):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "mmfzoo_cli", "demo", "--out", str(out), "--questions", "40",
                           "--updates", "2", *args], capture_output=True, text=True, cwd=ROOT, env=env,
                          timeout=timeout)


def tree(folder):
    return {str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else None)
            for p in sorted(folder.rglob("*"))}


def test_a_folder_with_a_users_files_is_refused_and_left_intact(tmp_path):
    out = tmp_path / "mine"
    for rel in ("notes.txt", "data/datasets/textvqa/imdb.npy", "save/current.ckpt", "source/keep.py"):
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        (out / rel).write_text(f"the user's {rel}")
    before = tree(out)
    r = demo(out)
    assert r.returncode == 1, (r.stdout[-2000:], r.stderr[-2000:])
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "not empty" in lines[0] and MARKER in lines[0] and str(out) in lines[0]
    assert tree(out) == before  # nothing deleted, nothing added (not even the marker)


def test_the_demo_refuses_a_run_the_disk_cannot_hold_before_writing_anything(tmp_path):
    out = tmp_path / "new"
    r = demo(out, "--questions", str(10**12))
    assert r.returncode == 1, (r.stdout[-2000:], r.stderr[-2000:])
    line = r.stderr.strip().splitlines()[-1]
    assert "the demo writes about" in line and "free there" in line and "--questions" in line, line
    assert not out.exists()


def test_a_rerun_replaces_only_what_the_demo_wrote(tmp_path):
    out = tmp_path / "demo"
    assert claim(out, 10) == []  # new folder: made the demo's own
    assert (out / MARKER).is_file()
    for name in WRITES:
        target = out / name
        target.mkdir() if "." not in name else target.write_text("{}")
    (out / "save" / "current.ckpt").write_text("old demo run")
    (out / "save-mmt4").mkdir()
    (out / "save-mmt4" / "current.ckpt").write_text("the user's own run beside it")
    elsewhere = tmp_path / "users-data"
    elsewhere.mkdir()
    (elsewhere / "precious").write_text("keep")
    (out / "data").rmdir()
    (out / "data").symlink_to(elsewhere, target_is_directory=True)

    removed = claim(out, 10)
    assert sorted(removed) == sorted(WRITES)
    assert sorted(p.name for p in out.iterdir()) == [MARKER, "save-mmt4"]
    assert (out / "save-mmt4" / "current.ckpt").read_text() == "the user's own run beside it"
    assert (elsewhere / "precious").read_text() == "keep"  # the link went, not what it pointed to


def test_an_empty_folder_is_taken_and_a_file_is_refused(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert claim(empty, 10) == [] and (empty / MARKER).is_file()
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(DemoOutError, match="is a file"):
        claim(a_file, 10)
    assert a_file.read_text() == "x"


def test_the_estimate_grows_with_the_questions():
    assert disk_estimate(1200) > disk_estimate(300) > 0
