"""May this file be unpickled? The one trust rule, for `mmf data`, `mmf train` and model loading.

Unpickling runs code, so only bytes the zoo verified qualify: the file must be listed in the install record of a
resource whose archive matched the manifest's sha256 (a resource without a hashcode is installed, not verified),
and its content must still be what was installed (xxh3-128; skipped when the file's inode/mtime/ctime stamp is
unchanged since install). The record must sit between the file and its install root
(`datasets/<name>/<variation>/` or `models/<key>/`), never above it, and belong to this user without being
writable by others. `.built.json` markers grant nothing: anyone can write one. The other way in is the user's own
explicit trust option.
"""
from __future__ import annotations

import json
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from zoo.records import STATE_DIR, VOLATILE, check_file, has_hashes

@dataclass(frozen=True)
class Distrust:
    """Why a file may not be unpickled. `damaged`: the zoo installed it and it changed since; the fix is the
    repair command in `reason`, never trusting the changed bytes."""
    reason: str
    damaged: bool = False

    def __str__(self) -> str:
        return self.reason


def untrusted_reason(path) -> Distrust | None:
    """None when every byte of `path` (a file, or a folder such as an LMDB) was verified by the zoo; else why not."""
    real = os.path.realpath(path)
    if os.path.isdir(real):
        files = sorted(os.path.join(d, f) for d, _, names in os.walk(real) for f in names if f not in VOLATILE)
        if not files:
            return Distrust(f"{path} holds no files")
    elif os.path.isfile(real):
        files = [real]
    else:
        return Distrust(f"{path} does not exist")
    root = _install_root(os.path.dirname(files[0]) if os.path.isdir(real) else os.path.dirname(real))
    if root is None:
        return Distrust(f"{path} is not inside a zoo install (<data_dir>/datasets/<name>/<variation>/ or "
                        "models/<key>/)")
    for f in files:
        reason = _file_reason(f, root)
        if reason:
            return reason
    return None


def _install_root(folder: str) -> str | None:
    """The nearest folder at or above `folder` that is an install root: a child of models/, a grandchild of datasets/."""
    d = folder
    while True:
        parent = os.path.dirname(d)
        if parent == d:
            return None
        if os.path.basename(parent) == "models" or os.path.basename(os.path.dirname(parent)) == "datasets":
            return d
        d = parent


def _file_reason(f: str, root: str) -> Distrust | None:
    d = os.path.dirname(f)
    while True:
        rel = os.path.relpath(f, d).replace(os.sep, "/")
        for rec in _records(d):
            row = next((r for r in rec.get("files") or [] if r[0] == rel), None)
            if row is None:
                continue
            mend = (f"write it again with `{rec['local']}`" if rec.get("local") else
                    f"run `mmf zoo verify --repair {rec.get('key') or 'KEY'}`")
            if not rec.get("verified"):
                return Distrust(f"{f} comes from {rec.get('url')}, which has no hashcode in the manifest, so the "
                                "zoo never verified it")
            if not has_hashes(rec):
                return Distrust(f"{f}'s install record has no content hashes; {mend}")
            problem = check_file(Path(d), row, full=False)
            if problem:
                return Distrust(f"{f} is damaged or changed since install ({problem}); {mend}", damaged=True)
            return None
        if d == root:
            return Distrust(f"{f} is not listed in any zoo install record (the zoo did not install it)")
        d = os.path.dirname(d)


def _records(folder: str) -> list[dict]:
    state = os.path.join(folder, STATE_DIR)
    try:
        st = os.stat(state)
    except OSError:
        return []
    if not _safe_owner(st):
        return []
    out = []
    for name in sorted(os.listdir(state)):
        if not name.endswith(".installed.json"):
            continue
        p = os.path.join(state, name)
        try:
            if not _safe_owner(os.lstat(p)) or os.path.islink(p):
                continue
            with open(p) as fh:
                out.append(json.load(fh))
        except (OSError, ValueError):
            continue
    return out


def _safe_owner(st: os.stat_result) -> bool:
    """Written by this user (or root) and not writable by anyone else: another user cannot forge a record."""
    return st.st_uid in (os.getuid(), 0) and not st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)


def trust_hint(option: str) -> str:
    return f"install it with `mmf zoo fetch`, or pass {option} if you trust this file"
