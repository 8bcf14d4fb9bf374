"""Content fingerprints of a packed store's inputs, cheap to re-check (stat first, hash only when stat moved)."""
from __future__ import annotations

import os

import xxhash

CHUNK = 8 << 20


def data_file(path: str) -> str:
    """The file whose bytes stand for `path`: `data.mdb` inside an LMDB folder, else the path itself."""
    return os.path.join(path, "data.mdb") if os.path.isdir(path) else path


def hash_file(path: str) -> str:
    h = xxhash.xxh3_128()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def fingerprint(path: str) -> dict:
    """{path, size, mtime_ns, xxh3_128} of one input."""
    f = data_file(path)
    st = os.stat(f)
    return {"path": os.path.abspath(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns, "xxh3_128": hash_file(f)}


def still_matches(recorded: dict, path: str) -> str | None:
    """None when `path` still has the recorded content, else why not (one short phrase)."""
    if recorded.get("path") != os.path.abspath(path):
        return f"it was built from {recorded.get('path')}, not {os.path.abspath(path)}"
    f = data_file(path)
    try:
        st = os.stat(f)
    except OSError:
        return f"{f} is gone"
    if st.st_size != recorded.get("size"):
        return f"{f} changed size"
    if st.st_mtime_ns == recorded.get("mtime_ns"):
        return None
    return None if hash_file(f) == recorded.get("xxh3_128") else f"{f} changed content"
