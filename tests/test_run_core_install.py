"""A core install (no train/data extras: no numpy, no torch) answers every command that needs an extra with one
line naming it and exit 1, never a ModuleNotFoundError traceback; `mmf --help` and `mmf zoo` still work.

The core environment is real: a Python without site-packages (-S) that sees this checkout and links to the core
dependencies' installed files only (pyproject.toml's `dependencies` and what they require), so numpy, torch and
lmdb are absent as after `pip install -e .` in a fresh venv."""
import os
import re
import subprocess
import sys
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

import pytest

from tests.zoo_helpers import ROOT


def _core_requirements() -> list[str]:
    text = (Path(ROOT) / "pyproject.toml").read_text()
    block = re.search(r"^dependencies = \[(.*?)^\]", text, re.M | re.S).group(1)
    return re.findall(r'^\s*"([A-Za-z0-9_.\-]+)', block, re.M)


def _closure(names: list[str]) -> set:
    seen, todo = {}, list(names)
    while todo:
        name = todo.pop().lower().replace("_", "-")
        if name in seen:
            continue
        try:
            dist = distribution(name)
        except PackageNotFoundError:  # a platform-specific requirement (colorama on Windows...)
            continue
        seen[name] = dist
        for req in dist.requires or []:
            if "extra ==" not in req:
                todo.append(re.split(r"[\s<>=!~;\[(]", req, maxsplit=1)[0])
    return set(seen.values())


@pytest.fixture(scope="module")
def core_site(tmp_path_factory) -> Path:
    site = tmp_path_factory.mktemp("core-site")
    for dist in _closure(_core_requirements()):
        for top in {f.parts[0] for f in dist.files or [] if f.parts and f.parts[0] != ".."}:
            source = Path(dist.locate_file(top))
            if source.exists() and not (site / top).exists():
                (site / top).symlink_to(source)
    return site


def core_run(site: Path, *args, cwd):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = os.pathsep.join([str(site), str(ROOT)])
    return subprocess.run([sys.executable, "-S", *args], capture_output=True, text=True, cwd=cwd, env=env,
                          timeout=120)


def test_the_core_environment_lacks_the_extras_and_runs_the_zoo(core_site, tmp_path):
    for module in ("numpy", "torch", "lmdb"):  # the fault: what the extras install is absent
        assert core_run(core_site, "-c", f"import {module}", cwd=tmp_path).returncode != 0, module
    for args in (["--help"], ["zoo", "--help"]):
        r = core_run(core_site, "-m", "mmfzoo_cli", *args, cwd=tmp_path)
        assert r.returncode == 0, r.stderr[-2000:]


@pytest.mark.parametrize("command, extra, missing", [
    (["train", "config=projects/m4c/configs/textvqa/tiny.yaml", "datasets=textvqa", "model=m4c"], "train", "numpy"),
    (["demo", "--out", "demo-out"], "train", "numpy"),
    (["data", "synth", "--out", "synth-out"], "data", "numpy"),
    (["data", "pack", "textvqa"], "data", "numpy"),
    (["plot", "save-dir"], "plot", "matplotlib"),
])
def test_a_command_needing_an_extra_names_it_in_one_line(core_site, tmp_path, command, extra, missing):
    r = core_run(core_site, "-m", "mmfzoo_cli", *command, cwd=tmp_path)
    assert r.returncode == 1, (r.stdout[-2000:], r.stderr[-2000:])
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr[-3000:]
    assert f"'{extra}' extra" in lines[0] and f'pip install -e ".[{extra}]"' in lines[0] and missing in lines[0]
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_torchrun_entry_point_names_the_extra_too(core_site, tmp_path):
    r = core_run(core_site, "-m", "mmftrain.cli", "config=projects/m4c/configs/textvqa/tiny.yaml", cwd=tmp_path)
    assert r.returncode == 1 and "'train' extra" in r.stderr and "Traceback" not in r.stderr, r.stderr[-2000:]
