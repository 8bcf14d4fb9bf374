"""A lab's shared MMF_DATA_DIR: what the zoo writes follows the installing user's umask (0644 / 0755 under 022,
.built.json and install records included), so a second user can list, verify and read the install, and MMF's
`built()` running as that user accepts it. Two real uids: root installs, `bob` reads (that test skips unless
root and bob exist; the mode checks run as anyone). The trust store stays private (0700/0600): reading data is
fine for bob, trusting pickles is not."""
from __future__ import annotations

import io
import json
import os
import pwd
import shutil
import stat
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import pytest
import yaml

from tests.zoo_helpers import ROOT, run_mmf, sha256

OTHER_USER = "bob"


def _other_user():
    if os.geteuid() != 0:
        pytest.skip("needs root: the test installs as root and reads as a second user (setuid)")
    try:
        return pwd.getpwnam(OTHER_USER)
    except KeyError:
        pytest.skip(f"needs a second local user {OTHER_USER!r} (useradd {OTHER_USER})")


def _archive(path: Path, members: dict[str, tuple[int, bytes | None]]) -> Path:
    """A tar.gz whose members carry the given modes (None = a folder)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as tf:
        for name, (mode, data) in members.items():
            info = tarfile.TarInfo(name)
            info.mode = mode
            if data is None:
                info.type = tarfile.DIRTYPE
                tf.addfile(info)
            else:
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
    return path


@pytest.fixture
def shared(tmp_path):
    """A folder the second user can reach (pytest's tmp_path is 0700), with a one-entry zoo and its mirror.
    The archives' own modes are private or odd on purpose: the installer's umask decides, not the archive."""
    root = Path(tempfile.mkdtemp(prefix="mmf-zoo-shared-"))
    root.chmod(0o755)
    feats = _archive(root / "mirror/datasets/labset/defaults/features/features.tar.gz", {
        "open_images": (0o700, None), "open_images/detectron.lmdb": (0o700, None),
        "open_images/detectron.lmdb/data.mdb": (0o600, os.urandom(300_000)),
        "open_images/tool.sh": (0o750, b"#!/bin/sh\necho hi\n")})
    extras = _archive(root / "mirror/datasets/labset/defaults/extras.tar.gz", {
        "extras/vocabs/answers.txt": (0o640, b"yes\nno\n")})
    res = {cat: [{"url": f"mmf://{p.relative_to(root / 'mirror')}", "file_name": p.name, "hashcode": sha256(p),
                  "size": p.stat().st_size}] for cat, p in (("features", feats), ("extras", extras))}
    (root / "datasets.yaml").write_text(yaml.safe_dump({"labset": {"defaults": {"version": "1.0_2026_12_03",
                                                                                 "resources": res}}}))
    yield root
    shutil.rmtree(root, ignore_errors=True)


def _install(root: Path, umask: int) -> Path:
    data = root / "data"
    r = run_mmf("zoo", "fetch", "labset", "--zoo", str(root / "datasets.yaml"), "--mirror", str(root / "mirror"),
                "--data-dir", str(data), "-q", preexec_fn=lambda: os.umask(umask))
    assert r.returncode == 0, r.stderr[-3000:]
    return data


def _modes(data: Path) -> dict[str, tuple[str, int]]:
    out = {}
    for dirpath, dirs, files in os.walk(data):
        for name in dirs + files:
            p = Path(dirpath, name)
            st = p.lstat()
            kind = "dir" if stat.S_ISDIR(st.st_mode) else "file"
            out[str(p.relative_to(data))] = (kind, stat.S_IMODE(st.st_mode))
    return out


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_every_written_mode_follows_the_umask(shared, umask):
    data = _install(shared, umask)
    modes = _modes(data)
    assert ".mmfzoo" in {Path(p).name for p in modes}  # the records are among what is checked
    assert "datasets/labset/defaults/.built.json" in modes
    executable = "datasets/labset/defaults/features/open_images/tool.sh"
    wrong = {}
    for rel, (kind, mode) in modes.items():
        base = 0o777 if kind == "dir" or rel == executable else 0o666
        if mode != base & ~umask:
            wrong[rel] = oct(mode)
    assert not wrong, f"under umask {umask:03o}: {wrong}"


def _as_user(user, *cmd: str, env: dict) -> subprocess.CompletedProcess:
    def drop():
        os.setgroups([])
        os.setgid(user.pw_gid)
        os.setuid(user.pw_uid)

    return subprocess.run(list(cmd), capture_output=True, text=True, timeout=120, env=env, cwd="/",
                          preexec_fn=drop)


# What MMF's mmf/utils/download.py `built(path, version_string)` does, with the version as MMF's config loader
# (YAML 1.1, like OmegaConf) reads it from the manifest.
MMF_BUILT = """
import json, os, sys, yaml
manifest, data = sys.argv[1], sys.argv[2]
version = yaml.safe_load(open(manifest))["labset"]["defaults"]["version"]
def built(path, version_string):
    fname = os.path.join(path, ".built.json")
    if not os.path.isfile(fname):
        return False
    with open(fname) as read:
        text = json.load(read)
    return text.get("version", None) == version_string
base = os.path.join(data, "datasets", "labset", "defaults")
assert built(base, version) and built(os.path.join(base, "features"), version), "MMF would rebuild"
n = 0
for dirpath, _, files in os.walk(base):
    for f in files:
        open(os.path.join(dirpath, f), "rb").read()
        n += 1
print(n)
"""


def test_second_user_lists_verifies_reads_and_mmf_accepts(shared):
    bob = _other_user()
    data = _install(shared, 0o022)
    bob_home = shared / "bob-home"
    bob_home.mkdir()
    os.chown(bob_home, bob.pw_uid, bob.pw_gid)
    env = {"PATH": os.environ["PATH"], "HOME": str(bob_home), "PYTHONPATH": str(ROOT), "MMF_ZOO_MIRROR_ONLY": "1",
           "MMF_ZOO_TRUST_DIR": str(bob_home / "trust")}
    zoo_args = ["--zoo", str(shared / "datasets.yaml"), "--data-dir", str(data)]
    mmf = [sys.executable, "-m", "mmfzoo_cli", "zoo"]

    r = _as_user(bob, *mmf, "list", *zoo_args, "--json", env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    states = {e["key"]: e["state"] for e in json.loads(r.stdout)}
    assert states["labset.defaults"] == "installed", states
    # verify reads every record and file; before bob adopts root's install, trust is all it lacks
    r = _as_user(bob, *mmf, "verify", "labset", *zoo_args, env=env)
    out = r.stdout + r.stderr
    assert r.returncode == 2 and "installed by another user (root)" in out and "ermission" not in out, out
    r = _as_user(bob, *mmf, "adopt", "labset", *zoo_args, env=env)  # read-only: bob's own trust store only
    assert r.returncode == 0, (r.stdout + r.stderr)[-2000:]
    r = _as_user(bob, *mmf, "verify", "labset", *zoo_args, env=env)
    assert r.returncode == 0, (r.stdout + r.stderr)[-2000:]
    r = _as_user(bob, sys.executable, "-c", MMF_BUILT, str(shared / "datasets.yaml"), str(data), env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    assert int(r.stdout) >= 4  # data.mdb, tool.sh, answers.txt, the kept archives

    # reading is not trusting: root's own trust store stays private, bob's pickles need `mmf zoo adopt`
    store = Path(os.environ["MMF_ZOO_TRUST_DIR"])
    assert stat.S_IMODE(store.stat().st_mode) == 0o700
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in store.rglob("*") if p.is_file())
