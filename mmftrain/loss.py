"""M4C's loss, `m4c_decoding_bce_with_mask` (mmf/modules/losses.py)."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def m4c_decoding_bce_with_mask(scores: torch.Tensor, targets: torch.Tensor, loss_mask: torch.Tensor) -> torch.Tensor:
    """Sigmoid BCE over all V+50 outputs of every decoding step, masked per step, summed, divided by the number
    of valid steps in the batch (at least 1): per valid step and summed over classes, not averaged over them.

    Args:
        scores: logits [B, T, C]. targets: [B, T, C] in [0, 1]. loss_mask: [B, T] (1 = step counts).
    """
    losses = F.binary_cross_entropy_with_logits(scores.float(), targets, reduction="none")
    losses = losses * loss_mask[..., None]
    return losses.sum() / torch.clamp(loss_mask.sum(), min=1.0)

