"""`mmf zoo pack`: one file with the verified archives of some keys and their manifest entries.

An uncompressed tar (archives are already compressed): `mmfzoo-pack.json` first, then each archive under
`archives/<kind>/<name>/<file_name>`. `mmf zoo fetch KEY --from PACK` installs from it without a network.
"""
from __future__ import annotations

import dataclasses
import io
import json
import tarfile
import time
from pathlib import Path

from zoo import layout
from zoo.errors import DiskError, HashMismatchError, ManifestError
from zoo.install import plan
from zoo.manifest import Entry, Resource, Zoo
from zoo.fsutil import atomic_write_bytes, sha256_file
from zoo.packindex import FORMAT, read_index
from zoo.sources import PACK_INDEX


def entry_to_dict(entry: Entry) -> dict:
    def res(r: Resource) -> dict:
        d = {k: v for k, v in dataclasses.asdict(r).items() if v not in (None, (), False) and k != "category"}
        d["compressed"] = r.compressed
        if d.get("mirrors"):
            d["mirrors"] = list(d["mirrors"])
        return d

    cats: dict[str, list] = {}
    flat = []
    for r in entry.resources:
        (cats.setdefault(r.category, []) if r.category else flat).append(res(r))
    node = {"version": entry.version, "resources": cats or flat}
    if entry.zoo_requirements:
        node["zoo_requirements"] = list(entry.zoo_requirements)
    return node


def pack(zoo: Zoo, keys: list[str], data_dir: Path, out: Path, say=print) -> dict:
    items, entries = [], []
    for target in plan(zoo, keys):
        entries.append({"key": target.entry.key, "kind": target.entry.kind, "node": entry_to_dict(target.entry)})
        for res in target.entry.resources:
            archive = target.folder(data_dir, res) / res.file_name
            if not archive.is_file():
                raise ManifestError(f"cannot pack {target.entry.key}: {archive} is not there (deleted after extraction "
                                    f"or never fetched); run `mmf zoo fetch {target.name.replace('/', '.')} --force` "
                                    "without --delete-archives first")
            digest = sha256_file(archive)
            if res.hashcode and digest != res.hashcode:
                raise HashMismatchError(f"cannot pack {archive}: sha256 {digest[:12]}… does not match the manifest "
                                        f"({res.hashcode[:12]}…); run `mmf zoo verify` and refetch it")
            items.append({"member": f"archives/{target.entry.kind}/{target.name}/{res.category or ''}/{res.file_name}"
                          .replace("//", "/"), "file_name": res.file_name, "url": res.url, "sha256": digest,
                          "size": archive.stat().st_size, "key": target.entry.key, "path": str(archive)})
    index = {"format": FORMAT, "created_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
             "entries": entries, "resources": [{k: v for k, v in i.items() if k != "path"} for i in items]}
    def write(f) -> None:
        with tarfile.open(fileobj=f, mode="w:", format=tarfile.PAX_FORMAT) as tf:
            data = json.dumps(index, indent=1).encode()
            info = tarfile.TarInfo(PACK_INDEX)
            info.size, info.mtime = len(data), int(time.time())
            tf.addfile(info, io.BytesIO(data))
            for item in items:
                say(f"adding {item['key']}:{item['file_name']} ({item['size']} bytes)")
                tf.add(item["path"], arcname=item["member"], recursive=False)

    try:
        atomic_write_bytes(Path(out), write)
    except OSError as exc:
        raise DiskError(f"cannot write pack {out}: {exc.strerror or exc}") from None
    return index


def merge_pack_entries(zoo: Zoo, index_entries: list[dict]) -> None:
    """Make a pack's entries known to the zoo (keys the local manifests lack)."""
    from zoo.manifest import _entry  # the same validation as manifest files

    for item in index_entries:
        if item["key"] in zoo.entries:
            continue
        problems: list[str] = []
        entry = _entry(item["node"], item["key"], item["kind"], "pack", problems)
        if problems or entry is None:
            raise ManifestError(f"pack entry {item['key']}: {'; '.join(problems)}")
        zoo.entries[item["key"]] = entry


def pack_entries(path: Path) -> list[dict]:
    with tarfile.open(path, "r:") as tf:
        return read_index(tf, path)["entries"]


__all__ = ["pack", "merge_pack_entries", "pack_entries", "layout"]
