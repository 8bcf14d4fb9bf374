"""MMF-style configuration: YAML files with `includes:`, project defaults, `key=value` overrides.

Build order (as MMF): `configs/defaults.yaml` -> `configs/models/<model>/defaults.yaml` -> each
`configs/datasets/<name>/defaults.yaml` -> the user's `config=` file (with its includes) -> `key=value` overrides.
The result is a plain nested dict. Overrides may only name keys that exist: a typo is an error naming the key and
its nearest neighbours, never a silently ignored setting.
"""
from __future__ import annotations

import ast
import copy
import difflib
import os
import re
from pathlib import Path
from typing import Any

import yaml

from mmftrain.errors import ConfigError
from zoo.datadir import default_cache_dir

CONFIGS_DIR = Path(__file__).resolve().parent.parent / "configs"
SPECIAL_KEYS = ("config", "datasets", "model", "run_type")
RUN_TYPES = ("train", "val", "test", "train_val", "train_test", "train_val_test", "train_inference", "inference",
             "val_test", "predict")
# Sections whose keys are all declared in defaults.yaml: a misspelt key there in a YAML file is an error too.
STRICT_SECTIONS = ("training", "evaluation", "checkpoint", "env", "distributed")
_ENV_DIRS = {"data_dir": "MMF_DATA_DIR", "save_dir": "MMF_SAVE_DIR", "cache_dir": "MMF_CACHE_DIR",
             "log_dir": "MMF_LOG_DIR", "report_dir": "MMF_REPORT_DIR", "tensorboard_logdir": "MMF_TENSORBOARD_LOGDIR"}
LOGGER_LEVELS = ("debug", "info", "warning", "error", "critical")
# training.compile_mode: torch.compile's modes, plus auto = CUDA graphs where they are safe (see kernels.compile_mode)
COMPILE_MODES = ("auto", "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
# training.attention_backend: which fused attention kernels scaled_dot_product_attention may pick on CUDA
ATTENTION_BACKENDS = ("auto", "cudnn", "flash", "efficient", "math")
# MMF keys this trainer does not implement (they are not in configs/defaults.yaml). A config may set one only to
# the value that describes what this trainer does anyway (MMF's project configs do); any other value is an error
# naming the key, so no setting is silently ignored. key -> (accepted values or a predicate, what to do instead)
NOT_SUPPORTED: dict[str, tuple[Any, str]] = {
    "training.log_format": (("simple",), "log lines are MMF's simple format; metrics.jsonl holds them as JSON"),
    "training.should_not_log": ((False,), "logging cannot be switched off; raise training.logger_level instead"),
    "training.colored_logs": ((False,), "log lines are never coloured"),
    "training.wandb": (lambda v: not isinstance(v, dict) or not v.get("enabled"),
                       "Weights & Biases logging is not implemented; use training.tensorboard=true or metrics.jsonl"),
    "training.fast_read": ((False,), "features are read per batch by the loader threads; for speed run "
                                     "`mmf data pack` (the packed store)"),
    "training.dataset_size_proportional_sampling": ((True,), "joint datasets are always sampled in proportion to "
                                                             "their size"),
    "training.task_size_proportional_sampling": ((True,), "joint datasets are always sampled in proportion to "
                                                          "their size"),
    "training.pin_memory": ((True,), "on CUDA the loader always stages batches in pinned memory"),
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
_INTERP = re.compile(r"\$\{([A-Za-z0-9_.]+)\}")


class _Loader(yaml.SafeLoader):
    """SafeLoader that reads `1e-4` as a float (YAML 1.1 would make it a string, OmegaConf does not)."""


_Loader.yaml_implicit_resolvers = {k: list(v) for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*\.[0-9_]*(?:[eE][-+]?[0-9]+)?|[0-9][0-9_]*[eE][-+]?[0-9]+|\.[0-9_]+"
               r"(?:[eE][-+]?[0-9]+)?|\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"),
    list("-+0123456789."),
)


def read_yaml(path: str | Path) -> dict:
    """Parse one YAML file into a dict (no includes), with a clear error for a missing or malformed file."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise ConfigError(f"cannot read config file {path}: {e.strerror}; check the path") from None
    try:
        data = yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {path} is not valid YAML: {str(e).splitlines()[0]}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping at top level, not {type(data).__name__}")
    return data


def find_config_file(name: str | Path, base_dir: Path | None = None) -> Path:
    """Resolve a config path: absolute, else relative to `base_dir` (the including file) or cwd, else `configs/`."""
    p = Path(name).expanduser()
    if p.is_absolute():
        if p.is_file():
            return p
        raise ConfigError(f"config file {p} does not exist")
    candidates = [(base_dir or Path.cwd()) / p, CONFIGS_DIR / p]
    if str(p).startswith("configs/"):
        candidates.append(CONFIGS_DIR.parent / p)
    for c in candidates:
        if c.is_file():
            return c.resolve()
    tried = ", ".join(str(c) for c in candidates)
    raise ConfigError(f"config file {name} not found (tried {tried}); pass a path relative to the current "
                      f"directory or to {CONFIGS_DIR}")


def load_yaml(path: str | Path, _stack: tuple = ()) -> dict:
    """Load a YAML file and merge its `includes:` (each resolved relative to the including file, then `configs/`).

    Included files are merged in order and the including file wins. A cycle is an error.
    """
    path = Path(path).resolve()
    if path in _stack:
        chain = " -> ".join(str(p) for p in (*_stack, path))
        raise ConfigError(f"config includes form a cycle: {chain}; remove one of the includes")
    data = read_yaml(path)
    includes = data.pop("includes", None) or []
    if isinstance(includes, str):
        includes = [includes]
    merged: dict = {}
    for inc in includes:
        merged = merge(merged, load_yaml(find_config_file(inc, path.parent), (*_stack, path)))
    return merge(merged, data)


def merge(base: dict, over: dict) -> dict:
    """Deep-merge `over` into a copy of `base`; dicts merge key by key, everything else is replaced."""
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def parse_value(text: str) -> Any:
    """Literal-parse an override value as MMF does (`ast.literal_eval`, raw string otherwise; YAML booleans too)."""
    low = text.strip().lower()
    if low in ("none", "null", "~"):
        return None
    if low in ("true", "false"):
        return low == "true"
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def split_argv(argv: list[str]) -> tuple[dict, list[tuple[str, str]]]:
    """Split `key=value` (or alternating `key value`) options into the special keys and the dotlist overrides."""
    pairs: list[tuple[str, str]] = []
    args = [a for a in argv if a != "--"]
    if args and "=" not in args[0] and not args[0].startswith("-"):
        if len(args) % 2:
            raise ConfigError(f"option {args[-1]!r} has no value; write options as key=value")
        pairs = [(args[i], args[i + 1]) for i in range(0, len(args), 2)]
    else:
        for a in args:
            if "=" not in a:
                raise ConfigError(f"option {a!r} is not key=value; write e.g. training.batch_size=32")
            k, v = a.split("=", 1)
            pairs.append((k.strip(), v))
    special: dict = {}
    overrides = []
    for k, v in pairs:
        k = k.lstrip("-")
        if k == "dataset":  # MMF alias
            k = "datasets"
        if k in SPECIAL_KEYS:
            special[k] = v.strip()
        else:
            overrides.append((k, v))
    return special, overrides


def _all_keys(cfg: Any, prefix: str = "") -> list[str]:
    out = []
    if isinstance(cfg, dict):
        for k, v in cfg.items():
            key = f"{prefix}{k}"
            out.append(key)
            out.extend(_all_keys(v, key + "."))
    return out


def _unknown(key: str, cfg: dict) -> ConfigError:
    near = difflib.get_close_matches(key, _all_keys(cfg), n=3, cutoff=0.6)
    hint = f"; nearest existing keys: {', '.join(near)}" if near else "; see configs/defaults.yaml for the keys"
    return ConfigError(f"unknown config key {key!r}{hint}")


_INDEX = re.compile(r"^([^\[\]]+)((?:\[\d+\])*)$")


def _path(key: str) -> list:
    parts: list = []
    for piece in key.split("."):
        m = _INDEX.match(piece)
        if not m:
            raise ConfigError(f"malformed config key {key!r}; write a.b.c or a.b[0]")
        parts.append(m.group(1))
        parts.extend(int(i) for i in re.findall(r"\[(\d+)\]", m.group(2)))
    return parts


def _check_type(key: str, old: Any, new: Any) -> Any:
    if old is None or new is None or isinstance(old, (dict, list)) and isinstance(new, type(old)):
        return new
    if isinstance(old, bool):
        if isinstance(new, bool):
            return new
    elif isinstance(old, int):
        if isinstance(new, int) and not isinstance(new, bool):
            return new
    elif isinstance(old, float):
        if isinstance(new, (int, float)) and not isinstance(new, bool):
            return float(new)
    elif isinstance(old, str):
        return new if isinstance(new, str) else str(new)
    else:
        return new
    raise ConfigError(f"config key {key!r} expects {type(old).__name__} (now {old!r}), got {new!r}")


def apply_override(cfg: dict, key: str, raw: str) -> None:
    """Set `key` (dotted, with optional `[i]` list indices) to the literal-parsed `raw`; the key must exist."""
    parts = _path(key)
    node: Any = cfg
    for i, p in enumerate(parts[:-1]):
        try:
            node = node[p]
        except (KeyError, IndexError, TypeError):
            raise _unknown(key, cfg) from None
    last = parts[-1]
    if isinstance(node, dict) and last in node:
        node[last] = _check_type(key, node[last], parse_value(raw))
    elif isinstance(node, list) and isinstance(last, int) and last < len(node):
        node[last] = parse_value(raw)
    else:
        raise _unknown(key, cfg)


def _check_sections(user: dict, defaults: dict, source: str) -> None:
    def walk(u: dict, d: dict, prefix: str) -> None:
        for k, v in u.items():
            key = f"{prefix}{k}"
            if key in NOT_SUPPORTED:
                continue  # judged on the merged config by refuse_unsupported
            if k not in d:
                near = difflib.get_close_matches(k, list(d), n=3, cutoff=0.6)
                hint = f"; nearest: {', '.join(prefix + n for n in near)}" if near else ""
                raise ConfigError(f"unknown config key {key!r} in {source}{hint}")
            if isinstance(v, dict) and isinstance(d[k], dict) and d[k]:
                walk(v, d[k], key + ".")
    for section in STRICT_SECTIONS:
        if isinstance(user.get(section), dict):
            walk(user[section], defaults.get(section) or {}, section + ".")


def _resolve(cfg: dict) -> dict:
    """Replace `${a.b}` references (MMF/OmegaConf interpolation of other keys) with their values."""
    def lookup(key: str, depth: int) -> Any:
        node: Any = cfg
        for p in key.split("."):
            if not isinstance(node, dict) or p not in node:
                raise ConfigError(f"config interpolation ${{{key}}} names a key that does not exist")
            node = node[p]
        return sub(node, depth + 1)

    def sub(v: Any, depth: int = 0) -> Any:
        if depth > 20:
            raise ConfigError("config interpolation nests too deep (a reference cycle?)")
        if isinstance(v, dict):
            return {k: sub(x, depth) for k, x in v.items()}
        if isinstance(v, list):
            return [sub(x, depth) for x in v]
        if isinstance(v, str):
            m = _INTERP.fullmatch(v)
            if m:
                return lookup(m.group(1), depth)
            return _INTERP.sub(lambda mm: str(lookup(mm.group(1), depth)), v)
        return v
    return sub(cfg)


def build_config(argv: list[str], environ: dict | None = None) -> dict:
    """Build the resolved run config from MMF-style options (`config=... datasets=... model=... a.b=c`).

    Raises:
        ConfigError: unknown key, bad value, missing file, include cycle.
    """
    environ = os.environ if environ is None else environ
    special, overrides = split_argv(argv)
    defaults = load_yaml(CONFIGS_DIR / "defaults.yaml")
    cfg = copy.deepcopy(defaults)
    cfg["env"]["cache_dir"] = str(default_cache_dir(environ))  # MMF's rule, shared with `mmf zoo` / `mmf data`
    for key, var in _ENV_DIRS.items():
        if environ.get(var):
            cfg["env"][key] = environ[var]

    user: dict = {}
    if special.get("config"):
        path = find_config_file(special["config"])
        user = load_yaml(path)
        _check_sections(user, defaults, str(path))
        cfg["config"] = str(path)
    model = special.get("model") or user.get("model") or cfg.get("model")
    datasets = special.get("datasets") or user.get("datasets") or cfg.get("datasets")
    if isinstance(datasets, str):
        datasets = [d.strip() for d in datasets.split(",") if d.strip()]
    if not model:
        raise ConfigError("no model given; pass model=m4c")
    if not datasets:
        raise ConfigError("no dataset given; pass datasets=textvqa (or stvqa, or textvqa,stvqa)")
    model_file = CONFIGS_DIR / "models" / model / "defaults.yaml"
    if not model_file.is_file():
        known = sorted(p.name for p in (CONFIGS_DIR / "models").iterdir() if p.is_dir())
        raise ConfigError(f"unknown model {model!r}; known models: {', '.join(known)}")
    cfg = merge(cfg, load_yaml(model_file))
    for ds in datasets:
        ds_file = CONFIGS_DIR / "datasets" / ds / "defaults.yaml"
        if not ds_file.is_file():
            known = sorted(p.name for p in (CONFIGS_DIR / "datasets").iterdir() if p.is_dir())
            raise ConfigError(f"unknown dataset {ds!r}; known datasets: {', '.join(known)}")
        cfg = merge(cfg, load_yaml(ds_file))
    cfg = merge(cfg, user)
    cfg["model"], cfg["datasets"] = model, list(datasets)
    if special.get("run_type"):
        cfg["run_type"] = special["run_type"]
    for key, raw in overrides:
        if key in NOT_SUPPORTED:
            _check_supported(key, parse_value(raw), "the command line")
        else:
            apply_override(cfg, key, raw)
    refuse_unsupported(cfg)
    cfg = _resolve(cfg)
    validate(cfg)
    return cfg


def _check_supported(key: str, value: Any, source: str) -> None:
    accepted, instead = NOT_SUPPORTED[key]
    ok = accepted(value) if callable(accepted) else value in accepted
    if not ok:
        raise ConfigError(f"{key}={value!r} (from {source}) is an MMF option this trainer does not support: "
                          f"{instead}; remove it")


def refuse_unsupported(cfg: dict) -> None:
    """Drop each NOT_SUPPORTED key set to a value that matches this trainer's behaviour; refuse any other."""
    for key in NOT_SUPPORTED:
        *parents, last = key.split(".")
        node: Any = cfg
        for p in parents:
            node = node.get(p) if isinstance(node, dict) else None
        if isinstance(node, dict) and last in node:
            _check_supported(key, node.pop(last), cfg.get("config") or "the config files")


def validate(cfg: dict) -> None:
    """Reject values the trainer cannot run with, naming the key and the allowed values."""
    if cfg["run_type"] not in RUN_TYPES:
        raise ConfigError(f"run_type={cfg['run_type']!r} is not one of {', '.join(RUN_TYPES)}")
    if cfg["model"] not in cfg.get("model_config", {}):
        raise ConfigError(f"model_config.{cfg['model']} is missing; the model defaults file must define it")
    t = cfg["training"]
    for key in ("batch_size", "update_frequency", "log_interval", "checkpoint_interval", "evaluation_interval"):
        if not isinstance(t[key], int) or t[key] < 1:
            raise ConfigError(f"training.{key} must be a positive integer, got {t[key]!r}")
    if t["trainer"] != "mmf":
        raise ConfigError(f"training.trainer={t['trainer']!r}: this project has one trainer, mmf")
    if str(t["logger_level"]).lower() not in LOGGER_LEVELS:
        raise ConfigError(f"training.logger_level={t['logger_level']!r} is not one of {', '.join(LOGGER_LEVELS)}")
    per_device = t["batch_size_per_device"]
    if per_device is not None and (not isinstance(per_device, int) or per_device < 1):
        raise ConfigError(f"training.batch_size_per_device must be a positive integer or null, got {per_device!r}")
    if t.get("compile_mode", "auto") not in COMPILE_MODES:
        raise ConfigError(f"training.compile_mode={t['compile_mode']!r} is not one of {', '.join(COMPILE_MODES)}")
    if t.get("attention_backend", "auto") not in ATTENTION_BACKENDS:
        raise ConfigError(f"training.attention_backend={t['attention_backend']!r} is not one of "
                          f"{', '.join(ATTENTION_BACKENDS)}")
    if t["fp16"] and t["bf16"]:
        raise ConfigError("training.fp16 and training.bf16 are both true; pick one")
    for key, kind, low, inclusive, nullable in _BOUNDS:
        if key == "training.max_updates" and t["max_epochs"] is not None:
            continue  # max_epochs wins (MMF)
        _check_bound(cfg, key, kind, low, inclusive, nullable)
    if t["clip_gradients"]:
        _check_bound(cfg, "training.max_grad_l2_norm", float, 0, False, False, "with training.clip_gradients=true")
    steps = t["lr_steps"] or []
    if not isinstance(steps, list) or not all(isinstance(x, int) and not isinstance(x, bool) and x > 0
                                              for x in steps):
        raise ConfigError(f"training.lr_steps must be a list of positive update numbers, got {steps!r}")
    if cfg["evaluation"].get("predict_file_format") not in ("json", "csv"):
        raise ConfigError("evaluation.predict_file_format must be json or csv")


# numeric keys: (key, int or float, lowest allowed value, whether the lowest is allowed itself, null allowed). Out
# of range they run silently wrong: a negative max_epochs trains nothing, a negative clip norm or warmup factor
# flips the gradient step, a negative patience stops at the first evaluation.
_BOUNDS = (("training.max_updates", int, 1, True, False), ("training.max_epochs", float, 0, False, True),
           ("training.warmup_iterations", int, 0, True, False), ("training.warmup_factor", float, 0, True, False),
           ("training.lr_ratio", float, 0, False, False), ("training.prefetch_batches", int, 0, True, False),
           ("training.early_stop.patience", int, 0, True, False), ("evaluation.batch_size", int, 1, True, True),
           ("checkpoint.max_to_keep", int, -1, True, False))


def _check_bound(cfg: dict, key: str, kind: type, low, inclusive: bool, nullable: bool, context: str = "") -> None:
    node: Any = cfg
    for part in key.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    if node is None and nullable:
        return
    number = isinstance(node, (int, float)) and not isinstance(node, bool) and (kind is float or
                                                                               isinstance(node, int))
    if number and (node >= low if inclusive else node > low):
        return
    want = f"{'an integer' if kind is int else 'a number'} {'>=' if inclusive else '>'} {low}"
    raise ConfigError(f"{key} must be {want}{' or null' if nullable else ''}{' ' + context if context else ''}, "
                      f"got {node!r}")


def dump_yaml(cfg: dict) -> str:
    """The resolved config as YAML text (saved with every run and in every checkpoint)."""
    return yaml.safe_dump(cfg, sort_keys=False, default_flow_style=False)
