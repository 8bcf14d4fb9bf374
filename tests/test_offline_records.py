"""Install records remember their manifest entry; verify, --repair, list and info judge an install by it.

The "built-in" manifest is a toy one given through MMF_DATASET_ZOO (the way MMF users point at another zoo), and
the user's custom.yaml redefines its key with other data, as a lab that re-extracted features does. Real archives,
a real folder mirror, the real CLI in subprocesses.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml

from tests.zoo_helpers import custom_install, make_zoo, run_mmf

KEY = "toyset"


@pytest.fixture()
def lab(tmp_path):
    """A built-in zoo (env) and a custom.yaml redefining the same key, installed from the custom one."""
    builtin, custom, manifest, data, env = custom_install(tmp_path, KEY)

    def mmf(*args):
        return run_mmf("zoo", *args, "--data-dir", str(data), env=env)
    return builtin, custom, manifest, data, mmf


def _feature(data: Path) -> Path:
    return data / f"datasets/{KEY}/defaults/features/open_images/detectron.lmdb/data.mdb"


def test_a_custom_install_is_judged_by_its_own_entry_not_the_builtin_one(lab):
    builtin, custom, manifest, data, mmf = lab
    r = mmf("verify", KEY)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "BAD" not in r.stdout and str(manifest) in r.stdout and f"--zoo {manifest}" in r.stdout, r.stdout
    r = mmf("list")
    assert r.returncode == 0, r.stderr
    row = next(line for line in r.stdout.splitlines() if line.startswith(f"{KEY}.defaults"))
    assert f"installed from {manifest}" in row, row
    r = mmf("info", KEY)
    assert r.returncode == 0 and f"installed from {manifest}" in r.stdout, r.stdout + r.stderr


def test_repair_never_replaces_a_custom_install_with_the_builtin_data_without_force(lab):
    builtin, custom, manifest, data, mmf = lab
    f = _feature(data)
    f.write_bytes(b"\0" * f.stat().st_size)  # damaged: repair is wanted, but from which entry?
    r = mmf("verify", KEY)
    assert r.returncode == 2 and "BAD" in r.stdout, r.stdout
    r = mmf("verify", KEY, "--repair", "--mirror", str(builtin.mirror))
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 1 and len(lines) == 1 and "--force" in lines[0] and f"--zoo {manifest}" in lines[0], r.stderr
    assert f.read_bytes() == b"\0" * f.stat().st_size  # untouched: not replaced with the built-in data
    r = mmf("verify", KEY, "--repair", "--zoo", str(manifest), "--offline")  # its own entry: the kept archive
    assert r.returncode == 0, r.stdout + r.stderr
    assert f.read_bytes() == custom.trees["features"][f"datasets/{KEY}/defaults/features/open_images/detectron.lmdb/data.mdb"]
    f.write_bytes(b"\0" * f.stat().st_size)
    r = mmf("verify", KEY, "--repair", "--force", "--mirror", str(builtin.mirror))  # asked for: replaced
    assert r.returncode == 0, r.stdout + r.stderr
    assert f.read_bytes() == builtin.trees["features"][f"datasets/{KEY}/defaults/features/open_images/detectron.lmdb/data.mdb"]
    r = mmf("verify", KEY)  # all of it was replaced, not just the damaged resource: no mix of two entries
    assert r.returncode == 0 and "installed from" not in r.stdout, r.stdout


def test_a_custom_manifest_edited_or_removed_after_install_is_said_so(lab):
    builtin, custom, manifest, data, mmf = lab
    node = yaml.safe_load(manifest.read_text())
    node[KEY]["defaults"]["version"] = "3.0_edited"
    manifest.write_text(yaml.safe_dump(node))
    r = mmf("verify", KEY, "--zoo", str(manifest))
    assert r.returncode == 2 and "changed since this was installed" in r.stdout, r.stdout
    r = mmf("verify", KEY)  # judged by its own record, and the edit is named
    assert r.returncode == 0 and "that manifest changed since" in r.stdout, r.stdout
    manifest.unlink()
    r = mmf("verify", KEY)
    assert r.returncode == 0 and "that manifest is gone" in r.stdout, r.stdout


def test_a_key_no_active_manifest_has_is_found_by_its_records(tmp_path):
    own = make_zoo(tmp_path, key="labset", feature_bytes=40_000)
    data = tmp_path / "data"
    env = {"MMF_ZOO_TRUST_DIR": str(tmp_path / "trust")}
    r = run_mmf("zoo", "fetch", "labset", "--zoo", str(own.manifest), "--mirror", str(own.mirror),
                "--data-dir", str(data), "-q", env=env)
    assert r.returncode == 0, r.stderr
    r = run_mmf("zoo", "verify", "labset", "--data-dir", str(data), env=env)
    assert r.returncode == 0 and "no active manifest has" in r.stdout, r.stdout + r.stderr
    r = run_mmf("zoo", "list", "--data-dir", str(data), env=env)
    assert any(line.startswith("labset.defaults") and "installed from" in line for line in r.stdout.splitlines())
    r = run_mmf("zoo", "verify", "labsett", "--data-dir", str(data), env=env)  # a typo is still a typo
    assert r.returncode == 1 and "unknown zoo key" in r.stderr
    damaged = data / "datasets/labset/defaults/annotations/imdb_train.npy"
    damaged.write_bytes(b"rot")
    r = run_mmf("zoo", "verify", "labset", "--repair", "--force", "--data-dir", str(data), env=env)
    assert r.returncode == 1 and "no active manifest has" in r.stderr and f"--zoo {own.manifest}" in r.stderr, \
        r.stderr
    assert damaged.read_bytes() == b"rot"
    r = run_mmf("zoo", "verify", "labset", "--repair", "--zoo", str(own.manifest), "--offline", "--data-dir",
                str(data), env=env)
    assert r.returncode == 0 and damaged.read_bytes() != b"rot", r.stdout + r.stderr


def test_mmf_built_data_is_reported_as_unverifiable_not_bad(tmp_path):
    toy = make_zoo(tmp_path, feature_bytes=40_000)
    data = tmp_path / "data"
    for rel in ("features", "annotations", ""):
        folder = data / "datasets/toyset/defaults" / rel
        folder.mkdir(parents=True, exist_ok=True)
        (folder / ".built.json").write_text(json.dumps({"created_at": "2021-01-01", "version": "1.0_2026_11_26"}))
    r = run_mmf("zoo", "verify", "toyset", "--zoo", str(toy.manifest), "--data-dir", str(data))
    assert r.returncode == 0 and "built by MMF, not verifiable by content" in r.stdout and "BAD" not in r.stdout, \
        r.stdout + r.stderr
    r = run_mmf("zoo", "verify", "toyset", "--zoo", str(toy.manifest), "--data-dir", str(data), "--strict")
    assert r.returncode == 2, r.stdout


def test_old_records_without_the_entry_still_judge_a_custom_install(lab):
    builtin, custom, manifest, data, mmf = lab
    for rec_path in data.rglob("*.installed.json"):
        rec = json.loads(rec_path.read_text())
        for field in ("entry", "kind", "hashcode", "manifest_path", "manifest_sha256", "node"):
            rec.pop(field)
        rec_path.write_text(json.dumps(rec))
    r = mmf("verify", KEY, "--zoo", str(manifest))
    assert "installed version" not in r.stdout and "changed since" not in r.stdout, r.stdout
    r = mmf("verify", KEY)  # its "manifest" field alone says it is the custom one's
    assert "installed version" not in r.stdout and str(manifest) in r.stdout, r.stdout


def test_a_forged_record_grants_nothing_and_reads_nothing_outside(lab, tmp_path):
    builtin, custom, manifest, data, mmf = lab
    fifo = tmp_path / "manifest.fifo"
    os.mkfifo(fifo)  # a record naming it must not make verify block reading it
    secret = tmp_path / "secret.txt"
    secret.write_text("x" * 10)
    rec_path = next(data.rglob("features.tar.gz.installed.json"))
    rec = json.loads(rec_path.read_text())
    rec["manifest"] = rec["manifest_path"] = str(fifo)
    rec["files"].append([os.path.relpath(secret, rec_path.parent.parent), 10, "0" * 32])
    rec_path.write_text(json.dumps(rec))
    r = run_mmf("zoo", "verify", KEY, "--data-dir", str(data), env={"MMF_DATASET_ZOO": str(builtin.manifest),
                "MMF_ZOO_TRUST_DIR": str(tmp_path / "trust")}, timeout=60)
    line = next(line for line in r.stdout.splitlines() if "features.tar.gz" in line)
    assert r.returncode == 2 and line.startswith("BAD"), r.stdout
    assert "not in this user's trust store" in line or "changed after" in line, line  # edited: trust is gone
    assert "not a path inside its install folder" in line, line
