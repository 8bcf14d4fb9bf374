"""An archive writes only what is its own: clashes between resources, the user's files, MMF's own installs, and
verify / repair converging. Real archives, real `mmf zoo` subprocesses, a plain folder as the mirror."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import yaml

from tests.zoo_helpers import assert_tree, make_zoo, run_mmf, sha256, tar_gz

ROOT_REL = "datasets/toyset/defaults"
VERSION = "1.0"


def _zoo(root: Path, resources: dict[str, list[tuple[str, dict[str, bytes]]]]):
    """A 'toyset' entry whose categories hold the given (file_name, members) archives; returns (manifest, mirror)."""
    mirror = root / "mirror"
    res = {}
    for cat, archives in resources.items():
        folder = ROOT_REL if cat == "extras" else f"{ROOT_REL}/{cat}"
        res[cat] = []
        for file_name, members in archives:
            path = tar_gz(mirror / folder / file_name, members)
            res[cat].append({"url": f"mmf://{folder}/{file_name}", "file_name": file_name,
                             "hashcode": sha256(path), "size": path.stat().st_size})
    manifest = root / "datasets.yaml"
    manifest.write_text(yaml.safe_dump({"toyset": {"defaults": {"version": VERSION, "resources": res}}}))
    return manifest, mirror


def _fetch(manifest, mirror, data, *extra):
    return run_mmf("zoo", "fetch", "toyset", "--zoo", str(manifest), "--data-dir", str(data), "--quiet",
                   "--mirror", str(mirror), *extra)


def _verify(manifest, data, *extra, mirror=None):
    args = ["zoo", "verify", "toyset", "--zoo", str(manifest), "--data-dir", str(data), *extra]
    if mirror is not None:
        args += ["--mirror", str(mirror)]
    r = run_mmf(*args)
    lines = {line.split(": ")[1]: line for line in r.stdout.splitlines() if line[:3] in ("ok ", "BAD")}
    return r, lines


def _record(data, folder, file_name):
    path = data / folder / ".mmfzoo" / f"{file_name}.installed.json"
    return json.loads(path.read_text()) if path.exists() else None


def _stat(path):
    st = os.lstat(path)
    return st.st_ino, st.st_mtime_ns, st.st_size


def _new_extras(zoo, members: dict[str, bytes]) -> None:
    """Replace the toy zoo's extras archive on the mirror by one with `members`, and its manifest entry to match."""
    extras = tar_gz(zoo.mirror / f"{ROOT_REL}/extras.tar.gz", members)
    m = yaml.safe_load(zoo.manifest.read_text())
    m["toyset"]["defaults"]["resources"]["extras"][0].update(hashcode=sha256(extras), size=extras.stat().st_size)
    zoo.manifest.write_text(yaml.safe_dump(m))


# ------------------------------------------------------------------------------------------- clashes
def test_two_resources_writing_one_path_with_other_content_are_refused(tmp_path):
    """The second archive's different bytes are refused naming the first as owner; nothing of it is published, the
    first stays intact and verifies; a repair refuses the same way instead of flipping the file back and forth."""
    manifest, mirror = _zoo(tmp_path, {"extras": [
        ("a.tar.gz", {"vocabs/answers.txt": b"yes\nno\n", "a_only.txt": b"a"}),
        ("b.tar.gz", {"vocabs/answers.txt": b"maybe\n", "b_only.txt": b"b"})]})
    data = tmp_path / "data"
    root = data / ROOT_REL
    r = _fetch(manifest, mirror, data)
    assert r.returncode == 2, r.stderr
    line = r.stderr.strip().splitlines()[-1]
    assert "b.tar.gz" in line and "vocabs/answers.txt" in line and "toyset.defaults:a.tar.gz" in line, line
    assert "Traceback" not in r.stderr
    assert (root / "vocabs/answers.txt").read_bytes() == b"yes\nno\n"  # the first one's bytes
    assert not (root / "b_only.txt").exists()  # refused before the first rename
    assert _record(data, ROOT_REL, "b.tar.gz") is None
    v, lines = _verify(manifest, data)
    assert lines["a.tar.gz"].startswith("ok "), v.stdout  # no longer called BAD by the second's bytes
    assert lines["b.tar.gz"].startswith("BAD") and "not installed" in lines["b.tar.gz"]
    for _ in range(2):  # repair converges: the same refusal, the first untouched
        before = _stat(root / "vocabs/answers.txt")
        rep, _ = _verify(manifest, data, "--repair", mirror=mirror)
        assert rep.returncode == 2 and "toyset.defaults:a.tar.gz" in rep.stderr, rep.stderr
        assert _stat(root / "vocabs/answers.txt") == before and not (root / "b_only.txt").exists()
        v, lines = _verify(manifest, data)
        assert lines["a.tar.gz"].startswith("ok "), v.stdout


def test_identical_files_of_two_resources_are_kept_once_and_repair_converges(tmp_path):
    """Two resources shipping the same bytes at one path: both install, the file is on disk once and listed by both
    records; damage to it is repaired for both; re-installing or removing one leaves the other verified."""
    vocab = b"<pad>\n<unk>\nyes\nno\n"
    manifest, mirror = _zoo(tmp_path, {"extras": [
        ("a.tar.gz", {"vocabs/answers.txt": vocab, "a_only.txt": b"a"}),
        ("b.tar.gz", {"vocabs/answers.txt": vocab, "b_only.txt": b"b"})]})
    data = tmp_path / "data"
    root = data / ROOT_REL
    r = _fetch(manifest, mirror, data)
    assert r.returncode == 0, r.stderr
    rows = {f: {row[0]: row for row in _record(data, ROOT_REL, f)["files"]} for f in ("a.tar.gz", "b.tar.gz")}
    assert rows["a.tar.gz"]["vocabs/answers.txt"][2] == rows["b.tar.gz"]["vocabs/answers.txt"][2]
    assert rows["a.tar.gz"]["vocabs/answers.txt"][3] == rows["b.tar.gz"]["vocabs/answers.txt"][3]  # one file
    v, lines = _verify(manifest, data)
    assert v.returncode == 0 and lines["a.tar.gz"].startswith("ok ") and lines["b.tar.gz"].startswith("ok "), v.stdout
    # damage the shared file: both are BAD, one repair mends both, a second repair has nothing to do
    (root / "vocabs/answers.txt").write_bytes(b"garbage\n")
    v, lines = _verify(manifest, data)
    assert v.returncode == 2 and lines["a.tar.gz"].startswith("BAD") and lines["b.tar.gz"].startswith("BAD")
    rep, lines = _verify(manifest, data, "--repair", mirror=mirror)
    assert rep.returncode == 0, rep.stdout + rep.stderr
    assert (root / "vocabs/answers.txt").read_bytes() == vocab
    rep, lines = _verify(manifest, data, "--repair", mirror=mirror)
    assert rep.returncode == 0 and "repaired" not in rep.stdout, rep.stdout
    # re-install one resource alone (its own file damaged): the shared file stays as it is, the other verifies
    shared = _stat(root / "vocabs/answers.txt")
    (root / "b_only.txt").write_bytes(b"x")
    rep, lines = _verify(manifest, data, "--repair", mirror=mirror)
    assert rep.returncode == 0 and "repaired toyset.defaults: b.tar.gz" in rep.stdout, rep.stdout
    assert "a.tar.gz: installed" not in rep.stdout and _stat(root / "vocabs/answers.txt") == shared
    # remove one resource by hand (its record, archive and own file): the other still verifies
    for p in (root / ".mmfzoo/b.tar.gz.installed.json", root / "b.tar.gz", root / "b_only.txt"):
        p.unlink()
    v, lines = _verify(manifest, data)
    assert lines["a.tar.gz"].startswith("ok ") and lines["b.tar.gz"].startswith("BAD"), v.stdout
    rep, lines = _verify(manifest, data, "--repair", mirror=mirror)  # and back again
    assert rep.returncode == 0 and (root / "b_only.txt").read_bytes() == b"b", rep.stdout + rep.stderr
    assert _stat(root / "vocabs/answers.txt") == shared


def test_a_users_own_file_is_never_replaced(tmp_path):
    """A file the user put where the archive has one (no install record lists it) is refused and left as it is;
    the same bytes put there by hand are simply adopted, untouched."""
    zoo = make_zoo(tmp_path)
    data = tmp_path / "data"
    mine = data / f"{ROOT_REL}/annotations/imdb_val.npy"
    mine.parent.mkdir(parents=True)
    mine.write_bytes(b"my own val split")
    before = _stat(mine)
    r = _fetch(zoo.manifest, zoo.mirror, data)
    assert r.returncode == 2, r.stderr
    line = r.stderr.strip().splitlines()[-1]
    assert "imdb_val.npy" in line and "not installed by the zoo" in line and "move it away" in line, line
    assert mine.read_bytes() == b"my own val split" and _stat(mine) == before
    assert not (data / f"{ROOT_REL}/annotations/imdb_train.npy").exists()
    # identical bytes by hand: nothing to refuse, nothing replaced
    same = zoo.trees["annotations"][f"{ROOT_REL}/annotations/imdb_val.npy"]
    mine.write_bytes(same)
    before = _stat(mine)
    r = _fetch(zoo.manifest, zoo.mirror, data)
    assert r.returncode == 0, r.stderr
    assert _stat(mine) == before
    assert_tree(data, zoo)
    v, _ = _verify(zoo.manifest, data)
    assert v.returncode == 0, v.stdout


def test_extras_archive_cannot_overwrite_another_resources_data(tmp_path):
    """An `extras` archive holding features/... would land on the features resource's data.mdb: refused, whichever
    was installed first; the features data stays intact and verified."""
    zoo = make_zoo(tmp_path)
    data = tmp_path / "data"
    assert _fetch(zoo.manifest, zoo.mirror, data).returncode == 0
    mdb = data / f"{ROOT_REL}/features/open_images/detectron.lmdb/data.mdb"
    good = mdb.read_bytes()
    _new_extras(zoo, {"extras/vocabs/fixed_answer_vocab.txt": b"<pad>\n",
                      "features/open_images/detectron.lmdb/data.mdb": b"not the features"})
    r = _fetch(zoo.manifest, zoo.mirror, data)
    assert r.returncode == 2, r.stderr
    line = r.stderr.strip().splitlines()[-1]
    assert "data.mdb" in line and "toyset.defaults:features.tar.gz" in line, line
    assert mdb.read_bytes() == good
    v, lines = _verify(zoo.manifest, data)
    assert lines["features.tar.gz"].startswith("ok ") and lines["annotations.tar.gz"].startswith("ok "), v.stdout
    assert lines["extras.tar.gz"].startswith("BAD"), v.stdout  # the manifest's extras archive is not installed
    # a fresh data dir, the hostile extras first (categories install in manifest order): features is refused
    fresh = tmp_path / "fresh"
    r = _fetch(zoo.manifest, zoo.mirror, fresh)
    assert r.returncode == 2 and "toyset.defaults:extras.tar.gz" in r.stderr and "data.mdb" in r.stderr, r.stderr


def test_an_archive_adding_files_inside_another_resources_folder_verifies_both(tmp_path):
    """An `extras` archive may add a file of its own inside features/ (no clash): verify walks extras' tree into the
    features install folder and counts the files that folder's own record lists as listed, not as extra."""
    zoo = make_zoo(tmp_path)
    data = tmp_path / "data"
    _new_extras(zoo, {"extras/vocabs/fixed_answer_vocab.txt": b"<pad>\n",
                      "features/open_images/README.txt": b"features added by extras\n"})
    r = _fetch(zoo.manifest, zoo.mirror, data)
    assert r.returncode == 0, r.stderr
    assert (data / f"{ROOT_REL}/features/open_images/README.txt").read_bytes() == b"features added by extras\n"
    v, lines = _verify(zoo.manifest, data)
    assert v.returncode == 0 and "Traceback" not in v.stderr, v.stdout + v.stderr
    assert all(line.startswith("ok ") for line in lines.values()) and len(lines) == 3, v.stdout
    (data / f"{ROOT_REL}/features/open_images/dropped.txt").write_bytes(b"the user's")
    v, lines = _verify(zoo.manifest, data)
    assert v.returncode == 2 and "extra file features/open_images/dropped.txt" in lines["extras.tar.gz"], v.stdout


# ----------------------------------------------------------------------------------------- MMF's data
def test_repair_reinstalls_data_built_by_mmf_with_records(tmp_path):
    """A tree MMF installed (its markers, no install records) is re-installed by `verify --repair` over its own
    files, mending a damaged one; the user's own file in it is left alone; then verify is OK and stays OK."""
    zoo = make_zoo(tmp_path)
    data = tmp_path / "data"
    assert _fetch(zoo.manifest, zoo.mirror, data).returncode == 0
    for state in data.rglob(".mmfzoo"):
        shutil.rmtree(state)  # what MMF leaves: the files and .built.json markers
    for archive in data.rglob("*.tar.gz"):
        archive.unlink()
    damaged = data / f"{ROOT_REL}/annotations/imdb_train.npy"
    damaged.write_bytes(b"bit rot")
    notes = data / f"{ROOT_REL}/my_notes.txt"
    notes.write_text("mine")
    v, lines = _verify(zoo.manifest, data)
    # not BAD: nothing to judge its content by (issue 18); still re-installed by --repair below, to get records
    assert v.returncode == 0 and v.stdout.count("built by MMF, not verifiable by content") == 3, v.stdout
    rep, lines = _verify(zoo.manifest, data, "--repair", mirror=zoo.mirror)
    assert rep.stdout.count("repaired toyset.defaults") == 3, rep.stdout + rep.stderr
    assert lines["extras.tar.gz"].endswith("extra file my_notes.txt"), rep.stdout  # reported, rightly, and kept
    assert_tree(data, zoo)
    assert notes.read_text() == "mine"
    notes.unlink()
    assert all(_record(data, f, n) for f, n in ((f"{ROOT_REL}/features", "features.tar.gz"),
                                                 (f"{ROOT_REL}/annotations", "annotations.tar.gz"),
                                                 (ROOT_REL, "extras.tar.gz")))
    assert not list(data.rglob("built-by-mmf.json"))  # the note goes once every record is written
    rep, lines = _verify(zoo.manifest, data, "--repair", mirror=zoo.mirror)
    assert "repaired" not in rep.stdout and all(line.startswith("ok ") for line in lines.values()), rep.stdout


def test_an_extras_archive_cannot_take_over_features_built_by_mmf(tmp_path):
    """MMF-built data may be re-installed by its own resource only: an extras archive holding features/... does not
    get to replace the features folder's files, even with no install record to say whose they are."""
    zoo = make_zoo(tmp_path)
    data = tmp_path / "data"
    assert _fetch(zoo.manifest, zoo.mirror, data).returncode == 0
    for state in data.rglob(".mmfzoo"):
        shutil.rmtree(state)
    mdb = data / f"{ROOT_REL}/features/open_images/detectron.lmdb/data.mdb"
    good = mdb.read_bytes()
    extras = zoo.mirror / f"{ROOT_REL}/extras.tar.gz"
    tar_gz(extras, {"features/open_images/detectron.lmdb/data.mdb": b"not the features"})
    m = yaml.safe_load(zoo.manifest.read_text())
    m["toyset"]["defaults"]["resources"]["extras"][0].update(hashcode=sha256(extras), size=extras.stat().st_size)
    zoo.manifest.write_text(yaml.safe_dump(m))
    (data / ROOT_REL / "extras.tar.gz").unlink()
    rep, _ = _verify(zoo.manifest, data, "--repair", mirror=zoo.mirror)
    assert rep.returncode == 2 and "data.mdb" in rep.stderr and "not installed by the zoo" in rep.stderr, rep.stderr
    assert mdb.read_bytes() == good


# ------------------------------------------------------------------------------------------ interrupted
def test_a_publish_killed_half_way_is_finished_by_the_next_run(tmp_path):
    """The on-disk state of a fetch killed after its first renames (intent written, old record moved aside, some
    files in place, no new record): the next run owns those files and finishes, instead of calling them the user's."""
    from zoo import publish

    zoo = make_zoo(tmp_path)
    data = tmp_path / "data"
    assert _fetch(zoo.manifest, zoo.mirror, data).returncode == 0
    ann = data / f"{ROOT_REL}/annotations"
    (ann / ".built.json").unlink()
    publish.begin(ann, "annotations.tar.gz", ann / ".mmfzoo/annotations.tar.gz.installed.json",
                  ["imdb_train.npy", "imdb_val.npy"])
    (ann / "imdb_val.npy").write_bytes(b"half-written by the new version")
    r = _fetch(zoo.manifest, zoo.mirror, data)
    assert r.returncode == 0, r.stderr
    assert_tree(data, zoo)
    assert not list(ann.glob(".mmfzoo/*.previous-record.json")) and not list(ann.glob(".mmfzoo/*.publishing.json"))
    v, _ = _verify(zoo.manifest, data)
    assert v.returncode == 0, v.stdout
