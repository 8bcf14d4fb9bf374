"""Content fingerprints of a packed store's inputs: what the bytes are, never where they are, so an identical copy
of a data dir (another disk, another node, `cp -r`) reuses its packed store instead of repacking 30+ GB.

Cost has to stay small for TextVQA's 34 GB object LMDB and the 8 GB `wiki.en.bin`, because every `mmf train`
start re-checks every input:
- files up to `FULL_HASH_LIMIT` (imdb, vocabularies) are hashed whole with xxh3-128 (the read is the cost:
  well under a second);
- larger files get size + xxh3-128 over a head, a tail and `SAMPLES` evenly spaced blocks (~72 MiB read whatever
  the size). That is enough for what the fingerprint must catch: a different release or a re-fetched file (new
  content everywhere), and any write to an LMDB, because every committed LMDB transaction rewrites one of the two
  meta pages at the head of `data.mdb` (transaction id, last page). Bit rot or tampering inside an unsampled block
  is not this check's job: the zoo verified the sha256 at install and `mmf zoo verify` re-checks content.
A recorded (size, mtime) that still matches skips the hashing altogether; a copy has a new mtime and is hashed.
"""
from __future__ import annotations

import os

import xxhash

CHUNK = 8 << 20
FULL_HASH_LIMIT = 256 << 20
EDGE = 4 << 20  # head and tail bytes of a sampled file
SAMPLES, SAMPLE = 64, 1 << 20


def data_file(path: str) -> str:
    """The file whose bytes stand for `path`: `data.mdb` inside an LMDB folder, else the path itself."""
    return os.path.join(path, "data.mdb") if os.path.isdir(path) else path


def _read_range(f, h, start: int, length: int, buf: memoryview) -> None:
    f.seek(start)
    while length > 0 and (n := f.readinto(buf[:min(len(buf), length)])):
        h.update(buf[:n])
        length -= n


def content_hash(path: str, size: int) -> str:
    """xxh3-128 of the whole file, or of its sampled blocks when larger than `FULL_HASH_LIMIT` (prefixed `s:`)."""
    h, buf = xxhash.xxh3_128(), memoryview(bytearray(CHUNK))
    with open(path, "rb", buffering=0) as f:
        if size <= FULL_HASH_LIMIT:
            _read_range(f, h, 0, size, buf)
            return h.hexdigest()
        h.update(size.to_bytes(8, "little"))
        _read_range(f, h, 0, EDGE, buf)
        step = (size - 2 * EDGE) // SAMPLES
        for i in range(SAMPLES):
            _read_range(f, h, EDGE + i * step, SAMPLE, buf)
        _read_range(f, h, size - EDGE, EDGE, buf)
    return "s:" + h.hexdigest()


def fingerprint(path: str) -> dict:
    """{size, mtime_ns, xxh3_128} of one input (the mtime only to skip re-hashing an untouched file)."""
    f = data_file(path)
    st = os.stat(f)
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "xxh3_128": content_hash(f, st.st_size)}


def still_matches(recorded: dict, path: str) -> str | None:
    """None when `path` still has the recorded content (wherever it now lives), else why not (a short phrase)."""
    f = data_file(path)
    try:
        st = os.stat(f)
    except OSError:
        return f"{f} is gone"
    if st.st_size != recorded.get("size"):
        return f"{f} changed size"
    if st.st_mtime_ns == recorded.get("mtime_ns"):
        return None
    return None if content_hash(f, st.st_size) == recorded.get("xxh3_128") else f"{f} changed content"
