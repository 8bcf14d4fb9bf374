"""Shared test setup: no test may reach beyond 127.0.0.1, so the zoo never falls back to the origin mirror."""
import os

import pytest


@pytest.fixture(autouse=True)
def _zoo_isolation(tmp_path, monkeypatch):
    monkeypatch.setenv("MMF_ZOO_MIRROR_ONLY", "1")
    monkeypatch.delenv("MMF_ZOO_MIRRORS", raising=False)
    monkeypatch.delenv("MMF_ZOO_OFFLINE", raising=False)
    monkeypatch.delenv("MMF_DATASET_ZOO", raising=False)
    monkeypatch.delenv("MMF_MODEL_ZOO", raising=False)
    monkeypatch.setenv("MMF_DATA_DIR", str(tmp_path / "default_data_dir"))
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
