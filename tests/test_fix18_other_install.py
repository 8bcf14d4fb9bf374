"""An install made from a custom manifest's entry is never silently replaced by the built-in entry's data.

The "built-in" manifest is a toy one given through MMF_DATASET_ZOO; custom.yaml redefines its key with other data
(as a lab that re-extracted features does). `mmf zoo fetch KEY` without --zoo, and the API `zoo.fetch` that
`mmf train`'s automatic fetch uses, refuse in one line naming the custom manifest and the two ways on; `mmf zoo
adopt KEY` judges the install by the entry its records remember. Real archives, real CLI subprocesses.
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.zoo_helpers import custom_install, run_mmf

KEY = "toyset"
FEATURE = f"datasets/{KEY}/defaults/features/open_images/detectron.lmdb/data.mdb"


@pytest.fixture()
def lab(tmp_path):
    return custom_install(tmp_path, KEY)


def _snapshot(data: Path) -> dict:
    return {str(p.relative_to(data)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(data.rglob("*")) if p.is_file() and not p.name.endswith(".lock")}


def test_fetch_without_zoo_refuses_to_replace_a_custom_install(lab):
    builtin, custom, manifest, data, env = lab
    before = _snapshot(data)
    r = run_mmf("zoo", "fetch", KEY, "--mirror", str(builtin.mirror), "--data-dir", str(data), env=env)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 1, r.stdout + r.stderr
    assert len(lines) == 1 and str(manifest) in lines[0], r.stderr
    assert f"--zoo {manifest}" in lines[0] and "--force" in lines[0], lines[0]
    assert _snapshot(data) == before  # nothing changed
    assert (data / FEATURE).read_bytes() == custom.trees["features"][FEATURE]
    r = run_mmf("zoo", "fetch", KEY, "--json", "--mirror", str(builtin.mirror), "--data-dir", str(data), env=env)
    doc = json.loads(r.stdout)
    assert r.returncode == 1 and doc["error"]["kind"] == "other_install" and doc["error"]["exit_code"] == 1, r.stdout
    # the first way on: its own manifest, nothing to do
    r = run_mmf("zoo", "fetch", KEY, "--zoo", str(manifest), "--offline", "--data-dir", str(data), env=env)
    assert r.returncode == 0 and "already installed" in r.stdout, r.stdout + r.stderr
    # the second: --force replaces it with the built-in entry's data
    r = run_mmf("zoo", "fetch", KEY, "--force", "-q", "--mirror", str(builtin.mirror), "--data-dir", str(data),
                env=env)
    assert r.returncode == 0, r.stderr
    assert (data / FEATURE).read_bytes() == builtin.trees["features"][FEATURE]


def test_the_api_fetch_that_mmf_train_uses_refuses_too(lab):
    builtin, custom, manifest, data, env = lab
    code = ("import sys, zoo\nfrom zoo.errors import ZooError\n"
            "try:\n    zoo.fetch('toyset', data_dir=sys.argv[1], mirrors=[sys.argv[2]], progress=False)\n"
            "except ZooError as e:\n    print(e)\n    sys.exit(7 if e.kind == 'other_install' else 1)\n")
    r = subprocess.run([sys.executable, "-c", code, str(data), str(builtin.mirror)], capture_output=True, text=True,
                       env={**os.environ, **env}, cwd=Path(__file__).resolve().parents[1], timeout=120)
    assert r.returncode == 7 and str(manifest) in r.stdout, r.stdout + r.stderr
    assert (data / FEATURE).read_bytes() == custom.trees["features"][FEATURE]


def test_adopt_without_zoo_does_not_judge_a_custom_install_by_the_builtin_entry(lab):
    builtin, custom, manifest, data, env = lab
    before = _snapshot(data)
    r = run_mmf("zoo", "adopt", KEY, "--data-dir", str(data), env=env)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 1 and len(lines) == 1, r.stdout + r.stderr
    assert f"--zoo {manifest}" in lines[0] and "adopt" in lines[0], lines[0]
    assert "--force" not in r.stdout + r.stderr  # never advise replacing the lab's data to adopt it
    assert _snapshot(data) == before
    r = run_mmf("zoo", "adopt", KEY, "--zoo", str(manifest), "--data-dir", str(data), env=env)
    assert r.returncode == 0 and r.stdout.count("ok ") == 3, r.stdout + r.stderr
    recs = [json.loads(p.read_text()) for p in data.rglob("*.installed.json")]
    assert len(recs) == 3 and all(r.get("adopted") and r.get("node") for r in recs), recs
    # the rewritten records still remember their entry: a later fetch without --zoo still refuses
    r = run_mmf("zoo", "fetch", KEY, "--offline", "--data-dir", str(data), env=env)
    assert r.returncode == 1 and f"--zoo {manifest}" in r.stderr, r.stderr
