"""Checkpoints: atomic writes, full resume state (RNG per rank, sampler position), MMF-compatible keys.

Files under env.save_dir: `current.ckpt` (latest), `best.ckpt` (best by early_stop.criteria),
`models/model_<update>.ckpt` (periodic, pruned to checkpoint.max_to_keep), `<model>_final.pth` (plain state dict
of the best model, written at the end), `config.yaml`.
"""
from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch

from mmftrain.errors import CheckpointError
from zoo.fsutil import atomic_write_bytes  # noqa: F401 - the one definition; run/evaluate/logs use it from here


def save(path: Path, state: dict) -> None:
    """torch.save `state` atomically: a crash mid-write leaves the previous file intact."""
    atomic_write_bytes(Path(path), lambda f: torch.save(state, f))


def load(path: Path, trusted: bool = False) -> dict:
    """Load a checkpoint with `weights_only=True`; fall back to full unpickling only when `trusted`
    (an MMF zoo checkpoint from a verified install, or the user's explicit training.trust_pickle)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist; check checkpoint.resume_file")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises many types
        if not trusted:
            first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
            raise CheckpointError(f"cannot load {path} as plain tensors ({first}); if you trust this file, set "
                                  f"training.trust_pickle=true") from None
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # noqa: BLE001
        raise CheckpointError(f"checkpoint {path} is unreadable ({type(e).__name__}: {e}); it may be truncated")


def rng_state() -> dict:
    """This process's Python, numpy, torch (and CUDA) RNG states, as tensors and plain types (weights_only-safe)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    py = random.getstate()
    state = {"python": [py[0], list(py[1]), py[2]],
             "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                       "has_gauss": int(has_gauss), "gauss": float(gauss)},
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def prune(folder: Path, keep: int) -> None:
    """Keep the newest `keep` periodic `model_<update>.ckpt` files (keep < 0: keep all)."""
    if keep is None or keep < 0:
        return
    files = sorted(Path(folder).glob("model_*.ckpt"), key=lambda p: int(p.stem.split("_")[1]))
    for p in files[: max(0, len(files) - keep)]:
        p.unlink(missing_ok=True)


def model_state_from(obj: dict) -> dict:
    """The model state dict inside an own or MMF checkpoint (`{'model': ...}`) or a bare state dict."""
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        return obj["model"]
    if isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return obj
    raise CheckpointError("checkpoint holds neither a 'model' entry nor a state dict")
