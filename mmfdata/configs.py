"""The dataset_config `mmf train` runs with, for `mmf data pack` and library users: resolved from the same YAML
files by the same code (`mmfconfig.resolve.build_config`: configs/defaults.yaml, the model and dataset defaults, the
project config, `key=value` overrides). There is no Python copy, so a YAML override of a processor changes what
`mmf data pack` builds exactly as it changes what `mmf train` reads, and the packed store stays fresh.

Two dataset_config options are ours (see configs/datasets/textvqa/defaults.yaml): `text_processor.params.
vocab_file` (MMF fetches the BERT vocab from the HF hub; None = search, see `processors.py`) and
`context_processor.params.expected_size` (the recorded byte size of the fastText model, to catch truncated files).
"""
from __future__ import annotations

from pathlib import Path

# MMF's M4C project configs, one per (dataset, variant): projects/m4c/configs/<name>/<variant or defaults>.yaml
PROJECT_CONFIGS = Path("projects") / "m4c" / "configs"


def project_config(name: str, variant: str | None = None) -> str:
    """The project config `mmf train` is run with for `name` (and `variant`, e.g. joint_with_stvqa)."""
    from zoo.project import CONFIGS_DIR

    folder = CONFIGS_DIR / PROJECT_CONFIGS / name
    if not folder.is_dir():
        known = sorted(p.name for p in (CONFIGS_DIR / PROJECT_CONFIGS).iterdir() if p.is_dir())
        raise ValueError(f"no project config for dataset {name!r}; known: {', '.join(known)}")
    path = folder / f"{variant or 'defaults'}.yaml"
    if variant == "defaults" or not path.is_file():
        known = sorted(p.stem for p in folder.glob("*.yaml") if p.stem not in ("defaults", "tiny"))
        raise ValueError(f"{name} has no variant {variant!r}; known: {', '.join(known) or 'none'}")
    return str(PROJECT_CONFIGS / name / path.name)


def run_config(name: str, *, config: str | None = None, variant: str | None = None, overrides=(),
               data_dir: str | None = None, environ: dict | None = None) -> dict:
    """The whole resolved config of `mmf train config=<config> datasets=<name> model=m4c <overrides>`.

    `config` defaults to the project config of (`name`, `variant`); `data_dir` sets env.data_dir (so
    `dataset_config.<name>.data_dir: ${env.data_dir}/datasets` resolves against it). Raises `ValueError`
    (mmfconfig's ConfigError) for a bad config, key or value.
    """
    from mmfconfig.resolve import build_config

    if config and variant:
        raise ValueError("give a config file or a variant, not both (the variant names a project config)")
    argv = [f"config={config or project_config(name, variant)}", f"datasets={name}", "model=m4c"]
    if data_dir:
        argv.append(f"env.data_dir={data_dir}")
    cfg = build_config(argv + list(overrides), environ)
    if name not in cfg.get("dataset_config", {}):
        raise ValueError(f"the config has no dataset_config.{name}")
    return cfg


def default_dataset_config(name: str, variant: str | None = None) -> dict:
    """`dataset_config.<name>` of the M4C project config, for use with any data dir (`build_dataset(...,
    data_dir)`): its `data_dir` is None, so paths resolve under `<data_dir>/datasets` of that data dir."""
    from mmfconfig.frozen import thaw

    node = thaw(run_config(name, variant=variant, environ={})["dataset_config"][name])  # the caller's own copy
    node["data_dir"] = None
    return node
