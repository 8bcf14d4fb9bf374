"""`mmf --help` and `mmf zoo ...` must start without importing torch (or numpy): data is fetched on login nodes."""
import subprocess
import sys

import pytest

from tests.zoo_helpers import ROOT


@pytest.mark.parametrize("args", [["--help"], ["zoo", "--help"], ["zoo", "list"], ["zoo", "info", "textvqa"],
                                  ["zoo", "fetch", "--help"],
                                  ["zoo", "pack", "--dry-run", "--for", "datasets=textvqa", "model=m4c",
                                   "config=projects/m4c/configs/textvqa/defaults.yaml"]])  # a run's config: no torch
def test_no_torch_import(args):
    r = subprocess.run([sys.executable, "-X", "importtime", "-m", "mmfzoo_cli", *args], capture_output=True, text=True,
                       cwd=ROOT, timeout=60)
    assert r.returncode == 0, r.stderr[-2000:]
    modules = {line.split("|")[-1].strip().split(".")[0] for line in r.stderr.splitlines() if line.startswith("import time:")}
    assert "zoo" in modules  # the probe sees our own imports, so it would see torch too
    assert "torch" not in modules and "numpy" not in modules
