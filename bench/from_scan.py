"""`mmf zoo fetch --from FOLDER` finding archives in a cluttered downloads folder (issue 18).

A folder holds the wanted archives under browser names (`features (1).tar.gz`) among decoys: other archives of
other sizes and unrelated files. Prints, per case, the seconds LocalSource takes to find every archive and the
bytes it hashed (three archives found, one absent), against "hash everything" (what matching by content without a size filter would cost), in one run.
Cases: the manifest gives sizes (only size-matching files are hashed) and it does not (MMF's own manifest: only
files named like the archive are). Usage: python bench/from_scan.py [--decoys 20] [--decoy-mib 64]
"""
from __future__ import annotations

import argparse
import hashlib
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from zoo.manifest import Resource  # noqa: E402
from zoo.sources import LocalSource  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--decoys", type=int, default=20)
    ap.add_argument("--decoy-mib", type=int, default=64)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        wanted = []
        for i, name in enumerate(("features.tar.gz", "features (1).tar.gz", "annotations.tar.gz")):
            data = os.urandom((8 + i) << 20)
            (folder / name).write_bytes(data)
            wanted.append(("features.tar.gz" if "features" in name else name, len(data),
                           hashlib.sha256(data).hexdigest()))
        for i in range(args.decoys):
            ext = (".tar.gz", ".zip", ".iso", ".mp4")[i % 4]
            (folder / f"decoy-{i}{ext}").write_bytes(os.urandom((args.decoy_mib << 20) + i))
        total = sum(p.stat().st_size for p in folder.iterdir())
        print(f"folder: {len(list(folder.iterdir()))} files, {total / 2**20:.0f} MiB")
        for label, sized in (("sizes in the manifest", True), ("no sizes (MMF's manifest)", False)):
            src = LocalSource(folder)
            t0 = time.perf_counter()
            absent = ("ocr.tar.gz", 12 << 20, "0" * 64)  # not in the folder: the worst case, every candidate hashed
            for file_name, size, sha in wanted + [absent]:
                res = Resource(url=f"mmf://x/{file_name}", file_name=file_name, category=None, hashcode=sha,
                               size=size if sized else None)
                assert (src.url_for(res) is None) == (sha == absent[2]), file_name
            dt = time.perf_counter() - t0
            hashed = sum(p.stat().st_size for p in src.hashed)
            print(f"{label:28} {dt:6.2f} s  hashed {hashed / 2**20:7.0f} MiB ({len(src.hashed)} files)")
        t0 = time.perf_counter()
        for p in folder.iterdir():
            h = hashlib.sha256()
            with open(p, "rb") as f:
                while block := f.read(1 << 20):
                    h.update(block)
        print(f"{'hash everything (baseline)':28} {time.perf_counter() - t0:6.2f} s  hashed {total / 2**20:7.0f} MiB")


if __name__ == "__main__":
    main()
