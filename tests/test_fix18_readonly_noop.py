"""Fetching a key that is already installed is a no-op that writes nothing: a second user with read-only access
to a lab's shared data dir gets exit 0 "already installed" (not exit 4), and MMF's `.built.json` is not rewritten
when nothing changed. Two real uids (root installs, `bob` fetches; skipped unless root and bob exist), real CLI."""
from __future__ import annotations

import os
import sys

from tests import test_pkg_shared_dir
from tests.test_pkg_shared_dir import _as_user, _install, _other_user
from tests.zoo_helpers import ROOT, run_mmf

shared = test_pkg_shared_dir.shared  # the fixture: a folder bob can reach, a one-entry zoo and its mirror


def _state(data):
    """Every path under the data dir with its content and mtime: what a no-op must leave exactly as it was."""
    return {str(p.relative_to(data)): (p.read_bytes() if p.is_file() else None, p.lstat().st_mtime_ns)
            for p in sorted(data.rglob("*"))}


def test_a_second_user_fetching_an_installed_key_gets_already_installed_and_nothing_is_written(shared):
    bob = _other_user()
    data = _install(shared, 0o022)
    before = _state(data)
    assert any(name.endswith(".built.json") for name in before)
    home = shared / "bob-home"
    home.mkdir()
    os.chown(home, bob.pw_uid, bob.pw_gid)
    env = {"PATH": os.environ["PATH"], "HOME": str(home), "PYTHONPATH": str(ROOT), "MMF_ZOO_MIRROR_ONLY": "1",
           "MMF_ZOO_TRUST_DIR": str(home / "trust")}
    zoo_args = ["--zoo", str(shared / "datasets.yaml"), "--data-dir", str(data)]
    # bob cannot write there: the fault this test is about is real
    r = _as_user(bob, sys.executable, "-c", f"open({str(data / 'probe')!r}, 'w')", env=env)
    assert r.returncode != 0 and "Permission denied" in r.stderr, r.stderr
    r = _as_user(bob, sys.executable, "-m", "mmfzoo_cli", "zoo", "fetch", "labset", *zoo_args, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.count("already installed") == 2, r.stdout
    assert _state(data) == before


def test_refetching_an_installed_key_does_not_rewrite_built_json(shared):
    data = _install(shared, 0o022)
    before = _state(data)
    r = run_mmf("zoo", "fetch", "labset", "--zoo", str(shared / "datasets.yaml"), "--data-dir", str(data))
    assert r.returncode == 0 and r.stdout.count("already installed") == 2, r.stdout + r.stderr
    assert _state(data) == before
