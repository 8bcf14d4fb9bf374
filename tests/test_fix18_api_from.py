"""`zoo.fetch(from_path=...)` takes what `mmf zoo fetch --from` takes: one path, or several (archives, folders of
archives, packs). Real archives in real folders; no network (offline)."""
from __future__ import annotations

import shutil

import pytest

import zoo
from tests.zoo_helpers import assert_tree, make_zoo, run_mmf
from zoo.errors import OfflineError


def test_api_fetch_from_several_paths(tmp_path):
    toy = make_zoo(tmp_path / "toy", feature_bytes=40_000)
    one, two = tmp_path / "downloads-1", tmp_path / "downloads-2"
    one.mkdir(), two.mkdir()
    archives = sorted(toy.archives.values())
    shutil.copy(archives[0], one / "renamed (1).tar.gz")  # found by content, not name
    for a in archives[1:]:
        shutil.copy(a, two / a.name)
    data = tmp_path / "data"
    reports = zoo.fetch("toyset", data_dir=data, zoo_paths=[toy.manifest], from_path=[one, str(two)], progress=False)
    assert sorted(r.status for r in reports) == ["installed"] * 3, reports
    assert_tree(data, toy)


def test_api_fetch_from_several_paths_names_them_all_when_one_is_missing(tmp_path):
    toy = make_zoo(tmp_path / "toy", feature_bytes=40_000)
    one = tmp_path / "downloads-1"
    one.mkdir()
    with pytest.raises(OfflineError, match="no-such-folder"):
        zoo.fetch("toyset", data_dir=tmp_path / "data", zoo_paths=[toy.manifest],
                  from_path=[one, tmp_path / "no-such-folder"], progress=False)
    assert not (tmp_path / "data" / "datasets").exists()


def test_api_fetch_from_a_pack_among_paths_uses_its_entries(tmp_path):
    toy = make_zoo(tmp_path / "toy", key="packedset", feature_bytes=40_000)
    data = tmp_path / "data"
    zoo.fetch("packedset", data_dir=data, zoo_paths=[toy.manifest], mirrors=[str(toy.mirror)], progress=False)
    pack = tmp_path / "x.pack"
    r = run_mmf("zoo", "pack", "packedset", "--zoo", str(toy.manifest), "--data-dir", str(data), "-o", str(pack))
    assert r.returncode == 0, r.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    fresh = tmp_path / "fresh"
    # no manifest names packedset: the pack's own entry makes the key known, as with `mmf zoo fetch --from`
    reports = zoo.fetch("packedset", data_dir=fresh, from_path=[empty, pack], progress=False)
    assert len(reports) == 3 and all(r.status == "installed" for r in reports), reports
