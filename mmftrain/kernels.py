"""How a run computes: precision (TF32, autocast), attention kernels, and the compiled training forward.

Everything here is a process-wide torch switch or a wrapper around the model's forward; the trainer reads the
`training` config section once through these functions and never touches the switches itself.
"""
from __future__ import annotations

import contextlib

import torch

from mmftrain.config import ATTENTION_BACKENDS
from mmftrain.errors import ConfigError
from mmftrain.logs import log

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


def set_precision(training: dict, cuda: bool) -> None:
    """TF32, cuDNN autotuning and attention kernels for this process, from the `training` config section."""
    if training["fp16"] and not cuda:
        raise ConfigError("training.fp16=true needs a CUDA device; use training.bf16=true on CPU")
    if not cuda:
        return
    tf32 = bool(training["tf32"])
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
    torch.set_float32_matmul_precision("high" if tf32 else "highest")
    torch.backends.cudnn.benchmark = bool(training["cudnn_benchmark"])
    set_attention_backend(str(training["attention_backend"]))
    if not (training["fp16"] or training["bf16"]):
        log.info("precision: fp32 with %s matmuls (training.tf32=%s)", "TF32" if tf32 else "strict fp32",
                 str(tf32).lower())


def autocast(training: dict, device_type: str):
    """Autocast for fp16/bf16 (fp32 otherwise)."""
    if training["fp16"]:
        return torch.autocast(device_type, dtype=torch.float16)
    if training["bf16"]:
        return torch.autocast(device_type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


GRAPH_MODES = ("reduce-overhead", "max-autotune")  # the torch.compile modes that record CUDA graphs


def compile_mode(training: dict, cuda: bool, world: int) -> str:
    """training.compile_mode, with auto resolved: CUDA graphs on one CUDA device without gradient accumulation
    (a graph's outputs are overwritten by its next replay, so accumulated gradients and DDP's bucket hooks stay
    eager), torch's default mode otherwise."""
    mode = str(training["compile_mode"])
    accumulate = int(training["update_frequency"])
    if mode in GRAPH_MODES and cuda and accumulate > 1:
        # cudagraph trees hand the first micro-batch's gradient buffer to .grad and overwrite it with the next
        # one's: the accumulated gradient is silently wrong (pytorch/pytorch#96693)
        raise ConfigError(f"training.compile_mode={mode} records CUDA graphs, which lose accumulated gradients "
                          f"with training.update_frequency={accumulate}; use training.compile_mode=auto or default")
    if mode != "auto":
        return mode
    graphs = cuda and world == 1 and accumulate == 1
    return "reduce-overhead" if graphs else "default"


class TrainForward:
    """The training forward: `model` under DDP across ranks, then torch.compile when asked; a compiler that fails
    (when wrapping, or on the first call, where torch.compile really compiles) leaves it eager with a warning."""

    def __init__(self, model: torch.nn.Module, training: dict, device: torch.device, world: int):
        self.model = self.module = model
        cuda = device.type == "cuda"
        if world > 1:
            self.module = torch.nn.parallel.DistributedDataParallel(
                model, device_ids=[device.index] if cuda else None,
                find_unused_parameters=bool(training["find_unused_parameters"]))
        self.graphs, self._checked = False, True
        if training["compile"]:
            mode = compile_mode(training, cuda, world)
            try:
                # GRAPH_MODES record CUDA graphs (the batch shapes are static: the sampler drops ragged batches)
                self.module = torch.compile(self.module, mode=mode)
                self.graphs, self._checked = mode in GRAPH_MODES, False
            except Exception as e:  # noqa: BLE001 - any backend failure means: run eager
                log.warning("torch.compile unavailable (%s); training eager", e)

    def no_sync(self):
        """DDP's no_sync (gradient accumulation without an all-reduce)."""
        return self.module.no_sync()

    def __call__(self, batch: dict) -> torch.Tensor:
        if self.graphs:
            torch.compiler.cudagraph_mark_step_begin()  # the previous step's graph outputs are no longer read
        if self._checked:
            return self.module(batch)
        try:
            out = self.module(batch)
        except Exception as e:  # noqa: BLE001 - any compile failure means: run eager
            log.warning("torch.compile failed on the first step (%s: %s); falling back to eager",
                        type(e).__name__, (str(e).splitlines() or [""])[0][:200])
            self.module = getattr(self.module, "_orig_mod", self.model)
            self.graphs = False
            out = self.module(batch)
        self._checked = True
        return out
