"""Packs never shadow the manifest, and a pack's own entries are third-party data.

Each hostile pack is made with the real tools on "the attacker's machine" (their own manifest, a real fetch from a
folder mirror, `mmf zoo pack`), then fetched on "the victim's" with `mmf zoo fetch KEY --from PACK` in a
subprocess. The imdb inside would create a file if unpickled: its absence proves no code ran, and the consented
case (--trust-pack) shows the same payload does fire.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

import zoo
from mmfdata.errors import UntrustedPickleError
from mmfdata.imdb import load_imdb
from mmfdata.trust import require_trusted
from tests.payload import evil_imdb
from tests.zoo_helpers import assert_tree, make_zoo, run_mmf, sha256, tar_gz


def _attacker_pack(root: Path, key: str, proof: Path) -> Path:
    """A pack whose own entry is `key` (nested in the YAML as the key's parts), made with the real tools."""
    archive = tar_gz(root / "mirror/evil/annotations.tar.gz", {"imdb_train.npy": evil_imdb(proof)})
    node = {"version": "6.6.6", "resources": {"annotations": [
        {"url": "mmf://evil/annotations.tar.gz", "file_name": "annotations.tar.gz", "hashcode": sha256(archive)}]}}
    for part in reversed(key.split(".")):
        node = {part: node}
    manifest = root / "datasets.yaml"
    manifest.write_text(yaml.safe_dump(node))
    zoo.fetch(key, data_dir=root / "data", mirrors=[str(root / "mirror")], zoo_paths=[manifest])
    pack = root / "evil.pack"
    r = run_mmf("zoo", "pack", key, "--zoo", str(manifest), "--data-dir", str(root / "data"), "-o", str(pack))
    assert r.returncode == 0, r.stderr
    return pack


def _one_line_error(r) -> str:
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    return lines[0]


def test_a_pack_entry_shadowing_a_defaults_resolution_is_refused(tmp_path):
    proof = tmp_path / "proof"
    pack = _attacker_pack(tmp_path / "attacker", "textvqa", proof)  # the built-in manifest has textvqa.defaults
    data = tmp_path / "victim"
    r = run_mmf("zoo", "fetch", "textvqa", "--from", str(pack), "--data-dir", str(data))
    assert r.returncode == 1, r.stderr  # a manifest error (README's exit-code table)
    line = _one_line_error(r)
    assert "'textvqa'" in line and "'textvqa.defaults'" in line and "--trust-pack" in line, line
    assert not (data / "datasets/textvqa").exists()
    assert not proof.exists()
    # the explicit way: the pack's manifest chosen by the user; then its pickles are its author's code, and run
    r = run_mmf("zoo", "fetch", "textvqa", "--from", str(pack), "--data-dir", str(data), "--trust-pack")
    assert r.returncode == 0, r.stderr
    imdb = data / "datasets/textvqa/defaults/annotations/imdb_train.npy"
    with pytest.raises(Exception):
        load_imdb(str(imdb))
    assert proof.exists()  # consent makes it trusted: the payload fires, so its absence above means no code ran


def test_a_pack_entry_disagreeing_on_the_same_key_is_refused(tmp_path):
    proof = tmp_path / "proof"
    victim = make_zoo(tmp_path / "victim_zoo")  # toyset.defaults, with its own sha256s
    pack = _attacker_pack(tmp_path / "attacker", "toyset.defaults", proof)
    data = tmp_path / "victim"
    r = run_mmf("zoo", "fetch", "toyset", "--zoo", str(victim.manifest), "--from", str(pack), "--data-dir", str(data))
    assert r.returncode == 1, r.stderr
    line = _one_line_error(r)
    assert "'toyset.defaults'" in line and "same key" in line and "--trust-pack" in line, line
    assert not (data / "datasets/toyset").exists() and not proof.exists()


@pytest.mark.parametrize("key,why", [("textvqa.defaults.annotations", "inside datasets/textvqa/defaults"),
                                     ("stvqa", "resolves 'stvqa' to 'stvqa.defaults'")])
def test_a_pack_entry_installing_into_a_manifest_folder_is_refused(tmp_path, key, why):
    proof = tmp_path / "proof"
    pack = _attacker_pack(tmp_path / "attacker", key, proof)
    data = tmp_path / "victim"
    r = run_mmf("zoo", "fetch", key, "--from", str(pack), "--data-dir", str(data))
    assert r.returncode == 1 and why in _one_line_error(r), r.stderr
    assert not (data / "datasets").exists() and not proof.exists()


def test_a_pack_agreeing_with_the_manifest_installs_offline_and_is_trusted(tmp_path):
    toy = make_zoo(tmp_path)
    d1 = tmp_path / "d1"
    zoo.fetch("toyset", data_dir=d1, mirrors=[str(toy.mirror)], zoo_paths=[toy.manifest])
    pack = tmp_path / "toy.pack"
    r = run_mmf("zoo", "pack", "toyset", "--zoo", str(toy.manifest), "--data-dir", str(d1), "-o", str(pack))
    assert r.returncode == 0, r.stderr
    d2 = tmp_path / "d2"
    r = run_mmf("zoo", "fetch", "toyset", "--zoo", str(toy.manifest), "--from", str(pack), "--data-dir", str(d2),
                "--offline", "--quiet")
    assert r.returncode == 0, r.stderr
    assert_tree(d2, toy)
    require_trusted(str(d2 / "datasets/toyset/defaults/annotations/imdb_train.npy"), False)  # the manifest's entry
    # the same pack without --zoo: its own entry is the only one, so the data installs but is third-party
    d3 = tmp_path / "d3"
    r = run_mmf("zoo", "fetch", "toyset", "--from", str(pack), "--data-dir", str(d3), "--offline")
    assert r.returncode == 0, r.stderr
    assert "not trusted" in r.stderr and "--trust-pack" in r.stderr
    assert_tree(d3, toy)
    with pytest.raises(UntrustedPickleError, match="without --trust-pack"):
        require_trusted(str(d3 / "datasets/toyset/defaults/annotations/imdb_train.npy"), False)


def test_a_third_party_pack_entry_is_installed_but_its_pickles_need_consent(tmp_path):
    proof = tmp_path / "proof"
    pack = _attacker_pack(tmp_path / "attacker", "evilset", proof)  # a key no manifest of the victim knows
    data = tmp_path / "victim"
    r = run_mmf("zoo", "fetch", "evilset", "--from", str(pack), "--data-dir", str(data))
    assert r.returncode == 0, r.stderr
    imdb = data / "datasets/evilset/defaults/annotations/imdb_train.npy"
    assert imdb.is_file()
    with pytest.raises(UntrustedPickleError) as info:
        load_imdb(str(imdb))
    msg = str(info.value)
    assert "\n" not in msg and f"mmf zoo adopt evilset.defaults --from {pack.resolve()} --trust-pack" in msg, msg
    assert not proof.exists()
    r = run_mmf("zoo", "fetch", "evilset", "--from", str(pack), "--data-dir", str(data))  # a rerun says so too
    assert r.returncode == 0 and "not trusted" in r.stderr, r.stderr
    r = run_mmf("zoo", "adopt", "evilset", "--from", str(pack), "--data-dir", str(data))  # no consent: refused
    assert r.returncode == 2 and "--trust-pack" in r.stdout, r.stdout + r.stderr
    assert not proof.exists()
    r = run_mmf("zoo", "adopt", "evilset", "--from", str(pack), "--trust-pack", "--data-dir", str(data))
    assert r.returncode == 0, r.stdout + r.stderr
    with pytest.raises(Exception):
        load_imdb(str(imdb))
    assert proof.exists()  # the user's consent: the author's code runs


def test_trust_pack_needs_a_pack(tmp_path):
    toy = make_zoo(tmp_path)
    r = run_mmf("zoo", "fetch", "toyset", "--zoo", str(toy.manifest), "--trust-pack", "--data-dir", str(tmp_path / "d"))
    assert r.returncode == 1 and "--trust-pack needs --from PACK" in _one_line_error(r)


def _item(key: str, hashcode: str, kind: str = "datasets") -> dict:
    return {"key": key, "kind": kind, "node": {"version": "1", "resources": {"annotations": [
        {"url": "mmf://x/annotations.tar.gz", "file_name": "annotations.tar.gz", "hashcode": hashcode}]}}}


def test_pack_entries_merge_only_where_they_cannot_shadow(tmp_path):
    from zoo.errors import ManifestError
    from zoo.layout import target_for
    from zoo.manifest import load_zoo
    from zoo.pack import merge_pack_entries

    toy = make_zoo(tmp_path)  # toyset.defaults with features / annotations / extras
    node = yaml.safe_load(toy.manifest.read_text())["toyset"]["defaults"]
    same = {"key": "toyset", "kind": "datasets", "node": node}
    z = load_zoo([toy.manifest])
    merge_pack_entries(z, [same], tmp_path / "p.pack")  # the same data spelled `toyset`: the manifest's entry
    assert z.resolve("toyset") is z.entries["toyset.defaults"] and "toyset" not in z.entries
    z = load_zoo([toy.manifest])
    with pytest.raises(ManifestError, match="'toyset' would shadow the manifest's 'toyset.defaults'"):
        merge_pack_entries(z, [_item("toyset", "a" * 64)], tmp_path / "p.pack")
    with pytest.raises(ManifestError, match="installs into datasets/toyset/defaults/features, inside"):
        merge_pack_entries(z, [_item("toyset.defaults.features", "a" * 64)], tmp_path / "p.pack")
    with pytest.raises(ManifestError, match="same key"):  # a model entry under the key of a dataset
        merge_pack_entries(z, [_item("toyset.defaults", "a" * 64, kind="models")], tmp_path / "p.pack")
    for bad in (_item("..", "a" * 64), _item("x", "a" * 64, kind="models/../datasets"), {"key": 3}):
        with pytest.raises(ManifestError, match="damaged or forged"):
            merge_pack_entries(z, [bad], tmp_path / "p.pack")
    assert z.resolve("toyset") is z.entries["toyset.defaults"]  # nothing above changed the zoo
    # consent: the pack's entry is the one every spelling reaches, in the same folder
    merge_pack_entries(z, [_item("toyset", "a" * 64)], tmp_path / "p.pack", consent=True)
    for key in ("toyset", "toyset.defaults"):
        target = target_for(z, key)
        assert target.entry.resources[0].hashcode == "a" * 64 and target.name == "toyset/defaults"
