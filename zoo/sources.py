"""Offline sources for `mmf zoo fetch --from PATH` and the bundles written by `mmf zoo pack`.

PATH may be one archive, a folder of archives downloaded by hand (searched recursively, matched by file_name and
verified by hash), or a pack. A local source becomes a file:// mirror, so it goes through the same engine as a
download: journal, sha256, streaming extraction. A pack is an uncompressed tar whose first member is
`mmfzoo-pack.json`; each archive is addressed in place as file://PACK#bytes=START-END (no copy).
"""
from __future__ import annotations

import tarfile
from pathlib import Path
from urllib.parse import quote

from zoo.errors import ManifestError, OfflineError
from zoo.fsutil import sha256_file
from zoo.records import STATE_DIR
from zoo.manifest import Resource
from zoo.packindex import INDEX_NAME as PACK_INDEX, read_index


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
    """Finds a resource's archive under --from PATH."""

    def __init__(self, path: str | Path):
        self.path = Path(path).expanduser()
        if not self.path.exists():
            raise OfflineError(f"--from {self.path}: no such file or folder")
        self.pack = read_pack(self.path) if self.path.is_file() and is_pack(self.path) else None
        self._files: list[Path] | None = None
        self._hashes: dict[Path, str] = {}

    def _sha(self, path: Path) -> str:
        if path not in self._hashes:
            self._hashes[path] = sha256_file(path)
        return self._hashes[path]

    def url_for(self, res: Resource) -> str | None:
        if self.pack is not None:
            for item in self.pack:
                same = item.get("sha256") == res.hashcode if res.hashcode else item.get("url") == res.url
                if same and item.get("file_name") == res.file_name:
                    return file_url(self.path, item["offset"], item["length"])
            return None
        if self.path.is_file():
            if res.hashcode:
                return file_url(self.path) if self._sha(self.path) == res.hashcode else None
            return file_url(self.path) if self.path.name == res.file_name else None
        candidates = self._all_files_named(res.file_name)
        if not candidates:
            return None
        if res.hashcode:
            return next((file_url(c) for c in candidates if self._sha(c) == res.hashcode), None)
        # no hash: prefer the copy whose path ends like the URL (datasets/textvqa/defaults/features/...)
        tail = res.url.split("://", 1)[-1].split("/")
        return file_url(max(candidates, key=lambda c: _common_suffix(c.parts, tail)))

    def _all_files_named(self, name: str) -> list[Path]:
        if self._files is None:
            self._files = [p for p in self.path.rglob("*") if p.is_file() and f"/{STATE_DIR}/" not in str(p)]
        return [p for p in self._files if p.name == name]


def _common_suffix(a, b) -> int:
    n = 0
    for x, y in zip(reversed(a), reversed(b)):
        if x != y:
            break
        n += 1
    return n
