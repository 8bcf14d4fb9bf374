"""Shared helpers for the mmfdata tests: one synthetic install per test session (real files, real LMDBs)."""
from __future__ import annotations

import atexit
import os
import shutil
import tempfile

import numpy as np

_CACHE: dict[str, str] = {}


SYNTH = {"questions": 48, "seed": 3, "stvqa_questions": 16}


def shared_synth() -> str:
    """A read-mostly synthetic data_dir (TextVQA + ST-VQA) created once per process. Do not modify it."""
    if "dir" not in _CACHE:
        root = tempfile.mkdtemp(prefix="mmfdata-test-")
        atexit.register(shutil.rmtree, root, True)
        _CACHE["dir"] = copy_synth(os.path.join(root, "data"))
    return _CACHE["dir"]


def copy_synth(dest: str) -> str:
    """A private install, the same bytes as the shared one, that a test may damage. Generated again (well under a
    second) rather than copied: a copied data dir is not trusted with pickles until `mmf zoo adopt`."""
    from mmfdata.synth import write_synthetic

    write_synthetic(dest, **SYNTH)
    return dest


def batches_equal(a: dict, b: dict) -> list[str]:
    """Keys whose values differ between two batches (object arrays compared element by element)."""
    bad = []
    for key in a:
        x, y = a[key], b[key]
        if x.dtype == object:
            same = len(x) == len(y) and all(list(p) == list(q) if isinstance(p, list) else p == q
                                            for p, q in zip(x, y))
        else:
            same = x.dtype == y.dtype and np.array_equal(x, y)
        if not same:
            bad.append(key)
    return bad
