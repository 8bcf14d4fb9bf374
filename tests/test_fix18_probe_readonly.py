"""`mmf zoo list --probe` on a data dir the user cannot write (a second user of a lab's shared dir): the probed
sizes are shown, the exit is 0, and one line says the cache could not be saved. Two real uids (root owns the data
dir, `bob` lists; skipped unless root and bob exist), a real loopback HTTP mirror, the real CLI."""
from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

from tests.test_pkg_shared_dir import _as_user, _other_user
from tests.zoo_helpers import ROOT, make_zoo
from zoo.testing.faultserver import FaultServer


@pytest.fixture
def root_dir():
    root = Path(tempfile.mkdtemp(prefix="mmf-zoo-probe-"))
    root.chmod(0o755)
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.mark.parametrize("state_dir", [True, False], ids=["with-.mmfzoo", "without-.mmfzoo"])
def test_list_probe_on_a_read_only_data_dir_shows_sizes_and_says_the_cache_was_not_saved(root_dir, state_dir):
    bob = _other_user()
    toy = make_zoo(root_dir / "toy", with_size=False, feature_bytes=40_000)
    for p in root_dir.rglob("*"):
        p.chmod(0o755 if p.is_dir() else 0o644)
    data = root_dir / "data"
    (data / ".mmfzoo" if state_dir else data).mkdir(parents=True)
    for p in (data, data / ".mmfzoo"):
        if p.exists():
            p.chmod(0o755)
    home = root_dir / "bob-home"
    home.mkdir()
    os.chown(home, bob.pw_uid, bob.pw_gid)
    want = sum(p.stat().st_size for p in toy.archives.values())
    with FaultServer(toy.mirror) as srv:
        env = {"PATH": os.environ["PATH"], "HOME": str(home), "PYTHONPATH": str(ROOT), "MMF_ZOO_MIRRORS": srv.url,
               "MMF_ZOO_TRUST_DIR": str(home / "trust")}
        for extra in ([], ["--json"]):
            r = _as_user(bob, sys.executable, "-m", "mmfzoo_cli", "zoo", "list", "--zoo", str(toy.manifest),
                         "--data-dir", str(data), "--probe", *extra, env=env)
            assert r.returncode == 0, r.stdout + r.stderr
            said = [line for line in r.stderr.splitlines() if "probed sizes" in line]
            assert len(said) == 1 and str(data / ".mmfzoo") in said[0], r.stderr
            if extra:
                row = {x["key"]: x for x in json.loads(r.stdout)}["toyset.defaults"]
                assert row["size"] == want, row
            else:
                line = next(x for x in r.stdout.splitlines() if x.startswith("toyset.defaults"))
                assert "?" not in line.split()[4], line
        assert sum(n for rel, n in srv.stats.requests.items() if "/toyset/" in rel) >= 3  # the mirror was asked
    assert not (data / ".mmfzoo/probed-sizes.json").exists()
