"""MMF's default folders, the one definition every command uses (`mmf zoo`, `mmf data`, `mmf train`).

MMF: env.cache_dir = $MMF_CACHE_DIR, else $TORCH_HOME/mmf (torch: $TORCH_HOME, else $XDG_CACHE_HOME/torch, else
~/.cache/torch); env.data_dir = $MMF_DATA_DIR, else <cache_dir>/data. Imports nothing heavy (no torch, no yaml).
"""
from __future__ import annotations

import os
from pathlib import Path


def default_cache_dir(env=None) -> Path:
    env = os.environ if env is None else env
    if env.get("MMF_CACHE_DIR"):
        return Path(env["MMF_CACHE_DIR"]).expanduser()
    torch_home = env.get("TORCH_HOME") or os.path.join(env.get("XDG_CACHE_HOME") or "~/.cache", "torch")
    return Path(torch_home).expanduser() / "mmf"


def default_data_dir(env=None) -> Path:
    env = os.environ if env is None else env
    if env.get("MMF_DATA_DIR"):
        return Path(env["MMF_DATA_DIR"]).expanduser()
    return default_cache_dir(env) / "data"
