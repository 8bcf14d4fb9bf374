"""`mmf zoo fetch --from`: archives are found by size + sha256 under any name, and --from may be repeated.

The motivating case is TextVQA's: its features and its OCR features are both `features.tar.gz`, so a browser saves
the second as `features (1).tar.gz`. Real archives, real folders, the real CLI in a subprocess.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import yaml

from tests.zoo_helpers import assert_tree, make_zoo, run_mmf
from zoo.manifest import load_zoo
from zoo.sources import LocalSource

DEAD = "http://127.0.0.1:9/"  # nothing listens: any network use fails


def _two_sets(root: Path, with_size: bool = True):
    """Two entries whose archives share their file names (features.tar.gz, ...), like textvqa and its OCR."""
    a = make_zoo(root / "a", key="toyset", feature_bytes=200_000, with_size=with_size)
    b = make_zoo(root / "b", key="ocrset", feature_bytes=150_000, seed=1, with_size=with_size)
    manifest = root / "datasets.yaml"
    manifest.write_text(yaml.safe_dump({**yaml.safe_load(a.manifest.read_text()),
                                        **yaml.safe_load(b.manifest.read_text())}))
    return a, b, manifest


def _browser_downloads(folder: Path, *zoos) -> None:
    """Every archive saved flat into one folder; a name already there gets ` (1)`, as browsers do."""
    folder.mkdir(parents=True, exist_ok=True)
    for z in zoos:
        for path in z.archives.values():
            name, n = path.name, 0
            while (folder / name).exists():
                n += 1
                stem, suffix = path.name.split(".", 1)
                name = f"{stem} ({n}).{suffix}"
            shutil.copyfile(path, folder / name)


def _fetch(manifest, data, *extra, keys=("toyset", "ocrset")):
    return run_mmf("zoo", "fetch", *keys, "--zoo", str(manifest), "--data-dir", str(data), "--quiet",
                   "--mirror", DEAD, *extra)


def test_browser_renamed_copies_are_found_by_content(tmp_path):
    a, b, manifest = _two_sets(tmp_path)
    downloads = tmp_path / "Downloads"
    _browser_downloads(downloads, a, b)
    assert (downloads / "features (1).tar.gz").is_file()  # the case of the issue is really set up
    os.mkfifo(downloads / "extras (2).tar.gz")  # a FIFO named like an archive: never opened (it would block)
    r = _fetch(manifest, tmp_path / "data", "--from", str(downloads))
    assert r.returncode == 0, r.stderr
    assert_tree(tmp_path / "data", a)
    assert_tree(tmp_path / "data", b)


def test_browser_renamed_copies_are_found_without_sizes_in_the_manifest(tmp_path):
    """MMF's own manifest has no sizes: the numbered copy is still found, by name likeness then sha256."""
    a, b, manifest = _two_sets(tmp_path, with_size=False)
    downloads = tmp_path / "Downloads"
    _browser_downloads(downloads, a, b)
    r = _fetch(manifest, tmp_path / "data", "--from", str(downloads))
    assert r.returncode == 0, r.stderr
    assert_tree(tmp_path / "data", b)


def test_from_is_repeatable_and_takes_any_file_name(tmp_path):
    a, b, manifest = _two_sets(tmp_path)
    one, two = tmp_path / "usb", tmp_path / "scratch"
    _browser_downloads(one, a)
    two.mkdir()
    for i, path in enumerate(b.archives.values()):
        shutil.copyfile(path, two / f"download-{i}.bin")  # names that say nothing
    r = _fetch(manifest, tmp_path / "data", "--from", str(one), "--from", str(two))
    assert r.returncode == 0, r.stderr
    assert_tree(tmp_path / "data", a)
    assert_tree(tmp_path / "data", b)


def test_only_files_of_the_right_size_are_hashed(tmp_path):
    a = make_zoo(tmp_path / "a", feature_bytes=100_000)
    folder = tmp_path / "Downloads"
    folder.mkdir()
    want = a.archives["datasets/toyset/defaults/features/features.tar.gz"]
    (folder / "features.tar.gz").write_bytes(b"x" * 5000)  # the right name, another size: not even read
    (folder / "big.iso").write_bytes(b"y" * (want.stat().st_size + 1))
    shutil.copyfile(want, folder / "renamed-by-hand.tgz")
    res = next(r for r in load_zoo([a.manifest]).resolve("toyset").resources if r.category == "features")
    src = LocalSource(folder)
    assert src.url_for(res) is not None and src.url_for(res).endswith("renamed-by-hand.tgz")
    assert src.hashed == [folder / "renamed-by-hand.tgz"]


def test_a_missing_archive_is_named_with_what_was_tried(tmp_path):
    a, b, manifest = _two_sets(tmp_path)
    downloads = tmp_path / "Downloads"
    _browser_downloads(downloads, a)  # ocrset's archives were never downloaded
    (downloads / "features (1).tar.gz").write_bytes(b"not it")  # named right, wrong bytes
    r = _fetch(manifest, tmp_path / "data", "--from", str(downloads), keys=("ocrset",))
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 3 and len(lines) == 1, r.stderr
    assert "not in --from" in lines[0] and "any file name" in lines[0] and str(downloads) in lines[0], lines[0]
    assert not (tmp_path / "data/datasets/ocrset/defaults/features/features.tar.gz").exists()
