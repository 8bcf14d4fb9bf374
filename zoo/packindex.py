"""A pack's index (`mmfzoo-pack.json`, its first member): read it as untrusted input and check every field.

A pack comes from someone else. Its index goes through the zoo's loader for untrusted text (safeyaml.load_json:
duplicate keys, absurd numbers and deep nesting are one-line errors) and each field is checked for its type here,
so a hand-edited or hostile index is refused with one line naming the field, never a KeyError or a traceback
later. The entries' manifest nodes are judged by the manifest's own rules when they are merged (zoo.pack).
"""
from __future__ import annotations

import re
import tarfile
from pathlib import Path

from zoo import safeyaml
from zoo.errors import ManifestError
from zoo.manifest import MAX_NUMBER, bad_component

INDEX_NAME = "mmfzoo-pack.json"
FORMAT = "mmfzoo-pack/1"
MAX_INDEX_BYTES = 64 << 20  # an index lists entries and archives: a few KB per key
_SHA256 = re.compile(r"[0-9a-f]{64}")
# field -> (type, what it must be); str fields must be non-empty
_ENTRY = {"key": (str, "a zoo key"), "kind": (str, "datasets or models"), "node": (dict, "a manifest entry")}
_RESOURCE = {"member": (str, "the archive's name in the pack"), "file_name": (str, "a file name"),
             "url": (str, "the manifest's URL"), "sha256": (str, "64 lowercase hex digits"),
             "size": (int, "a whole number of bytes"), "key": (str, "a zoo key")}


def read_index(tf: tarfile.TarFile, path: Path) -> dict:
    """The checked index of the open pack `tf` (read from `path`): {"entries": [...], "resources": [...], "keys":
    the keys it was packed for, as typed, or None (a pack written before packs listed them)}."""
    first = tf.next()
    if first is None or first.name != INDEX_NAME or not first.isfile():
        raise _bad(path, f"its first member is not {INDEX_NAME}")
    if first.size > MAX_INDEX_BYTES:
        raise _bad(path, f"its index is {first.size:,} bytes, more than the {MAX_INDEX_BYTES >> 20} MiB an index "
                         "needs")
    try:
        index = safeyaml.load_json(tf.extractfile(first).read())
    except safeyaml.YamlError as exc:
        raise _bad(path, f"{INDEX_NAME}: {exc}") from None
    except (tarfile.TarError, OSError) as exc:
        raise _bad(path, f"its index cannot be read ({exc})") from None
    if not isinstance(index, dict):
        raise _bad(path, f"{INDEX_NAME} must hold a mapping, not {type(index).__name__}")
    if index.get("format") != FORMAT:
        raise _bad(path, f"format {str(index.get('format'))[:40]!r} is not {FORMAT}, the one this zoo reads")
    for name, fields in (("entries", _ENTRY), ("resources", _RESOURCE)):
        items = index.get(name, [])
        if not isinstance(items, list):
            raise _bad(path, f"{INDEX_NAME}: {name} must be a list")
        for i, item in enumerate(items):
            why = _item_problem(item, fields)
            if why:
                raise _bad(path, f"{INDEX_NAME}: {name}[{i}] {why}")
    keys = index.get("keys")
    if keys is not None and (not isinstance(keys, list) or len(keys) > 10000 or any(
            not isinstance(k, str) or any(bad_component(p) for p in k.split(".")) for k in keys)):
        raise _bad(path, f"{INDEX_NAME}: keys must be a list of zoo keys")
    return {"entries": index.get("entries", []), "resources": index.get("resources", []), "keys": keys}


def _item_problem(item, fields: dict) -> str | None:
    if not isinstance(item, dict):
        return "must be a mapping"
    for field, (kind, what) in fields.items():
        value = item.get(field)
        ok = isinstance(value, kind) and not isinstance(value, bool) and (kind is not str or value.strip() != "")
        if ok and field == "size":
            ok = 0 <= value <= MAX_NUMBER
        elif ok and field == "sha256":
            ok = bool(_SHA256.fullmatch(value))
        elif ok and field == "kind":
            ok = value in ("datasets", "models")
        if not ok:
            return f"{field} must be {what}, got {str(value)[:40]!r}"
    return None


def _bad(path: Path, why: str) -> ManifestError:
    return ManifestError(f"pack {path}: {why}; rebuild it with `mmf zoo pack` or use another --from")
