"""Packed-store features kept on the training device, batches gathered there (`training.features_on_device`).

TextVQA's train features are ~13.5 GB in fp16, which fits next to M4C on an 80 GB GPU. With them resident, the
loader moves only row numbers and the small per-question fields; the ~80 MB of features per batch of 128 are
one `index_select` per field on the device instead of a host gather, a pinned copy and a bus transfer.

`DeviceFeatures(ds, device)` wraps a packed dataset (or a concatenation of them, joint training): its
`dataset` is what the loader reads (the same batches, with each feature field replaced by [B, 1] int64 row
numbers into the resident tensors), and `materialize(batch)` turns a loaded batch back into the batch contract
of `mmfdata.batch`, byte for byte the features the plain path would have read.
"""
from __future__ import annotations

import copy

import numpy as np
import torch

from mmftrain.errors import ConfigError

# feature field -> the packed array its rows come from (image rows for objects/OCR appearance, token rows for
# the per-OCR-token-list fastText/PHOC)
FEATURES = ("obj_feat", "ocr_feat", "ocr_fasttext", "ocr_phoc")
CHUNK_BYTES = 256 << 20  # host->device copies in pieces: the memmap is never read into host RAM at once
# memory left free beside the resident features: M4C's training at batch 128 peaked at 5-8.5 GB on an H100
# (bf16 and fp16); the host needs less (the model trains in its own RAM either way, features are the copy)
RESERVE_BYTES = {"cuda": 10 << 30, "cpu": 2 << 30}


def _parts(ds) -> list:
    from mmfdata import ConcatDataset
    from mmfdata.packed import PackedDataset

    parts = list(ds.datasets) if isinstance(ds, ConcatDataset) else [ds]
    for p in parts:
        if not isinstance(p, PackedDataset):
            raise ConfigError(f"training.features_on_device=true needs packed feature stores, but "
                              f"{p.name}/{p.split} reads LMDB; run `mmf data pack {p.name}` or set "
                              f"training.features_on_device=false")
    return parts


def _to_device(arrays: list[np.ndarray], device: torch.device) -> torch.Tensor:
    """One device tensor holding `arrays` concatenated along rows, copied chunk by chunk."""
    rows = sum(len(a) for a in arrays)
    first = arrays[0]
    out = torch.empty((rows,) + first.shape[1:], dtype=torch.from_numpy(first[:0].copy()).dtype, device=device)
    row_bytes = max(1, first[:1].nbytes)
    step = max(1, CHUNK_BYTES // row_bytes)
    at = 0
    for a in arrays:
        for lo in range(0, len(a), step):
            piece = torch.from_numpy(np.array(a[lo:lo + step]))  # a writable copy of a memmap slice
            out[at + lo:at + lo + len(piece)].copy_(piece)
        at += len(a)
    return out


def free_memory(device: torch.device) -> tuple[int, int] | None:
    """(available, total) bytes of `device`'s memory (the host's for cpu), None where it cannot be read."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)
    try:
        info = dict(line.split(":", 1) for line in open("/proc/meminfo").read().splitlines() if ":" in line)
        return int(info["MemAvailable"].split()[0]) * 1024, int(info["MemTotal"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        return None


def check_room(need: int, device: torch.device) -> None:
    """Refuse (before a byte is copied) features that would leave `device` too little memory to train in."""
    room = free_memory(device)
    reserve = RESERVE_BYTES.get(device.type, RESERVE_BYTES["cuda"])
    if room is not None and need + reserve > room[0]:
        raise ConfigError(f"training.features_on_device=true needs {need / 1e9:.1f} GB on {device} for the train "
                          f"features plus {reserve / 2**30:.0f} GiB to train in, but only {room[0] / 1e9:.1f} GB "
                          f"of {room[1] / 1e9:.1f} GB is free; set training.features_on_device=false (the "
                          "features then stream from the packed store)")


class DeviceFeatures:
    """The feature arrays of packed dataset(s) on `device`; see the module docstring."""

    def __init__(self, ds, device: torch.device):
        from mmfdata import ConcatDataset
        from mmfdata.packed import _BufferPool

        parts = _parts(ds)
        self.device = torch.device(device)
        check_room(sum(p.a[key].nbytes for p in parts for key in FEATURES), self.device)
        self.tensors: dict[str, torch.Tensor] = {}
        proxies = [copy.copy(p) for p in parts]
        for key in FEATURES:
            arrays = [p.a[key] for p in parts]
            self.tensors[key] = _to_device(arrays, self.device)
            offset = 0
            for proxy, arr in zip(proxies, arrays):
                if key == FEATURES[0]:
                    proxy.a = dict(proxy.a)
                    proxy.buffers = _BufferPool()  # its own [B, 1] buffers, never the plain path's
                # the packed store gathers this [rows, 1] array exactly as it would the features
                proxy.a[key] = (np.arange(len(arr), dtype=np.int64) + offset)[:, None]
                offset += len(arr)
        self.dataset = ConcatDataset(proxies, name=ds.name) if isinstance(ds, ConcatDataset) else proxies[0]

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors.values())

    def materialize(self, batch: dict) -> dict:
        """`batch` (read from `self.dataset`, tensors on the device) with its features gathered on the device."""
        out = dict(batch)
        for key in FEATURES:
            rows = batch[key].reshape(-1).to(self.device, non_blocking=True)
            out[key] = self.tensors[key].index_select(0, rows)
        return out
