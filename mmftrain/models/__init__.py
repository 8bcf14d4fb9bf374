"""Model builders. One explicit table maps MMF model names to builders (no registry)."""
from __future__ import annotations

import logging
import pickle
from pathlib import Path

from mmfconfig.paths import FC7_WEIGHTS, model_files
from mmftrain.errors import CheckpointError, ConfigError

log = logging.getLogger("mmftrain")

__all__ = ["build_m4c", "build_model", "load_mmf_state_dict", "default_m4c_config"]


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def default_m4c_config() -> dict:
    """`model_config.m4c` from configs/models/m4c/defaults.yaml (the single source of the defaults)."""
    from mmftrain.config import CONFIGS_DIR, load_yaml

    return load_yaml(CONFIGS_DIR / "models" / "m4c" / "defaults.yaml")["model_config"]["m4c"]


def build_m4c(answer_vocab_size: int = 5000, **overrides):
    """Full-size M4C with random weights, no data or network needed.

    Args:
        answer_vocab_size: size of the fixed answer vocabulary (classifier rows); the output space is this + 50.
        **overrides: nested `model_config.m4c` keys, e.g. `mmt={"num_hidden_layers": 2}`.
    Returns:
        `mmftrain.models.m4c.M4C`; with the default 5,000-word vocab it has 90,850,184 parameters (as MMF logs).

    >>> sum(p.numel() for p in build_m4c().parameters())
    90850184
    """
    from mmftrain.models.m4c import M4C

    return M4C(_merge(default_m4c_config(), overrides), answer_vocab_size)


def load_fc7_weights(model, folder: Path, trust_pickle: bool = False) -> None:
    """Copy detectron's `fc7_w.pkl`/`fc7_b.pkl` (pickled numpy arrays) into both fc7 layers.

    Pickles are only read from a zoo-verified install (`zoo.trust`) or with `trust_pickle`.
    """
    import numpy as np
    import torch

    w_file, b_file = folder / FC7_WEIGHTS, folder / "fc7_b.pkl"
    from zoo.trust import untrusted_reason

    reason = None if trust_pickle else untrusted_reason(w_file) or untrusted_reason(b_file)
    if reason:
        fix = reason.fix or "fetch it with `mmf zoo fetch detectron.vmb_weights`"
        raise CheckpointError(f"refusing to unpickle {w_file}: {reason}; {fix}, or set training.trust_pickle=true "
                              "if you trust this file")
    try:
        with open(w_file, "rb") as f:
            w = np.asarray(pickle.load(f), dtype=np.float32)
        with open(b_file, "rb") as f:
            b = np.asarray(pickle.load(f), dtype=np.float32)
    except (OSError, pickle.UnpicklingError, EOFError) as e:
        raise CheckpointError(f"cannot read fc7 weights in {folder}: {e}; re-install it with "
                              "`mmf zoo verify --repair detectron.vmb_weights`") from None
    for layer in (model.obj_faster_rcnn_fc7.lc, model.ocr_faster_rcnn_fc7.lc):
        if tuple(layer.weight.shape) != w.shape or tuple(layer.bias.shape) != b.shape:
            raise ConfigError(f"fc7 weights in {folder} have shape {w.shape}, the model expects "
                              f"{tuple(layer.weight.shape)}; set model_config.m4c.fc7_out_dim={b.shape[0]}")
        with torch.no_grad():
            layer.weight.copy_(torch.from_numpy(w))
            layer.bias.copy_(torch.from_numpy(b))


def load_text_bert_weights(model, path: Path) -> None:
    """Initialise the text BERT from a bert-base-uncased state dict file (first N layers, as MMF)."""
    import torch

    from mmftrain.models.bert import bert_base_state_for_text_bert

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises many types for a bad file
        raise CheckpointError(f"cannot load BERT weights {path}: {e}; re-fetch it with `mmf zoo fetch bert-base-uncased`") from None
    mapped = bert_base_state_for_text_bert(state, model.text_bert_config.num_hidden_layers)
    missing, _ = model.text_bert.load_state_dict(mapped, strict=False)
    if missing:
        raise CheckpointError(f"BERT weights {path} lack {len(missing)} text_bert tensors (e.g. {missing[0]}); "
                              f"is it a bert-base state dict?")


def build_model(cfg: dict, answer_vocab_size: int):
    """Build `cfg['model']` from `cfg['model_config']`, loading pretrained pieces named by the config when present."""
    from mmftrain.models.m4c import M4C

    name = cfg["model"]
    if name != "m4c":
        raise ConfigError(f"unknown model {name!r}; this trainer implements: m4c")
    mc = cfg["model_config"]["m4c"]
    try:
        model = M4C(mc, answer_vocab_size)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    files = model_files(cfg)  # mmfconfig owns where the options point (mmf zoo pack --for packs the same files)
    if "text_bert_weights" in files:
        p = files["text_bert_weights"]
        if p.is_file():
            load_text_bert_weights(model, p)
            log.info("text BERT initialised from %s", p)
        else:
            log.warning("bert-base-uncased weights not found at %s: text BERT starts from random weights "
                        "(`mmf zoo fetch bert-base-uncased` or set model_config.m4c.text_bert_weights=PATH)", p)
    if "fc7_weights_dir" in files:
        d = files["fc7_weights_dir"].parent
        if files["fc7_weights_dir"].is_file():
            load_fc7_weights(model, d, bool(cfg["training"].get("trust_pickle")))
            log.info("fc7 layers initialised from %s", d)
        else:
            log.warning("detectron fc7 weights not found in %s: fc7 starts from random weights "
                        "(fetch detectron.vmb_weights or set model_config.m4c.fc7_weights_dir=PATH)", d)
    return model


def load_mmf_state_dict(model, state: dict) -> None:
    """Load an MMF or own M4C state dict: strips `module.`/`_orig_mod.`, maps old `_fc7.module.lc` names.

    Raises CheckpointError naming missing or unexpected tensors (MMF #661 lost accuracy to silently missing keys).
    """
    fixed = {}
    for k, v in state.items():
        for prefix in ("module.", "_orig_mod."):
            while k.startswith(prefix):
                k = k[len(prefix):]
        k = k.replace("_fc7.module.lc.", "_fc7.lc.")
        if k.endswith("embeddings.position_ids"):  # a buffer in old HF BERT, not a parameter
            continue
        fixed[k] = v
    own = model.state_dict()
    missing = sorted(set(own) - set(fixed))
    unexpected = sorted(set(fixed) - set(own))
    if missing or unexpected:
        raise CheckpointError(f"checkpoint does not fit the model: {len(missing)} missing (e.g. "
                              f"{missing[:2]}), {len(unexpected)} unexpected (e.g. {unexpected[:2]}) tensors")
    for k, v in fixed.items():
        if tuple(v.shape) != tuple(own[k].shape):
            raise CheckpointError(f"checkpoint tensor {k} has shape {tuple(v.shape)}, model expects "
                                  f"{tuple(own[k].shape)}; check answer vocab size / model_config")
    model.load_state_dict(fixed)
