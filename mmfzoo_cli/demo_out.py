"""The folder `mmf demo --out DIR` writes into: it is the demo's own, or it is refused.

A folder is the demo's when it is new, empty, or holds the demo's marker file (written before anything else, so a
demo that failed half way is still recognised). A rerun replaces only the entries the demo writes (WRITES), and a
link among them is removed as a link, never followed: nothing the demo did not write is deleted, and a user's data
dir passed by mistake (`--out ~/.cache/torch/mmf`) is refused untouched.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from zoo.fsutil import existing_ancestor, folder_problem, human

MARKER = ".mmf-demo"
WRITES = ("source", "data", "save", "demo.json")  # everything the demo writes under DIR, the marker aside

# What the demo writes, fitted to measured runs (du -sb): source + data (archives, the installed data with its kept
# archives, the packed store) were 750 MB at --questions 300 and 2,490 MB at 1200, i.e. 1.93 MB per question plus
# 170 MB; the save dir (checkpoints of the small M4C, reports) was 266 MB at 240 updates.
BYTES_PER_QUESTION = 1_950_000
FIXED_BYTES = (170 + 300) * 10**6
MARGIN = 1.1  # free space asked beyond the estimate


class DemoOutError(Exception):
    """--out cannot be used; the message says why and what to do. Nothing was changed."""


def disk_estimate(questions: int) -> int:
    """What a demo with `questions` train questions writes under --out, in bytes."""
    return questions * BYTES_PER_QUESTION + FIXED_BYTES


def claim(out: Path, questions: int) -> list[str]:
    """Make `out` the demo's folder (refusing one that is not), check the disk holds the estimate, remove the
    previous demo's outputs; returns the names removed."""
    out = Path(out).absolute()
    problem = folder_problem(out)
    if problem:
        raise DemoOutError(f"--out {out} {problem}; choose another folder")
    if out.is_dir() and any(out.iterdir()) and not _is_ours(out):
        raise DemoOutError(f"--out {out} is not empty and was not made by mmf demo (no {MARKER} file in it); "
                           "choose a new or empty folder (nothing in it was changed)")
    need = disk_estimate(questions)
    free = shutil.disk_usage(existing_ancestor(out)).free + _previous_bytes(out)
    if free < need * MARGIN:
        raise DemoOutError(f"--out {out}: the demo writes about {human(need)} with --questions {questions}, and "
                           f"only {human(free)} is free there; free space, choose another --out, or pass fewer "
                           "--questions")
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text(json.dumps({"written_by": "mmf demo", "writes": list(WRITES)}) + "\n")
    removed = []
    for name in WRITES:
        path = out / name
        if path.is_symlink() or path.is_file():
            path.unlink()
        elif path.is_dir():
            shutil.rmtree(path)
        else:
            continue
        removed.append(name)
    return removed


def _is_ours(out: Path) -> bool:
    marker = out / MARKER
    return marker.is_file() and not marker.is_symlink()


def _previous_bytes(out: Path) -> int:
    """Bytes of a previous demo's outputs (freed before the new one writes); 0 for a folder that is not ours."""
    if not _is_ours(out):
        return 0
    total = 0
    for name in WRITES:
        path = out / name
        if path.is_symlink():
            continue
        files = [path] if path.is_file() else path.rglob("*") if path.is_dir() else []
        total += sum(f.lstat().st_size for f in files if f.is_file() and not f.is_symlink())
    return total
