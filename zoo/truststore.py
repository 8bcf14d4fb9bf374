"""The per-user trust store: which install records this user's zoo wrote (or re-verified) on this machine.

An install record in a data dir says what was installed, but anyone can write one, and a data dir that was copied,
rsynced or untarred from elsewhere carries its records along. So a record grants nothing by itself: it counts only
if this store, outside every data dir and private to the user, names the record's real path with the sha256 of
its exact bytes. The zoo registers a record here when it writes it after a verified install from a manifest the
user chose (and `mmf data synth` for the files it generated); `mmf zoo adopt` registers an install it re-verified
against its archive. A record copied elsewhere (another path), edited (another digest) or forged is not in here.

Location: $MMF_ZOO_TRUST_DIR, else $XDG_STATE_HOME/mmf-zoo/trust, else ~/.local/state/mmf-zoo/trust. One small
JSON file per record, named by the sha256 of its path: {record, digest, sha256 (the archive), key, version,
source, registered_at} plus, for another user's install adopted read-only, `foreign` and the stamps seen then.
"""
from __future__ import annotations

import hashlib
import json
import os
import stat
import time
from pathlib import Path

from zoo.fsutil import atomic_write_bytes

ENV = "MMF_ZOO_TRUST_DIR"
FORMAT = 1


def store_dir(env=None) -> Path:
    env = os.environ if env is None else env
    if env.get(ENV):
        return Path(env[ENV]).expanduser()
    state = env.get("XDG_STATE_HOME") or os.path.join("~", ".local", "state")
    return Path(state).expanduser() / "mmf-zoo" / "trust"


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _entry_path(record_path: str) -> Path:
    name = hashlib.sha256(os.fsencode(record_path)).hexdigest()
    return store_dir() / f"{name}.json"


def store_problem() -> str | None:
    """Why the store cannot be believed (someone else could have written it); None when it is private or absent."""
    root = store_dir()
    try:
        st = os.stat(root)
    except FileNotFoundError:
        return None
    except OSError as exc:
        return f"the trust store {root} cannot be read ({exc.strerror})"
    if st.st_uid != os.getuid() or st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return (f"the trust store {root} belongs to another user or is writable by others, so it grants nothing; "
                f"make it yours and private (chmod 700 {root}) or point {ENV} elsewhere")
    return None


def register(record_path, data: bytes, *, archive_sha256: str | None, key: str, version, source: str,
             foreign: bool = False, stamps: dict | None = None) -> None:
    """Note that the record now at `record_path` holding exactly `data` was written (or re-verified) by this user's
    zoo. Called before the record itself is written, so a crash in between leaves a harmless extra entry."""
    real = os.path.realpath(record_path)
    entry = {"format": FORMAT, "record": real, "digest": digest(data), "sha256": archive_sha256, "key": key,
             "version": version, "source": source, "registered_at": time.strftime("%Y-%m-%dT%H:%M:%S")}
    if foreign:
        entry["foreign"] = True
        entry["owner_uid"] = os.stat(real).st_uid
        entry["stamps"] = stamps or {}
    root = store_dir()
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    text = json.dumps(entry, indent=1).encode()
    atomic_write_bytes(_entry_path(real), lambda f: f.write(text), private=True)  # this user's only


def forget(record_path) -> None:
    try:
        _entry_path(os.path.realpath(record_path)).unlink()
    except FileNotFoundError:
        pass


def lookup(record_path: str) -> dict | None:
    """The store's entry for the record at real path `record_path`, or None (also when the store is not private)."""
    if store_problem():
        return None
    path = _entry_path(record_path)
    try:
        st = os.lstat(path)
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            return None
        entry = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None
    if not isinstance(entry, dict) or entry.get("record") != record_path or not isinstance(entry.get("digest"), str):
        return None
    return entry
