"""MMF-style configuration: YAML files with `includes:`, project defaults, `key=value` overrides.

Build order (as MMF): `configs/defaults.yaml` -> `configs/models/<model>/defaults.yaml` -> each
`configs/datasets/<name>/defaults.yaml` -> the user's `config=` file (with its includes) -> `key=value` overrides.
The result is a read-only nested dict (mmfconfig.frozen): what was validated cannot change afterwards. Overrides
may only name keys that exist: a typo is an error naming the key and its nearest neighbours, never a silently
ignored setting.
"""
from __future__ import annotations

import ast
import copy
import difflib
import fnmatch
import logging
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mmfconfig import compat, paths
from mmfconfig.compat import NOT_SUPPORTED
from mmfconfig.errors import ConfigError
from mmfconfig.frozen import freeze, thaw
from zoo import safeyaml
from zoo.safeyaml import show
from zoo.datadir import default_cache_dir, default_data_dir
from zoo.project import CONFIGS_DIR

SPECIAL_KEYS = ("config", "datasets", "model", "run_type")
RUN_TYPES = ("train", "val", "test", "train_val", "train_test", "train_val_test", "train_inference", "inference",
             "val_test", "predict")
# Sections whose keys are all declared in defaults.yaml: a misspelt key there in a YAML file is an error too.
STRICT_SECTIONS = ("training", "evaluation", "checkpoint", "env", "distributed")
# MMF's env vars of the run's own folders (the data and cache dirs are zoo.datadir's: one rule for every command)
_ENV_DIRS = {"save_dir": "MMF_SAVE_DIR", "log_dir": "MMF_LOG_DIR", "report_dir": "MMF_REPORT_DIR",
             "tensorboard_logdir": "MMF_TENSORBOARD_LOGDIR"}
# where a run folder left "" goes, under env.save_dir (MMF's defaults): filled in once, by _expand_paths
RUN_FOLDER_DEFAULTS = {"log_dir": ".", "report_dir": "reports", "tensorboard_logdir": "tensorboard"}
LOGGER_LEVELS = ("debug", "info", "warning", "error", "critical")
# training.compile_mode: torch.compile's modes, plus auto = CUDA graphs where they are safe (see kernels.compile_mode)
COMPILE_MODES = ("auto", "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
# training.attention_backend: which fused attention kernels scaled_dot_product_attention may pick on CUDA
ATTENTION_BACKENDS = ("auto", "cudnn", "flash", "efficient", "math")
_INTERP = re.compile(r"\$\{([A-Za-z0-9_.]+)\}")
INTERP_CHARS = 1 << 20  # the longest text an interpolation may build (`b: ${a}${a}...` nested grows as 2**depth)
INTERP_DEPTH = 32  # references followed through other references


def read_yaml(path: str | Path) -> dict:
    """Parse one YAML file into a dict (no includes), with a clear error for a missing or malformed file.

    The zoo's loader with OmegaConf's number rules (`1e-4` is a float): bombs, duplicate keys and absurd nesting
    are one-line errors, as in manifests."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise ConfigError(f"cannot read config file {path}: {e.strerror}; check the path") from None
    except UnicodeDecodeError:
        raise ConfigError(f"config file {path} is not UTF-8 text; check the path") from None
    try:
        data = safeyaml.load(text, config=True)
    except safeyaml.YamlError as e:
        raise ConfigError(f"config file {path}: {e}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping at top level, not {type(data).__name__}")
    return data


def find_config_file(name: str | Path, base_dir: Path | None = None, what: str = "config") -> Path:
    """Resolve a config path (`config=`, `includes:`): absolute, else relative to `base_dir` (the including file)
    or the working directory, else to the project's configs (see `paths.candidates`)."""
    path, problem = paths.find_file(name, what, base_dir)
    if path is None:
        where = f"the including file's folder {base_dir}" if base_dir else "the current directory"
        raise ConfigError(f"{problem} relative to {where} or to {CONFIGS_DIR}")
    return path.resolve()


def load_yaml(path: str | Path, _stack: tuple = (), seen: "Seen | None" = None) -> dict:
    """Load a YAML file and merge its `includes:` (each resolved relative to the including file, then `configs/`).

    Included files are merged in order and the including file wins. A cycle is an error. Each file is brought to
    today's MMF spelling first (`compat.upgrade`), what that noticed going into `seen`.

    With `seen`, a file that cannot be read, a missing include and a cycle are problems collected into
    `seen.problems` (that file contributes nothing, the rest is still read and checked); without it, errors.
    """
    try:
        return _load_yaml(Path(path).resolve(), _stack, seen)
    except ConfigError as e:
        if seen is None:
            raise
        seen.problems.append(str(e))
        return {}


def _load_yaml(path: Path, _stack: tuple, seen: "Seen | None") -> dict:
    if path in _stack:
        chain = " -> ".join(str(p) for p in (*_stack, path))
        raise ConfigError(f"config includes form a cycle: {chain}; remove one of the includes")
    data = read_yaml(path)
    if seen is not None:
        seen.harmless += compat.upgrade(data, str(path), seen.notes)
    includes = data.pop("includes", None) or []
    if isinstance(includes, str):
        includes = [includes]
    if not isinstance(includes, list) or not all(isinstance(i, str) and i.strip() for i in includes):
        raise ConfigError(f"config file {path}: includes must be a file name or a list of file names, got "
                          f"{show(includes)}")
    merged: dict = {}
    for inc in includes:
        try:
            found = find_config_file(inc, path.parent, f"{path}: includes: ")
        except ConfigError as e:
            if seen is None:
                raise
            seen.problems.append(str(e))
            continue
        merged = merge(merged, load_yaml(found, (*_stack, path), seen))
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
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return text  # 5000 digits (past Python's int limit) or deep nesting too: the text, judged by the key's type


def mmf_flags(argv: list[str]) -> tuple[dict, list[str]]:
    """MMF's `mmf_run` flags, which (argparse) come before the key=value options: `-co`/`--config_override TEXT`
    (a mapping merged over the config file, below the key=value overrides; MMF parses it with demjson, here it is
    YAML/JSON, e.g. `-co '{training: {seed: 3}}'`) and `--local_rank N` (what torch.distributed.launch passes).
    Returns ({"config_override": mapping, "local_rank": int}, the remaining options)."""
    flags: dict = {}
    args = list(argv)
    while args and args[0].split("=", 1)[0] in _MMF_FLAGS:
        flag, eq, value = args.pop(0).partition("=")
        if not eq:
            if not args:
                raise ConfigError(f"option {flag} needs a value (MMF's mmf_run syntax: {flag} VALUE)")
            value = args.pop(0)
        name = _MMF_FLAGS[flag]
        flags[name] = _override_mapping(value) if name == "config_override" else _local_rank(value)
    return flags, args


_MMF_FLAGS = {"-co": "config_override", "--config_override": "config_override", "--local_rank": "local_rank"}


def _override_mapping(text: str) -> dict:
    try:
        value = safeyaml.load(text, config=True)  # the number rules of the config files it sits over
    except safeyaml.YamlError as exc:
        raise ConfigError(f"--config_override {show(text)} is not YAML/JSON ({exc}); write e.g. "
                          "-co '{training: {seed: 3}}'") from None
    if not isinstance(value, dict):
        raise ConfigError(f"--config_override must be a mapping, e.g. -co '{{training: {{seed: 3}}}}', "
                          f"not {show(text)}")
    return value


def _local_rank(text: str) -> int:
    if not re.fullmatch(r"\d{1,6}", text.strip()):
        raise ConfigError(f"--local_rank must be a rank number (0, 1, ...), not {show(text)}")
    return int(text)


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
    return ConfigError(f"unknown config key {show(key)}{hint}")


_INDEX = re.compile(r"^([^\[\]]+)((?:\[\d{1,9}\])*)$")


def _path(key: str) -> list:
    parts: list = []
    for piece in key.split("."):
        m = _INDEX.match(piece)
        if not m:
            raise ConfigError(f"malformed config key {show(key)}; write a.b.c or a.b[0]")
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
    raise ConfigError(f"config key {key!r} expects {type(old).__name__} (now {show(old)}), got {show(new)}")


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


def _check_sections(user: dict, defaults: dict, source: str, problems: list[str] | None = None) -> None:
    """Keys of the strict sections must exist in defaults.yaml: each unknown one is a problem naming the nearest
    (collected into `problems`, or raised at once without it)."""
    found: list[str] = []

    def walk(u: dict, d: dict, prefix: str) -> None:
        for k, v in u.items():
            key = f"{prefix}{k}"
            if key in NOT_SUPPORTED:
                continue  # judged on the merged config by refuse_unsupported
            if k not in d:
                near = difflib.get_close_matches(k, list(d), n=3, cutoff=0.6)
                hint = f"; nearest: {', '.join(prefix + n for n in near)}" if near else ""
                found.append(f"unknown config key {key!r} in {source}{hint}")
            elif isinstance(v, dict) and isinstance(d[k], dict) and d[k]:
                walk(v, d[k], key + ".")
    for section in STRICT_SECTIONS:
        if isinstance(user.get(section), dict):
            walk(user[section], defaults.get(section) or {}, section + ".")
    if problems is None and found:
        raise ConfigError(found[0])
    (problems if problems is not None else []).extend(found)


def _resolve(cfg: dict) -> dict:
    """Replace `${a.b}` references (MMF/OmegaConf interpolation of other keys) with their values.

    Each referenced key is resolved once, so a chain of references costs its length, not 2**depth. A cycle, a
    chain deeper than INTERP_DEPTH, a text longer than INTERP_CHARS, or references adding more nodes than the YAML
    loader lets aliases add (safeyaml.ALIAS_BUDGET) is a one-line error: `b: ${a}${a}...` nested 20 levels deep
    would otherwise fill the memory.
    """
    done: dict[str, tuple[Any, int]] = {}  # key -> (resolved value, its node count)
    stack: list[str] = []
    added = 0

    def lookup(key: str) -> Any:
        nonlocal added
        if key not in done:
            if key in stack:
                raise ConfigError(f"config interpolation cycle: {' -> '.join(stack[stack.index(key):] + [key])}; "
                                  "one of these keys must hold a value")
            if len(stack) >= INTERP_DEPTH:
                raise ConfigError(f"config interpolation ${{{key}}} follows more than {INTERP_DEPTH} references "
                                  "through each other; write the value out")
            node: Any = cfg
            for p in key.split("."):
                if not isinstance(node, dict) or p not in node:
                    raise ConfigError(f"config interpolation ${{{key}}} names a key that does not exist")
                node = node[p]
            stack.append(key)
            value = sub(node)
            stack.pop()
            done[key] = (value, _count_nodes(value))
        value, size = done[key]
        added += size
        if added > safeyaml.ALIAS_BUDGET:
            raise ConfigError(f"config interpolation ${{{key}}}: references expand to more than "
                              f"{safeyaml.ALIAS_BUDGET:,} values (an interpolation bomb?); write the data out")
        return copy.deepcopy(value) if isinstance(value, (dict, list)) else value

    def text(v: str) -> str:
        out, size, end = [], 0, 0
        for m in _INTERP.finditer(v):
            piece = str(lookup(m.group(1)))
            size += m.start() - end + len(piece)
            if size > INTERP_CHARS:
                raise ConfigError(f"config interpolation of {show(v)} builds a text of more than "
                                  f"{INTERP_CHARS:,} characters (an interpolation bomb?); write the value out")
            out += [v[end:m.start()], piece]
            end = m.end()
        return "".join(out) + v[end:]

    def sub(v: Any) -> Any:
        if isinstance(v, dict):
            return {k: sub(x) for k, x in v.items()}
        if isinstance(v, list):
            return [sub(x) for x in v]
        if isinstance(v, str) and "${" in v:
            m = _INTERP.fullmatch(v)
            return lookup(m.group(1)) if m else text(v)
        return v
    return sub(cfg)


def _count_nodes(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + sum(_count_nodes(v) for v in value.values())
    if isinstance(value, list):
        return 1 + sum(_count_nodes(v) for v in value)
    return 1


@dataclass
class Seen:
    """What resolving one config noticed besides its values: deprecation notes, harmless MMF keys, and the problems
    that are all reported together at the end."""
    notes: list[str] = field(default_factory=list)
    harmless: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def warnings(self) -> list[str]:
        note = compat.harmless_note(self.harmless)
        return list(dict.fromkeys(self.notes + ([note] if note else [])))


def build_config(argv: list[str], environ: dict | None = None, say=None) -> dict:
    """Build the resolved run config from MMF-style options (`config=... datasets=... model=... a.b=c`).

    `say(line)` receives each warning (an old MMF key read under its new name, the harmless MMF keys ignored);
    by default they go to the `mmfconfig` logger.

    Raises:
        ConfigError: every problem found (unknown keys, bad values, missing files), one line each; an include
        cycle or an unreadable file at once.
    """
    environ = os.environ if environ is None else environ
    seen = Seen()
    cfg, typed = _merged(argv, environ, seen)
    refuse_unsupported(cfg, seen.problems)
    cfg = _resolve(cfg)
    validate(cfg, typed, seen.problems)
    if not seen.problems:  # the sections are mappings of the right kinds: paths and the batch can be read
        _expand_paths(cfg, seen.problems)
        effective_batch(cfg, environ)
    if not seen.problems and cfg["checkpoint"].get("resume_zoo") is not None:  # in the manifests env names
        problem = zoo_key_problem(cfg["checkpoint"]["resume_zoo"], paths.zoo_manifests(cfg))
        if problem:
            seen.problems.append(f"checkpoint.resume_zoo: {problem}")
    if seen.problems:
        raise problems_error(seen.problems)
    for line in seen.warnings():
        (say or logging.getLogger("mmfconfig").warning)(line)
    return freeze(cfg)  # validated: read-only from here on (mmfconfig.frozen)


def _merged(argv: list[str], environ: dict, seen: Seen) -> tuple[dict, dict]:
    """defaults.yaml, the model's and datasets' defaults, the user's file, -co, key=value overrides, merged as MMF
    does; returns (the merged config, the defaults before the user's values: their kinds are checked)."""
    flags, argv = mmf_flags(argv)
    special, overrides = split_argv(argv)
    defaults = load_yaml(CONFIGS_DIR / "defaults.yaml")
    cfg = copy.deepcopy(defaults)
    cfg["env"]["cache_dir"] = str(default_cache_dir(environ))  # MMF's rule, shared with `mmf zoo` / `mmf data`
    if environ.get("MMF_DATA_DIR"):  # else defaults.yaml's ${env.cache_dir}/data, the same rule, as MMF spells it
        cfg["env"]["data_dir"] = str(default_data_dir(environ))
    for key, var in _ENV_DIRS.items():
        if environ.get(var):
            cfg["env"][key] = environ[var]
    user: dict = {}
    if special.get("config"):
        try:
            path = find_config_file(special["config"])
        except ConfigError as e:  # the model, datasets and overrides are still checked (against the defaults)
            seen.problems.append(str(e))
        else:
            user = load_yaml(path, seen=seen)
            _check_sections(user, defaults, str(path), seen.problems)
            cfg["config"] = str(path)
    model = special.get("model") or user.get("model") or cfg.get("model")
    datasets = special.get("datasets") or user.get("datasets") or cfg.get("datasets")
    cfg = _with_model_and_datasets(cfg, model, datasets, seen.problems)
    typed = cfg  # the defaults, before the user's values: validate() checks numbers and booleans keep their kind
    cfg = merge(cfg, user)
    if "config_override" in flags:  # MMF: over the config file, under the key=value overrides
        override = flags["config_override"]
        seen.harmless += compat.upgrade(override, "--config_override", seen.notes)
        _check_sections(override, defaults, "--config_override", seen.problems)
        cfg = merge(cfg, override)
    cfg["model"], cfg["datasets"] = typed["model"], typed["datasets"]
    if special.get("run_type"):
        cfg["run_type"] = special["run_type"]
    for key, raw in overrides:
        try:
            problem = compat.command_line_problem(key)
            if problem:
                raise ConfigError(problem)
            if key in NOT_SUPPORTED:
                _check_supported(key, parse_value(raw), "the command line")
            else:
                apply_override(cfg, key, raw)
        except ConfigError as e:
            seen.problems.append(str(e))
    return cfg, typed


def _with_model_and_datasets(cfg: dict, model: Any, datasets: Any, problems: list[str]) -> dict:
    """The model's and each dataset's defaults merged over `cfg`; each missing or unknown name is a problem in
    `problems` (it contributes no defaults; the others are still merged so the rest of the config can be checked)."""
    if isinstance(datasets, str):
        datasets = [d.strip() for d in datasets.split(",") if d.strip()]
    if not model:
        problems.append("no model given; pass model=m4c")
    if not datasets:
        problems.append("no dataset given; pass datasets=textvqa (or stvqa, or textvqa,stvqa)")
    model_ok = bool(model) and _names_problem("model", [model], "model=m4c", problems)
    datasets_ok = bool(datasets) and _names_problem("datasets", datasets, "datasets=textvqa,stvqa", problems)
    if model_ok:
        cfg, model_ok = _merge_named(cfg, "models", "model", model, problems)
    for ds in datasets if datasets_ok else []:
        cfg, _ = _merge_named(cfg, "datasets", "dataset", ds, problems)
    cfg["model"] = model if model_ok else None  # None: already a problem, validate() does not name it again
    cfg["datasets"] = list(datasets) if datasets_ok else []
    return cfg


def _names_problem(key: str, names: Any, example: str, problems: list[str]) -> bool:
    try:
        _check_names(key, names, example)
    except ConfigError as e:
        problems.append(str(e))
        return False
    return True


def _merge_named(cfg: dict, folder: str, what: str, name: str, problems: list[str]) -> tuple[dict, bool]:
    path = CONFIGS_DIR / folder / name / "defaults.yaml"
    if not path.is_file():
        known = sorted(p.name for p in (CONFIGS_DIR / folder).iterdir() if p.is_dir())
        problems.append(f"unknown {what} {name!r}; known {folder}: {', '.join(known)}")
        return cfg, False
    return merge(cfg, load_yaml(path)), True


def problems_error(problems: list[str]) -> ConfigError:
    """One error for every problem of a config: a single one as its line, several as a count and one line each."""
    problems = list(dict.fromkeys(problems))
    if len(problems) == 1:
        return ConfigError(problems[0])
    return ConfigError(f"{len(problems)} problems in the config:\n" + "\n".join(f"  {p}" for p in problems))


def _expand_paths(cfg: dict, problems: list[str]) -> None:
    """Every path-valued key expanded once, here: the zoo manifests found as MMF finds them (cwd, then the
    project's files) or named as missing; folders made absolute; checkpoint.resume_file relative to the cwd (the
    checkpoint loader names it when it is missing: with checkpoint.resume=true it may never be read)."""
    env, options = cfg["env"], cfg["checkpoint"]
    for key in paths.PROJECT_FILES:
        section, name = key.split(".")
        if cfg[section].get(name):
            found, problem = paths.find_file(cfg[section][name], key)
            cfg[section][name] = str(found) if found else cfg[section][name]
            if problem:
                problems.append(problem)
    for key in paths.FOLDERS:
        name = key.split(".")[1]
        if isinstance(env.get(name), str) and env[name]:
            env[name] = str(paths.expand(env[name]))
    for name in RUN_FOLDER_DEFAULTS:
        if not env.get(name) and isinstance(env.get("save_dir"), str) and env["save_dir"]:
            env[name] = _default_folder(env, name)
    if isinstance(options.get("resume_file"), str) and options["resume_file"]:
        options["resume_file"] = str(paths.expand(options["resume_file"]))


def _default_folder(env: dict, name: str) -> str:
    return str(paths.expand(env["save_dir"]) / RUN_FOLDER_DEFAULTS[name])


def effective_batch(cfg: dict, environ: dict) -> None:
    """training.batch_size is global (MMF): with training.batch_size_per_device it is that times the world size
    (torchrun's WORLD_SIZE), computed once here."""
    t = cfg["training"]
    per_device = t.get("batch_size_per_device")
    if isinstance(per_device, int) and not isinstance(per_device, bool) and per_device > 0:
        world = str(environ.get("WORLD_SIZE") or "1")
        t["batch_size"] = per_device * (int(world) if world.isdigit() and int(world) > 0 else 1)


def _check_names(key: str, names: Any, example: str) -> None:
    """model= and datasets= name folders of configs/: plain names only (a YAML file can hold anything)."""
    if not isinstance(names, list) or not all(isinstance(n, str) and n not in (".", "..") and not set(n) & set("/\\")
                                              for n in names):
        shown = names[0] if key == "model" and isinstance(names, list) else names
        raise ConfigError(f"{key}={show(shown)} is not a plain name (or list of names); write e.g. {example}")


def _check_supported(key: str, value: Any, source: str) -> None:
    accepted, instead = NOT_SUPPORTED[key]
    ok = accepted(value) if callable(accepted) else value in accepted
    if not ok:
        raise ConfigError(f"{key}={value!r} (from {source}) is an MMF option this trainer does not support: "
                          f"{instead}; remove it")


def refuse_unsupported(cfg: dict, problems: list[str] | None = None) -> None:
    """Drop each NOT_SUPPORTED key set to a value that matches this trainer's behaviour; refuse any other (each
    refusal into `problems`, or raised at once without it)."""
    for key in NOT_SUPPORTED:
        *parents, last = key.split(".")
        node: Any = cfg
        for p in parents:
            node = node.get(p) if isinstance(node, dict) else None
        if isinstance(node, dict) and last in node:
            try:
                _check_supported(key, node.pop(last), cfg.get("config") or "the config files")
            except ConfigError as e:
                if problems is None:
                    raise
                problems.append(str(e))


def validate(cfg: dict, typed: dict | None = None, problems: list[str] | None = None) -> None:
    """Reject values the trainer cannot run with, naming each key and what it accepts: every problem, into
    `problems` (or raised together, one line each, without it).

    `typed` is the config before the user's file and overrides (defaults.yaml and the model's and datasets'
    defaults): a key whose default is a number or a boolean must hold one of that kind. Every number must also be
    finite and fit in 64 bits, and the keys of NUMBERS must be in their ranges.
    """
    found: dict[str, str] = {}  # key -> its first problem
    for section in ("training", "evaluation", "checkpoint", "env", "optimizer"):
        if not isinstance(cfg.get(section), dict):
            found[section] = f"{section} must be a mapping of keys, got {show(cfg.get(section))}"
    if cfg["model"] is not None and cfg["model"] not in (cfg.get("model_config") or {}):
        found["model_config"] = f"model_config.{cfg['model']} is missing; the model defaults file must define it"
    if not found:  # the checks below read these sections
        _number_problems(cfg, "", found)
        _kind_problems(cfg, typed or {}, "", found)
        _range_problems(cfg, found)
        _choice_problems(cfg, found)
    if problems is not None:
        problems.extend(found.values())
    elif found:
        raise problems_error(list(found.values()))


# Numeric keys and their ranges: (key pattern, int or float, lowest, whether the lowest is allowed itself, highest
# or None, null allowed); `*` matches any part of a key. Out of range they run silently wrong (a negative
# max_epochs trains nothing, a negative clip norm or warmup factor flips the gradient step) or fail deep inside
# torch with a traceback (a negative size, a learning rate below 0, a seed numpy refuses).
NUMBERS = (
    ("training.batch_size", int, 1, True, None, False), ("training.update_frequency", int, 1, True, None, False),
    ("training.log_interval", int, 1, True, None, False), ("training.checkpoint_interval", int, 1, True, None, False),
    ("training.evaluation_interval", int, 1, True, None, False),
    ("training.batch_size_per_device", int, 1, True, None, True),
    ("training.max_updates", int, 1, True, None, True), ("training.max_epochs", float, 0, False, None, True),
    ("training.warmup_iterations", int, 0, True, None, False), ("training.warmup_factor", float, 0, True, None, False),
    ("training.lr_ratio", float, 0, False, None, False), ("training.prefetch_batches", int, 0, True, None, False),
    ("training.early_stop.patience", int, 0, True, None, False), ("training.num_workers", int, 0, True, None, False),
    ("training.seed", int, -1, True, 2**32 - 1, False),  # -1 draws one; numpy's seeds are 0..2**32-1
    ("evaluation.batch_size", int, 1, True, None, True), ("checkpoint.max_to_keep", int, -1, True, None, False),
    ("optimizer.params.lr", float, 0, False, None, False), ("optimizer.params.eps", float, 0, True, None, False),
    ("optimizer.params.weight_decay", float, 0, True, None, False),
    ("model_config.*_size", int, 1, True, None, False), ("model_config.*_dim", int, 1, True, None, False),
    ("model_config.*.num_attention_heads", int, 1, True, None, False),
    ("model_config.*.mmt.num_hidden_layers", int, 1, True, None, False),
    ("model_config.*.num_hidden_layers", int, 0, True, None, False),
    ("model_config.*_num", int, 1, True, None, False),
    ("model_config.*max_position_embeddings", int, 1, True, None, False),
    ("model_config.*dropout_prob", float, 0, True, 1, False), ("model_config.*.lr_scale_*", float, 0, True, None, False),
    ("model_config.*.layer_norm_eps", float, 0, False, None, False),
    ("dataset_config.*.max_features", int, 1, True, None, False),
    ("dataset_config.*.max_length", int, 1, True, None, False),
    ("dataset_config.*.max_seq_length", int, 1, True, None, False),
    ("dataset_config.*.max_copy_steps", int, 1, True, None, False),
    ("dataset_config.*.num_answers", int, 1, True, None, False),
    ("dataset_config.*.mask_probability", float, 0, True, 1, False),
    ("dataset_config.*.expected_size", int, 0, True, None, True),
)
INT_LIMIT = 2**63 - 1  # torch's int64: no count, size or seed the trainer uses is larger


_RULE_KEYS = re.compile("|".join(f"(?P<r{i}>{fnmatch.translate(r[0])})" for i, r in enumerate(NUMBERS)))


def _rule(key: str) -> tuple | None:
    """The first NUMBERS rule whose pattern matches `key` (one regex match per key: configs can be big)."""
    m = _RULE_KEYS.match(key)
    return NUMBERS[int(m.lastgroup[1:])] if m else None


def _number_problems(node: Any, key: str, found: dict) -> None:
    """Every number anywhere: finite, and within 64 bits."""
    if isinstance(node, dict):
        for k, v in node.items():
            _number_problems(v, f"{key}.{k}" if key else str(k), found)
    elif isinstance(node, list):
        for i, v in enumerate(node):
            _number_problems(v, f"{key}[{i}]", found)
    elif not isinstance(node, (int, float)) or isinstance(node, bool) or _rule(key):
        return  # not a number, or one judged by its range (seeds, sizes, learning rates...)
    elif isinstance(node, float) and not math.isfinite(node):
        found.setdefault(key, f"{key} must be a finite number, got {node}")
    elif isinstance(node, int) and not isinstance(node, bool) and abs(node) > INT_LIMIT:
        found.setdefault(key, f"{key} is out of range: {show(node)} (the limit is 2**63-1)")


def _kind_problems(cfg: dict, typed: dict, prefix: str, found: dict) -> None:
    """A key whose default is a number or a boolean keeps that kind (NUMBERS' own kind wins where it names one)."""
    for k, default in typed.items():
        if k not in cfg:
            continue  # a NOT_SUPPORTED key, already dropped
        key, value = f"{prefix}{k}", cfg[k]
        if isinstance(default, dict):
            if isinstance(value, dict):
                _kind_problems(value, default, key + ".", found)
            elif default:
                found.setdefault(key, f"{key} must be a mapping of keys, got {show(value)}")
            continue
        rule = _rule(key)
        kind = rule[1] if rule else bool if isinstance(default, bool) else type(default)
        if kind not in (bool, int, float) or (rule and rule[5] and value is None):
            continue
        if kind is bool and not isinstance(value, bool):
            found.setdefault(key, f"{key} must be true or false, got {show(value)}")
        elif kind is not bool and not _is_number(value, kind):
            want = "an integer" if kind is int else "a number"
            found.setdefault(key, f"{key} must be {want}, got {show(value)}")


def _is_number(value: Any, kind: type) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and (kind is float or
                                                                               isinstance(value, int))


def _leaves(node: Any, prefix: str = ""):
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _leaves(v, f"{prefix}{k}.")
    elif prefix:
        yield prefix[:-1], node


def _range_problems(cfg: dict, found: dict) -> None:
    t = cfg["training"]
    for key, value in _leaves(cfg):
        rule = _rule(key)
        if rule is None or key in found:
            continue
        if key == "training.max_updates" and t.get("max_epochs") is not None:
            continue  # max_epochs wins (MMF)
        if key == "training.max_updates" and value is None:
            found[key] = "training.max_updates must be an integer >= 1 (or set training.max_epochs), got None"
            continue
        _check_bound(key, value, *rule[1:], found=found)
    if t.get("clip_gradients") and "training.max_grad_l2_norm" not in found:
        _check_bound("training.max_grad_l2_norm", t.get("max_grad_l2_norm"), float, 0, False, None, False,
                     "with training.clip_gradients=true", found=found)
    steps = t.get("lr_steps") or []
    if not isinstance(steps, list) or not all(_is_number(x, int) and x > 0 for x in steps):
        found.setdefault("training.lr_steps", f"training.lr_steps must be a list of positive update numbers, got "
                                              f"{show(steps)}")
    betas = (cfg["optimizer"].get("params") or {}).get("betas")
    if betas is not None and not (isinstance(betas, list) and len(betas) == 2
                                  and all(_is_number(b, float) and 0 <= b < 1 for b in betas)):
        found.setdefault("optimizer.params.betas", f"optimizer.params.betas must be two numbers in [0, 1), got "
                                                   f"{show(betas)}")


def _check_bound(key: str, value: Any, kind: type, low, inclusive: bool, high, nullable: bool, context: str = "",
                 *, found: dict) -> None:
    if value is None and nullable:
        return
    if high is None and _is_number(value, int) and abs(value) > INT_LIMIT:
        found.setdefault(key, f"{key} is out of range: {show(value)} (the limit is 2**63-1)")
        return
    if _is_number(value, kind) and (isinstance(value, int) or math.isfinite(value)) and (value >= low if inclusive else value > low) \
            and (high is None or value <= high):
        return
    want = f"{'an integer' if kind is int else 'a number'} {'>=' if inclusive else '>'} {low}"
    want += f" and <= {high}" if high is not None else ""
    found.setdefault(key, f"{key} must be {want}{' or null' if nullable else ''}"
                          f"{' ' + context if context else ''}, got {show(value)}")


def _choice_problems(cfg: dict, found: dict) -> None:
    t = cfg["training"]
    choices = {"run_type": (cfg["run_type"], RUN_TYPES), "training.trainer": (t.get("trainer"), ("mmf",)),
               "training.logger_level": (str(t.get("logger_level")).lower(), LOGGER_LEVELS),
               "training.compile_mode": (t.get("compile_mode", "auto"), COMPILE_MODES),
               "training.attention_backend": (t.get("attention_backend", "auto"), ATTENTION_BACKENDS),
               "evaluation.predict_file_format": (cfg["evaluation"].get("predict_file_format"), ("json", "csv"))}
    for key, (value, allowed) in choices.items():
        if value not in allowed:
            found.setdefault(key, f"{key}={show(value)} is not one of {', '.join(allowed)}")
    if t.get("fp16") and t.get("bf16"):
        found.setdefault("training.bf16", "training.fp16 and training.bf16 are both true; pick one")
    if t.get("requeue") is True and cfg["checkpoint"].get("resume") is not True:
        # the requeued job reruns this very command: without resume it would be refused (its save dir holds the
        # run), after waiting in the queue; said now, at submission
        found.setdefault("training.requeue", "training.requeue=true reruns this same command after SLURM's "
                                             "time-limit warning; add checkpoint.resume=true so the rerun "
                                             "continues the run")


def zoo_key_problem(key: Any, manifests: list[str] = ()) -> str | None:
    """Why `key` names no entry of the zoo's manifests (the default ones and `manifests`; with the nearest keys, as
    `mmf zoo fetch` says), or None."""
    from zoo.errors import UnknownKeyError, ZooError
    from zoo.manifest import load_zoo

    if not isinstance(key, str) or not key.strip():
        return "must be a zoo key such as m4c.textvqa.defaults (`mmf zoo list` shows them)"
    try:
        zoo = load_zoo(list(manifests))
        zoo.resolve(key)
    except UnknownKeyError:
        near = zoo.closest(key) or sorted(k for k, e in zoo.entries.items() if e.kind == "models")[:4]
        return f"no zoo entry is called {key!r}; nearest: {', '.join(near)} (`mmf zoo list` shows all)"
    except ZooError as e:
        return str(e)
    return None


def dump_yaml(cfg: dict) -> str:
    """The resolved config as YAML text (saved with every run and in every checkpoint)."""
    return yaml.safe_dump(thaw(cfg), sort_keys=False, default_flow_style=False)


def run_record(cfg: dict, seed: int) -> dict:
    """What a run records as its config (config.yaml, checkpoints): a plain copy with training.seed the seed it
    actually uses (drawn for -1, or the resumed run's), so the record reproduces the run, and the run folders that
    were left to their defaults "" again (config=<save_dir>/config.yaml with another env.save_dir moves them too)."""
    record = thaw(cfg)
    record["training"]["seed"] = seed
    for name in RUN_FOLDER_DEFAULTS:  # a folder left to its default follows env.save_dir when the record is reused
        if record["env"].get(name) == _default_folder(record["env"], name):
            record["env"][name] = ""
    return record
