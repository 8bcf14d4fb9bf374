"""zoo.archive: real archives built in tmp_path, real pigz/zstd processes, real disk-full errors."""
from __future__ import annotations

import bz2
import gzip
import io
import lzma
import os
import random
import shutil
import stat
import subprocess
import sys
import tarfile
import textwrap
import threading
import zipfile

import pytest
import xxhash

from zoo.archive.decoders import ByteQueue, Stopped, can_decode, external_command
from zoo.archive.formats import TAR_FORMATS
from zoo.errors import CorruptArchiveError, UnsafeArchiveError, ZooError
from zoo.archive import StreamExtractor, detect_format, extract_archive

HAS_PIGZ = external_command("gz") is not None
# both gzip decoders: pigz in another process (external=True) and zlib in this one (the default)
DECODERS = [pytest.param(True, id="pigz", marks=pytest.mark.skipif(not HAS_PIGZ, reason="pigz not on PATH")),
            pytest.param(False, id="inprocess")]

CONTENT = {
    "data/features.bin": random.Random(1).randbytes(300_000) * 3,  # repeats: compressible, not trivial
    "data/sub/labels.txt": b"cat\ndog\n" * 1000,
    "README": b"hello\n",
    "empty": b"",
}


# ------------------------------------------------------------------------------------------- helpers
@pytest.fixture(autouse=True)
def no_leaked_workers():
    """Every test must leave no extraction or decode thread behind, whether it passed or raised."""
    before = set(threading.enumerate())  # e.g. zoo.transfer.http's process-wide watchdog, started by an earlier fetch
    yield
    leaked = [t for t in threading.enumerate() if t.name.startswith("zoo-") and t not in before]
    for t in leaked:
        t.join(timeout=5)
    assert not [t.name for t in leaked if t.is_alive()]


def _tarinfo(name, data=b"", **kw) -> tuple[tarfile.TarInfo, io.BytesIO | None]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = kw.pop("mode", 0o644)
    info.mtime = 1_600_000_000
    for key, value in kw.items():
        setattr(info, key, value)
    return info, (io.BytesIO(data) if info.isreg() else None)


def make_tar(path, members, mode="w"):
    """members: list of (name, bytes) or TarInfo tuples from _tarinfo."""
    with tarfile.open(path, mode, format=tarfile.PAX_FORMAT) as tf:
        for m in members:
            info, fobj = m if isinstance(m[0], tarfile.TarInfo) else _tarinfo(*m)
            tf.addfile(info, fobj)
    return path


def content_tar(path, mode="w"):
    members = [_tarinfo("data", type=tarfile.DIRTYPE, mode=0o755)]
    members += [(name, data) for name, data in CONTENT.items()]
    members.append(_tarinfo("data/link", type=tarfile.SYMTYPE, linkname="features.bin"))
    members.append(_tarinfo("data/hard", type=tarfile.LNKTYPE, linkname="data/features.bin"))
    return make_tar(path, members, mode)


def sized(files):
    return [(rel, size) for rel, size, _ in files]


def check_content(dest, files):
    expected = dict(CONTENT)
    expected["data/hard"] = CONTENT["data/features.bin"]
    # each file comes with the xxh3-128 of what was written: the install record's content hash
    assert sorted(files) == sorted((k, len(v), xxhash.xxh3_128_hexdigest(v)) for k, v in expected.items())
    for name, data in expected.items():
        assert (dest / name).read_bytes() == data
    assert os.readlink(dest / "data/link") == "features.bin"


def snapshot(root, skip):
    """Every path under root except those under `skip` (the destination)."""
    skip = os.path.realpath(skip)
    out = set()
    for dirpath, dirnames, filenames in os.walk(root):
        paths = (os.path.join(dirpath, n) for n in dirnames + filenames)
        out.update(p for p in paths if p != skip and not p.startswith(skip + os.sep))
    return out


def assert_nothing_escaped(tmp_path, dest, before):
    assert snapshot(tmp_path, dest) == before
    for dirpath, dirnames, filenames in os.walk(dest):
        for n in dirnames + filenames:
            p = os.path.join(dirpath, n)
            if os.path.islink(p):
                real, root = os.path.realpath(p), os.path.realpath(dest)
                assert real == root or real.startswith(root + os.sep), p


def fail_extract(tmp_path, archive, exc_type, phrase, **kw):
    """Extract `archive`, expect exc_type with `phrase`, and check that nothing escaped dest."""
    dest = tmp_path / "out" / "dest"
    dest.parent.mkdir(exist_ok=True)
    before = snapshot(tmp_path, dest)
    with pytest.raises(exc_type) as info:
        extract_archive(archive, dest, **kw)
    assert phrase in str(info.value)
    assert_nothing_escaped(tmp_path, dest, before)
    return str(info.value)


def stream(path, dest, fmt, *, external=None, pieces=None, seed=0, **kw):
    data = path.read_bytes()
    rng = random.Random(seed)
    sx = StreamExtractor(dest, fmt, external=external, **kw)
    try:
        i = 0
        while i < len(data):
            n = rng.randint(1, pieces or 200_000)
            sx.feed(memoryview(data)[i:i + n])
            i += n
        return sx.close()
    except BaseException:
        sx.abort()
        raise


# ----------------------------------------------------------------------------------------- round trips
TAR_MODES = [("tar", "w", "tar"), ("tgz", "w:gz", "gztar"), ("tbz2", "w:bz2", "bztar"), ("txz", "w:xz", "xztar")]


@pytest.mark.parametrize("external", [None, True, False], ids=["default", "tool", "inprocess"])
@pytest.mark.parametrize("suffix,mode,fmt", TAR_MODES)
def test_tar_round_trip(tmp_path, suffix, mode, fmt, external):
    if external and TAR_FORMATS[fmt] and not external_command(TAR_FORMATS[fmt]):
        pytest.skip(f"no external {fmt} decompressor on PATH")
    archive = content_tar(tmp_path / f"a.{suffix}", mode)
    assert detect_format(archive) == fmt
    files = extract_archive(archive, tmp_path / "dest", external=external)
    check_content(tmp_path / "dest", files)
    streamed = stream(archive, tmp_path / "streamed", fmt, external=external)
    assert streamed == files
    check_content(tmp_path / "streamed", streamed)


@pytest.mark.parametrize("inflate", ["zlib", "isal.isal_zlib"])
def test_gzip_round_trip_with_each_inflate_backend(tmp_path, monkeypatch, inflate):
    """isal is preferred when installed; the stdlib zlib fallback must give the same tree and catch truncation."""
    import importlib

    from zoo.archive import decoders

    monkeypatch.setattr(decoders, "INFLATE", importlib.import_module(inflate))
    archive = content_tar(tmp_path / "a.tgz", "w:gz")
    files = extract_archive(archive, tmp_path / "dest", external=False)
    check_content(tmp_path / "dest", files)
    assert stream(archive, tmp_path / "streamed", "gztar", external=False) == files
    cut = tmp_path / "cut.tgz"
    cut.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    with pytest.raises(CorruptArchiveError):
        extract_archive(cut, tmp_path / "cut", external=False)


@pytest.mark.parametrize("external", [True, False], ids=["zstd-tool", "zstandard-module"])
def test_zstd_round_trip(tmp_path, external):
    if not can_decode("zst", external):
        pytest.skip("no zstd decoder on this machine for this path (optional)")
    plain = content_tar(tmp_path / "a.tar")
    archive = tmp_path / "a.tar.zst"
    subprocess.run(["zstd", "-q", "-3", str(plain), "-o", str(archive)], check=True)
    assert detect_format(archive) == "zstdtar"
    files = extract_archive(archive, tmp_path / "dest", external=external)
    check_content(tmp_path / "dest", files)
    assert stream(archive, tmp_path / "streamed", "zstdtar", external=external) == files


def test_zstd_without_decoder_is_a_clear_error(tmp_path, monkeypatch):
    archive = tmp_path / "a.tar.zst"
    archive.write_bytes(b"\x28\xb5\x2f\xfd" + b"\0" * 100)
    monkeypatch.setitem(sys.modules, "zstandard", None)  # as on a machine without the optional package
    assert not can_decode("zst", external=False)
    with pytest.raises(CorruptArchiveError, match="pip install zstandard"):
        StreamExtractor(tmp_path / "d", "zstdtar", external=False)


def test_zip_round_trip_keeps_modes_and_links(tmp_path):
    archive = tmp_path / "a.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in CONTENT.items():
            zf.writestr(name, data)
        script = zipfile.ZipInfo("bin/run.sh")
        script.create_system, script.external_attr = 3, (stat.S_IFREG | 0o4777) << 16  # setuid + o+w
        zf.writestr(script, b"#!/bin/sh\n")
        link = zipfile.ZipInfo("data/link")
        link.create_system, link.external_attr = 3, (stat.S_IFLNK | 0o777) << 16
        zf.writestr(link, "features.bin")
    assert detect_format(archive) == "zip"
    assert not StreamExtractor.supports("zip")
    files = extract_archive(archive, tmp_path / "dest")
    assert {k: n for k, n, _ in files} == {**{k: len(v) for k, v in CONTENT.items()}, "bin/run.sh": 10}
    assert os.readlink(tmp_path / "dest/data/link") == "features.bin"
    assert stat.S_IMODE(os.stat(tmp_path / "dest/bin/run.sh").st_mode) == 0o755


@pytest.mark.parametrize("external", DECODERS)
def test_single_gzip_file(tmp_path, external):
    archive = tmp_path / "vocab.txt.gz"
    archive.write_bytes(gzip.compress(b"word\n" * 5000))
    assert detect_format(archive) == "gz"
    files = extract_archive(archive, tmp_path / "dest", external=external)
    assert sized(files) == [("vocab.txt", 25000)]
    assert (tmp_path / "dest/vocab.txt").read_bytes() == b"word\n" * 5000


@pytest.mark.parametrize("compress,kind", [(bz2.compress, "bz2"), (lzma.compress, "xz")])
def test_single_bz2_xz_file(tmp_path, compress, kind):
    archive = tmp_path / f"notes.{kind}"
    archive.write_bytes(compress(b"x" * 1000))
    assert detect_format(archive) == kind
    assert sized(extract_archive(archive, tmp_path / "dest")) == [("notes", 1000)]


def test_multi_member_gzip_and_padding(tmp_path):
    plain = content_tar(tmp_path / "a.tar").read_bytes()
    half = len(plain) // 2
    archive = tmp_path / "multi.tgz"  # what pigz --independent or `cat a.gz b.gz` produce, plus zero padding
    archive.write_bytes(gzip.compress(plain[:half]) + gzip.compress(plain[half:]) + b"\0" * 1000)
    for external in (True, False) if HAS_PIGZ else (False,):
        dest = tmp_path / f"dest{external}"
        check_content(dest, extract_archive(archive, dest, external=external))


def test_detection_by_content_when_the_extension_lies(tmp_path):
    tgz = content_tar(tmp_path / "a.tgz", "w:gz")
    liar = tmp_path / "features.zip"
    shutil.copy(tgz, liar)
    assert detect_format(liar) == "gztar"
    check_content(tmp_path / "d1", extract_archive(liar, tmp_path / "d1"))
    zliar = tmp_path / "features.tar.gz"
    with zipfile.ZipFile(zliar, "w") as zf:
        zf.writestr("a.txt", b"a")
    assert detect_format(zliar) == "zip"
    assert sized(extract_archive(zliar, tmp_path / "d2")) == [("a.txt", 1)]
    plain = tmp_path / "data.tar.xz"
    shutil.copy(content_tar(tmp_path / "p.tar"), plain)
    assert detect_format(plain) == "tar"
    text = tmp_path / "vocab.tar"
    text.write_bytes(b"just a vocabulary\n" * 100)
    assert detect_format(text) is None


def test_duplicates_and_root_entry(tmp_path):
    archive = make_tar(tmp_path / "a.tar", [_tarinfo("./", type=tarfile.DIRTYPE, mode=0o755),
                                            ("./x", b"old"), ("x", b"newer"),
                                            _tarinfo("d", type=tarfile.DIRTYPE, mode=0o2777)])
    assert sized(extract_archive(archive, tmp_path / "dest")) == [("x", 5)]
    assert (tmp_path / "dest/x").read_bytes() == b"newer"
    assert stat.S_IMODE(os.stat(tmp_path / "dest/d").st_mode) == 0o755  # setgid and g+w/o+w stripped


@pytest.mark.parametrize("tar_format", ["gnu", "pax"])
def test_sparse_member_from_gnu_tar(tmp_path, tar_format):
    if not shutil.which("tar"):
        pytest.skip("GNU tar is needed to write sparse members")
    (tmp_path / "src").mkdir()
    with open(tmp_path / "src/data.mdb", "wb") as f:  # LMDB files are mostly holes
        f.seek(100)
        f.write(b"head")
        f.seek(3_000_000)
        f.write(b"tail")
    archive = tmp_path / "s.tgz"
    subprocess.run(["tar", "-S", f"--format={tar_format}", "-czf", str(archive), "-C", str(tmp_path / "src"), "."],
                   check=True)
    assert sized(extract_archive(archive, tmp_path / "dest")) == [("data.mdb", 3_000_004)]
    assert (tmp_path / "dest/data.mdb").read_bytes() == (tmp_path / "src/data.mdb").read_bytes()


def test_modes_never_keep_setuid_or_group_write(tmp_path):
    archive = make_tar(tmp_path / "a.tar", [_tarinfo("tool", b"#!", mode=0o6777), ("ro", b"r")])
    extract_archive(archive, tmp_path / "dest")
    assert stat.S_IMODE(os.stat(tmp_path / "dest/tool").st_mode) == 0o755
    assert os.stat(tmp_path / "dest/tool").st_uid == os.getuid()


# -------------------------------------------------------------------------------------------- hostile
@pytest.mark.parametrize("name", ["../evil.txt", "a/../../evil.txt", "/tmp/zoo-evil-abs.txt", "a/..\\..\\x"])
def test_path_traversal_in_tar(tmp_path, name):
    archive = make_tar(tmp_path / "a.tar", [("ok.txt", b"ok"), (name, b"evil")])
    msg = fail_extract(tmp_path, archive, UnsafeArchiveError, "refusing to extract")
    assert repr(name) in msg
    assert not os.path.exists("/tmp/zoo-evil-abs.txt")


@pytest.mark.parametrize("name", ["../evil.txt", "/tmp/zoo-evil-zip.txt"])
def test_path_traversal_in_zip(tmp_path, name):
    archive = tmp_path / "a.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr(zipfile.ZipInfo(name), b"evil")  # ZipInfo keeps the name as given
    fail_extract(tmp_path, archive, UnsafeArchiveError, "refusing to extract")
    assert not os.path.exists("/tmp/zoo-evil-zip.txt")


def test_control_characters_in_names(tmp_path):
    archive = make_tar(tmp_path / "a.tar", [("bad\nname", b"x")])
    fail_extract(tmp_path, archive, UnsafeArchiveError, "control character")


@pytest.mark.parametrize("target", ["/etc", "/etc/passwd", "../../outside", "sub/../../x"])
def test_symlink_escape_in_tar(tmp_path, target):
    archive = make_tar(tmp_path / "a.tar", [_tarinfo("link", type=tarfile.SYMTYPE, linkname=target),
                                            ("link/passwd", b"overwrite")])
    fail_extract(tmp_path, archive, UnsafeArchiveError, "points outside the destination")


def test_symlink_chain_escape_in_tar(tmp_path):
    # 'a' is harmless while 'b' does not exist; once b -> '.', a = ./../outside: caught before anything is
    # written through it, and by the final check of every link
    outside = tmp_path / "outside"
    archive = make_tar(tmp_path / "a.tar", [_tarinfo("a", type=tarfile.SYMTYPE, linkname="b/../outside"),
                                            _tarinfo("b", type=tarfile.SYMTYPE, linkname="."),
                                            ("a/owned.txt", b"evil")])
    fail_extract(tmp_path, archive, UnsafeArchiveError, "outside the destination")
    assert not outside.exists()
    only_links = make_tar(tmp_path / "b.tar", [_tarinfo("a", type=tarfile.SYMTYPE, linkname="b/../outside"),
                                               _tarinfo("b", type=tarfile.SYMTYPE, linkname=".")])
    fail_extract(tmp_path, only_links, UnsafeArchiveError, "resolves outside the destination")


@pytest.mark.parametrize("target", ["/etc/passwd", "../../outside", "../../../tmp"])
def test_symlink_escape_in_zip(tmp_path, target):
    archive = tmp_path / "a.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        link = zipfile.ZipInfo("link")
        link.create_system, link.external_attr = 3, (stat.S_IFLNK | 0o777) << 16
        zf.writestr(link, target)
    fail_extract(tmp_path, archive, UnsafeArchiveError, "points outside the destination")


@pytest.mark.parametrize("target", ["/etc/passwd", "../outside.txt", "missing.txt"])
def test_hardlink_escape(tmp_path, target):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "outside.txt").write_bytes(b"secret")
    archive = make_tar(tmp_path / "a.tar", [_tarinfo("h", type=tarfile.LNKTYPE, linkname=target)])
    fail_extract(tmp_path, archive, UnsafeArchiveError, "hard link")
    assert (tmp_path / "out" / "outside.txt").read_bytes() == b"secret"


@pytest.mark.parametrize("kind,word", [(tarfile.CHRTYPE, "device file"), (tarfile.BLKTYPE, "device file"),
                                       (tarfile.FIFOTYPE, "FIFO")])
def test_device_and_fifo_members(tmp_path, kind, word):
    archive = make_tar(tmp_path / "a.tar", [_tarinfo("dev", type=kind, devmajor=1, devminor=3)])
    fail_extract(tmp_path, archive, UnsafeArchiveError, word)
    assert not os.path.exists(tmp_path / "out/dest/dev")


class Zeros(io.RawIOBase):
    def readable(self):
        return True

    def readinto(self, b):
        b[:] = bytes(len(b))
        return len(b)


def zeros_tgz(path, size):
    with tarfile.open(path, "w:gz", compresslevel=1) as tf:
        info = tarfile.TarInfo("zeros.bin")
        info.size = size
        tf.addfile(info, io.BufferedReader(Zeros(), 1 << 20))
    return path


@pytest.mark.parametrize("external", DECODERS)
def test_bomb_over_max_bytes(tmp_path, external):
    archive = zeros_tgz(tmp_path / "bomb.tar.gz", 50 << 20)
    msg = fail_extract(tmp_path, archive, UnsafeArchiveError, "decompression bomb", max_bytes=1 << 20,
                       external=external)
    assert "max_bytes" in msg  # says which limit, and how to raise it
    assert not (tmp_path / "out/dest/zeros.bin").exists()  # refused from the header, before writing
    with pytest.raises(UnsafeArchiveError, match="decompression bomb"):
        stream(archive, tmp_path / "s", "gztar", external=external, max_bytes=1 << 20)


def test_bomb_default_limits(tmp_path):
    archive = zeros_tgz(tmp_path / "bomb.tar.gz", 100 << 20)  # ~100 KB compressed
    assert os.path.getsize(archive) < 1 << 20
    msg = fail_extract(tmp_path, archive, UnsafeArchiveError, "50x the archive size")
    assert "MMF_ZOO_MAX_EXTRACT_BYTES" in msg
    with pytest.raises(UnsafeArchiveError, match="50x the bytes received"):
        stream(archive, tmp_path / "s", "gztar")  # the limit grows with the bytes fed: still far below
    with pytest.raises(UnsafeArchiveError, match="declared size"):
        extract_archive(archive, tmp_path / "d2", declared_size=10 << 20)


def test_bomb_limit_env_override_wins(tmp_path, monkeypatch):
    """The override the bomb error suggests works for files and streams, even over a declared size; a stream
    stays held to the bytes received (a mirror's bytes are not vouched for yet), whatever the override."""
    archive = zeros_tgz(tmp_path / "bomb.tar.gz", 100 << 20)
    monkeypatch.setenv("MMF_ZOO_MAX_EXTRACT_BYTES", str(200 << 20))
    assert sized(extract_archive(archive, tmp_path / "d1", declared_size=1 << 20)) == [("zeros.bin", 100 << 20)]
    with pytest.raises(UnsafeArchiveError, match="50x the bytes received"):
        stream(archive, tmp_path / "s0", "gztar", declared_size=1 << 20)
    small = zeros_tgz(tmp_path / "small.tar.gz", 60 << 20)  # within the 64 MiB a stream may always make
    assert sized(stream(small, tmp_path / "s1", "gztar", declared_size=1 << 20)) == [("zeros.bin", 60 << 20)]
    monkeypatch.setenv("MMF_ZOO_MAX_EXTRACT_BYTES", str(1 << 20))
    with pytest.raises(UnsafeArchiveError, match="MMF_ZOO_MAX_EXTRACT_BYTES"):
        stream(archive, tmp_path / "s2", "gztar")
    monkeypatch.setenv("MMF_ZOO_MAX_EXTRACT_BYTES", "lots")
    with pytest.raises(ZooError, match="not a byte count"):
        extract_archive(archive, tmp_path / "d3")


# ------------------------------------------------------------------------------------ directory bombs
def entry_bomb(path, n, kind="dir"):
    """n empty folders, or n symlinks / hard links to one 1-byte file: almost nothing compressed."""
    with tarfile.open(path, "w:gz") as tf:
        if kind != "dir":
            tf.addfile(*_tarinfo("f", b"x"))
        for i in range(n):
            if kind == "dir":
                tf.addfile(_tarinfo(f"d{i:06d}", type=tarfile.DIRTYPE, mode=0o755)[0])
            else:
                link = tarfile.SYMTYPE if kind == "sym" else tarfile.LNKTYPE
                tf.addfile(_tarinfo(f"l{i:06d}", type=link, linkname="f")[0])
    return path


def tree_size(dest) -> tuple[int, int]:
    """(entries, bytes on disk) of everything under dest, walked now."""
    entries = used = 0
    for dirpath, dirnames, filenames in os.walk(dest):
        for name in dirnames + filenames:
            entries += 1
            used += os.lstat(os.path.join(dirpath, name)).st_blocks * 512
    return entries, used


def test_directory_bomb_refused_by_default(tmp_path):
    """Empty folders cost a block each: 20,000 of them in a 95 KB archive go over the 64 MiB floor of the default
    limit, and the tree at refusal holds no more than the limit allows."""
    from zoo.archive.limits import BLOCK, FLOOR

    archive = entry_bomb(tmp_path / "dirs.tar.gz", 20_000)
    assert os.path.getsize(archive) < 200_000
    cap = FLOOR // BLOCK
    with pytest.raises(UnsafeArchiveError, match="decompression bomb") as info:
        extract_archive(archive, tmp_path / "file")
    assert f"in {cap + 1} files, folders and links" in str(info.value) and "50x the archive size" in str(info.value)
    entries, used = tree_size(tmp_path / "file")
    assert entries <= cap and used <= FLOOR + (1 << 20), (entries, used)
    # streams: test_stream_from_a_loopback_mirror_stays_within_the_bytes_received (the same bomb, by default)


@pytest.mark.parametrize("kind", ["sym", "hard"])
def test_link_bombs_count_as_entries(tmp_path, monkeypatch, kind):
    """Links take inodes and directory entries, not data blocks: the entry cap and the per-entry cost count them."""
    archive = entry_bomb(tmp_path / "links.tar.gz", 3000, kind)
    monkeypatch.setenv("MMF_ZOO_MAX_EXTRACT_ENTRIES", "1000")
    msg = fail_extract(tmp_path, archive, UnsafeArchiveError, "would make 1001 files, folders and links")
    assert "MMF_ZOO_MAX_EXTRACT_ENTRIES" in msg
    assert tree_size(tmp_path / "out/dest")[0] <= 1000
    with pytest.raises(UnsafeArchiveError, match="1001 files, folders and links"):
        stream(archive, tmp_path / "s", "gztar")
    monkeypatch.delenv("MMF_ZOO_MAX_EXTRACT_ENTRIES")
    monkeypatch.setenv("MMF_ZOO_MAX_EXTRACT_BYTES", str(2 << 20))  # 512 blocks
    with pytest.raises(UnsafeArchiveError, match="in 513 files, folders and links"):
        extract_archive(archive, tmp_path / "bytes")
    monkeypatch.setenv("MMF_ZOO_MAX_EXTRACT_ENTRIES", "lots")
    with pytest.raises(ZooError, match="MMF_ZOO_MAX_EXTRACT_ENTRIES='lots' is not a count"):
        extract_archive(archive, tmp_path / "env")


def test_deep_member_path_counts_every_folder_it_makes(tmp_path, monkeypatch):
    """One member named a/a/a/.../x makes a folder per level: each is an entry."""
    archive = make_tar(tmp_path / "deep.tar", [("a/" * 1500 + "x", b"x")])
    monkeypatch.setenv("MMF_ZOO_MAX_EXTRACT_ENTRIES", "1000")
    fail_extract(tmp_path, archive, UnsafeArchiveError, "would make 1500 files, folders and links")
    assert not os.path.exists(tmp_path / "out/dest/a")  # refused before makedirs


def test_zip_entry_bomb_refused_from_the_central_directory(tmp_path, monkeypatch):
    archive = tmp_path / "dirs.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for i in range(3000):
            zf.writestr(f"d{i}/", b"")
    monkeypatch.setenv("MMF_ZOO_MAX_EXTRACT_ENTRIES", "1000")
    fail_extract(tmp_path, archive, UnsafeArchiveError, "would make 3000 files, folders and links")
    assert tree_size(tmp_path / "out/dest")[0] == 0  # nothing made


def test_stream_from_a_loopback_mirror_stays_within_the_bytes_received(tmp_path):
    """A lone bad mirror's body (a folder bomb where a 60 MB archive is expected) streamed into the extractor as it
    arrives: refused by the budget that grows with the bytes received, not by 50x the expected size, and the tree at
    refusal is no bigger than that budget."""
    import requests

    from zoo.archive.limits import BLOCK, FLOOR, RATIO
    from zoo.testing.faultserver import FaultServer

    mirror = tmp_path / "mirror"
    mirror.mkdir()
    entry_bomb(mirror / "features.tar.gz", 20_000)
    dest = tmp_path / "dest"
    fed = 0
    with FaultServer(mirror) as srv:
        sx = StreamExtractor(dest, "gztar", archive_size=60 << 20, name="features.tar.gz")
        with pytest.raises(UnsafeArchiveError, match="bytes received") as info:
            try:
                with requests.get(f"{srv.url}/features.tar.gz", stream=True, timeout=10) as resp:
                    for block in resp.iter_content(16 << 10):
                        sx.feed(block)
                        fed += len(block)
                sx.close()
            except BaseException:
                sx.abort()
                raise
        assert srv.stats.bytes_sent["features.tar.gz"] > 0  # it really came from the server
    entries, used = tree_size(dest)
    bound = RATIO * (fed + (16 << 10)) + FLOOR
    assert "files, folders and links" in str(info.value)
    assert entries * BLOCK <= bound and used <= bound, (entries, used, fed)
    assert entries < 20_000


def test_honest_archive_of_many_small_files_passes(tmp_path):
    """Thousands of small files (OCR tokens, vocabularies) in one archive: well inside both caps, file and stream."""
    rng = random.Random(3)
    members = [(f"ocr/{i // 500:02d}/{i:06d}.json", rng.randbytes(rng.randint(50, 3000))) for i in range(2000)]
    archive = make_tar(tmp_path / "ocr.tar.gz", members, "w:gz")
    files = extract_archive(archive, tmp_path / "file")
    assert len(files) == 2000
    assert len(stream(archive, tmp_path / "stream", "gztar", archive_size=os.path.getsize(archive))) == 2000


@pytest.mark.parametrize("name", [".built.json", "features/.built.json", ".mmfzoo/features.tar.gz.installed.json",
                                  "a/.mmfzoo/x"])
def test_members_named_like_zoo_records_refused(tmp_path, name):
    """An archive must not mark its data as installed (MMF's marker) or forge our install records."""
    archive = tmp_path / "forged.tar.gz"
    with tarfile.open(archive, "w:gz") as tf:
        for member, data in (("ok.txt", b"fine"), (name, b'{"version": "1"}')):
            info = tarfile.TarInfo(member)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    with pytest.raises(UnsafeArchiveError, match="zoo's own records"):
        extract_archive(archive, tmp_path / "dest")
    with pytest.raises(UnsafeArchiveError, match="zoo's own records"):
        stream(archive, tmp_path / "s", "gztar")
    link = tmp_path / "link.tar"
    with tarfile.open(link, "w") as tf:
        info = tarfile.TarInfo("records")
        info.type, info.linkname = tarfile.SYMTYPE, ".mmfzoo"
        tf.addfile(info)
    with pytest.raises(UnsafeArchiveError, match="points outside"):
        extract_archive(link, tmp_path / "d2")


def test_zip_bomb_refused_from_the_central_directory(tmp_path):
    archive = tmp_path / "bomb.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("zeros.bin", bytes(20 << 20))
    fail_extract(tmp_path, archive, UnsafeArchiveError, "decompression bomb", max_bytes=1 << 20)
    assert not (tmp_path / "out/dest/zeros.bin").exists()


# ------------------------------------------------------------------------------------ broken archives
@pytest.mark.parametrize("external", DECODERS)
def test_truncated_tar_gz(tmp_path, external):
    full = content_tar(tmp_path / "full.tar.gz", "w:gz").read_bytes()
    archive = tmp_path / "features.tar.gz"
    archive.write_bytes(full[:len(full) // 2])
    msg = fail_extract(tmp_path, archive, CorruptArchiveError, "features.tar.gz", external=external)
    assert "data/features.bin" in msg and "download it again" in msg
    with pytest.raises(CorruptArchiveError, match="data/features.bin"):
        stream(archive, tmp_path / "s", "gztar", external=external)


def test_truncated_plain_tar_at_a_member_boundary(tmp_path):
    full = make_tar(tmp_path / "full.tar", [("a", b"x" * 512), ("b", b"y" * 512)]).read_bytes()
    archive = tmp_path / "cut.tar"
    archive.write_bytes(full[:1024])  # header + data of 'a', then nothing: no end-of-archive marker
    fail_extract(tmp_path, archive, CorruptArchiveError, "without the end-of-archive marker")


def test_corrupt_gzip_crc(tmp_path):
    data = bytearray(content_tar(tmp_path / "a.tgz", "w:gz").read_bytes())
    data[-6] ^= 0xFF  # inside the CRC32 trailer
    archive = tmp_path / "bad.tgz"
    archive.write_bytes(bytes(data))
    for external in (True, False) if HAS_PIGZ else (False,):
        fail_extract(tmp_path, archive, CorruptArchiveError, "cannot be read to the end", external=external)
        shutil.rmtree(tmp_path / "out")


def test_truncated_zip(tmp_path):
    with zipfile.ZipFile(tmp_path / "full.zip", "w") as zf:
        zf.writestr("a.bin", os.urandom(100_000))
    archive = tmp_path / "cut.zip"
    archive.write_bytes((tmp_path / "full.zip").read_bytes()[:50_000])
    fail_extract(tmp_path, archive, CorruptArchiveError, "not a readable zip archive")


HTML = b"<!DOCTYPE html>\n<html><head><title>403 Forbidden</title></head><body>denied</body></html>\n"


def test_html_page_saved_as_tar_gz(tmp_path):
    archive = tmp_path / "features.tar.gz"
    archive.write_bytes(HTML * 20)
    assert detect_format(archive) is None
    msg = fail_extract(tmp_path, archive, CorruptArchiveError, "HTML/text")
    assert "not an archive" in msg
    with pytest.raises(CorruptArchiveError, match="HTML/text"):
        stream(archive, tmp_path / "s", "gztar")
    sx = StreamExtractor(tmp_path / "s1", "gztar")
    with pytest.raises(CorruptArchiveError, match="HTML/text"):
        sx.feed(HTML * 20)  # the first 512 bytes are enough to tell
    with pytest.raises(CorruptArchiveError, match="HTML/text"):
        sx.close()
    short = tmp_path / "short.tar.gz"
    short.write_bytes(HTML)  # under 512 bytes: detected at close()
    with pytest.raises(CorruptArchiveError, match="HTML/text"):
        stream(short, tmp_path / "s2", "gztar")


@pytest.mark.parametrize("data,phrase", [(b"", "empty"), (bytes(10240), "only zero bytes"),
                                         (b"\x00\x01\x02\x03" * 300, "match no known archive format")])
def test_not_an_archive(tmp_path, data, phrase):
    archive = tmp_path / "x.tar"
    archive.write_bytes(data)
    assert detect_format(archive) is None
    fail_extract(tmp_path, archive, CorruptArchiveError, phrase)


DISK_FULL_CHILD = textwrap.dedent("""
    import resource, signal, sys
    from zoo.archive import extract_archive
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG instead of killing us
    resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))
    try:
        extract_archive(sys.argv[1], sys.argv[2], external=sys.argv[3] == "pigz")
    except Exception as exc:
        print(type(exc).__name__, exc)
        sys.exit(4)
""")


@pytest.mark.parametrize("external", ["pigz", "inprocess"])
def test_disk_full_is_a_disk_error(tmp_path, external):
    if external == "pigz" and not HAS_PIGZ:
        pytest.skip("pigz not on PATH")
    archive = tmp_path / "big.tar.gz"
    with tarfile.open(archive, "w:gz", compresslevel=1) as tf:
        info = tarfile.TarInfo("big.bin")
        info.size = 3 << 20
        tf.addfile(info, io.BytesIO(random.Random(2).randbytes(3 << 20)))
    size_before = archive.stat().st_size
    proc = subprocess.run([sys.executable, "-c", DISK_FULL_CHILD, str(archive), str(tmp_path / "dest"), external],
                          capture_output=True, text=True, timeout=60,
                          cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert proc.returncode == 4, proc.stderr
    assert proc.stdout.startswith("DiskError No space left"), proc.stdout
    assert "big.bin" in proc.stdout and "the archive itself is intact" in proc.stdout
    assert "after writing 1.0 MiB" in proc.stdout  # how much was written before the disk filled
    assert archive.stat().st_size == size_before


# ------------------------------------------------------------------------------------------ streaming
@pytest.mark.parametrize("external", DECODERS)
@pytest.mark.parametrize("seed", [1, 2])
def test_stream_random_pieces_equal_extract_archive(tmp_path, external, seed):
    archive = content_tar(tmp_path / "a.tgz", "w:gz")
    files = extract_archive(archive, tmp_path / "ref", external=external)
    got = stream(archive, tmp_path / "s", "gztar", external=external, pieces=5000, seed=seed)
    assert got == files
    for name, *_ in files:
        assert (tmp_path / "s" / name).read_bytes() == (tmp_path / "ref" / name).read_bytes()


def test_stream_restart_from_byte_zero(tmp_path):
    archive = content_tar(tmp_path / "a.tgz", "w:gz")
    data = archive.read_bytes()
    first = StreamExtractor(tmp_path / "try1", "gztar")
    first.feed(data[:len(data) // 3])
    first.abort()  # the download crashed here
    shutil.rmtree(tmp_path / "try1")
    check_content(tmp_path / "try2", stream(archive, tmp_path / "try2", "gztar"))


@pytest.mark.parametrize("external", DECODERS)
def test_stream_unsafe_member(tmp_path, external):
    archive = make_tar(tmp_path / "a.tgz", [("ok", b"ok"), ("../evil", b"evil")], "w:gz")
    dest = tmp_path / "out" / "dest"
    dest.parent.mkdir()
    before = snapshot(tmp_path, dest)
    with pytest.raises(UnsafeArchiveError, match="'..' component"):
        stream(archive, dest, "gztar", external=external)
    assert_nothing_escaped(tmp_path, dest, before)


def _children() -> set[int]:
    pids = set()
    for task in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{task}/children") as f:
                pids.update(int(p) for p in f.read().split())
        except FileNotFoundError:  # that thread ended since the listing: it has no children to report
            continue
    return pids


@pytest.mark.parametrize("external", DECODERS)
def test_abort_leaves_no_thread_or_process(tmp_path, external):
    archive = content_tar(tmp_path / "a.tgz", "w:gz")
    data = archive.read_bytes()
    children_before, threads_before = _children(), set(threading.enumerate())
    sx = StreamExtractor(tmp_path / "dest", "gztar", external=external)
    sx.feed(data[:len(data) // 2])
    workers = [t for t in threading.enumerate() if t.name.startswith("zoo-") and t not in threads_before]
    assert "zoo-stream-extract" in [t.name for t in workers]
    if external:
        assert _children() - children_before  # pigz runs
    sx.abort()
    assert not [t for t in workers if t.is_alive()]
    assert not [t for t in threading.enumerate() if t.name.startswith("zoo-") and t not in threads_before]
    assert _children() - children_before == set()
    with pytest.raises(ValueError):
        sx.feed(b"more")


def test_feed_applies_back_pressure():
    queue = ByteQueue(capacity=1000)
    queue.put(b"x" * 1000)
    done = threading.Event()

    def producer():
        queue.put(b"y" * 10)
        done.set()

    threading.Thread(target=producer, daemon=True).start()
    assert not done.wait(0.3)  # full: the producer waits
    assert bytes(queue.read(600)) == b"x" * 600  # 400 left, under capacity: the producer goes on
    assert done.wait(5)
    queue.stop()
    with pytest.raises(Stopped):
        queue.put(b"z")


def test_stream_queue_stays_within_its_capacity(tmp_path):
    # feeding (a memcpy) outruns writing 40 MB to disk; the queue must never hold more than its capacity,
    # so feed() has to wait for the worker
    blob = random.Random(3).randbytes(40 << 20)
    archive = make_tar(tmp_path / "a.tar", [("blob", blob)])
    sx = StreamExtractor(tmp_path / "dest", "tar", external=False)
    data = archive.read_bytes()
    peak = 0
    for i in range(0, len(data), 1 << 20):
        sx.feed(data[i:i + (1 << 20)])
        if sx._queue is not None:
            peak = max(peak, sx._queue._size)
    assert sized(sx.close()) == [("blob", len(blob))]
    assert 0 < peak <= (16 << 20) + (1 << 20)
