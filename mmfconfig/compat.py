"""MMF's keys as MMF's own configs of any version spell them: the keys MMF renamed (read under their new name, with
one deprecation line each), the keys of features this trainer lacks that are harmless (accepted, named once in a
warning) and those that would change what it does (accepted only at the value describing what it does anyway).

The one owner of these facts; `resolve.py` applies them. Sources: MMF's git history of mmf/configs/defaults.yaml,
mmf/utils/configuration.py (`Configuration.upgrade`) and projects/m4c/configs/ between 1.0.0rc10 and main.
"""
from __future__ import annotations

from typing import Any

from mmfconfig.errors import ConfigError
from zoo.safeyaml import show

# old key -> new key. MMF read the old spellings in files for a while (configuration.py's `upgrade`); rc10's own
# M4C project configs still say training.max_iterations (renamed max_updates before rc10; main's files say that).
RENAMED = {
    "training.max_iterations": "training.max_updates",
    "training.resume": "checkpoint.resume",
    "training.resume_file": "checkpoint.resume_file",
    "training.resume_best": "checkpoint.resume_best",
    "training.load_pretrained": "checkpoint.resume_pretrained",
    "training.pretrained_state_mapping": "checkpoint.pretrained_state_mapping",
    "training.run_type": "run_type",
}
# key -> {old value: new value}: values MMF renamed (its trainer registry: base_trainer became mmf in mid-2020)
RENAMED_VALUES = {"training.trainer": {"base_trainer": "mmf"}}
# MMF keys whose value cannot change what this trainer computes or writes (cosmetics, a capture this trainer
# does anyway, loader memory placement it decides itself): accepted at any value, named once in a warning.
HARMLESS = {
    "training.stdout_capture": "train.log always holds what the console shows (MMF rc10's key)",
    "training.colored_logs": "log lines are never coloured",
    "training.pin_memory": "on CUDA the loader always stages batches in pinned memory",
}
# MMF keys this trainer does not implement (they are not in configs/defaults.yaml). A config may set one only to
# the value that describes what this trainer does anyway (MMF's project configs do); any other value is an error
# naming the key, so no setting is silently ignored. key -> (accepted values or a predicate, what to do instead)
NOT_SUPPORTED: dict[str, tuple[Any, str]] = {
    "training.log_format": (("simple",), "log lines are MMF's simple format; metrics.jsonl holds them as JSON"),
    "training.should_not_log": ((False,), "logging cannot be switched off; raise training.logger_level instead"),
    "training.wandb": (lambda v: not isinstance(v, dict) or not v.get("enabled"),
                       "Weights & Biases logging is not implemented; use training.tensorboard=true or metrics.jsonl"),
    "training.fast_read": ((False,), "features are read per batch by the loader threads; for speed run "
                                     "`mmf data pack` (the packed store)"),
    "training.dataset_size_proportional_sampling": ((True,), "joint datasets are always sampled in proportion to "
                                                             "their size"),
    "training.task_size_proportional_sampling": ((True,), "joint datasets are always sampled in proportion to "
                                                          "their size"),
    "training.persistent_workers": ((True,), "the loader threads live for the whole run"),
    "training.clip_norm_mode": (("all",), "gradients are clipped by their global L2 norm over all parameters"),
    "training.local_rank": ((None,), "launch with torchrun, which sets LOCAL_RANK"),
    "training.verbose_dump": ((False,), "not implemented; metrics.jsonl and train.log hold the run's record"),
    "training.evaluate_metrics": ((False,), "metrics are computed on val/test passes; train lines report the loss"),
    "training.callbacks": (([],), "the training loop has no callbacks; see mmftrain/trainer.py"),
    "evaluation.reporter": (lambda v: not isinstance(v, dict) or (v.get("type", "file") == "file"
                                                                   and not v.get("params")),
                            "predictions are EvalAI files under env.report_dir (evaluation.predict_file_format)"),
    "optimizer.allow_unused_parameters": ((False,), "every M4C parameter receives a gradient"),
    "optimizer.enable_state_sharding": ((False,), "optimizer state sharding (ZeRO) is not implemented"),
    "scheduler": (lambda v: not v, "the LR schedule is MMF's warmup + steps: training.lr_scheduler, lr_steps, "
                                   "lr_ratio, use_warmup, warmup_factor, warmup_iterations"),
    "multitasking.enabled": ((True,), "several datasets are always trained jointly"),
    "multitasking.type": (("size_proportional",), "joint datasets are always sampled in proportion to their size"),
    "env.wandb_logdir": (("", None), "Weights & Biases logging is not implemented"),
    "env.user_dir": (("", None), "user plugin folders are not supported"),
    "distributed.init_method": ((None,), "launch with torchrun (env:// rendezvous)"),
    "distributed.rank": ((0, None), "torchrun sets RANK"),
    "distributed.port": ((-1, None), "use torchrun --master_port"),
    "distributed.world_size": ((1, None), "use torchrun --nproc_per_node=N"),
    "distributed.no_spawn": ((True,), "processes are always launched by torchrun, never spawned"),
    "checkpoint.resume_pretrained": ((False,), "load pretrained weights with checkpoint.resume_file and "
                                               "checkpoint.reset.all=true"),
    "checkpoint.pretrained_state_mapping": (lambda v: not v, "state dict key mapping is not implemented"),
    "checkpoint.zoo_config_override": ((False,), "a zoo checkpoint is loaded into the model your config builds"),
    "model_config.m4c.losses": (lambda v: v in (None, [], [{"type": "m4c_decoding_bce_with_mask"}],
                                                ["m4c_decoding_bce_with_mask"]),
                                "M4C trains with m4c_decoding_bce_with_mask only"),
}


def _find(cfg: dict, key: str) -> tuple[dict | None, str]:
    """The mapping that holds `key`'s last part (None when a parent is missing or not a mapping)."""
    *parents, last = key.split(".")
    node: Any = cfg
    for p in parents:
        node = node.get(p) if isinstance(node, dict) else None
    return (node if isinstance(node, dict) else None), last


def _put(cfg: dict, key: str, value: Any) -> None:
    *parents, last = key.split(".")
    node = cfg
    for p in parents:
        node = node.setdefault(p, {}) if isinstance(node.get(p, {}), dict) else {}
    node[last] = value


def upgrade(data: dict, source: str, notes: list[str]) -> list[str]:
    """Bring one config file's mapping (in place) to today's MMF spelling: renamed keys and values move to their new
    names, with one deprecation line each in `notes`; harmless keys are dropped. Returns the harmless keys found."""
    for old, new in RENAMED.items():
        holder, last = _find(data, old)
        if holder is None or last not in holder:
            continue
        value = holder.pop(last)
        there, new_last = _find(data, new)
        if there is not None and new_last in there and there[new_last] != value:
            raise ConfigError(f"{source} sets both {old}={show(value)} and {new}={show(there[new_last])}; {old} is "
                              f"MMF's old name of {new}: keep only {new}")
        _put(data, new, value)
        notes.append(f"{source}: {old} is MMF's old name of {new}; read as {new}={show(value)} (rename it)")
    for key, renames in RENAMED_VALUES.items():
        holder, last = _find(data, key)
        value = holder.get(last) if holder is not None else None
        if isinstance(value, str) and value in renames:
            holder[last] = renames[value]
            notes.append(f"{source}: {key}={value} is MMF's old name of {key}={renames[value]}; read as that")
    found = []
    for key in HARMLESS:
        holder, last = _find(data, key)
        if holder is not None and last in holder:
            holder.pop(last)
            found.append(key)
    return found


def command_line_problem(key: str) -> str | None:
    """Overrides stay strict (as MMF's, which must name keys of the config): an old or no-effect key is refused
    with what to write instead."""
    if key in RENAMED:
        return f"{key} is MMF's old name of {RENAMED[key]}; write {RENAMED[key]}=VALUE"
    if key in HARMLESS:
        return f"{key} has no effect here ({HARMLESS[key]}); remove it"
    return None


def harmless_note(keys: list[str]) -> str | None:
    """The one warning naming every harmless MMF key a run's files set."""
    keys = list(dict.fromkeys(keys))
    if not keys:
        return None
    return "MMF keys with no effect in this trainer, ignored: " + "; ".join(f"{k} ({HARMLESS[k]})" for k in keys)
