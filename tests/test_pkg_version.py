"""`mmf --version` / `mmf -V` from a source checkout: pyproject.toml's version, without importing torch.
(An installed wheel and an editable install are checked in test_pkg_coexist.py.)"""
import re
import subprocess
import sys

import pytest

from tests.zoo_helpers import ROOT


@pytest.mark.parametrize("flag", ["--version", "-V"])
def test_version_from_checkout(flag):
    r = subprocess.run([sys.executable, "-X", "importtime", "-m", "mmfzoo_cli", flag], capture_output=True, text=True,
                       cwd=ROOT, timeout=60)
    assert r.returncode == 0, r.stderr[-2000:]
    version = re.search(r'^version = "(.+)"', (ROOT / "pyproject.toml").read_text(), re.M).group(1)
    assert r.stdout == f"mmf-zoo {version}\n"
    modules = {line.split("|")[-1].strip().split(".")[0] for line in r.stderr.splitlines()
               if line.startswith("import time:")}
    assert "zoo" in modules and "torch" not in modules and "numpy" not in modules


def test_version_is_listed_in_help():
    r = subprocess.run([sys.executable, "-m", "mmfzoo_cli", "--help"], capture_output=True, text=True, cwd=ROOT,
                       timeout=60)
    assert r.returncode == 0 and "--version" in r.stdout
