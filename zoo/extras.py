"""Which optional extra a command needs, and one line naming it when it is not installed.

The core install (`pip install -e .`) fetches data without torch or numpy; `mmf train`, `mmf demo` and `mmf data
synth/pack` need an extra. What an extra holds is pyproject.toml's fact: read from the installed distribution's
metadata, else from the checkout's pyproject.toml. Asked before the command imports anything heavy, so a core
install answers with one line and exit 1, never a ModuleNotFoundError traceback.
"""
from __future__ import annotations

import importlib.util
import re

from zoo.project import DISTRIBUTION, checkout

# the extra each command needs (its packages are pyproject.toml's [project.optional-dependencies])
COMMAND_EXTRA = {"mmf train": "train", "mmf demo": "train", "mmf data synth": "data", "mmf data pack": "data",
                 "mmf plot": "plot"}


class MissingExtra(Exception):
    """The message is the one line to print."""


def extra_modules(extra: str) -> list[str]:
    """Import names of the packages the `extra` extra installs (a distribution's name, `-` read as `_`)."""
    names = _from_metadata(extra)
    if names is None:
        names = _from_pyproject(extra)
    return [re.split(r"[\s<>=!~;\[]", name.strip(), maxsplit=1)[0].replace("-", "_").lower() for name in names]


def _from_metadata(extra: str) -> list[str] | None:
    from importlib.metadata import PackageNotFoundError, requires

    try:
        wanted = requires(DISTRIBUTION) or []
    except PackageNotFoundError:
        return None
    marker = re.compile(r"""extra\s*==\s*["']""" + re.escape(extra) + """["']""")
    return [req.split(";")[0] for req in wanted if marker.search(req)]


def _from_pyproject(extra: str) -> list[str]:
    root = checkout()
    if root is None:
        return []
    # `name = ["pkg>=1", ...]` on one line, as this project writes it (Python 3.10 has no tomllib)
    found = re.search(rf"^{re.escape(extra)}\s*=\s*\[([^\]]*)\]", (root / "pyproject.toml").read_text(), re.M)
    return re.findall(r'"([^"]+)"', found.group(1)) if found else []


def require(command: str) -> None:
    """Raise MissingExtra naming the extra `command` needs when any of its packages is not importable."""
    extra = COMMAND_EXTRA[command]
    missing = [name for name in extra_modules(extra) if not _importable(name)]
    if missing:
        raise MissingExtra(f"{command} needs the '{extra}' extra ({', '.join(missing)} not installed): "
                           f'pip install -e ".[{extra}]" in the checkout, or pip install "{DISTRIBUTION}[{extra}]"')


def _importable(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False
