"""Opt-in record of which questions each rank trained on at each update: the evidence that a resumed run, on the
same or another number of processes, continued the global sample order (tests/test_train_resize.py reads it).

MMF_TRAIN_SAMPLE_TRACE=<folder> makes every rank append one JSON line per update to `<folder>/rank<R>.jsonl`:
{"update": n, "rank": r, "world": w, "batches": [[epoch, global batch index], ...], "qids": [...]}, the
question ids of this rank's slice of each micro-batch, in order. Unset (the default), the trainer does nothing
more than one `is None` test per micro-batch. An env var rather than a config key: it changes nothing of the
run, so it stays out of config.yaml and the resume check, and a test or a user can turn it on for any launch.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from mmftrain.errors import TrainError

ENV = "MMF_TRAIN_SAMPLE_TRACE"


class SampleTrace:
    """Appends this rank's records to `<folder>/rank<rank>.jsonl` (opened per record: a killed run loses none)."""

    def __init__(self, folder: Path, rank: int, world: int):
        self.path, self.rank, self.world = folder / f"rank{rank}.jsonl", rank, world

    def record(self, update: int, batches: list, qids: list) -> None:
        line = json.dumps({"update": update, "rank": self.rank, "world": self.world, "batches": batches,
                           "qids": qids})
        with open(self.path, "a") as f:
            f.write(line + "\n")


def from_env(rank: int, world: int, environ=os.environ) -> SampleTrace | None:
    """The trace `MMF_TRAIN_SAMPLE_TRACE` asks for, its folder created; None when it is unset or empty."""
    folder = environ.get(ENV)
    if not folder:
        return None
    path = Path(folder).expanduser()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise TrainError(f"{ENV}={folder}: cannot create the folder ({e.strerror}); choose another folder or "
                         f"unset {ENV}") from None
    return SampleTrace(path, rank, world)
