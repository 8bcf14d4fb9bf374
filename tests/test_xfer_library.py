"""The library fetch (`zoo.fetch`, which `mmf train` calls): MMF_ZOO_OFFLINE is honoured, and the bytes moving show
as periodic progress lines in a non-interactive log (bars on a terminal, as `mmf zoo fetch`)."""
from __future__ import annotations

import re
import subprocess
import sys
import textwrap

import pytest

import zoo
from tests.zoo_helpers import ROOT, assert_tree, make_zoo
from zoo.errors import OfflineError
from zoo.testing.faultserver import FaultServer, Faults
from zoo.transfer import TransferOptions


def test_mmf_zoo_offline_is_honoured_by_zoo_fetch(tmp_path, monkeypatch):
    toy = make_zoo(tmp_path, feature_bytes=1 << 16)
    monkeypatch.setenv("MMF_ZOO_OFFLINE", "1")
    with FaultServer(toy.mirror) as srv:
        with pytest.raises(OfflineError, match="offline"):
            zoo.fetch("toyset", data_dir=tmp_path / "data", zoo_paths=[toy.manifest], mirrors=[srv.url])
        assert sum(srv.stats.requests.values()) == 0
    assert TransferOptions().offline and TransferOptions(offline=False).offline
    monkeypatch.setenv("MMF_ZOO_OFFLINE", "0")
    assert not TransferOptions().offline


def _train_fetch(tmp_path, toy, url, env_extra=""):
    """mmf train's automatic fetch (mmftrain.run._fetch_requirements), in a child whose stderr is a pipe."""
    code = textwrap.dedent(f"""
        import os, sys
        os.environ["MMF_ZOO_MIRRORS"] = {url!r}
        {env_extra}
        import zoo.progress
        zoo.progress.PERIOD = 0.3  # the log's period (30 s) shortened to fit a test
        from mmftrain import run
        cfg = {{"env": {{"data_dir": {str(tmp_path / "data")!r}, "fetch_missing_data": True,
                         "dataset_zoo": {str(toy.manifest)!r}}},
                "datasets": ["toyset"], "dataset_config": {{"toyset": {{"zoo_requirements": ["toyset"]}}}}}}
        try:
            run._fetch_requirements(cfg)
        except Exception as e:
            print("ERROR", type(e).__name__, e, file=sys.stderr)
            sys.exit(7)
    """)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)


def test_train_automatic_fetch_logs_periodic_progress(tmp_path):
    toy = make_zoo(tmp_path, feature_bytes=3 << 20)
    with FaultServer(toy.mirror, faults=Faults(glob="*features*", rate_bps=1_000_000)) as srv:
        r = _train_fetch(tmp_path, toy, srv.url)
    assert r.returncode == 0, r.stderr
    lines = [line for line in r.stderr.splitlines() if "features.tar.gz:" in line]
    periodic = [line for line in lines if re.search(r" of .*\(\d+%\), .*/s, ETA ", line)]
    assert len(periodic) >= 2, r.stderr
    assert re.search(r"features\.tar\.gz: 3\.\d MiB in \d+ s", lines[-1]), lines[-1]
    assert "\r" not in r.stderr and "\x1b[" not in r.stderr  # no bar redraws in a log
    assert_tree(tmp_path / "data", toy)


def test_train_automatic_fetch_honours_mmf_zoo_offline(tmp_path):
    toy = make_zoo(tmp_path, feature_bytes=1 << 16)
    with FaultServer(toy.mirror) as srv:
        r = _train_fetch(tmp_path, toy, srv.url, env_extra='os.environ["MMF_ZOO_OFFLINE"] = "1"')
        assert sum(srv.stats.requests.values()) == 0
    assert r.returncode == 7 and "offline" in r.stderr, r.stderr


def test_train_automatic_fetch_lines_reach_train_log_in_the_one_format(tmp_path):
    """In a run, the fetch's plan, notes and progress lines go through the `zoo` logger: one console format
    (zoo.logfmt) and the run's train.log keeps them."""
    toy = make_zoo(tmp_path, feature_bytes=1 << 20)
    logs = tmp_path / "logs"
    setup = (f"from mmftrain.logs import setup_logging; from pathlib import Path; "
             f"setup_logging(Path({str(logs)!r}), True, 0)")
    with FaultServer(toy.mirror) as srv:
        r = _train_fetch(tmp_path, toy, srv.url, env_extra=setup)
    assert r.returncode == 0, r.stderr
    kept = (logs / "train.log").read_text()
    for text in ("resource(s) to fetch", "features.tar.gz: 1.0 MiB in"):
        assert re.search(r"\| INFO \| zoo : .*" + re.escape(text), r.stderr), r.stderr
        assert text in kept, kept
    assert "zoo: " not in r.stderr.replace("| zoo : ", "")  # no line in a second, bare format
