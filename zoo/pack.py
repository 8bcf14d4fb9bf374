"""`mmf zoo pack`: one file with the verified archives of some keys and their manifest entries.

An uncompressed tar (archives are already compressed): `mmfzoo-pack.json` first, then each archive under
`archives/<kind>/<name>/<file_name>`. `mmf zoo fetch KEY --from PACK` installs from it without a network, and
`mmf zoo fetch --from PACK` every key it was packed for (the index lists them as typed). `mmf zoo pack --for
<mmf train options>` packs the keys a run reads (mmfdata.needs lists them).
The pack's own manifest entries are someone else's word: they never shadow the user's manifests, and what they
install is not trusted with pickles unless the user passes --trust-pack (`merge_pack_entries`, `zoo.trust`).
"""
from __future__ import annotations

import io
import json
import tarfile
import time
from pathlib import Path

from zoo import layout, origin, trust
from zoo.errors import DiskError, HashMismatchError, ManifestError
from zoo.install import plan
from zoo.manifest import Entry, Zoo, bad_component
from zoo.fsutil import atomic_write_bytes, sha256_file
from zoo.packindex import FORMAT, read_index
from zoo.sources import PACK_INDEX


def pack(zoo: Zoo, keys: list[str], data_dir: Path, out: Path, say=print) -> dict:
    """Write the pack of `keys` (with their zoo_requirements) from their kept archives in `data_dir` to `out`; its
    index lists `keys` as typed, so `mmf zoo fetch --from PACK` alone installs what was packed, where it was."""
    targets = plan(zoo, keys)
    _refuse_missing(targets, data_dir)
    items, entries = [], []
    for target in targets:
        aliases = sorted(a for a, t in zoo.aliases.items() if t == target.entry.key)
        entries.append({"key": target.entry.key, "kind": target.entry.kind, "node": origin.entry_node(target.entry),
                        "aliases": aliases})  # `mmf zoo fetch ALIAS --from PACK` works as it did with the manifest
        for res in target.entry.resources:
            archive = target.folder(data_dir, res) / res.file_name
            digest = sha256_file(archive)
            if res.hashcode and digest != res.hashcode:
                raise HashMismatchError(f"cannot pack {archive}: sha256 {digest[:12]}… does not match the manifest "
                                        f"({res.hashcode[:12]}…); run `mmf zoo verify` and refetch it")
            items.append({"member": f"archives/{target.entry.kind}/{target.name}/{res.category or ''}/{res.file_name}"
                          .replace("//", "/"), "file_name": res.file_name, "url": res.url, "sha256": digest,
                          "size": archive.stat().st_size, "key": target.entry.key, "path": str(archive)})
    index = {"format": FORMAT, "created_at": time.strftime("%Y-%m-%dT%H:%M:%S"), "keys": list(keys),
             "entries": entries, "resources": [{k: v for k, v in i.items() if k != "path"} for i in items]}
    def write(f) -> None:
        with tarfile.open(fileobj=f, mode="w:", format=tarfile.PAX_FORMAT) as tf:
            data = json.dumps(index, indent=1).encode()
            info = tarfile.TarInfo(PACK_INDEX)
            info.size, info.mtime = len(data), int(time.time())
            tf.addfile(info, io.BytesIO(data))
            for item in items:
                say(f"adding {item['key']}:{item['file_name']} ({item['size']} bytes)")
                tf.add(item["path"], arcname=item["member"], recursive=False)

    try:
        atomic_write_bytes(Path(out), write)
    except OSError as exc:
        raise DiskError(f"cannot write pack {out}: {exc.strerror or exc}") from None
    return index


def _key_of(target) -> str:
    return target.name.replace("/", ".")  # the key as typed (a model's folder), datasets' name.variation


def _refuse_missing(targets, data_dir: Path) -> None:
    """Every key whose archives are not kept in the data dir, in one error (a pack holds archives, not trees)."""
    gone = [(t, t.folder(data_dir, r) / r.file_name) for t in targets for r in t.entry.resources
            if not (t.folder(data_dir, r) / r.file_name).is_file()]
    if len(gone) == 1:
        target, archive = gone[0]
        raise ManifestError(f"cannot pack {target.entry.key}: {archive} is not there (deleted after extraction "
                            f"or never fetched); run `mmf zoo fetch {_key_of(target)} --force` without "
                            "--delete-archives first")
    if gone:
        keys = list(dict.fromkeys(_key_of(t) for t, _ in gone))
        raise ManifestError(f"cannot pack {', '.join(keys)}: {len(gone)} of their archives are not in {data_dir} "
                            f"(never fetched, or deleted after extraction); run `mmf zoo fetch {' '.join(keys)}` "
                            "(with --force for a key installed with --delete-archives) first")


def contents(zoo: Zoo, keys: list[str], data_dir: Path) -> list[dict]:
    """What `pack` would hold, written nowhere: per key (zoo_requirements first) its archives, bytes (the kept
    archive's, else the manifest's or a probed size; None when any is unknown) and whether it can be packed now."""
    from zoo import sizes
    from zoo.layout import is_built

    rows = []
    for target in plan(zoo, keys):
        table = sizes.table(zoo, data_dir, [target.entry])
        kept = [(target.folder(data_dir, r) / r.file_name) for r in target.entry.resources]
        known = [a.stat().st_size if a.is_file() else getattr(table.get((target.entry.key, r.file_name)),
                                                               "download", None)
                 for a, r in zip(kept, target.entry.resources)]
        installed = all(is_built(f, target.entry.version) for f in target.marker_folders(data_dir))
        state = ("ready" if all(a.is_file() for a in kept) else
                 "installed, archives deleted: fetch --force" if installed else "not installed: fetch it")
        rows.append({"key": _key_of(target), "entry": target.entry.key, "archives": len(kept),
                     "size": sizes.total(known), "state": state})
    return rows


def merge_packs(zoo: Zoo, from_paths, consent: bool = False) -> None:
    """Merge the entries of every pack among the --from paths (one path, a list, or None); --trust-pack
    (`consent`) needs at least one pack."""
    from zoo import sources

    paths = sources.from_paths(from_paths)
    packs = [p for p in paths if p.is_file() and sources.is_pack(p)]
    if consent and not packs:
        raise ManifestError(f"--trust-pack needs --from PACK (a file written by `mmf zoo pack`), got "
                            f"{'--from ' + ', '.join(map(str, paths)) if paths else 'no --from'}")
    for path in packs:
        merge_pack_entries(zoo, pack_entries(path), path, consent=consent)


def merge_pack_entries(zoo: Zoo, index_entries: list[dict], pack_path, consent: bool = False) -> None:
    """Make a pack's manifest entries known to the zoo.

    A pack supplies archives. Without `consent` its entries are used only for keys the manifests lack, or dropped
    where they agree with the manifest (same resources, same sha256); an entry that would shadow a manifest key,
    alias or `.defaults` resolution, or install into (or around) the folder of a manifest entry, is refused.
    With `consent` (--trust-pack) the pack is a manifest the user chose: its entries win over the manifest's
    like a later --zoo file, and what they install is trusted with pickles.
    """
    source = trust.pack_source(Path(pack_path).resolve(), consent)
    for item in index_entries:
        entry = _pack_entry(item, source, pack_path)
        _merge_entry(zoo, entry, consent, pack_path)
        _merge_aliases(zoo, entry, item.get("aliases"), consent, pack_path)


def _merge_entry(zoo: Zoo, entry: Entry, consent: bool, pack_path) -> None:
    clashes = _clashes(zoo, entry)
    if not clashes:
        zoo.entries[entry.key] = entry
        return
    other, why, nested = clashes[0]
    if not consent and all(not n and _agrees(entry, zoo.entries.get(o)) for o, _, n in clashes):
        if not _resolvable(zoo, entry.key):
            zoo.aliases[entry.key] = other  # the same data under another spelling: the manifest's entry
        return
    if not consent:
        raise ManifestError(f"pack {pack_path}: its entry '{entry.key}' would shadow the manifest's '{other}' "
                            f"({why}); a pack only supplies archives for keys the manifest lacks: to use the "
                            "pack's manifest instead, pass --trust-pack (its pickles then run its author's code "
                            "at training time)")
    for other, _, nested in clashes:  # consent: the pack's entry replaces the manifest's under every spelling
        zoo.entries.pop(other, None)
        for alias in [a for a, t in zoo.aliases.items() if t == other]:
            if nested:
                del zoo.aliases[alias]
            else:
                zoo.aliases[alias] = entry.key
        if not nested and other != entry.key:
            zoo.aliases[other] = entry.key
    zoo.aliases.pop(entry.key, None)
    zoo.entries[entry.key] = entry


def _merge_aliases(zoo: Zoo, entry: Entry, aliases, consent: bool, pack_path) -> None:
    """The pack's aliases of `entry` (the spellings its manifest had, e.g. a model's short key), where they do not
    shadow the manifest's: an alias the manifest already resolves to the same data is left as it is."""
    if aliases is None:
        return  # a pack written before packs carried aliases
    target = zoo.resolve(entry.key).key  # where the entry went (the manifest's, if it agreed)
    if not isinstance(aliases, list) or len(aliases) > 1000 or \
            any(not isinstance(a, str) or any(bad_component(p) for p in a.split(".")) for a in aliases):
        raise ManifestError(f"pack {pack_path}: aliases of '{entry.key}' must be a list of zoo keys; the pack is "
                            "damaged or forged")
    for alias in aliases:
        try:
            now = zoo.resolve(alias)
        except ManifestError:
            now = None
        if now is None:
            zoo.aliases[alias] = target
        elif now.key != target and not _agrees(entry, now):
            if not consent:
                raise ManifestError(f"pack {pack_path}: its alias '{alias}' of '{entry.key}' would shadow the "
                                    f"manifest's '{now.key}'; a pack only supplies archives for keys the manifest "
                                    "lacks: to use the pack's manifest instead, pass --trust-pack (its pickles "
                                    "then run its author's code at training time)")
            if alias in zoo.entries:
                raise ManifestError(f"pack {pack_path}: its alias '{alias}' of '{entry.key}' names an entry of the "
                                    "manifest; even with --trust-pack a pack's alias does not replace an entry")
            zoo.aliases[alias] = target


def _resolvable(zoo: Zoo, key: str) -> bool:
    return any(k in zoo.entries or k in zoo.aliases for k in (key, f"{key}.defaults"))


def _pack_entry(item, source: str, pack_path) -> Entry:
    key, kind, node = (item.get("key"), item.get("kind"), item.get("node")) if isinstance(item, dict) else (None,) * 3
    return origin.entry_from_node(key, kind, node, source, f"pack {pack_path}")


def _folder(kind: str, key: str) -> tuple[str, ...]:
    """The install folder of `key` typed as is, as path parts (zoo.layout owns the rule)."""
    return (kind, *layout.install_name(kind, key).split("/"))


def _clashes(zoo: Zoo, entry: Entry) -> list[tuple[str, str, bool]]:
    """Manifest entries that `entry` would shadow: (their key, how, whether only nested folders clash)."""
    key, out = entry.key, []
    if key in zoo.entries:
        out.append((key, "the same key", False))
    if key in zoo.aliases:
        out.append((zoo.aliases[key], f"'{key}' is the manifest's alias of it", False))
    for longer in (f"{key}.defaults",):
        target = zoo.aliases.get(longer, longer)
        if target in zoo.entries:
            out.append((target, f"the manifest resolves '{key}' to '{target}'", False))
    mine = _folder(entry.kind, key)
    for other in sorted(zoo.entries):
        theirs = zoo.entries[other]
        if theirs.kind != entry.kind or any(other == o for o, _, _ in out):
            continue
        names = [other] + ([a for a, t in zoo.aliases.items() if t == other] if theirs.kind == "models" else [])
        for name in names:
            folder = _folder(theirs.kind, name)
            n = min(len(folder), len(mine))
            if folder[:n] == mine[:n]:
                theirs_at, mine_at = "/".join(folder), "/".join(mine)
                how = (f"it installs into the same folder {theirs_at}" if folder == mine else
                       f"it installs into {mine_at}, {'inside' if len(mine) > len(folder) else 'around'} {theirs_at}")
                out.append((other, how, folder != mine))
                break
    return out


def _agrees(a: Entry, b: Entry | None) -> bool:
    """Same data: the same kind and resources (by sha256; by URL only where neither has one)."""
    def sig(e: Entry):
        return sorted((r.category or "", r.dest_folder or "", r.file_name, r.hashcode or "", "" if r.hashcode else r.url)
                      for r in e.resources)
    return b is not None and a.kind == b.kind and sig(a) == sig(b)


def pack_entries(path: Path) -> list[dict]:
    return _index(path)["entries"]


def pack_keys(path: Path) -> list[str]:
    """The keys `path` was packed for, as typed (a pack written before packs listed them: its entries' keys)."""
    index = _index(path)
    return index["keys"] if index["keys"] is not None else [e["key"] for e in index["entries"]]


def _index(path: Path) -> dict:
    try:
        with tarfile.open(path, "r:") as tf:
            return read_index(tf, path)
    except (tarfile.TarError, OSError) as exc:
        raise ManifestError(f"pack {path}: its index cannot be read ({exc}); the pack is damaged: make it again") \
            from None


__all__ = ["pack", "contents", "merge_packs", "merge_pack_entries", "pack_entries", "pack_keys", "layout"]
