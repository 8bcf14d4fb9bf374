"""Offline sources for `mmf zoo fetch --from PATH` (repeatable) and the bundles written by `mmf zoo pack`.

Each PATH may be one archive, a folder of archives downloaded by hand (searched recursively), or a pack. An archive
is found by its content, not its name: a file whose size matches the manifest's (any name: a browser saves a
second `features.tar.gz` as `features (1).tar.gz`) and whose sha256 matches the hashcode. Only files whose size
matches are hashed; where the manifest gives no size, only files named like the archive (its name, a browser's
numbered copy of it, or any name with the same archive suffix) are, so `--from ~/` never hashes a whole home
folder. Each file is hashed at most once per run. A resource without a hashcode can only be found by its name.
A local source becomes a file:// mirror, so it goes through the same engine as a download: journal, sha256,
streaming extraction. A pack is an uncompressed tar whose first member is `mmfzoo-pack.json`; each archive is
addressed in place as file://PACK#bytes=START-END (no copy).
"""
from __future__ import annotations

import os
import re
import stat
import tarfile
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from zoo.errors import ManifestError, OfflineError
from zoo.fsutil import sha256_file
from zoo.records import STATE_DIR
from zoo.manifest import Resource
from zoo.packindex import INDEX_NAME as PACK_INDEX, read_index


def from_paths(value) -> list[Path]:
    """--from as every caller takes it: None, one path (str or Path) or several -> a list of paths, `~` expanded."""
    if not value:
        return []
    return [Path(p).expanduser() for p in ([value] if isinstance(value, (str, os.PathLike)) else value)]


def file_url(path: Path, start: int | None = None, length: int | None = None) -> str:
    url = "file://" + quote(str(Path(path).resolve()))
    if start is not None:
        url += f"#bytes={start}-{start + length - 1}"
    return url


def is_pack(path: Path) -> bool:
    try:
        with tarfile.open(path, "r:") as tf:
            first = tf.next()
            return first is not None and first.name == PACK_INDEX
    except (tarfile.TarError, OSError):
        return False


def read_pack(path: Path) -> list[dict]:
    """The pack's index: one dict per archive, with its byte span inside the pack."""
    with tarfile.open(path, "r:") as tf:
        index = read_index(tf, path)
        spans = {m.name: (m.offset_data, m.size) for m in tf.getmembers() if m.isfile()}
    items = []
    for item in index["resources"]:
        if item["member"] not in spans:
            raise ManifestError(f"pack {path} lists {item['member']} but does not contain it (truncated pack?)")
        item["offset"], item["length"] = spans[item["member"]]
        items.append(item)
    return items


class LocalSource:
    """Finds a resource's archive under the --from paths (one or several)."""

    def __init__(self, paths):
        self.paths = from_paths(paths)
        for path in self.paths:
            if not path.exists():
                raise OfflineError(f"--from {path}: no such file or folder")
        self.packs = [(p, read_pack(p)) for p in self.paths if p.is_file() and is_pack(p)]
        self._files: list[_File] | None = None
        self._hashes: dict[Path, str] = {}  # each file is read at most once per run

    @property
    def path(self) -> str:
        """The --from paths as the user gave them, for messages."""
        return ", ".join(str(p) for p in self.paths)

    def url_for(self, res: Resource) -> str | None:
        for path, items in self.packs:
            for item in items:
                same = item.get("sha256") == res.hashcode if res.hashcode else \
                    item.get("url") == res.url and item.get("file_name") == res.file_name
                if same:
                    return file_url(path, item["offset"], item["length"])
        files = self._candidates(res)
        if res.hashcode:
            return next((file_url(f.path) for f in files if self._sha(f.path) == res.hashcode), None)
        named = [f.path for f in files if f.path.name == res.file_name]
        if not named:
            return None
        # no hash: prefer the copy whose path ends like the URL (datasets/textvqa/defaults/features/...)
        tail = res.url.split("://", 1)[-1].split("/")
        return file_url(max(named, key=lambda c: _common_suffix(c.parts, tail)))

    @property
    def hashed(self) -> list[Path]:
        """The files hashed so far while searching."""
        return list(self._hashes)

    def missing(self, res: Resource) -> str:
        """Why `res` was not found, for the one-line error."""
        packs = f"{'the pack holds' if len(self.packs) == 1 else 'the packs hold'} no archive with its " \
            f"{'sha256' if res.hashcode else 'URL'}; " if self.packs else ""
        if len(self.packs) == len(self.paths):
            return f"{packs}make the pack again with it, or fetch it online"
        return packs + self._not_in_folders(res)

    def _not_in_folders(self, res: Resource) -> str:
        if res.hashcode:
            tried = self._candidates(res)
            how = (f"{len(tried)} file(s) of its size or name hashed, none has its sha256 {res.hashcode[:12]}…"
                   if tried else f"no file there has its size ({res.size} bytes)" if res.size is not None
                   else "no file there is named like it")
            return f"{how}; add the archive there (any file name) or fetch it online"
        return "it has no hashcode, so only a file of that exact name is used; add it there or fetch it online"

    def _sha(self, path: Path) -> str:
        if path not in self._hashes:
            try:
                self._hashes[path] = sha256_file(path)
            except OSError:
                self._hashes[path] = ""  # unreadable: not a candidate
        return self._hashes[path]

    def _candidates(self, res: Resource) -> list["_File"]:
        """Files that may hold `res`, most likely first: its own name, a numbered copy, then the right size."""
        if self._files is None:
            self._files = [f for p in self.paths if not any(p == q for q, _ in self.packs) for f in _walk(p)]
        like = _name_rank(res.file_name)
        ranked = []
        for f in self._files:
            rank = like(f.path.name)
            if not f.given and res.size is not None and f.size != res.size:
                continue  # the manifest's size rules it out, whatever its name
            if not f.given and rank is None and res.size is None:
                continue  # no size to go by: hash only files named like the archive
            # a file named on the command line is always a candidate: the user picked it
            ranked.append((rank if rank is not None else 3, str(f.path), f))
        return [f for *_, f in sorted(ranked, key=lambda t: t[:2])]


@dataclass(frozen=True)
class _File:
    path: Path
    size: int
    given: bool = False  # named by --from itself, not found in a folder


def _walk(path: Path) -> list[_File]:
    """Regular files at or under `path` (symlinked folders not followed, our state folders skipped)."""
    def regular(p: Path) -> _File | None:
        try:
            st = os.stat(p)
        except OSError:
            return None
        return _File(p, st.st_size) if stat.S_ISREG(st.st_mode) else None  # no FIFOs or devices: they never end

    if not path.is_dir():
        f = regular(path)
        return [_File(f.path, f.size, given=True)] if f else []
    out = []
    for dirpath, dirnames, filenames in os.walk(path):
        dirnames[:] = sorted(d for d in dirnames if d != STATE_DIR)
        out += [f for f in (regular(Path(dirpath, n)) for n in sorted(filenames)) if f]
    return out


_NUMBERED = re.compile(r"^(?P<stem>.*?)(?: ?\(\d+\)|[-_ ]\d+)(?P<suffix>(?:\.[A-Za-z0-9]+)*)$")


def _name_rank(file_name: str):
    """rank(name): 0 the archive's own name, 1 a numbered copy of it (`features (1).tar.gz`, `features-2.tar.gz`),
    2 another name with the same archive suffix (`.tar.gz`), None otherwise."""
    suffix = "".join(Path(file_name).suffixes[-2:]) if file_name.count(".") else ""
    stem = file_name[: len(file_name) - len(suffix)] if suffix else file_name

    def rank(name: str) -> int | None:
        if name == file_name:
            return 0
        m = _NUMBERED.match(name)
        if m and m["stem"] == stem and m["suffix"] == suffix:
            return 1
        return 2 if suffix and name.endswith(suffix) else None
    return rank


def _common_suffix(a, b) -> int:
    n = 0
    for x, y in zip(reversed(a), reversed(b)):
        if x != y:
            break
        n += 1
    return n
