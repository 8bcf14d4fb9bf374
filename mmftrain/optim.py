"""Optimizer with M4C's parameter groups and MMF's "pythia" warmup + step LR schedule."""
from __future__ import annotations

from bisect import bisect_right

import torch

from mmftrain.errors import ConfigError


class WarmupStepLambda:
    """LR factor for update i (MMF `lr_lambda_update`): linear warmup factor->1 while i <= warmup_iterations,
    then lr_ratio ** (number of lr_steps <= i). A class (not a closure) so LambdaLR can checkpoint it."""

    def __init__(self, training: dict):
        self.enabled = bool(training.get("lr_scheduler"))
        self.use_warmup = bool(training.get("use_warmup"))
        self.warmup_iterations = int(training.get("warmup_iterations") or 0)
        self.warmup_factor = float(training.get("warmup_factor", 1.0))
        self.lr_steps = [int(s) for s in training.get("lr_steps") or []]
        self.lr_ratio = float(training.get("lr_ratio", 0.1))

    def __call__(self, i: int) -> float:
        if not self.enabled:
            return 1.0
        if self.use_warmup and i <= self.warmup_iterations and self.warmup_iterations > 0:
            alpha = i / self.warmup_iterations
            return self.warmup_factor * (1.0 - alpha) + alpha
        return self.lr_ratio ** bisect_right(self.lr_steps, i)


def build_optimizer(model, cfg: dict, fused: bool = False) -> torch.optim.Optimizer:
    """Adam/AdamW over the model's parameter groups (text_bert and fc7 at lr x0.1 for M4C)."""
    opt = cfg["optimizer"]
    params = dict(opt.get("params") or {})
    lr = float(params.pop("lr", 1e-4))
    kinds = {"Adam": torch.optim.Adam, "AdamW": torch.optim.AdamW, "adam": torch.optim.Adam,
             "adam_w": torch.optim.AdamW, "adamw": torch.optim.AdamW}
    if opt.get("type") not in kinds:
        raise ConfigError(f"optimizer.type={opt.get('type')!r} is not supported; use Adam or AdamW")
    allowed = {"eps", "weight_decay", "betas", "amsgrad"}
    bad = sorted(set(params) - allowed)
    if bad:
        raise ConfigError(f"optimizer.params has unsupported key(s) {bad}; allowed: lr, {', '.join(sorted(allowed))}")
    if "betas" in params:
        params["betas"] = tuple(params["betas"])
    groups = model.optimizer_groups(lr)
    kwargs = {"fused": True} if fused else {}
    return kinds[opt["type"]](groups, lr=lr, **{k: float(v) if k in ("eps", "weight_decay") else v
                                                 for k, v in params.items()}, **kwargs)


def build_scheduler(optimizer, cfg: dict) -> torch.optim.lr_scheduler.LambdaLR:
    """LambdaLR stepped once per update (factor from `WarmupStepLambda`)."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, WarmupStepLambda(cfg["training"]))
