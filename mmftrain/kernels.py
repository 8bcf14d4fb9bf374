"""Process-wide CUDA kernel choices of a run (`training.attention_backend`)."""
from __future__ import annotations

import torch

from mmftrain.config import ATTENTION_BACKENDS

# backend -> the scaled_dot_product_attention kernels left enabled; math stays on as the fallback of every
# fused kernel (a fused kernel that cannot take an input shape or mask then degrades instead of failing)
_ENABLED = {"auto": ("cudnn", "flash", "efficient", "math"), "cudnn": ("cudnn", "math"), "flash": ("flash", "math"),
            "efficient": ("efficient", "math"), "math": ("math",)}
assert set(_ENABLED) == set(ATTENTION_BACKENDS)


def set_attention_backend(name: str) -> None:
    """Enable exactly the attention kernels of `name` (one of config.ATTENTION_BACKENDS) for this process."""
    on = _ENABLED[name]
    torch.backends.cuda.enable_cudnn_sdp("cudnn" in on)
    torch.backends.cuda.enable_flash_sdp("flash" in on)
    torch.backends.cuda.enable_mem_efficient_sdp("efficient" in on)
    torch.backends.cuda.enable_math_sdp("math" in on)
