"""Shared test setup: no test may reach beyond 127.0.0.1, so the zoo never falls back to the origin mirror, and no
test reads or writes the user's own trust store (one private store per test session; entries are keyed by the
record's real path, so tests cannot see each other's)."""
import atexit
import os
import shutil
import tempfile

import pytest

# set at import, before any fixture (module-scoped ones included) installs anything
TRUST_STORE = tempfile.mkdtemp(prefix="mmf-zoo-trust-")
os.environ["MMF_ZOO_TRUST_DIR"] = TRUST_STORE
atexit.register(shutil.rmtree, TRUST_STORE, True)


@pytest.fixture(autouse=True)
def _zoo_isolation(tmp_path, monkeypatch):
    monkeypatch.setenv("MMF_ZOO_MIRROR_ONLY", "1")
    monkeypatch.delenv("MMF_ZOO_MIRRORS", raising=False)
    monkeypatch.delenv("MMF_ZOO_OFFLINE", raising=False)
    for lock_setting in ("MMF_ZOO_HOSTNAME", "MMF_ZOO_SOFT_LOCK", "MMF_ZOO_LOCK_LEASE"):  # zoo.lock's: tests set them
        monkeypatch.delenv(lock_setting, raising=False)
    monkeypatch.delenv("MMF_DATASET_ZOO", raising=False)
    monkeypatch.delenv("MMF_MODEL_ZOO", raising=False)
    monkeypatch.setenv("MMF_DATA_DIR", str(tmp_path / "default_data_dir"))
    monkeypatch.setenv("MMF_ZOO_TRUST_DIR", TRUST_STORE)
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
