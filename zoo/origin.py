"""Which manifest entry an install came from, and which entry judges it.

Every install record (`zoo.records`) remembers its entry (`remember`): the canonical key, kind and version, the
manifest it came from (`manifest`: its path, or `pack PATH`) with that file's sha256 at install time, the
archive's sha256 the entry asked for, and the entry itself as a manifest node. `verify`, `--repair`, `list` and
`info` ask `judge` so an install made from a custom manifest is judged against its own entry, never against the
built-in entry that happens to share its key; a key no active manifest has is found through its records
(`recorded_target`). Records written before these fields existed still work: their `manifest`, `version` and
`sha256` say the same, and only a key the active manifests lack cannot be rebuilt from them.

A record sits in the data dir, so whoever can write there can forge it. What it says is only used to describe
the install and to check its files against the record's own hashes (a forger controls those files anyway): an
entry rebuilt from records goes through the manifest's own validation, is never a manifest the user chose
(`RECORD_SOURCE`: it grants no pickle trust and is never fetched from), and the manifest path a record names is
only stat'ed and, when it is a small regular file, hashed to say whether it changed; it is never parsed.
"""
from __future__ import annotations

import dataclasses
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from zoo import layout, records, trust
from zoo.errors import ManifestError
from zoo.fsutil import sha256_file
from zoo.manifest import Entry, Resource, bad_component

RECORD_SOURCE = trust.RECORD_SOURCE  # Entry.source of an entry rebuilt from records: "record <its manifest>"
MAX_MANIFEST_BYTES = 16 << 20  # a manifest is a few KB; a record naming anything bigger names no manifest


def entry_node(entry: Entry) -> dict:
    """The entry as a manifest node (MMF's schema), the form packs and install records carry."""
    def res(r: Resource) -> dict:
        d = {k: v for k, v in dataclasses.asdict(r).items() if v not in (None, (), False) and k != "category"}
        d["compressed"] = r.compressed
        if d.get("mirrors"):
            d["mirrors"] = list(d["mirrors"])
        return d

    cats: dict[str, list] = {}
    flat = []
    for r in entry.resources:
        (cats.setdefault(r.category, []) if r.category else flat).append(res(r))
    node = {"version": entry.version, "resources": cats or flat}
    if entry.zoo_requirements:
        node["zoo_requirements"] = list(entry.zoo_requirements)
    return node


def entry_from_node(key, kind, node, source: str, where: str) -> Entry:
    """An entry from a node someone else wrote (a pack's index, an install record), validated like a manifest's;
    ManifestError naming `where` when it is not a valid entry."""
    from zoo.manifest import _entry  # the same validation as manifest files

    if kind not in ("datasets", "models") or not isinstance(key, str) or \
            any(bad_component(p) for p in key.split(".")) or not isinstance(node, dict):
        raise ManifestError(f"{where}: entry {str(key)!r:.60} ({str(kind)!r:.20}) is not a zoo key of "
                            "dot-separated plain names with kind datasets or models; it is damaged or forged")
    problems: list[str] = []
    entry = _entry(node, key, kind, source, problems) if "version" in node and "resources" in node else None
    if problems or entry is None:
        raise ManifestError(f"{where}: entry {key}: {'; '.join(problems) or 'needs version and resources'}")
    return entry


def remember(entry: Entry, res: Resource) -> dict:
    """The record's fields that say which entry installed it (besides key, version, url, manifest, sha256)."""
    real = None if _pack(entry.source) else os.path.realpath(entry.source)
    return {"entry": entry.key, "kind": entry.kind, "hashcode": res.hashcode, "manifest_path": real,
            "manifest_sha256": manifest_digest(real) if real else None, "node": entry_node(entry)}


def manifest_digest(path: str) -> str | None:
    """sha256 of the manifest file at `path` when it is a small regular file (None: a pack, gone, a device)."""
    try:
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode) or st.st_size > MAX_MANIFEST_BYTES:
            return None
        return sha256_file(path)
    except (OSError, ValueError):
        return None


@dataclass(frozen=True)
class Origin:
    """How an install relates to the entry it is checked against.
    how: "same" (installed from this entry, or one with the same version and archive), "changed" (from this
    manifest, which changed since), "other" (from another manifest's entry: judged by its own record)."""

    how: str
    manifest: str  # where the install came from, shown (cut, as repr where needed)
    note: str = ""  # one clause for messages
    use: str = ""  # "other": the option that makes its own entry active (--zoo PATH, --from PACK)


def judge(rec: dict, entry: Entry, res: Resource) -> Origin:
    source = str(rec.get("manifest_path") or rec.get("manifest") or "")
    shown = _shown(source)
    rebuilt = entry.source.startswith(RECORD_SOURCE)
    agrees = rec.get("version") == entry.version and (not res.hashcode or rec.get("sha256") == res.hashcode)
    if agrees and not rebuilt:
        return Origin("same", shown)
    if not rebuilt and _same_manifest(rec, entry):
        return Origin("changed", shown, f"{shown} changed since this was installed" if _changed(rec, source) else "")
    pack = _pack(source)
    where = f"the pack {_shown(pack)}'s own entry" if pack else f"{shown}'s entry"
    state = "" if pack else ("; that manifest is gone" if not os.path.lexists(source) else
                             "; that manifest changed since" if _changed(rec, source) else "")
    use = f"--from {_shown(pack)}" if pack else f"--zoo {shown}"
    if rebuilt:
        return Origin("other", shown, f"installed from {where}, which no active manifest has{state}; "
                                      f"judged by its install record (pass {use} to use that entry)", use)
    return Origin("other", shown, f"installed from {where} (version {_shown(rec.get('version'))}), not the active "
                                  f"manifest's ({_shown(entry.source)}){state}; judged by its install record "
                                  f"(pass {use} to use that entry)", use)


def _same_manifest(rec: dict, entry: Entry) -> bool:
    """Was the install made from the manifest `entry` comes from (by path as written, by real path, or by the
    file's content), or does the record not say (an older record; `mmf data synth`'s "local")?"""
    source = str(rec.get("manifest") or "")
    if not source or source in (entry.source, "local"):
        return True
    if _pack(entry.source):
        return False
    real, digest = rec.get("manifest_path"), rec.get("manifest_sha256")
    return real == os.path.realpath(entry.source) or bool(digest) and digest == manifest_digest(entry.source)


def _pack(source: str) -> str | None:
    """The pack a `pack PATH` source names (zoo.trust owns that form), else None."""
    return trust.pack_path(source) if source.startswith(trust.PACK_SOURCE) else None


def _changed(rec: dict, source: str) -> bool:
    """Does the manifest file the record names differ from the one it was installed from? (False: unknown)"""
    digest = rec.get("manifest_sha256")
    now = manifest_digest(source) if digest else None
    return now is not None and now != digest


def _shown(value) -> str:
    """A value read from a record, safe for one line: no control characters, long ones cut."""
    text = "".join(c if c.isprintable() else "?" for c in str(value))
    return text if len(text) <= 120 else f"{text[:100]}… ({len(text)} characters)"


def recorded_target(data_dir: Path, key: str) -> layout.Target | None:
    """The install of `key` that no active manifest has, rebuilt from its install records (None when there is
    none): datasets/<name>/<variation>/ or models/<key>[.defaults]/ (MMF's folder rules, zoo.layout)."""
    key = key.strip()
    if not key or any(bad_component(p) for p in key.split(".")):
        return None
    for kind in ("datasets", "models"):
        keys = [key] if kind == "datasets" or key.endswith(".defaults") else [key, f"{key}.defaults"]
        for name in dict.fromkeys(layout.install_name(kind, k) for k in keys):
            root = Path(data_dir) / kind / name
            if root.is_dir() and not root.is_symlink():
                entry = _rebuilt(root, kind)
                if entry is not None:
                    return layout.Target(entry, name)
    return None


def recorded_targets(data_dir: Path) -> list[layout.Target]:
    """Every install in the data dir whose records can rebuild its entry."""
    out = []
    for kind, depth in (("datasets", 2), ("models", 1)):
        base = Path(data_dir) / kind
        for root in sorted(base.glob("/".join(["*"] * depth))) if base.is_dir() else []:
            if root.is_dir() and not root.is_symlink():
                entry = _rebuilt(root, kind)
                if entry is not None:
                    out.append(layout.Target(entry, root.relative_to(base).as_posix()))
    return out


def _rebuilt(root: Path, kind: str) -> Entry | None:
    """The entry the records under an install root remember (the first valid one; records of one install agree)."""
    for state in (root, *sorted(p for p in root.glob("*") if p.is_dir()),
                  *sorted(p for p in root.glob("*/*") if p.is_dir())):
        for _, rec in records.records_in(state):
            if rec.get("kind") != kind or "node" not in rec:
                continue  # an older record, or one for another kind of install: says nothing about its entry
            try:
                return entry_from_node(rec.get("entry"), kind, rec.get("node"),
                                       RECORD_SOURCE + _shown(rec.get("manifest") or "?"), f"install record in {root}")
            except ManifestError:
                continue
    return None


def recorded_manifest(target: layout.Target, data_dir: Path) -> str | None:
    """Where the install at `target`'s folders came from when that is not `target`'s entry (a custom manifest's
    entry of the same key), else None."""
    for res in target.entry.resources:
        rec = layout.read_record(target.folder(data_dir, res), res)
        if rec and judge(rec, target.entry, res).how == "other":
            return _shown(rec.get("manifest") or "?")
    return None


def target_or_recorded(zoo, key: str, data_dir: Path) -> layout.Target:
    """`key`'s target in the active manifests, else the install its records remember (UnknownKeyError if none)."""
    from zoo.errors import UnknownKeyError

    try:
        return layout.target_for(zoo, key)
    except UnknownKeyError:
        target = recorded_target(data_dir, key)
        if target is None:
            raise
        return target


def other_installs(zoo, data_dir: Path) -> list[tuple[layout.Target, str]]:
    """(install, the manifest it came from) for every install whose key no active manifest has."""
    out = []
    for target in recorded_targets(data_dir):
        dotted = target.name.replace("/", ".")
        if any(k in zoo.entries or k in zoo.aliases for k in (target.entry.key, dotted)):
            continue
        out.append((target, _shown(target.entry.source[len(RECORD_SOURCE):])))
    return out
