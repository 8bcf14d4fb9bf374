"""When may pickled data be loaded? Only from a zoo-verified install or with explicit user trust.

MMF's imdb `.npy` files and LMDB feature values are pickles; unpickling runs arbitrary code. The zoo writes
`.built.json` (`{"created_at", "version"}`) after it has verified an install's sha256, so a marker in any folder
between the file and `<data_dir>/datasets/<name>/<variation>/` means "these bytes are the ones the manifest hashed".
"""
from __future__ import annotations

import os

from .errors import UntrustedPickleError

MARKER = ".built.json"


def find_marker(path: str, stop: str | None = None) -> str | None:
    """The nearest `.built.json` in a folder containing `path`, not walking above `stop` (or the variation level).

    Without `stop`, the walk ends at the folder two levels below a `datasets` folder
    (`.../datasets/<name>/<variation>`), which is where the zoo's top marker lives.
    """
    cur = os.path.dirname(os.path.abspath(path))
    stop = os.path.abspath(stop) if stop else None
    while True:
        marker = os.path.join(cur, MARKER)
        if os.path.isfile(marker):
            return marker
        parent = os.path.dirname(cur)
        if cur == stop or parent == cur:
            return None
        # <...>/datasets/<name>/<variation>: the zoo's install root; never look above it
        if os.path.basename(os.path.dirname(parent)) == "datasets":
            return None
        cur = parent


def require_trusted(path: str, trust_pickle: bool, what: str = "pickled data") -> None:
    """Raise `UntrustedPickleError` unless `path` sits in a zoo-verified install or the user trusts it."""
    if trust_pickle or find_marker(path):
        return
    raise UntrustedPickleError(
        f"refusing to unpickle {what} in {path}: no zoo marker ({MARKER}) up to its "
        "datasets/<name>/<variation> folder, so its hash was never verified. Install it with `mmf zoo fetch`, "
        "or pass trust_pickle=True (CLI: --trust-pickle) if you trust this file."
    )
