"""`ConcatDataset`: several datasets (e.g. TextVQA + ST-VQA train imdbs) as one, like MMF's MMFConcatDataset."""
from __future__ import annotations

import numpy as np

from .errors import DataConfigError


class ConcatDataset:
    """Concatenation with the `mmfdata.batch` interface; all parts must share one answer vocab."""

    def __init__(self, datasets: list, name: str | None = None):
        if not datasets:
            raise DataConfigError("ConcatDataset needs at least one dataset")
        vocab = datasets[0].answer_vocab
        for d in datasets[1:]:
            if list(d.answer_vocab) != list(vocab):
                raise DataConfigError(f"cannot concatenate {d.name}/{d.split}: its answer vocab differs from "
                                      f"{datasets[0].name}'s (joint training uses one answer processor)")
        self.datasets = datasets
        self.name = name or datasets[0].name
        self.split = datasets[0].split
        self.answer_vocab = vocab
        self.offsets = np.cumsum([0] + [len(d) for d in datasets])

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def set_epoch(self, epoch: int) -> None:
        for d in self.datasets:
            d.set_epoch(epoch)

    def get_batch(self, indices) -> dict:
        idx = np.asarray(indices, dtype=np.int64)
        if len(idx) and (idx.min() < 0 or idx.max() >= len(self)):
            raise IndexError(f"index out of range for {self.name}/{self.split} of size {len(self)}")
        part = np.searchsorted(self.offsets, idx, side="right") - 1
        pieces, order = [], []
        for p in np.unique(part):
            sel = np.nonzero(part == p)[0]
            pieces.append(self.datasets[p].get_batch(idx[sel] - self.offsets[p]))
            order.append(sel)
        if len(pieces) == 1:
            return pieces[0]
        inverse = np.argsort(np.concatenate(order), kind="stable")
        return {key: np.concatenate([b[key] for b in pieces])[inverse] for key in pieces[0]}
