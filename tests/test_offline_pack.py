"""A pack installs with the manifest entries (and aliases) it carries: no --zoo on the offline machine.

Packs are made with the real tools from a custom manifest on "the connected machine", then installed with
`mmf zoo fetch KEY --from PACK` in a subprocess on "the offline one" (a dead mirror proves no network is used).
"""
from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import yaml

from tests.zoo_helpers import run_mmf, sha256, tar_gz

DEAD = "http://127.0.0.1:9/"


def _model_pack(root: Path, key: str = "labmodel", alias: str = "short") -> tuple[Path, Path]:
    """A custom model manifest with an alias, fetched and packed under the alias, as a lab would."""
    archive = tar_gz(root / f"mirror/models/{key}/{key}.tar.gz", {"config.yaml": b"a: 1\n", "w.bin": b"w" * 4000})
    manifest = root / "lab_models.yaml"  # "models" in the name: a model zoo
    manifest.write_text(yaml.safe_dump({key: {
        "defaults": {"version": "1.0", "resources": [
            {"url": f"mmf://models/{key}/{key}.tar.gz", "file_name": archive.name, "hashcode": sha256(archive)}]},
        alias: f"${{{key}.defaults}}"}}))
    data = root / "connected"
    r = run_mmf("zoo", "fetch", f"{key}.{alias}", "--zoo", str(manifest), "--mirror", str(root / "mirror"),
                "--data-dir", str(data), "-q")
    assert r.returncode == 0, r.stderr
    pack = root / "lab.pack"
    r = run_mmf("zoo", "pack", f"{key}.{alias}", "--zoo", str(manifest), "--data-dir", str(data), "-o", str(pack))
    assert r.returncode == 0 and f"--from {pack}" in r.stdout, r.stdout + r.stderr
    return pack, manifest


def test_a_pack_installs_under_the_alias_it_was_packed_with_without_zoo(tmp_path):
    pack, _ = _model_pack(tmp_path)
    data = tmp_path / "offline"
    r = run_mmf("zoo", "fetch", "labmodel.short", "--from", str(pack), "--data-dir", str(data), "-q",
                "--mirror", DEAD, "--offline")
    assert r.returncode == 0, r.stderr
    assert (data / "models/labmodel.short/w.bin").read_bytes() == b"w" * 4000  # MMF's folder: the key as typed


def test_a_pack_install_is_verified_later_by_its_record_without_the_pack(tmp_path):
    pack, _ = _model_pack(tmp_path)
    data = tmp_path / "offline"
    r = run_mmf("zoo", "fetch", "labmodel.short", "--from", str(pack), "--data-dir", str(data), "-q", "--offline")
    assert r.returncode == 0, r.stderr
    r = run_mmf("zoo", "verify", "labmodel.short", "--data-dir", str(data))
    # the content is intact, and its pickles are untrusted (a pack's own entry, no --trust-pack): BAD for trust only
    assert f"pack {pack.resolve()}'s own entry" in r.stdout and f"--from {pack.resolve()}" in r.stdout, r.stdout
    assert "unknown zoo key" not in r.stderr and "content differs" not in r.stdout, r.stderr


def test_a_pack_alias_shadowing_a_manifest_key_is_refused_and_named(tmp_path):
    pack, _ = _model_pack(tmp_path, alias="short")
    other = tar_gz(tmp_path / "m2/models/x/x.tar.gz", {"w.bin": b"other"})
    mine = tmp_path / "my_models.yaml"  # the offline user's own manifest already has `labmodel.short`
    mine.write_text(yaml.safe_dump({"labmodel": {"short": {"version": "9", "resources": [
        {"url": "mmf://models/x/x.tar.gz", "file_name": "x.tar.gz", "hashcode": sha256(other)}]}}}))
    r = run_mmf("zoo", "fetch", "labmodel.short", "--zoo", str(mine), "--from", str(pack),
                "--data-dir", str(tmp_path / "offline"), "--offline")
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 1 and len(lines) == 1, r.stderr
    assert "alias 'labmodel.short'" in lines[0] and "--trust-pack" in lines[0], lines[0]
    assert not (tmp_path / "offline/models/labmodel.short").exists()


def _rewrite_index(pack: Path, out: Path, change) -> Path:
    """The same pack with its index edited by `change` (as a forger would)."""
    with tarfile.open(pack, "r:") as src, tarfile.open(out, "w:", format=tarfile.PAX_FORMAT) as dst:
        for m in src.getmembers():
            data = src.extractfile(m).read()
            if m.name == "mmfzoo-pack.json":
                index = json.loads(data)
                change(index)
                data = json.dumps(index).encode()
                m.size = len(data)
            dst.addfile(m, io.BytesIO(data))
    return out


def test_forged_pack_aliases_are_one_line_errors(tmp_path):
    pack, _ = _model_pack(tmp_path)
    for bad in ("short", ["../../etc"], [{"a": 1}]):
        forged = _rewrite_index(pack, tmp_path / "forged.pack",
                                lambda index: index["entries"][0].__setitem__("aliases", bad))
        r = run_mmf("zoo", "fetch", "labmodel.defaults", "--from", str(forged), "--data-dir", str(tmp_path / "d"))
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 1 and len(lines) == 1 and "damaged or forged" in lines[0], (bad, r.stderr)
