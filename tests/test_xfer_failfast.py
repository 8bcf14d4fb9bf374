"""Offline or unreachable mirrors: the fetch ends fast with the cause in its last line; --lock-timeout holds
because the lock is taken before anything is probed. Names under the reserved .invalid TLD never resolve."""
from __future__ import annotations

import socket
import time

import pytest

from tests.zoo_helpers import make_zoo, run_mmf
from zoo.transfer import http
from zoo.lock import resource_lock
from zoo.transfer.mirror import Mirror
from zoo.testing.faultserver import FaultServer, Faults
from zoo.transfer import TransferOptions


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again when the block ends: nothing listens there


def _fetch(zoo, data, *mirrors, extra=()):
    args = ["zoo", "fetch", "toyset", "--zoo", str(zoo.manifest), "--data-dir", str(data), "--mirror-only"]
    for m in mirrors:
        args += ["--mirror", m]
    t0 = time.monotonic()
    r = run_mmf(*args, *extra, timeout=300)
    return r, time.monotonic() - t0


def _check_fast_and_clear(r, took, *causes):
    lines = [line for line in (r.stdout + r.stderr).splitlines() if line.strip()]
    assert r.returncode == 3, r.stderr
    assert took <= 30, f"took {took:.1f}s"  # the bound for a fetch with no reachable mirror
    assert len(lines) <= 10, r.stderr
    for cause in causes:
        assert cause in lines[-1], lines[-1]
    text = r.stdout + r.stderr
    for noise in ("Pool(", "Conn(", "Max retries", "Traceback", "retrying in", "kept"):
        assert noise not in text, text


def test_dns_failure_fails_fast_with_the_cause(tmp_path):
    zoo = make_zoo(tmp_path, feature_bytes=1 << 16, with_size=False)  # no sizes: the preflight probes too
    r, took = _fetch(zoo, tmp_path / "data", "http://nosuch.invalid/")
    _check_fast_and_clear(r, took, "cannot resolve nosuch.invalid", "--from")
    assert not list((tmp_path / "data").rglob("*.part"))


def test_refused_and_unresolvable_mirrors_are_both_named(tmp_path):
    zoo = make_zoo(tmp_path, feature_bytes=1 << 16, with_size=False)
    port = _closed_port()
    r, took = _fetch(zoo, tmp_path / "data", f"http://127.0.0.1:{port}/", "http://nosuch.invalid/",
                     extra=["--json"])
    _check_fast_and_clear(r, took, f"127.0.0.1:{port} refused the connection", "cannot resolve nosuch.invalid")
    # each host's cause is said once, not once per resource and retry
    assert r.stderr.count("cannot resolve nosuch.invalid") == 2  # the warning and the error line


def test_lock_is_taken_before_a_slow_probe(tmp_path):
    zoo = make_zoo(tmp_path, feature_bytes=1 << 16, with_size=False)
    data = tmp_path / "data"
    state = data / "datasets/toyset/defaults/features/.mmfzoo"
    with FaultServer(zoo.mirror, faults=Faults(latency=20.0)) as srv, \
            resource_lock(state / "features.tar.gz.lock", "a test holding it"):
        r, took = _fetch(zoo, data, srv.url, extra=["--lock-timeout", "2", "--stall-timeout", "40"])
        requests = sum(srv.stats.requests.values())
    assert r.returncode == 5, r.stderr
    assert "locked by" in r.stderr.splitlines()[-1]
    assert requests == 0  # nothing was probed while waiting for the lock
    assert took < 15, f"took {took:.1f}s"  # 2 s of lock timeout, not 20 s of probing first


def test_a_host_that_answered_before_stays_transient(tmp_path):
    """Refused after it served: a restarting mirror is retried as before, not dropped as unreachable."""
    (tmp_path / "f.bin").write_bytes(b"x" * 10000)
    opts = TransferOptions(connect_timeout=2, stall_timeout=2)
    with FaultServer(tmp_path) as srv:
        url = srv.url_for("f.bin")
        http.probe(Mirror(url), opts)
    with pytest.raises(http.Transient) as info:
        http.probe(Mirror(url), opts)
    assert not isinstance(info.value, http.Unreachable)
    assert "refused" in str(info.value)


def test_unreachable_causes_are_classified_in_process():
    opts = TransferOptions(connect_timeout=2, stall_timeout=2)
    port = _closed_port()
    for url, cause in ((f"http://127.0.0.1:{port}/x", f"127.0.0.1:{port} refused the connection"),
                       ("http://nosuch.invalid/x", "cannot resolve nosuch.invalid")):
        with pytest.raises(http.Unreachable) as info:
            http.probe(Mirror(url), opts)
        assert cause in str(info.value)
        t0 = time.monotonic()
        with pytest.raises(http.Unreachable):  # known now: not asked again within the memo's lifetime
            http.probe(Mirror(url.replace("/x", "/y")), opts)
        assert time.monotonic() - t0 < 1.0


def test_builtin_textvqa_offline(tmp_path):
    """The issue's case on this machine, when it cannot reach the origin (skipped where it can: 64 GB)."""
    try:
        socket.getaddrinfo("dl.fbaipublicfiles.com", 443)
        pytest.skip("this machine resolves the origin; the offline case is covered by the .invalid tests")
    except OSError:
        pass
    for mirrors in ([], ["--mirror", f"http://127.0.0.1:{_closed_port()}/"]):
        t0 = time.monotonic()
        r = run_mmf("zoo", "fetch", "textvqa", "--data-dir", str(tmp_path / "data"), *mirrors, timeout=300,
                    env={"MMF_ZOO_MIRROR_ONLY": "0"})  # the origin is asked: it does not resolve here
        took = time.monotonic() - t0
        _check_fast_and_clear(r, took, "cannot resolve dl.fbaipublicfiles.com")
        print(f"textvqa offline {mirrors}: exit {r.returncode} in {took:.1f}s, "
              f"{len((r.stdout + r.stderr).splitlines())} lines")


def test_an_interrupt_before_any_byte_claims_no_partial_download(tmp_path):
    import signal
    import subprocess
    import sys

    from tests.zoo_helpers import ROOT

    zoo = make_zoo(tmp_path, feature_bytes=1 << 16)
    data = tmp_path / "data"
    with FaultServer(zoo.mirror, faults=Faults(latency=20.0)) as srv:
        proc = subprocess.Popen([sys.executable, "-m", "mmfzoo_cli", "zoo", "fetch", "toyset", "--zoo",
                                 str(zoo.manifest), "--data-dir", str(data), "--mirror", srv.url, "--quiet"],
                                cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 30
        while not sum(srv.stats.requests.values()) and time.monotonic() < deadline:
            time.sleep(0.05)  # the probe is waiting for the mirror's answer
        assert sum(srv.stats.requests.values()), "the probe never came"
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    last = err.strip().splitlines()[-1]
    assert "nothing" in last and "kept" not in last, last
