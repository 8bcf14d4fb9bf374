"""zoo: fetch, verify and install MMF zoo resources (no torch import anywhere in this package).

One-shot API (the CLI is a thin layer over it)::

    import zoo
    zoo.fetch(["textvqa", "textvqa.ocr_en"], data_dir="/data/mmf")            # -> list of ResourceReport
    zoo.fetch("m4c.textvqa.defaults", mirrors=["http://mirror.lab:8765/"])

Errors are `zoo.errors.ZooError` subclasses with one-line messages that say what to do.
"""
from __future__ import annotations

__all__ = ["fetch", "is_installed", "place"]


def fetch(keys, data_dir=None, *, mirrors=None, zoo_paths=None, offline=False, from_path=None, trust_pack=False,
          progress=True, **transfer):
    """Install zoo `keys` (a key or a list) into `data_dir` (default: MMF's data dir); returns per-resource reports.

    `from_path`: like `mmf zoo fetch --from`, one path or a list of archives, folders and packs (a pack's own
    entries are used as the CLI uses them; `trust_pack` is --trust-pack). Offline when `offline` or MMF_ZOO_OFFLINE
    is set. `progress`: True shows what `mmf zoo fetch` shows on a terminal (byte/ETA bars) and a line per resource
    every 30 s in a non-interactive log; False nothing.
    `transfer` takes TransferOptions fields (connections, chunk_size, stall_timeout, ...).
    """
    from pathlib import Path

    import logging

    from zoo.install import FetchOptions, fetch as _fetch
    from zoo.logfmt import say_to
    from zoo.datadir import default_data_dir
    from zoo.manifest import load_zoo
    from zoo.pack import merge_packs
    from zoo.progress import Progress
    from zoo.sources import from_paths
    from zoo.transfer import TransferOptions

    keys = [keys] if isinstance(keys, str) else list(keys)
    paths = from_paths(from_path)
    z = load_zoo(zoo_paths or [])
    merge_packs(z, paths, consent=trust_pack)
    bars = Progress.auto() if progress else None
    opts = FetchOptions(data_dir=Path(data_dir) if data_dir else default_data_dir(), mirrors=list(mirrors or []),
                        transfer=TransferOptions(offline=offline, **transfer), progress=bars,
                        from_path=paths or None, say=say_to(logging.getLogger("zoo")))
    try:
        return _fetch(z, keys, opts)
    finally:
        if bars is not None:
            bars.close()


def is_installed(key, data_dir=None, zoo_paths=None) -> bool:
    """True when every folder of `key` carries MMF's `.built.json` for the manifest's version."""
    return place(key, data_dir, zoo_paths).current


def place(key, data_dir=None, zoo_paths=None):
    """Where `key` lives in `data_dir` (default: MMF's) and which version is installed there: a `layout.Place`.
    Raises `zoo.errors.UnknownKeyError` (naming the nearest keys) for a key no manifest has."""
    from pathlib import Path

    from zoo.datadir import default_data_dir
    from zoo.layout import place_of
    from zoo.manifest import load_zoo

    return place_of(load_zoo(zoo_paths or []), key, Path(data_dir) if data_dir else default_data_dir())
