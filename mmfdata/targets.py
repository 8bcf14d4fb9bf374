"""Teacher-forcing fields from compact candidates, vectorized over a batch.

MMF samples the teacher-forcing sequence with `np.random.choice` inside each DataLoader worker, so runs are not
reproducible. Here the choice for a question is a counter-based hash of (seed, epoch, stream, index): the same on
every path (LMDB or packed), in every worker layout, and without a per-sample Python loop.
"""
from __future__ import annotations

import numpy as np

_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser on a uint64 array (wrapping arithmetic)."""
    x = x ^ (x >> np.uint64(30))
    x = x * _M1
    x = x ^ (x >> np.uint64(27))
    x = x * _M2
    return x ^ (x >> np.uint64(31))


def choose(n_cands: np.ndarray, indices: np.ndarray, seed: int, epoch: int, stream: int = 0) -> np.ndarray:
    """A candidate number in [0, n) per question (0 where n == 0), reproducible from (seed, epoch, stream, index)."""
    with np.errstate(over="ignore"):
        key = _mix(np.full(1, (seed & 0xFFFFFFFF) << 32 | (epoch & 0xFFFFFFFF), dtype=np.uint64) + _GOLDEN)
        key = _mix(key ^ np.uint64(stream & 0xFFFFFFFFFFFF) * _GOLDEN)
        h = _mix(key + np.asarray(indices, dtype=np.uint64) * _GOLDEN)
    n = np.asarray(n_cands, dtype=np.uint64)
    return np.where(n > 0, h % np.maximum(n, np.uint64(1)), np.uint64(0)).astype(np.int64)


def teacher_forcing(seq: np.ndarray, seq_len: np.ndarray, bos: int, eos: int, steps: int = 12):
    """(train_prev_inds, train_loss_mask, target_seq) for chosen sequences.

    seq: int [B, steps] (-1 padded) first indices of each chosen sequence; seq_len: its true length (0 = none).
    As MMF: prev = [BOS, s0, s1, ...]; the loss covers min(len + 1, steps) steps; the target at step t >= 1 is
    s_t, or EOS right after the last word.
    """
    bsz = seq.shape[0]
    t = np.arange(steps)[None, :]
    length = np.asarray(seq_len, dtype=np.int64)[:, None]
    dec = np.where(length > 0, np.minimum(length + 1, steps), 0)
    active = t < dec
    shifted = np.concatenate([np.full((bsz, 1), bos, np.int64), seq[:, : steps - 1].astype(np.int64)], axis=1)
    prev = np.where(active, shifted, 0)
    loss_mask = active.astype(np.float32)
    tgt = np.where(t < length, seq.astype(np.int64), eos)
    target_seq = np.where(active & (t >= 1), tgt, -1)
    return prev, loss_mask, target_seq
