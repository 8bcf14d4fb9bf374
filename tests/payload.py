"""A pickle that proves code ran: unpickling `Payload(path)` creates `path`. Trust tests assert it never exists."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np


class Payload:
    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def evil_imdb(proof: Path) -> bytes:
    """The bytes of an imdb `.npy` (an object array, as MMF's are) whose loading creates `proof`."""
    buf = io.BytesIO()
    np.save(buf, np.array([Payload(proof)], dtype=object), allow_pickle=True)
    return buf.getvalue()
