"""Filesystems where flock does not work, and `mmf zoo fetch` on a "node", for the shared-data-dir tests.

- `fuse`: tests/noflock/flocklessfs.c, a pass-through FUSE filesystem whose flock() fails with ENOLCK (what an NFS
  mount without a lock daemon answers), mounted over a folder: a real filesystem that the kernel asks about flock.
  Needs root, /dev/fuse, gcc and libfuse3 (Debian: fuse3 libfuse3-dev); without them the tests using it skip.
- `preload`: tests/noflock/noflock_preload.c, an LD_PRELOAD shim whose flock() fails the same way for files under
  one folder (NOFLOCK_UNDER): the OS call refused, not our code replaced; needs only gcc, so it runs everywhere.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

SOURCES = Path(__file__).resolve().parent / "noflock"
ROOT = SOURCES.parent.parent
# `mmf zoo fetch` with the waiters' note period (30 s) shortened to fit a test, as tests/test_xfer_library.py does
MMF = ("import sys, zoo.progress; zoo.progress.PERIOD = float(sys.argv.pop(1)); sys.argv[0] = 'mmf'; "
       "from mmfzoo_cli.main import main; main()")


def build(out: Path) -> dict[str, Path | str]:
    """Compile what can be compiled here into `out`: {'preload': .so, 'fuse': binary}, or why not."""
    built: dict[str, Path | str] = {}
    gcc = shutil.which("gcc") or shutil.which("cc")
    if gcc is None:
        return {"preload": "no C compiler (gcc)", "fuse": "no C compiler (gcc)"}
    so = out / "noflock.so"
    r = subprocess.run([gcc, "-O2", "-shared", "-fPIC", "-o", str(so), str(SOURCES / "noflock_preload.c"), "-ldl"],
                       capture_output=True, text=True)
    built["preload"] = so if r.returncode == 0 else f"the LD_PRELOAD shim does not compile: {r.stderr[-300:]}"
    built["fuse"] = _build_fuse(gcc, out)
    return built


def _build_fuse(gcc: str, out: Path) -> Path | str:
    if not Path("/dev/fuse").exists():
        return "no /dev/fuse"
    if os.geteuid() != 0:
        return "mounting a FUSE filesystem here needs root"
    flags = subprocess.run(["pkg-config", "--cflags", "--libs", "fuse3"], capture_output=True, text=True) \
        if shutil.which("pkg-config") else None
    if flags is None or flags.returncode != 0:
        return "libfuse3 is not installed (Debian: apt-get install fuse3 libfuse3-dev)"
    exe = out / "flocklessfs"
    r = subprocess.run([gcc, "-O2", "-o", str(exe), str(SOURCES / "flocklessfs.c"), *flags.stdout.split()],
                       capture_output=True, text=True)
    return exe if r.returncode == 0 else f"flocklessfs does not compile: {r.stderr[-300:]}"


@contextmanager
def fuse_mount(exe: Path, backing: Path, mountpoint: Path):
    """The flockless filesystem over `backing`, mounted at `mountpoint` for the block."""
    backing.mkdir(parents=True, exist_ok=True)
    mountpoint.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen([str(exe), str(backing), str(mountpoint), "-f", "-o", "max_threads=16"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 20
    while not os.path.ismount(mountpoint) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    if not os.path.ismount(mountpoint):
        proc.kill()
        err = proc.communicate()[1]
        pytest.skip(f"the FUSE filesystem could not be mounted here: {err.strip()[-300:] or 'no answer in 20 s'}")
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", str(mountpoint)], capture_output=True)
        if os.path.ismount(mountpoint):
            subprocess.run(["umount", "-l", str(mountpoint)], capture_output=True)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def preload_env(so: Path, under: Path, hang: bool = False) -> dict[str, str]:
    env = {"LD_PRELOAD": str(so), "NOFLOCK_UNDER": os.path.realpath(under)}
    if hang:
        env["NOFLOCK_HANG"] = "1"
    return env


@contextmanager
def shared_dir(kind: str, built: dict, tmp_path: Path):
    """(data dir, extra env, the mount point a fallback warning names) on a filesystem of `kind`: "flock" (this
    machine's own), "fuse", "preload", or "noflock" (the FUSE one where it can be mounted, else the preload one)."""
    if kind == "noflock":
        kind = "fuse" if isinstance(built["fuse"], Path) else "preload"
    if kind == "flock":
        yield tmp_path / "shared", {}, None
    elif kind == "fuse":
        if not isinstance(built["fuse"], Path):
            pytest.skip(built["fuse"])
        with fuse_mount(built["fuse"], tmp_path / "backing", tmp_path / "mnt") as mnt:
            yield mnt / "shared", {}, mnt
    else:
        if not isinstance(built["preload"], Path):
            pytest.skip(built["preload"])
        yield tmp_path / "shared", preload_env(built["preload"], tmp_path / "shared"), None


def node_fetch(zoo, data: Path, url: str, node: str, extra_env: dict, *args: str, period: str = "0.5"):
    """`mmf zoo fetch toyset` as a process of host `node` (MMF_ZOO_HOSTNAME), waiters' notes every `period` s."""
    env = {**os.environ, **extra_env, "MMF_ZOO_HOSTNAME": node}
    return subprocess.Popen([sys.executable, "-c", MMF, period, "zoo", "fetch", "toyset", "--zoo", str(zoo.manifest),
                             "--data-dir", str(data), "--mirror", url, "--chunk-size", "0.5", "--connections", "2",
                             *args], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


# the fixtures of the shared-data-dir tests (imported by them): what compiles here, and a shared data dir on the
# filesystem a test's `shared` parameter names ("flock", "fuse", "preload", "noflock")
@pytest.fixture(scope="module")
def built(tmp_path_factory):
    return build(tmp_path_factory.mktemp("noflock"))


@pytest.fixture
def shared(request, built, tmp_path):
    with shared_dir(request.param, built, tmp_path) as got:
        yield got
