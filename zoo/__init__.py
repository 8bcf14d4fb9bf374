"""zoo: fetch, verify and install MMF zoo resources (no torch import anywhere in this package).

One-shot API (the CLI is a thin layer over it)::

    import zoo
    zoo.fetch(["textvqa", "textvqa.ocr_en"], data_dir="/data/mmf")            # -> list of ResourceReport
    zoo.fetch("m4c.textvqa.defaults", mirrors=["http://mirror.lab:8765/"])

Errors are `zoo.errors.ZooError` subclasses with one-line messages that say what to do.
"""
from __future__ import annotations

__all__ = ["fetch", "is_installed"]


def fetch(keys, data_dir=None, *, mirrors=None, zoo_paths=None, offline=False, from_path=None, progress=True,
          **transfer):
    """Install zoo `keys` (a key or a list) into `data_dir` (default: MMF's data dir); returns per-resource reports.

    Offline when `offline` or MMF_ZOO_OFFLINE is set. `progress`: True shows what `mmf zoo fetch` shows on a
    terminal (byte/ETA bars) and a line per resource every 30 s in a non-interactive log; False nothing.
    `transfer` takes TransferOptions fields (connections, chunk_size, stall_timeout, ...).
    """
    from pathlib import Path

    from zoo.install import FetchOptions, fetch as _fetch
    from zoo.datadir import default_data_dir
    from zoo.manifest import load_zoo
    from zoo.progress import Progress
    from zoo.transfer import TransferOptions

    keys = [keys] if isinstance(keys, str) else list(keys)
    bars = Progress.auto() if progress else None
    opts = FetchOptions(data_dir=Path(data_dir) if data_dir else default_data_dir(), mirrors=list(mirrors or []),
                        transfer=TransferOptions(offline=offline, **transfer), progress=bars,
                        from_path=Path(from_path) if from_path else None, say=lambda m: None)
    try:
        return _fetch(load_zoo(zoo_paths or []), keys, opts)
    finally:
        if bars is not None:
            bars.close()


def is_installed(key, data_dir=None, zoo_paths=None) -> bool:
    """True when every folder of `key` carries MMF's `.built.json` for the manifest's version."""
    from pathlib import Path

    from zoo.datadir import default_data_dir
    from zoo.layout import is_built, target_for
    from zoo.manifest import load_zoo

    target = target_for(load_zoo(zoo_paths or []), key)
    root = Path(data_dir) if data_dir else default_data_dir()
    return all(is_built(folder, target.entry.version) for folder in target.marker_folders(root))
