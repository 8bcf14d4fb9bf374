"""Manifests in MMF's schema: the real entries load, aliases resolve, every malformed input names its key."""
from __future__ import annotations

import json
import textwrap
from pathlib import Path

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
    ("d:\n  defaults:\n    version: '1'\n    resources:\n    - {url: 'mmf://x', file_name: x, hashcode: abc}\n",
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


# ---------------------------------------------------------------------------------------- hostile manifests
def _hostile(tmp_path, outside: Path, mirror: Path) -> dict[str, str]:
    """key -> manifest text: each tries to make the zoo write outside the data dir or read a local file."""
    H64 = "b" * 64
    res = "{url: 'mmf://datasets/x/a.tar.gz', file_name: a.tar.gz, hashcode: " + H64 + "}"
    return {
        "cat_abs": f"cat_abs:\n  defaults:\n    version: '1'\n    resources:\n      {outside}/cron.d: [{res}]\n",
        "cat_up": f"cat_up:\n  defaults:\n    version: '1'\n    resources:\n      '../../..': [{res}]\n",
        "key_up": f"'..':\n  defaults:\n    version: '1'\n    resources: [{res}]\n",
        "abs_key": f"'{outside}/m':\n  version: '1'\n  resources: [{res}]\n",
        "req_abs": f"req_abs:\n  version: '1'\n  zoo_requirements: '{outside}/r'\n  resources: [{res}]\n"
                   f"'{outside}/r':\n  version: '1'\n  resources: [{res}]\n",
        "dest_up": f"dest_up:\n  defaults:\n    version: '1'\n    resources:\n      features:\n"
                   f"      - {{url: 'mmf://x/a.bin', file_name: a.bin, compressed: false, dest_folder: '../../../..{outside}'}}\n",
        "fname_up": "fname_up:\n  defaults:\n    version: '1'\n    resources:\n      features:\n"
                    "      - {url: 'mmf://x/a.bin', file_name: '../../a.bin', compressed: false}\n",
        "file_url": "file_url:\n  defaults:\n    version: '1'\n    resources:\n      extras:\n"
                    f"      - {{url: 'file://{mirror}/secret.txt', file_name: secret.txt, compressed: false}}\n",
        "mirror_url": "mirror_url:\n  defaults:\n    version: '1'\n    resources:\n      extras:\n"
                      f"      - {{url: 'mmf://x/s.txt', file_name: s.txt, compressed: false, mirrors: ['file://{mirror}/secret.txt']}}\n",
        "dotdot_url": "dotdot_url:\n  defaults:\n    version: '1'\n    resources:\n      extras:\n"
                      "      - {url: 'mmf://../../secret.txt', file_name: secret.txt, compressed: false}\n",
    }


def test_no_manifest_writes_outside_the_data_dir_or_reads_local_files(tmp_path):
    outside, mirror = tmp_path / "outside", tmp_path / "mirror"
    mirror.mkdir()
    (mirror / "secret.txt").write_text("secret")  # what a file:// or ../ URL would copy in
    cases = _hostile(tmp_path, outside, mirror)
    manifest = tmp_path / "hostile.yaml"
    manifest.write_text("".join(cases.values()) + "good:\n  defaults:\n    version: '1'\n    resources:\n      extras:\n"
                        "      - {url: 'mmf://datasets/good/defaults/g.txt', file_name: g.txt, compressed: false}\n")
    zoo = parse_manifest(manifest, "datasets")  # the file loads: only the hostile entries are invalid
    assert zoo.entries["good.defaults"].invalid is None
    data = tmp_path / "data"
    keys = {"key_up": "..", "abs_key": f"{outside}/m"}
    for label in cases:
        key = keys.get(label, label)
        r = run_mmf("zoo", "fetch", key, "--zoo", str(manifest), "--data-dir", str(data), "--offline",
                    "--mirror", str(mirror), "--quiet")
        assert r.returncode == 1, (label, r.stdout, r.stderr)
        assert r.stderr.count("\n") == 1 and "cannot be fetched" in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert not outside.exists() and not (tmp_path / "a.bin").exists()
    leaked = [p for p in data.rglob("*") if p.is_file() and "secret" in p.name] if data.exists() else []
    assert leaked == []
    everything = {p for p in tmp_path.rglob("*")} - {p for p in (data, mirror, manifest)}
    assert all(p.is_relative_to(data) or p.is_relative_to(mirror) for p in everything), sorted(everything)
    # a --mirror folder (the user's choice) still works for a good entry
    (mirror / "datasets/good/defaults").mkdir(parents=True)
    (mirror / "datasets/good/defaults/g.txt").write_text("good")
    r = run_mmf("zoo", "fetch", "good", "--zoo", str(manifest), "--data-dir", str(data), "--mirror", str(mirror),
                "--mirror-only", "--quiet")
    assert r.returncode == 0, r.stderr
    assert (data / "datasets/good/defaults/g.txt").read_text() == "good"


def test_target_paths_are_checked_again_at_install(tmp_path):
    """Behind validation: a Target whose name leaves the data dir is refused (e.g. an entry built in code)."""
    from zoo.manifest import Entry, Resource

    entry = Entry("x", "models", "1", (Resource("mmf://x", "x.tar.gz", None),))
    with pytest.raises(ManifestError, match="not inside the data dir"):
        layout.Target(entry, "../../etc").root(tmp_path / "data")


# ------------------------------------------------------------------------------------------------- YAML
@pytest.mark.parametrize("text,phrase", [
    ("a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 9)}]\n" for i in range(8)), "alias bomb"),
    ("a: &x\n  b: *x\n", "refers to itself"),
    ("a: 1\nb: 2\na: 3\n", "duplicate key 'a' (first defined on line 1)"),
    ("textvqa:\n  defaults:\n    version: '1'\n    version: '2'\n    resources: []\n", "duplicate key 'version'"),
    ("a: " + "[" * 5000 + "]" * 5000 + "\n", "nested more than"),
], ids=["bomb", "recursive", "duplicate", "duplicate-nested", "deep"])
def test_hostile_yaml_is_one_line_naming_the_file(tmp_path, text, phrase):
    path = tmp_path / "datasets.yaml"
    path.write_text(text)
    with pytest.raises(ManifestError) as info:
        parse_manifest(path, "datasets")
    msg = str(info.value)
    assert phrase in msg and str(path) in msg and "\n" not in msg
    # the CLI too, under a 1 GiB address-space cap: an expanding bomb would die of memory instead
    r = run_mmf("zoo", "list", "--zoo", str(path), preexec_fn=_cap_memory, timeout=60)
    assert r.returncode == 1 and phrase in r.stderr and r.stderr.count("\n") == 1, r.stderr


def _cap_memory():
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))


def test_yaml_loader_is_libyamls_and_agrees_with_pyyaml():
    import yaml

    from zoo import safeyaml

    assert safeyaml.C_LOADER  # PyYAML built with libyaml, as in every wheel
    for name in ("datasets.yaml", "models.yaml"):
        text = (CONFIG_DIR / name).read_text()
        assert safeyaml.load(text) == yaml.safe_load(text)


# --------------------------------------------------------------------------------- one bad entry of many
RC10_BAD = ("visual_bert:\n  finetuned:\n    vqa2:\n      from_coco_train:\n        version: 1.0_2020_04_29\n"
            "        resources:\n        - url: mmf://models/visual_bert/visual_bert.finetuned.vqa2.from_coco_train.tar.gz\n"
            "          file_name: visual_bert.finetuned.vqa2.from_coco_train.tar.gz\n"
            "          hashcode: " + "c" * 63 + "\n")


def test_mmf_rc10_models_yaml_with_one_bad_entry_still_works(tmp_path, monkeypatch):
    """MMF 1.0.0rc10's models.yaml has one 63-digit hashcode: that entry alone is refused, when fetched."""
    models = tmp_path / "models.yaml"
    models.write_text((CONFIG_DIR / "models.yaml").read_text() + RC10_BAD)
    r = run_mmf("zoo", "list", "--zoo", str(models))
    assert r.returncode == 0, r.stderr
    assert "m4c.textvqa.with_stvqa" in r.stdout and "textvqa.defaults" in r.stdout
    assert "invalid: visual_bert.finetuned.vqa2.from_coco_train:" in r.stderr and "64 hex digits" in r.stderr
    info = run_mmf("zoo", "info", "m4c.textvqa.defaults", "--zoo", str(models))
    assert info.returncode == 0 and "version 1.0_2020_06_30" in info.stdout, info.stderr
    bad = run_mmf("zoo", "info", "visual_bert.finetuned.vqa2.from_coco_train", "--zoo", str(models))
    assert bad.returncode == 0 and "INVALID" in bad.stdout
    env = {"MMF_MODEL_ZOO": str(models)}
    got = run_mmf("zoo", "fetch", "visual_bert.finetuned.vqa2.from_coco_train", "--offline", "--data-dir",
                  str(tmp_path / "d"), env=env)
    assert got.returncode == 1 and "cannot be fetched" in got.stderr and "64 hex digits" in got.stderr
    assert got.stderr.count("\n") == 1
    monkeypatch.setenv("MMF_MODEL_ZOO", str(models))
    assert load_zoo().resolve("m4c.textvqa.defaults").key == "m4c.textvqa.with_stvqa"


def test_list_shows_versions_as_written_and_alias_installs_as_installed(tmp_path):
    data = tmp_path / "data"
    zoo = load_zoo()
    t = layout.target_for(zoo, "m4c.textvqa.defaults")  # MMF installs under the requested alias folder
    for target in (t, layout.target_for(zoo, "detectron.vmb_weights")):
        for folder in target.marker_folders(data):
            layout.mark_built(folder, target.entry.version)
    built = json.loads((data / "models/detectron.vmb_weights/.built.json").read_text())
    assert isinstance(built["version"], float)  # MMF's float stays inside .built.json
    r = run_mmf("zoo", "list", "--data-dir", str(data), "--json")
    rows = {row["key"]: row for row in json.loads(r.stdout)}
    assert rows["detectron.vmb_weights"]["version"] == "1.0_2020_05_03"
    assert rows["detectron.vmb_weights"]["state"] == "installed"
    assert rows["m4c.textvqa.with_stvqa"]["state"].startswith("installed (as m4c.textvqa.defaults")
    assert rows["m4c.textvqa.alone"]["state"] == "-"
    text = run_mmf("zoo", "list", "--data-dir", str(data)).stdout
    assert "1.0_2020_06_30" in text and "1.02020063" not in text


# ------------------------------------------------------------------------------- numbers in one entry of many
GOOD = "good:\n  defaults:\n    version: '1'\n    resources:\n    - {url: 'mmf://good/g.tar.gz', file_name: g.tar.gz}\n"


def _one_bad(field: str) -> str:
    return (GOOD + "bad:\n  defaults:\n    version: '1'\n    resources:\n"
            f"    - url: mmf://bad/b.tar.gz\n      file_name: b.tar.gz\n      {field}\n")


@pytest.mark.parametrize("text,bad_key,phrase", [
    (_one_bad("size: " + "9" * 5000), "bad.defaults", "(5000 characters)"),
    (_one_bad("size: 1e400"), "bad.defaults", "got '1e400' (text)"),
    (_one_bad("size: true"), "bad.defaults", "got True (true/false)"),
    (GOOD + "coll:\n  1:\n    version: '1'\n    resources: []\n  '1':\n    version: '2'\n    resources: []\n",
     "coll.1", "keys 1 and '1' both name '1'"),
], ids=["5000-digits", "1e400", "bool", "colliding-keys"])
def test_a_bad_number_or_key_in_one_entry_leaves_the_rest_usable(tmp_path, text, bad_key, phrase):
    """list and info work and show the bad entry as invalid with its reason; fetching it is one line, exit 1."""
    path = tmp_path / "datasets.yaml"
    path.write_text(text)
    listed = run_mmf("zoo", "list", "--zoo", str(path), "--data-dir", str(tmp_path / "d"))
    assert listed.returncode == 0 and "Traceback" not in listed.stderr, listed.stderr[-2000:]
    assert "good.defaults" in listed.stdout
    reason = next(line for line in listed.stderr.splitlines() if line.startswith(f"invalid: {bad_key}:"))
    assert phrase in reason and len(reason) < 400, reason
    for key, marker in (("good", "good.defaults (datasets, version 1"), (bad_key, "INVALID")):
        info = run_mmf("zoo", "info", key, "--zoo", str(path), "--data-dir", str(tmp_path / "d"))
        assert info.returncode == 0 and marker in info.stdout, info.stderr[-2000:]
    got = run_mmf("zoo", "fetch", bad_key, "--zoo", str(path), "--offline", "--data-dir", str(tmp_path / "d"))
    assert got.returncode == 1 and got.stderr.count("\n") == 1 and phrase in got.stderr, got.stderr[-2000:]
    assert "cannot be fetched" in got.stderr


@pytest.mark.parametrize("field,phrase", [
    ("size: -5", "got -5 (int)"),
    (f"size: {2**63}", "from 0 to 2**63-1"),
    ("extracted_size: true", "extracted_size' must be a whole number of bytes"),
    ("compressed: 'no'", "compressed' must be true or false"),
    ("chunk_hashes: {chunk_size: true, xxh3_128: [" + "a" * 32 + "]}", "chunk_size' must be a whole number"),
    ("chunk_hashes: {chunk_size: 4, xxh3_128: [abc]}", "one xxh3-128 hash (32 hex digits) per chunk"),
    ("size: 9\n      chunk_hashes: {chunk_size: 4, xxh3_128: [" + "a" * 32 + "]}", "lists 1 hashes, but size 9"),
    ('hashcode: "' + "a" * 64 + '\\n"', "must be a sha256 of 64 hex digits"),  # `$` matched before a newline
])
def test_every_number_of_a_resource_is_checked_by_type_and_range(tmp_path, field, phrase):
    zoo = parse_manifest(_write(tmp_path, _one_bad(field)), "datasets")
    assert not zoo.entries["good.defaults"].invalid
    bad = zoo.entries["bad.defaults"]
    assert bad.invalid and phrase in bad.invalid, bad.invalid
    assert all(r.size is None or isinstance(r.size, int) for r in bad.resources)  # no text where a size goes


@pytest.mark.parametrize("version", [".nan", ".inf", "''", "true", str(2**64)])
def test_a_version_must_be_text_or_a_finite_number(tmp_path, version):
    text = GOOD + f"bad:\n  defaults:\n    version: {version}\n    resources: []\n"
    zoo = parse_manifest(_write(tmp_path, text), "datasets")
    assert "'bad.defaults.version' must be a version" in (zoo.entries["bad.defaults"].invalid or "")


def _write(tmp_path, text: str) -> Path:
    path = tmp_path / "datasets.yaml"
    path.write_text(text)
    return path


# ------------------------------------------------------------------------------------------- pack indexes
def _pack(tmp_path, index: str) -> Path:
    import io
    import tarfile

    path = tmp_path / "hostile.pack"
    with tarfile.open(path, "w:") as tf:
        data = index.encode()
        info = tarfile.TarInfo("mmfzoo-pack.json")
        info.size = len(data)
        tf.addfile(info, io.BytesIO(data))
    return path


_NODE = '{"version": "1", "resources": [{"url": "mmf://t/t.tar.gz", "file_name": "t.tar.gz"}]}'
_RES = '{"member": "archives/t.tar.gz", "file_name": "t.tar.gz", "url": "mmf://t/t.tar.gz", "sha256": "%s", ' \
       '"size": %s, "key": "toy.defaults"}'


@pytest.mark.parametrize("index,phrase", [
    ('{"format": "mmfzoo-pack/1", "entries": [{"key": "toy.defaults", "kind": "datasets", "node": %s, '
     '"key": "textvqa.defaults"}], "resources": []}' % _NODE, "duplicate key 'key'"),
    ('{"format": "mmfzoo-pack/1", "entries": [], "resources": [%s]}' % (_RES % ("a" * 64, "true")),
     "resources[0] size must be a whole number of bytes"),
    ('{"format": "mmfzoo-pack/1", "entries": [], "resources": [%s]}' % (_RES % ("a" * 64, "9" * 5000)),
     "a number of 5000 characters"),
    ('{"format": "mmfzoo-pack/1", "entries": [], "resources": [{"file_name": "t.tar.gz"}]}',
     "resources[0] member must be"),
    ('{"format": "mmfzoo-pack/1", "entries": {"key": "x"}, "resources": []}', "entries must be a list"),
    ('{"format": "mmfzoo-pack/1", "entries": [], "resources": [%s]}' % (_RES % ("a" * 64, "NaN")),
     "NaN is not a JSON number"),
    ("[" * 100000 + "]" * 100000, "nested more than"),
], ids=["duplicate-key", "bool-size", "5000-digits", "missing-member", "entries-not-a-list", "nan", "deep"])
def test_a_hostile_pack_index_is_one_line(tmp_path, index, phrase):
    pack = _pack(tmp_path, index)
    r = run_mmf("zoo", "fetch", "toy", "--from", str(pack), "--offline", "--data-dir", str(tmp_path / "d"))
    assert r.returncode == 1 and phrase in r.stderr and r.stderr.count("\n") == 1, r.stderr[-3000:]
    assert str(pack) in r.stderr and not (tmp_path / "d").exists()
