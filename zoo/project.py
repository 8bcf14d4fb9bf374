"""What this project is and where its shipped YAML lives: one answer for a source checkout (PYTHONPATH), an
editable install and a wheel install. Imports nothing heavy: `mmf --version` and `mmf zoo` ask it.

The repository keeps its YAML in `configs/` (MMF's layout); a wheel ships the same tree as the package
`mmfzoo_configs`, because a top-level `configs` in site-packages is a generic name other distributions ship too
(and uninstalling one would delete the other's files). Which one applies follows from where this code runs:
beside `mmfzoo_configs` it is installed, otherwise it runs from the checkout (editable installs too).
"""
from __future__ import annotations

import re
from pathlib import Path, PurePosixPath

DISTRIBUTION = "mmf-zoo"
CONFIGS_PACKAGE = "mmfzoo_configs"  # pyproject.toml maps the repository's configs/ to this package name
_ROOT = Path(__file__).resolve().parent.parent  # the checkout, or site-packages for a wheel install
_INSTALLED = (_ROOT / CONFIGS_PACKAGE).is_dir()
CONFIGS_DIR = _ROOT / (CONFIGS_PACKAGE if _INSTALLED else "configs")
ZOO_DIR = CONFIGS_DIR / "zoo"  # the zoo manifests and mirrors.yaml


def checkout() -> Path | None:
    """The source checkout this code runs from (editable installs included); None for a wheel install."""
    return None if _INSTALLED or not (_ROOT / "pyproject.toml").is_file() else _ROOT


def shipped(rel) -> Path:
    """A path the project's YAML names as MMF's do, relative to the package root (`configs/zoo/datasets.yaml`), or
    relative to the configs folder (`projects/m4c/...`): where that file is in this install."""
    parts = PurePosixPath(str(rel).replace("\\", "/")).parts
    return CONFIGS_DIR.joinpath(*(parts[1:] if parts[:1] == ("configs",) else parts))


def version() -> str:
    """This project's version: pyproject.toml's in a checkout (its metadata, if any, may be stale), else the
    installed distribution's metadata (which setuptools wrote from that same field)."""
    root = checkout()
    if root is not None:
        # the [project] table's `version = "..."` line; a regex, not tomllib, because Python 3.10 lacks tomllib
        found = re.search(r'^version\s*=\s*"([^"]+)"', (root / "pyproject.toml").read_text(), re.M)
        if found:
            return found.group(1)
    from importlib.metadata import PackageNotFoundError, version as dist_version

    try:
        return dist_version(DISTRIBUTION)
    except PackageNotFoundError:
        return "unknown (not installed and no pyproject.toml beside the code)"
