"""Publish an extracted tree into the data dir by renames, writing only what is this resource's own.

Who owns a path is told by the install records (`.mmfzoo/*.installed.json`) of the publish folder, of every folder
above it inside the data dir, and of every existing folder below it that the tree enters. A member may
- create a path nobody lists;
- replace what this resource installed before: the files its previous record lists, or, after a publish that
  was interrupted before its new record was written, what that publish set out to put in place (its intent file
  and the previous record it had moved aside);
- land on a file another record lists only with the same bytes (xxh3-128): the file is kept once on disk, left in
  place while it still holds those bytes (so the other record's stamp stays valid), and both records list it; either
  resource can then be re-installed or repaired with those same bytes, neither can change them;
- land on an identical file nobody lists (the same bytes put there by hand): it is left as it is, now listed;
- replace a file MMF itself extracted (a folder with MMF's `.built.json` and no install record of this entry) when
  this resource has no record yet and the file lies in its own marker folder, not in another resource's: MMF would
  extract over it the same way, and `mmf zoo verify --repair` must be able to re-install MMF's data with a record.
Anything else -- another resource's different bytes, a file or link the user put there -- is refused before the
first rename, with one line naming the file, who owns it and what to do.
"""
from __future__ import annotations

import json
import os
import shutil
import stat
from dataclasses import dataclass, field
from pathlib import Path

from zoo.errors import UnsafeArchiveError
from zoo.fsutil import atomic_write_text, is_inside, xxh3_file
from zoo.records import MARKER, STATE_DIR, check_file, records_in

INTENT_SUFFIX = ".publishing.json"       # the top-level names a publish is putting in place
PREVIOUS_SUFFIX = ".previous-record.json"  # the record a publish replaces, moved aside (grants no trust)
MMF_NOTE = "built-by-mmf.json"  # in a marker folder's .mmfzoo: MMF had built it when the zoo started re-installing


@dataclass
class Mine:
    """What the resource being published may replace."""

    label: str                     # "key:file_name", for messages
    record: Path                   # its own install record (not a foreign claim)
    archive: str                   # its archive's file name, beside the tree
    owned: set[str] = field(default_factory=set)   # paths (and their folders) it installed before
    roots: set[str] = field(default_factory=set)   # top-level names an interrupted publish was putting in place
    adopt: tuple[Path, list[Path]] | None = None   # MMF-built region it may take over: (root, minus these)


@dataclass
class Claim:
    owner: str
    digest: str | None             # xxh3-128 the owner recorded; None: not comparable (a kept archive)
    folder: Path                   # the owner's record folder and row, to tell an intact file cheaply
    row: list | None


# ------------------------------------------------------------------------------------------ intent & notes
def _state(folder: Path, file_name: str, suffix: str) -> Path:
    return folder / STATE_DIR / f"{file_name}{suffix}"


def _read(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def owned_paths(record: dict) -> set[str]:
    """Paths a record's resource installed (files and their folders, and its top-level names)."""
    owned = {str(t) for t in record.get("top_level") or []}
    for row in record.get("files") or []:
        parts = str(row[0]).split("/")
        owned.update("/".join(parts[:i]) for i in range(1, len(parts) + 1))
    return owned


def ownership(folder: Path, file_name: str, previous: dict) -> tuple[set[str], set[str]]:
    """(paths, roots) this resource may replace: its previous record's, plus an interrupted publish's."""
    owned = owned_paths(previous) | owned_paths(_read(_state(folder, file_name, PREVIOUS_SUFFIX)))
    roots = {str(r) for r in _read(_state(folder, file_name, INTENT_SUFFIX)).get("roots") or []}
    return owned, roots


def begin(folder: Path, file_name: str, record: Path, roots: list[str]) -> None:
    """Before the first rename: note what is being put in place and move the old record aside, so that a publish
    killed half-way neither looks installed nor leaves files that the next run would call the user's."""
    atomic_write_text(_state(folder, file_name, INTENT_SUFFIX), json.dumps({"roots": sorted(roots)}))
    try:
        os.replace(record, _state(folder, file_name, PREVIOUS_SUFFIX))
    except FileNotFoundError:
        pass  # first install, or an earlier interrupted publish already moved it


def interrupted(folder: Path, file_name: str) -> bool:
    """A publish of this resource began and did not finish (killed between its first rename and its record)."""
    return _state(folder, file_name, INTENT_SUFFIX).exists()


def end(folder: Path, file_name: str) -> None:
    """After the new record is written."""
    _state(folder, file_name, PREVIOUS_SUFFIX).unlink(missing_ok=True)
    _state(folder, file_name, INTENT_SUFFIX).unlink(missing_ok=True)


def note_mmf_built(marker_folder: Path) -> None:
    """Remember, before the zoo removes MMF's marker, that MMF built this folder (the other resources sharing it
    may still take over MMF's files, also after a crash)."""
    atomic_write_text(marker_folder / STATE_DIR / MMF_NOTE, "{}")


def clear_mmf_note(marker_folder: Path) -> None:
    (marker_folder / STATE_DIR / MMF_NOTE).unlink(missing_ok=True)


def built_by_mmf(marker_folder: Path, records: list[Path]) -> bool:
    """MMF's marker with none of these install records beside it (the zoo writes the same marker, after records),
    or the note left when the zoo began re-installing MMF's data."""
    if (marker_folder / STATE_DIR / MMF_NOTE).exists():
        return True
    return (marker_folder / MARKER).is_file() and not any(r.exists() for r in records)


# ------------------------------------------------------------------------------------------------ claims
class Claims:
    """Files other install records list, by path relative to the publish folder."""

    def __init__(self, folder: Path, data_dir: Path, mine: Mine):
        self.folder, self.mine = folder, mine
        self.files: dict[str, Claim] = {}
        self.dirs: set[str] = set()  # every folder above a claimed path: the walk must look inside
        base = folder
        while True:  # the folder itself and every folder above it, up to the data dir
            self.load(base)
            if base == data_dir or not is_inside(base.parent, data_dir) or base.parent == base:
                break
            base = base.parent

    def load(self, base: Path) -> None:
        # record rows are clean relative posix paths: re-base them by prefix, not per-row path arithmetic
        if base == self.folder:
            strip, add = "", ""
        elif is_inside(self.folder, base):
            strip, add = os.path.relpath(self.folder, base).replace(os.sep, "/") + "/", ""
        else:
            strip, add = "", os.path.relpath(base, self.folder).replace(os.sep, "/") + "/"
        for file_name, rec in records_in(base):
            if base / STATE_DIR == self.mine.record.parent and file_name == self.mine.archive:
                continue  # its own record: not a foreign claim
            owner = f"{rec.get('key') or base.name}:{file_name}"
            rows = [row for row in rec.get("files") or [] if isinstance(row, list) and row]
            if rec.get("extracted") and rec.get("archive_kept"):
                self._add(file_name, strip, add, Claim(f"{owner} (its kept archive)", None, base, None))
            for row in rows:
                self._add(str(row[0]), strip, add, Claim(owner, row[2] if len(row) >= 3 else None, base, row))

    def _add(self, path: str, strip: str, add: str, claim: Claim) -> None:
        if strip:
            if not path.startswith(strip):
                return  # beside the publish folder, not in it
            path = path[len(strip):]
        rel = add + path
        self.files.setdefault(rel, claim)
        parts = rel.split("/")
        self.dirs.update("/".join(parts[:i]) for i in range(1, len(parts)))

    def under(self, rel: str) -> Claim | None:
        """A claimed file at or below `rel`."""
        if rel in self.files:
            return self.files[rel]
        if rel in self.dirs:
            return next(c for r, c in self.files.items() if r.startswith(rel + "/"))
        return None


# --------------------------------------------------------------------------------------------------- check
def _kind(mode: int | None) -> str | None:
    if mode is None:
        return None
    return "folder" if stat.S_ISDIR(mode) else "link" if stat.S_ISLNK(mode) else "file"


def _lstat_mode(path: str) -> int | None:
    try:
        return os.lstat(path).st_mode
    except FileNotFoundError:
        return None


class _Checker:
    def __init__(self, tree: Path, files, folder: Path, data_dir: Path, mine: Mine):
        self.tree, self.folder, self.mine = tree, folder, mine
        self.hashes = {rel: digest for rel, _size, digest in files}
        self.claims = Claims(folder, data_dir, mine)
        self.keep: set[str] = set()  # identical files already in place: left untouched

    # ------------------------------------------------------------------------------------------ errors
    def _refuse(self, rel: str, target: str, what: str, owner: Claim | None) -> UnsafeArchiveError:
        label = self.mine.label
        if owner is not None:
            return UnsafeArchiveError(
                f"{label}: refusing to install: {rel!r} would replace the existing {what} {target}, which "
                f"{owner.owner} installed with other content; nothing of {label} was installed. The two archives "
                "clash: install them into different data dirs, or report it to the manifest's author")
        return UnsafeArchiveError(
            f"{label}: refusing to install: {rel!r} would replace the existing {what} {target}, which was not "
            "installed by the zoo; nothing was installed: move it away (or delete it if it is not yours) and run "
            "the command again")

    # ----------------------------------------------------------------------------------------- verdicts
    def _new_digest(self, rel: str) -> str | None:
        digest = self.hashes.get(rel)
        return digest or xxh3_file(self.tree / rel)  # a hard link the extractor could not hash

    def _same_file(self, rel: str, target: str) -> bool:
        try:
            st = os.stat(self.tree / rel)
            return os.path.getsize(target) == st.st_size and xxh3_file(target) == self._new_digest(rel)
        except OSError:
            return False

    def _same_link(self, src: str, target: str) -> bool:
        try:
            return os.readlink(src) == os.readlink(target)
        except OSError:
            return False

    def _owns(self, rel: str) -> bool:
        return rel in self.mine.owned or (bool(self.mine.roots) and rel.split("/", 1)[0] in self.mine.roots)

    def _adoptable(self, target: str) -> bool:
        if self.mine.adopt is None:
            return False
        root, minus = self.mine.adopt
        return is_inside(target, root) and not any(is_inside(target, m) for m in minus)

    def _may_replace(self, rel: str, target: str, what: str) -> None:
        """An existing file or link at `rel` (not claimed by another record) may be replaced by this resource."""
        if self._owns(rel) or self._adoptable(target):
            return
        raise self._refuse(rel, target, what, None)

    def _claimed(self, rel: str, new_kind: str, target: str, old_kind: str | None) -> None:
        """Another record lists `rel`: only the very bytes it lists may land there."""
        claim = self.claims.files[rel]
        if new_kind != "file" or claim.digest is None or self._new_digest(rel) != claim.digest:
            raise self._refuse(rel, target, "file", claim)
        if old_kind == "folder":
            self._own_folder(rel, target)
        elif old_kind == "file" and claim.row is not None and check_file(claim.folder, claim.row, full=False) is None:
            self.keep.add(rel)  # the same bytes, intact: one copy on disk, listed by both records

    def _own_folder(self, rel: str, target: str) -> None:
        """A folder this resource installed may become a file only if nothing in it belongs to anyone else."""
        claim = self.claims.under(rel)
        if claim is not None:
            raise self._refuse(rel, target, "folder", claim)
        if not self._owns(rel) and not self._adoptable(target):
            raise self._refuse(rel, target, "folder", None)
        for dirpath, dirnames, filenames in os.walk(target):
            for name in dirnames + filenames:
                path = os.path.join(dirpath, name)
                sub = os.path.relpath(path, self.folder).replace(os.sep, "/")
                if name == STATE_DIR:
                    raise self._refuse(rel, target, "folder (it holds install records)", None)
                if not self._owns(sub) and not self._adoptable(path) and not os.path.isdir(path):
                    raise self._refuse(sub, path, "file", None)

    # -------------------------------------------------------------------------------------------- walk
    def walk(self, src: str, dst: str, prefix: str, dst_exists: bool) -> None:
        if dst_exists and prefix:
            self.claims.load(Path(dst))  # another install folder below this one: its records claim too
        with os.scandir(src) as it:
            entries = list(it)
        if not prefix and self.mine.archive in {e.name for e in entries}:
            raise UnsafeArchiveError(
                f"{self.mine.label}: refusing to install: the archive holds a member named like itself "
                f"({self.mine.archive!r}), which would replace the verified archive; report it to its author")
        for e in entries:
            rel, target = prefix + e.name, os.path.join(dst, e.name)
            new_kind = "folder" if e.is_dir(follow_symlinks=False) else "link" if e.is_symlink() else "file"
            old_kind = _kind(_lstat_mode(target)) if dst_exists else None
            if new_kind == "folder":
                if old_kind == "link" and os.path.isdir(target):
                    self._may_replace(rel, target, "link to a folder")
                elif old_kind in ("file", "link"):
                    if rel in self.claims.files:
                        raise self._refuse(rel, target, "file", self.claims.files[rel])
                    self._may_replace(rel, target, old_kind)
                if old_kind == "folder" or rel in self.claims.dirs:
                    self.walk(e.path, target, rel + "/", old_kind == "folder")
            elif rel in self.claims.files:
                self._claimed(rel, new_kind, target, old_kind)
            elif old_kind == "folder":
                self._own_folder(rel, target)
            elif old_kind == "file":
                if new_kind == "file" and not self._owns(rel) and not self._adoptable(target) \
                        and self._same_file(rel, target):
                    self.keep.add(rel)  # the same bytes put there by hand: nothing to replace
                else:
                    self._may_replace(rel, target, "file")
            elif old_kind == "link":
                if os.path.isdir(target) and not self._owns(rel):
                    raise self._refuse(rel, target, "link to a folder", None)
                if new_kind == "link" and self._same_link(e.path, target):
                    self.keep.add(rel)
                else:
                    self._may_replace(rel, target, "link")


def check(tree: Path, files, folder: Path, data_dir: Path, mine: Mine) -> set[str]:
    """Refuse (UnsafeArchiveError) any member that would replace what is not this resource's own; return the
    members to leave out of the merge because identical bytes are already in place."""
    checker = _Checker(tree, files or [], folder, data_dir, mine)
    checker.walk(str(tree), str(folder), "", folder.is_dir())
    return checker.keep


# --------------------------------------------------------------------------------------------------- merge
def merge(src: Path, dst: Path, keep: set[str], prefix: str = "") -> None:
    """Move the checked tree into place by renames (same filesystem), merging into existing folders."""
    dst.mkdir(parents=True, exist_ok=True)
    for item in src.iterdir():
        rel = prefix + item.name
        target = dst / item.name
        if rel in keep:
            continue
        if item.is_dir() and not item.is_symlink() and target.is_dir() and not target.is_symlink():
            merge(item, target, keep, rel + "/")
        elif item.is_dir() and not item.is_symlink() and (target.exists() or target.is_symlink()):
            target.unlink()  # a file (or link) this resource may replace where the new tree has a folder
            os.rename(item, target)
        else:
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)  # a folder of this resource's own where the new tree has a file
            os.replace(item, target)

