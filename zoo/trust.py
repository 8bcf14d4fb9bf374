"""May this file be unpickled? The one trust rule, for `mmf data`, `mmf train` and model loading.

Unpickling runs code, so only bytes this user's zoo verified on this machine qualify: the file must be listed in
the install record of a resource whose archive matched the sha256 of a manifest the user chose (the built-in one,
`--zoo` / MMF_DATASET_ZOO, or a pack with `--trust-pack`), and that record must be registered in the user's trust
store (`zoo.truststore`: outside the data dir, keyed by the record's real path, bound to its exact bytes). So a
record copied, rsynced or untarred from elsewhere, moved to another path, edited or forged grants nothing until
`mmf zoo adopt KEY` re-verified the install against its archive. The file's content must still be what was
installed (xxh3-128; skipped when the file's inode/mtime/ctime stamp is unchanged since install). The record must
sit between the file and its install root (`datasets/<name>/<variation>/` or `models/<key>/`), belong to this
user without being writable by others, or be another user's install this user adopted read-only (then every
file must keep the exact stamp seen at adoption). `.built.json` markers grant nothing. The other way in is the
user's own explicit trust option.
"""
from __future__ import annotations

import json
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path

from zoo import truststore
from zoo.records import MARKER, RECORD_SUFFIX, STATE_DIR, VOLATILE, check_file, has_hashes

PACK_SOURCE = "pack "  # Entry.source of a pack's own manifest entries: "pack PATH" (+ CONSENT when chosen)
CONSENT = " (--trust-pack)"
RECORD_SOURCE = "record "  # Entry.source of an entry rebuilt from install records (zoo.origin): never chosen
_PLAIN_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,200}$")


@dataclass(frozen=True)
class Distrust:
    """Why a file may not be unpickled. `damaged`: the zoo installed it and it changed since; the fix is the
    repair command in `reason`, never trusting the changed bytes. `fix`: the command that makes it trusted."""
    reason: str
    damaged: bool = False
    fix: str | None = None

    def __str__(self) -> str:
        return self.reason

    def hint(self, option: str) -> str:
        """What the user can do, ending with the explicit trust option."""
        return f"{self.fix}, or pass {option} if you trust this file" if self.fix else trust_hint(option)


def pack_source(path, consent: bool) -> str:
    return f"{PACK_SOURCE}{path}{CONSENT if consent else ''}"


def pack_path(source: str) -> str:
    """The pack file an entry's `source` (see `pack_source`) names."""
    return source[len(PACK_SOURCE):].removesuffix(CONSENT) if source.startswith(PACK_SOURCE) else source


def chosen(source: str) -> bool:
    """Did the user choose the manifest this entry comes from? Every manifest file did (built-in, --zoo, env);
    a pack's own entries only with --trust-pack."""
    if source.startswith(RECORD_SOURCE):
        return False  # a record is in the data dir: whoever can write there wrote it
    return not source.startswith(PACK_SOURCE) or source.endswith(CONSENT)


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
    problem = truststore.store_problem()
    if problem:
        return Distrust(problem)
    granted: dict[str, dict | None] = {}
    for f in files:
        reason = _file_reason(f, root, granted)
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


@dataclass
class _Record:
    path: str  # real path of the record file
    raw: bytes  # its exact bytes: what the trust store's digest is compared with
    data: dict
    safe: bool  # this user's (or root's), not writable by others


def _file_reason(f: str, root: str, granted: dict) -> Distrust | None:
    d = os.path.dirname(f)
    any_record, unsafe = False, None
    while True:
        rel = os.path.relpath(f, d).replace(os.sep, "/")
        records = _records(d)
        any_record = any_record or bool(records)
        for rec in records:
            row = next((r for r in rec.data.get("files") or [] if isinstance(r, list) and r and r[0] == rel), None)
            if row is None:
                continue
            if rec.path not in granted:
                granted[rec.path] = _grant(rec)
            grant = granted[rec.path]
            if not rec.safe and not (grant and grant.get("foreign")):
                unsafe = unsafe or rec
                continue  # another user could have written it: as if absent
            return _judge(f, d, row, rec, grant)
        if d == root and unsafe is not None:
            return Distrust(f"{f} is not listed in any zoo install record you can believe: {unsafe.path} lists it, "
                            "but belongs to another user or is writable by others",
                            fix=f"run `mmf zoo adopt {_key(unsafe.data.get('key'))}` to re-verify it for yourself")
        if d == root:
            return Distrust(f"{f} is not listed in any zoo install record (the zoo did not install it)",
                            fix=None if any_record else _mmf_built_fix(f, root))
        d = os.path.dirname(d)


def _mmf_built_fix(f: str, root: str) -> str | None:
    """A folder MMF itself installed (its markers, no record of ours) can be adopted from its kept archives."""
    d = os.path.dirname(f)
    while not os.path.isfile(os.path.join(d, MARKER)):
        if d == root:
            return None
        d = os.path.dirname(d)
    parent = os.path.dirname(root)
    key = _key(os.path.basename(root) if os.path.basename(parent) == "models"
               else f"{os.path.basename(parent)}.{os.path.basename(root)}")
    return f"if MMF installed it, run `mmf zoo adopt {key}` (it needs the kept archives)"


def _grant(rec: _Record) -> dict | None:
    entry = truststore.lookup(rec.path)
    return entry if entry and entry["digest"] == truststore.digest(rec.raw) else None


def _judge(f: str, d: str, row: list, rec: _Record, grant: dict | None) -> Distrust | None:
    data = rec.data
    key = _key(data.get("key"))
    mend = f"write it again with `{data['local']}`" if data.get("local") else f"run `mmf zoo verify --repair {key}`"
    if not data.get("verified"):
        return Distrust(f"{f} comes from {data.get('url')}, which has no hashcode in the manifest, so the zoo "
                        "never verified it")
    if not has_hashes(data):
        return Distrust(f"{f}'s install record has no content hashes; {mend}")
    if grant is None:
        why, fix = _not_granted(rec, key)
        return Distrust(f"{f}: {why}", fix=fix)
    if grant.get("foreign"):
        return _foreign_check(f, row, grant, key)
    problem = check_file(Path(d), row, full=False)
    if problem:
        return Distrust(f"{f} is damaged or changed since install ({problem}); {mend}", damaged=True)
    return None


def _not_granted(rec: _Record, key: str) -> tuple[str, str]:
    """(what is wrong with the record, the command that makes it trusted)."""
    data = rec.data
    source = str(data.get("manifest") or "")
    if data.get("local"):
        return (f"its install record is not in this user's trust store (`{data['local']}` wrote it for another data "
                "dir or on another machine)", f"write it again here with `{data['local']}`")
    if source.startswith(PACK_SOURCE) and not chosen(source):
        pack = source[len(PACK_SOURCE):]
        return (f"it comes from a pack's own manifest entry ({pack}), installed without --trust-pack; a third "
                "party's pickles run its author's code",
                f"if you trust the pack's author, run `mmf zoo adopt {key} --from {pack} --trust-pack`")
    fix = f"run `mmf zoo adopt {key}` to re-verify the install against its archive"
    if data.get("no_trust"):
        return "it was installed with --no-trust", f"if you trust its manifest's author, {fix}"
    if truststore.lookup(rec.path) is not None:
        return f"its install record ({rec.path}) changed after this user's zoo wrote it", fix
    owner = _owner(rec.path)
    if owner is not None:
        return (f"it was installed by another user ({owner}), whose install records you cannot vouch for",
                f"run `mmf zoo adopt {key}` to re-verify it for yourself against its archive (nothing is written "
                "into their folders)")
    return ("its install record was not written by this user's zoo at this path (this data dir was copied, moved, "
            "rsynced or unpacked from elsewhere, or the record is forged)", fix)


def _owner(path: str) -> str | None:
    """The name of the user owning `path` when it is not this user, else None."""
    import pwd

    try:
        uid = os.lstat(path).st_uid
    except OSError:
        return None
    if uid == os.getuid():
        return None
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


def _foreign_check(f: str, row: list, grant: dict, key: str) -> Distrust | None:
    """Another user's install, adopted read-only: its owner can rewrite the files, so no re-hashing fallback; the
    exact stamp (inode, mtime, ctime: ctime cannot be set back) seen when the content was verified must hold."""
    try:
        st = os.lstat(f)
    except OSError as exc:
        return Distrust(f"{f} cannot be read ({exc.strerror})")
    if stat.S_ISREG(st.st_mode) and st.st_size == row[1] and \
            grant.get("stamps", {}).get(row[0]) == [st.st_ino, st.st_mtime_ns, st.st_ctime_ns]:
        return None
    return Distrust(f"{f} (another user's install) changed since you adopted it",
                    fix=f"run `mmf zoo adopt {key}` again to re-verify it")


def _key(value) -> str:
    """A key from a record (which may be forged) safe to print in a command."""
    return value if isinstance(value, str) and _PLAIN_KEY.match(value) else "KEY"


def _records(folder: str) -> list[_Record]:
    state = os.path.join(folder, STATE_DIR)
    try:
        st = os.lstat(state)
        names = sorted(os.listdir(state)) if stat.S_ISDIR(st.st_mode) else []
    except OSError:
        return []
    state_safe = _safe_owner(st)
    out = []
    for name in names:
        if not name.endswith(RECORD_SUFFIX):
            continue
        p = os.path.join(state, name)
        try:
            fst = os.lstat(p)
            if not stat.S_ISREG(fst.st_mode):
                continue  # a link could lend this folder another install's registered record
            with open(p, "rb") as fh:
                raw = fh.read()
            data = json.loads(raw)
        except (OSError, ValueError):
            continue
        if isinstance(data, dict):
            out.append(_Record(p, raw, data, state_safe and _safe_owner(fst)))
    return out


def _safe_owner(st: os.stat_result) -> bool:
    """Written by this user (or root) and not writable by anyone else: another user cannot forge a record."""
    return st.st_uid in (os.getuid(), 0) and not st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)


def trust_hint(option: str) -> str:
    return f"install it with `mmf zoo fetch`, or pass {option} if you trust this file"


# ------------------------------------------------------------------------------------- granting (writers)
def write_record(path: Path, record: dict, grant: bool) -> None:
    """Write an install record; with `grant` (a verified install from a manifest the user chose, or files this
    machine generated) register its exact bytes in the user's trust store first, else make sure it grants nothing."""
    from zoo.fsutil import atomic_write_text

    text = json.dumps(record, indent=1)
    if grant:
        truststore.register(path, text.encode(), archive_sha256=record.get("sha256"), key=str(record.get("key")),
                            version=record.get("version"), source=str(record.get("manifest") or record.get("url")))
    else:
        truststore.forget(path)
    atomic_write_text(path, text)


def record_problem(path: Path) -> str | None:
    """For `mmf zoo verify` / `fetch`: why this install record would not grant trust now (None when it would)."""
    real = os.path.realpath(path)
    try:
        raw = Path(real).read_bytes()
        data = json.loads(raw)
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or not data.get("verified"):
        return None  # "no hashcode" is reported on its own
    problem = truststore.store_problem()
    if problem:
        return problem
    rec = _Record(real, raw, data, True)
    if _grant(rec):
        return None
    why, fix = _not_granted(rec, _key(data.get("key")))
    return f"{why}; {fix}"
