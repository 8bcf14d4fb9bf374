"""Manifest loading speed: a synthetic 22 MB manifest in MMF's schema, our loader vs PyYAML's pure-Python safe_load.

    python bench/manifest_load.py [--mb 22]

Prints seconds for each and the ratio, measured in this process (the baseline runs in the same script).
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import yaml  # noqa: E402

from zoo.manifest import parse_manifest  # noqa: E402


def synth_manifest(target_bytes: int) -> str:
    parts, total, i = [], 0, 0
    while total < target_bytes:
        h1, h2 = (os.urandom(32).hex() for _ in range(2))
        part = (f"ds{i}:\n  defaults:\n    version: 1.0_2020_06_30\n    resources:\n      features:\n"
                f"      - url: mmf://datasets/ds{i}/defaults/features/features.tar.gz\n"
                f"        file_name: features.tar.gz\n        hashcode: {h1}\n      annotations:\n"
                f"      - url: mmf://datasets/ds{i}/defaults/annotations/annotations.tar.gz\n"
                f"        file_name: annotations.tar.gz\n        hashcode: {h2}\n")
        parts.append(part)
        total += len(part)
        i += 1
    return "".join(parts)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mb", type=float, default=22.0)
    args = ap.parse_args()
    text = synth_manifest(int(args.mb * 1e6))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "datasets.yaml"
        path.write_text(text)
        t0 = time.perf_counter()
        zoo = parse_manifest(path, "datasets")
        ours = time.perf_counter() - t0
        t0 = time.perf_counter()
        yaml.load(text, Loader=yaml.SafeLoader)  # the pure-Python loader the old code used (parse only)
        base = time.perf_counter() - t0
    print(f"manifest {len(text) / 1e6:.1f} MB, {len(zoo.entries)} entries")
    print(f"zoo.manifest.parse_manifest (parse + validate): {ours:.2f} s")
    print(f"yaml.SafeLoader (parse only, baseline):         {base:.2f} s")
    print(f"ratio baseline/ours: {base / ours:.1f}x")


if __name__ == "__main__":
    main()
