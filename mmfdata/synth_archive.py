"""Zoo-style archives + manifest for a synthetic tree, laid out as MMF's real resources.

As MMF's builder (and our zoo) installs them: a `features` archive is extracted into `<variation>/features/`,
`annotations` into `<variation>/annotations/`, `extras` into `<variation>/` itself. So members are relative to
those folders: `open_images/detectron.lmdb/data.mdb`, `imdb_train_ocr_en.npy`, `extras/vocabs/...`.
Archives are reproducible (sorted members, zero mtimes/owners, gzip mtime 0), so their sha256 is stable.
"""
from __future__ import annotations

import gzip
import os
import tarfile

import yaml

from zoo.sources import sha256_file

# (variation, category, folder extracted into (relative to the variation), archive path under the mirror root)
_LAYOUT = [
    ("defaults", "features", "features", "{name}/defaults/features/features.tar.gz"),
    ("defaults", "annotations", "annotations", "{name}/defaults/annotations/annotations.tar.gz"),
    ("defaults", "extras", "", "{name}/defaults/extras.tar.gz"),
    ("ocr_en", "features", "features", "{name}/ocr_en/features/features.tar.gz"),
]


def _members(folder: str) -> list[str]:
    out = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames.sort()
        for fn in sorted(filenames):
            if fn in ("lock.mdb", ".built.json"):
                continue  # LMDB readers run with lock=False; markers are the installer's business
            out.append(os.path.relpath(os.path.join(dirpath, fn), folder))
    return out


def _tar(folder: str, members: list[str], dest: str) -> None:
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    tmp = dest + ".tmp"
    with open(tmp, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as gz, \
            tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for m in members:
            info = tar.gettarinfo(os.path.join(folder, m), arcname=m)
            info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
            with open(os.path.join(folder, m), "rb") as f:
                tar.addfile(info, f)
    os.replace(tmp, dest)


def write_archives(datasets: str, out_dir: str, names: list[str], version: str) -> tuple[str, str]:
    """Archive `datasets/<name>/...` into `out_dir/archives/datasets/...`; write `out_dir/manifest.yaml`."""
    archive_root = os.path.join(out_dir, "archives")
    manifest: dict = {}
    for name in names:
        for variation, category, inner, url_path in _LAYOUT:
            base = os.path.join(datasets, name, variation)
            if category == "extras":
                members = [os.path.join("extras", m) for m in _members(os.path.join(base, "extras"))]
                folder = base
            else:
                folder = os.path.join(base, inner)
                members = _members(folder)
            rel = url_path.format(name=name)
            dest = os.path.join(archive_root, "datasets", rel)
            _tar(folder, members, dest)
            entry = {"url": f"mmf://datasets/{rel}", "file_name": os.path.basename(rel),
                     "hashcode": sha256_file(dest), "size": os.path.getsize(dest)}
            node = manifest.setdefault(name, {}).setdefault(variation, {"version": version, "resources": {}})
            node["resources"].setdefault(category, []).append(entry)
    path = os.path.join(out_dir, "manifest.yaml")
    with open(path + ".tmp", "w") as f:
        f.write("# Synthetic TextVQA/ST-VQA in MMF's zoo schema; urls resolve against a mirror serving archives/\n")
        yaml.safe_dump(manifest, f, sort_keys=False)
    os.replace(path + ".tmp", path)
    return path, archive_root
