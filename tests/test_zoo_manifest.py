"""Manifests in MMF's schema: the real entries load, aliases resolve, every malformed input names its key."""
from __future__ import annotations

import textwrap

import pytest

from tests.zoo_helpers import run_mmf
from zoo import layout
from zoo.errors import ManifestError, UnknownKeyError
from zoo.install import plan
from zoo.manifest import CONFIG_DIR, load_zoo, parse_manifest


def test_real_manifests_load_with_mmf_keys():
    zoo = load_zoo()
    tv = zoo.resolve("textvqa")
    assert tv.key == "textvqa.defaults"
    assert [r.category for r in tv.resources] == ["features", "annotations", "extras"]
    assert tv.resources[0].hashcode.startswith("960f69c6")
    assert tv.resources[0].url == "mmf://datasets/textvqa/defaults/features/features.tar.gz"
    assert zoo.resolve("textvqa.ocr_en").resources[0].hashcode.startswith("3542dff9")
    m4c = zoo.resolve("m4c.textvqa.defaults")
    assert m4c.key == "m4c.textvqa.with_stvqa" and m4c.zoo_requirements == ("detectron.vmb_weights",)
    assert zoo.resolve("m4c").key == "m4c.textvqa.with_stvqa"  # m4c.defaults -> m4c.textvqa.defaults -> with_stvqa
    assert zoo.resolve("detectron.defaults").key == "detectron.vmb_weights"


def test_requirements_come_first_and_model_folder_follows_the_requested_key(tmp_path):
    zoo = load_zoo()
    targets = plan(zoo, ["m4c.textvqa.defaults"])
    assert [t.entry.key for t in targets] == ["detectron.vmb_weights", "m4c.textvqa.with_stvqa"]
    # MMF's download_pretrained_model names the folder after the key the user asked for
    assert targets[1].root(tmp_path) == tmp_path / "models" / "m4c.textvqa.defaults"
    assert targets[0].root(tmp_path) == tmp_path / "models" / "detectron.vmb_weights"


def test_dataset_layout_is_mmfs(tmp_path):
    zoo = load_zoo()
    t = layout.target_for(zoo, "textvqa")
    feats, ann, extras = t.entry.resources
    assert t.folder(tmp_path, feats) == tmp_path / "datasets/textvqa/defaults/features"
    assert t.folder(tmp_path, ann) == tmp_path / "datasets/textvqa/defaults/annotations"
    assert t.folder(tmp_path, extras) == tmp_path / "datasets/textvqa/defaults"
    assert t.marker_folders(tmp_path) == [tmp_path / "datasets/textvqa/defaults/features",
                                          tmp_path / "datasets/textvqa/defaults/annotations",
                                          tmp_path / "datasets/textvqa/defaults"]


def test_versions_are_read_as_mmf_reads_them():
    # YAML 1.1 (PyYAML, OmegaConf) reads 1.0_2020_05_03 as a float; MMF writes that float into .built.json
    assert load_zoo().resolve("detectron.vmb_weights").version == pytest.approx(1.020200503)
    assert load_zoo().resolve("textvqa").version == "0.5.5_2020_06_30"


def test_caffe2_conflict_is_reported_and_refused_for_that_entry_only():
    zoo = load_zoo()
    assert zoo.entries["textvqa.caffe2"].conflict and "re-uploaded" in zoo.entries["textvqa.caffe2"].conflict
    assert zoo.entries["textvqa.defaults"].conflict is None
    with pytest.raises(ManifestError, match="textvqa.caffe2.*cannot be fetched"):
        plan(zoo, ["textvqa.caffe2"])
    r = run_mmf("zoo", "list")
    assert r.returncode == 0 and "conflict: textvqa.caffe2" in r.stderr


def test_unknown_key_lists_closest():
    with pytest.raises(UnknownKeyError, match="unknown zoo key 'textvq'.*textvqa"):
        load_zoo().resolve("textvq")
    r = run_mmf("zoo", "fetch", "textvq", "--offline")
    assert r.returncode == 1 and "closest" in r.stderr and "Traceback" not in r.stderr


def _bad(tmp_path, text):
    """The error for a malformed file, or the reasons its malformed entries carry (refused when fetched)."""
    p = tmp_path / "datasets.yaml"
    p.write_text(textwrap.dedent(text))
    try:
        zoo = parse_manifest(p, "datasets")
    except ManifestError as exc:
        return str(exc)
    bad = [e for e in zoo.entries.values() if e.invalid]
    assert bad, "a malformed entry must be marked invalid"
    for e in bad:
        with pytest.raises(ManifestError, match="cannot be fetched"):
            plan(zoo, [e.key])
    return "; ".join(e.invalid for e in bad)


H = "a" * 64


@pytest.mark.parametrize("text,phrase", [
    ("d:\n  defaults:\n    resources: []\n", "'d.defaults' has resources but no version"),
    ("d:\n  defaults:\n    version: '1'\n", "'d.defaults' has a version but no resources"),
    (f"d:\n  defaults:\n    version: '1'\n    resources:\n    - {{url: 'mmf://x', file_name: x, hashcode: abc}}\n",
     "'d.defaults.resources[0].hashcode' must be a sha256 of 64 hex digits"),
    (f"d:\n  defaults:\n    version: '1'\n    resources:\n    - {{url: 'mmf://x', file_name: x, hashcode: {H}, colour: red}}\n",
     "unknown field(s) ['colour']"),
    ("d:\n  defaults:\n    version: '1'\n    resources:\n    - {url: 'mmf://x', file_name: x}\n    - {url: 'mmf://y', file_name: x}\n",
     "two resources write the same file 'x'"),
    ("d:\n  defaults: ${d.nothere}\n", "alias to 'd.nothere', which does not exist"),
    ("a:\n  defaults: ${b.defaults}\nb:\n  defaults: ${a.defaults}\n", "alias cycle"),
    ("d:\n  defaults:\n    version: '1'\n    resources:\n    - {file_name: x}\n", "'d.defaults.resources[0]' is missing 'url'"),
    ("d: [1, 2\n", "not valid YAML"),
    ("d:\n  defaults:\n    version: '1'\n    resources:\n    - {url: 'mmf://x', file_name: ../../etc/passwd}\n", "plain file name"),
])
def test_malformed_manifests_name_the_key(tmp_path, text, phrase):
    assert phrase in _bad(tmp_path, text)


def test_unmodified_mmf_manifest_loads_via_flag_and_env(tmp_path, monkeypatch):
    # MMF's file as-is (comments, a flat-list model, categories, aliases) passes through --zoo and MMF_MODEL_ZOO
    models = tmp_path / "models.yaml"
    models.write_text((CONFIG_DIR / "models.yaml").read_text())
    r = run_mmf("zoo", "info", "m4c.textvqa.alone", "--zoo", str(models), "--mirror-only")
    assert r.returncode == 0, r.stderr
    assert "359468f25a88b3bf51f5ba15075c011eea0a7d7c76ab4bc547b66631b0cb9098" in r.stdout
    monkeypatch.setenv("MMF_MODEL_ZOO", str(models))
    assert load_zoo().resolve("m4c.stvqa").key == "m4c.stvqa.defaults"
    monkeypatch.setenv("MMF_MODEL_ZOO", str(tmp_path / "missing.yaml"))
    with pytest.raises(ManifestError, match="missing.yaml not found.*MMF_MODEL_ZOO"):
        load_zoo()
