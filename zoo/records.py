"""Install records: what one resource put on disk, file by file, with sizes and content hashes.

`<folder>/.mmfzoo/<file_name>.installed.json` holds, besides the archive's sha256, one row per extracted file:
`[relative path, size, xxh3-128, [inode, mtime_ns, ctime_ns]]`. The hash is computed while the file is written;
the stat stamp is taken after publishing, so a later check can skip re-hashing a file the filesystem says nobody
touched (any write changes mtime/ctime). `mmf zoo verify` always re-hashes; `fetch` and the pickle trust check use
the stamp first and hash only on a mismatch. `verified` is true only when the archive's sha256 matched the
manifest's hashcode: a resource without one is installed, not verified.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from zoo.fsutil import xxh3_file

RECORD_FORMAT = 2
MARKER = ".built.json"  # MMF's "this folder is built" marker
STATE_DIR = ".mmfzoo"  # our bookkeeping beside the data: partial downloads, journals, locks, install records
RECORD_SUFFIX = ".installed.json"  # STATE_DIR/<archive file name><RECORD_SUFFIX>: one resource's install record
# LMDB rewrites its lock file when opened with locking; it holds no data, so its content is not compared
VOLATILE = {"lock.mdb"}


def stamp(path) -> list[int]:
    st = os.lstat(path)
    return [st.st_ino, st.st_mtime_ns, st.st_ctime_ns]


def file_rows(folder: Path, files) -> list[list]:
    """Rows for freshly published files: (rel, size, xxh3) from the extractor plus each file's stamp now."""
    rows = []
    for rel, size, digest in files:
        path = folder / rel
        if digest is None:  # a hard link whose source was replaced later in the archive: hash what is there
            digest = xxh3_file(path)
        rows.append([rel, size, digest, stamp(path)])
    return rows


def has_hashes(rec: dict) -> bool:
    return rec.get("format") == RECORD_FORMAT and all(len(row) >= 3 and row[2] for row in rec.get("files") or [])


def check_file(folder: Path, row, full: bool) -> str | None:
    """None when the file still holds what was installed; else what is wrong with it."""
    rel, size = row[0], row[1]
    if not isinstance(rel, str) or rel.startswith("/") or ".." in rel.split("/"):
        return "not a path inside its install folder (a damaged or forged record)"  # never read what it names
    path = folder / rel
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return "missing"
    except OSError as exc:
        return f"unreadable ({exc.strerror})"
    if not os.path.isfile(path) or os.path.islink(path):
        return "not a regular file any more"
    if st.st_size != size:
        return f"{st.st_size} bytes, installed {size}"
    if len(row) < 3 or not row[2] or os.path.basename(rel) in VOLATILE:
        return None  # an old record without hashes: size is all we know
    if not full and len(row) >= 4 and list(row[3]) == [st.st_ino, st.st_mtime_ns, st.st_ctime_ns]:
        return None
    try:
        return None if xxh3_file(path) == row[2] else "content differs from what was installed"
    except OSError as exc:
        return f"unreadable ({exc.strerror})"


@dataclass
class Damage:
    rel: str
    problem: str


def check_record(folder: Path, rec: dict, full: bool, limit: int | None = None) -> list[Damage]:
    out = []
    for row in rec.get("files") or []:
        problem = check_file(folder, row, full)
        if problem:
            out.append(Damage(row[0], problem))
            if limit and len(out) >= limit:
                break
    return out


def records_in(folder) -> list[tuple[str, dict]]:
    """(archive file name, record) of every readable install record in `folder`'s state dir."""
    state = os.path.join(folder, STATE_DIR)
    try:
        names = sorted(n for n in os.listdir(state) if n.endswith(RECORD_SUFFIX))
    except OSError:
        return []
    out = []
    for name in names:
        try:
            rec = json.loads(Path(state, name).read_text())
        except (OSError, ValueError):
            continue
        if isinstance(rec, dict):
            out.append((name[:-len(RECORD_SUFFIX)], rec))
    return out


def _rows(rec: dict) -> list[str]:
    return [str(row[0]) for row in rec.get("files") or [] if isinstance(row, list) and row]


def _nested_listed(dirpath: str, folder: Path) -> set[str]:
    """Files the install records of another install folder below `folder` list, relative to `folder`."""
    prefix = os.path.relpath(dirpath, folder).replace(os.sep, "/") + "/"
    out = set()
    for archive, rec in records_in(dirpath):
        out.update(prefix + rel for rel in _rows(rec))
        if rec.get("extracted"):
            out.add(prefix + archive)
    return out


def listed_above(folder: Path, root: Path) -> set[str]:
    """Files inside `folder` that the install records of the folders above it, up to `root`, list (an `extras`
    archive may add files inside a category's folder), relative to `folder`."""
    folder, root = Path(folder), Path(root)
    out: set[str] = set()
    above = folder
    while above != root and root in above.parents:
        above = above.parent
        prefix = folder.relative_to(above).as_posix() + "/"
        for _, rec in records_in(above):
            out.update(rel[len(prefix):] for rel in _rows(rec) if rel.startswith(prefix))
    return out


def extra_files(folder: Path, records: list[dict], archives=(), listed_elsewhere=frozenset()) -> list[str]:
    """Files that none of these records lists (dropped in afterwards): directly in `folder` (besides the
    `archives` and MMF's marker) and anywhere inside the folders the records installed, where the records of
    another install folder below (say `features/` under an entry's `extras`) list that folder's files."""
    listed = {row[0] for rec in records for row in rec.get("files") or []} | set(listed_elsewhere)
    tops = {t for rec in records if rec.get("extracted") for t in rec.get("top_level") or []}
    extras = [p.name for p in sorted(folder.iterdir()) if p.is_file() and not p.is_symlink()
              and p.name not in listed and p.name not in archives and p.name != MARKER] \
        if folder.is_dir() else []
    for top in sorted(tops):
        base = folder / top
        if not base.is_dir() or base.is_symlink():
            continue
        for dirpath, dirnames, filenames in os.walk(base):
            if STATE_DIR in dirnames:
                listed |= _nested_listed(dirpath, folder)
            dirnames[:] = [d for d in dirnames if d != STATE_DIR]
            for name in filenames:
                if os.path.islink(os.path.join(dirpath, name)):
                    continue  # links the archive made; their targets are checked as files
                rel = os.path.relpath(os.path.join(dirpath, name), folder).replace(os.sep, "/")
                if rel not in listed and name != MARKER:
                    extras.append(rel)
    return sorted(extras)


def write_local_record(folder, name: str, version, origin: str, skip=()) -> None:
    """A record for files a local command generated (`mmf data synth`): nothing was downloaded, this machine
    wrote every byte, so they count as verified and the record goes into the user's trust store. Lists every file
    under `folder` except the `skip` subfolders (which carry their own record), hashed now."""
    folder = Path(folder)
    files = []
    for dirpath, dirnames, filenames in os.walk(folder):
        rel_dir = os.path.relpath(dirpath, folder)
        dirnames[:] = sorted(d for d in dirnames if d != STATE_DIR and not (rel_dir == "." and d in skip))
        for fn in sorted(filenames):
            path = os.path.join(dirpath, fn)
            if fn == MARKER or os.path.islink(path):
                continue
            rel = os.path.relpath(path, folder).replace(os.sep, "/")
            files.append((rel, os.path.getsize(path), xxh3_file(path)))
    record = {"format": RECORD_FORMAT, "key": origin, "version": version, "url": origin, "sha256": None,
              "verified": True, "local": origin, "manifest": "local", "extracted": True,
              "top_level": sorted({rel.split("/")[0] for rel, *_ in files}), "files": file_rows(folder, files),
              "archive_kept": False, "installed_at": time.strftime("%Y-%m-%dT%H:%M:%S")}
    from zoo.trust import write_record  # registers it in the user's trust store: this machine wrote these files

    state = folder / STATE_DIR
    state.mkdir(parents=True, exist_ok=True)
    write_record(state / f"{name}{RECORD_SUFFIX}", record, grant=True)
