"""Where a path-valued config key points, found as MMF's `get_absolute_path` finds it: absolute as written, else
relative to the working directory first (a user's copy wins), then to this project's files (MMF's package root,
`zoo.project` owns where that is). A path found nowhere is an error naming every place tried: never a silent
fallback to a built-in file. Imports nothing heavy."""
from __future__ import annotations

from pathlib import Path

from zoo.project import CONFIGS_DIR, shipped

# path-valued keys that name a file that must exist (relative: cwd, then the project's files)
PROJECT_FILES = ("env.dataset_zoo", "env.model_zoo")
# path-valued keys of folders and files the run creates or that are checked where they are used: expanded once
# (`~`, the working directory), so every component reads the same absolute path
FOLDERS = ("env.cache_dir", "env.data_dir", "env.save_dir", "env.log_dir", "env.report_dir", "env.tensorboard_logdir")


def expand(value: str | Path) -> Path:
    """`~` and the working directory applied (not resolved through links: the folder the user named)."""
    return Path(Path(str(value)).expanduser()).absolute()


def candidates(value: str | Path, base: Path | None = None) -> list[Path]:
    """The places a relative path is looked for, in MMF's order: `base` (the working directory, or an including
    file's folder) first, then the project's files (`configs/...` as MMF's root spells it, or under configs/)."""
    p = Path(str(value)).expanduser()
    if p.is_absolute():
        return [p]
    found = [(base or Path.cwd()) / p, CONFIGS_DIR / p]
    if p.parts[:1] == ("configs",):
        found.append(shipped(p))
    return list(dict.fromkeys(found))


def find_file(value: str | Path, what: str, base: Path | None = None) -> tuple[Path | None, str]:
    """(the existing file `value` names, "") or (None, a one-line problem naming `what` (a key, written `key=value`;
    a phrase ending in a space is followed by the value as is) and the places tried)."""
    tried = candidates(value, base)
    for c in tried:
        if c.is_file():
            return c.absolute(), ""
    named = what + value if what.endswith(" ") else f"{what}={value}"
    return None, f"{named} not found (tried {', '.join(str(t) for t in tried)}); pass an existing file"


def zoo_manifests(cfg: dict) -> list[tuple[str, str]]:
    """The manifests env.dataset_zoo / env.model_zoo (MMF's keys, found by `find_file` when the config was built)
    name besides those the zoo reads anyway (the shipped ones, or MMF_DATASET_ZOO / MMF_MODEL_ZOO), as (kind, path)
    pairs: env.model_zoo is a model zoo whatever its file is called. What `zoo.fetch`/`zoo.place` get as zoo_paths,
    for the trainer's fetches and checkpoint.resume_zoo alike."""
    from zoo.manifest import CONFIG_DIR, default_manifest_paths

    read_anyway = {p.resolve() for _, p in default_manifest_paths()}
    read_anyway |= {(CONFIG_DIR / n).resolve() for n in ("datasets.yaml", "models.yaml")}
    named = [(kind, Path(str(cfg["env"].get(key) or ""))) for kind, key in (("datasets", "dataset_zoo"),
                                                                            ("models", "model_zoo"))]
    return [(kind, str(p)) for kind, p in named if p.is_absolute() and p.is_file() and p.resolve() not in read_anyway]


def model_files(cfg: dict) -> dict[str, Path]:
    """The pretrained files the model config turns on, as the model builder reads them: {option: file}, a relative
    option under model_config.<model>.model_data_dir (else env.data_dir). `fc7_weights_dir` maps to the folder's
    `fc7_w.pkl` (its presence turns the fc7 initialisation on). An option left empty or off is absent."""
    model = cfg.get("model")
    mc = ((cfg.get("model_config") or {}).get(model) or {}) if model else {}
    base = Path(str(mc.get("model_data_dir") or cfg["env"]["data_dir"])).expanduser()

    def under(value) -> Path:
        p = Path(str(value)).expanduser()
        return p if p.is_absolute() else base / p

    out = {}
    if mc.get("text_bert_init_from_bert_base") and mc.get("text_bert_weights"):
        out["text_bert_weights"] = under(mc["text_bert_weights"])
    if mc.get("fc7_weights_dir"):
        out["fc7_weights_dir"] = under(mc["fc7_weights_dir"]) / FC7_WEIGHTS
    return out


FC7_WEIGHTS = "fc7_w.pkl"  # with fc7_b.pkl beside it: detectron's fc7 layer (MMF's models/detectron.vmb_weights)
