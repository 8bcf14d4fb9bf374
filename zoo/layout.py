"""MMF's on-disk layout and markers, so MMF and this tool can share one data folder.

datasets: <data_dir>/datasets/<name>/<variation>/{features,annotations,images,...}/ with extras in the variation
folder itself; models: <data_dir>/models/<requested key>/. Each of those folders gets MMF's `.built.json`
({"created_at", "version"}) once everything in it is installed. Our own bookkeeping (partial downloads, journals,
locks, per-resource install records) lives in a hidden `.mmfzoo/` folder beside the data, which MMF ignores.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from zoo import trust
from zoo.errors import ManifestError
from zoo.fsutil import atomic_write_text, is_inside
from zoo.manifest import Entry, Resource
from zoo.records import MARKER, RECORD_SUFFIX, STATE_DIR



@dataclass(frozen=True)
class Target:
    """One entry as requested: where it installs depends on the key the user typed for models (MMF's rule)."""

    entry: Entry
    name: str  # folder name under models/, or "<name>/<variation>" under datasets/

    def root(self, data_dir: Path) -> Path:
        return _inside(data_dir, Path(data_dir) / self.entry.kind / self.name)

    def folder(self, data_dir: Path, res: Resource) -> Path:
        """Where the archive lands and is extracted (MMF's download_path for its category)."""
        base = self.root(data_dir)
        if res.category and res.category != "extras":
            base = base / res.category
        return _inside(data_dir, base / res.dest_folder if res.dest_folder else base)

    def marker_folder(self, data_dir: Path, res: Resource) -> Path:
        """MMF writes one marker per category folder (extras and flat lists: the entry's own folder)."""
        base = self.root(data_dir)
        return base / res.category if res.category and res.category != "extras" else base

    def marker_folders(self, data_dir: Path) -> list[Path]:
        folders = list(dict.fromkeys(self.marker_folder(data_dir, r) for r in self.entry.resources))
        return folders or [self.root(data_dir)]


def _inside(data_dir: Path, path: Path) -> Path:
    """Second line of defence behind manifest validation: nothing a manifest names may leave the data dir."""
    if not is_inside(path, data_dir) or os.path.normpath(path) == os.path.normpath(data_dir):
        raise ManifestError(f"refusing to install into {path}: it is not inside the data dir {data_dir} "
                            "(a manifest key or folder is not a plain name)")
    return path


def install_name(kind: str, key: str) -> str:
    """The folder under <data_dir>/<kind>/ of an entry keyed `key`: datasets/<name>/<variation> (`defaults` when
    the key names no variation), models/<key> as typed (MMF's rule)."""
    if kind == "datasets":
        parts = key.split(".")
        return "/".join(parts if len(parts) > 1 else parts + ["defaults"])
    return key


def key_of_path(path) -> str | None:
    """Which zoo key's install holds `path`: the inverse of `install_name` (`<data_dir>/datasets/<name>/<variation>/
    ...` -> `name.variation`, `<data_dir>/models/<key>/...` -> `key`), or None for a file outside the layout."""
    parts = os.path.abspath(str(path)).split(os.sep)
    for folder, depth in (("datasets", 2), ("models", 1)):
        for i in range(len(parts) - depth - 2, -1, -1):
            if parts[i] == folder:
                return ".".join(parts[i + 1:i + 1 + depth])
    return None


@dataclass(frozen=True)
class Place:
    """Where key `key` lives in a data dir and what is there: `installed` is the version MMF's markers of all its
    folders agree on (None: not, or not completely, installed)."""

    key: str
    folder: Path
    version: str
    installed: str | None

    @property
    def current(self) -> bool:
        return self.installed == self.version


def place_of(zoo, key: str, data_dir: Path) -> Place:
    """Where `key` (as typed: `m4c.textvqa` installs into models/m4c.textvqa.defaults, MMF's rule) lives."""
    target = target_for(zoo, key)
    versions = {_built_version(f) for f in target.marker_folders(Path(data_dir))}
    installed = versions.pop() if len(versions) == 1 else None
    return Place(key.strip(), target.root(Path(data_dir)), target.entry.version, installed)


def _built_version(folder: Path) -> str | None:
    try:
        version = json.loads((folder / MARKER).read_text()).get("version")
    except (OSError, ValueError, AttributeError):
        return None
    return version if isinstance(version, str) else None


def target_for(zoo, key: str) -> Target:
    entry = zoo.resolve(key)
    if entry.kind == "datasets":
        return Target(entry, install_name("datasets", entry.key))
    requested = key.strip()
    return Target(entry, install_name("models", requested if requested in zoo.entries or requested in zoo.aliases
                                      else f"{requested}.defaults"))


def state_dir(folder: Path) -> Path:
    return folder / STATE_DIR


def record_path(folder: Path, res: Resource) -> Path:
    return state_dir(folder) / f"{res.file_name}{RECORD_SUFFIX}"


def read_record(folder: Path, res: Resource) -> dict | None:
    try:
        return json.loads(record_path(folder, res).read_text())
    except (OSError, ValueError):
        return None


def write_record(folder: Path, res: Resource, record: dict, grant: bool) -> None:
    """`grant`: the install was verified against a manifest the user chose, so the record goes into the user's
    trust store (`zoo.trust`); a record written without it grants nothing."""
    state_dir(folder).mkdir(parents=True, exist_ok=True)
    trust.write_record(record_path(folder, res), record, grant)


def is_built(folder: Path, version: str) -> bool:
    try:
        return json.loads((folder / MARKER).read_text()).get("version") == version
    except (OSError, ValueError, AttributeError):
        return False


def mark_built(folder: Path, version: str) -> None:
    """MMF's marker, byte-compatible keys; written last, atomically."""
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(folder / MARKER, json.dumps({"created_at": str(datetime.today()), "version": version}))


def unmark(folder: Path) -> None:
    try:
        (folder / MARKER).unlink()
    except FileNotFoundError:
        pass
