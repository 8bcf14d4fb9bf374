"""Final batch assembly shared by every dataset class: teacher-forcing fields and contract dtypes."""
from __future__ import annotations

import numpy as np

from .targets import choose, teacher_forcing


def object_array(values) -> np.ndarray:
    """1-D object array (np.array would try to build a 2-D array from equal-length lists)."""
    out = np.empty(len(values), dtype=object)
    for i, v in enumerate(values):
        out[i] = v
    return out


def add_teacher_forcing(batch: dict, cand_seq: np.ndarray, cand_len: np.ndarray, cand_off: np.ndarray,
                        n_cands: np.ndarray, indices: np.ndarray, ds) -> dict:
    """Pick one candidate per question (seeded, see `targets.choose`) and add train_prev_inds & co.

    cand_seq/cand_len: all candidates of the batch's questions (or of the whole split), cand_off: row of each
    question's first candidate in them, n_cands: how many it has.
    """
    pick = choose(n_cands, indices, ds.seed, ds.epoch, ds.stream)
    rows = np.where(n_cands > 0, cand_off + pick, 0)
    if len(cand_seq):
        seq = np.asarray(cand_seq[rows], dtype=np.int64)
        length = np.where(n_cands > 0, np.asarray(cand_len[rows], dtype=np.int64), 0)
    else:
        seq = np.full((len(indices), ds.max_copy_steps), -1, dtype=np.int64)
        length = np.zeros(len(indices), dtype=np.int64)
    prev, mask, target_seq = teacher_forcing(seq, length, ds.bos, ds.eos, ds.max_copy_steps)
    batch["train_prev_inds"] = prev
    batch["train_loss_mask"] = mask
    batch["target_seq"] = target_seq
    return batch
