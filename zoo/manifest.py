"""Zoo manifests in MMF's schema: load, resolve `${a.b}` aliases, validate, look keys up.

A manifest is MMF's `datasets.yaml` / `models.yaml` as-is, plus optional fields MMF-format readers can ignore:
`size` and `extracted_size` (bytes), `chunk_hashes` ({chunk_size, xxh3_128: [...]} or {chunk_size, url}) and
`mirrors` (extra full URLs). Validation is per entry: a malformed entry is kept with the reason (`Entry.invalid`),
listed by `mmf zoo list` / `info` and refused only when fetched, so one bad entry (MMF 1.0.0rc10's models.yaml has
a 63-digit hashcode) does not take the whole file down. Only a file that is not YAML, or not a mapping, fails whole.

Every key (entry, variation, category) becomes a folder name, so each must be a single path component: no
separator, no `..`, nothing absolute. URLs must be http(s):// or mmf://; local folders come only from the user
(`--mirror`, `--from`), never from a manifest.
"""
from __future__ import annotations

import difflib
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote

from zoo import safeyaml
from zoo.safeyaml import show
from zoo.errors import ManifestError, UnknownKeyError
from zoo.project import ZOO_DIR
from zoo.records import MARKER, STATE_DIR

CONFIG_DIR = ZOO_DIR  # the shipped manifests (zoo.project owns where they are in a checkout or an install)
RESOURCE_FIELDS = {"url", "file_name", "hashcode", "compressed", "dest_folder", "delete_original"}
EXTENSION_FIELDS = {"size", "extracted_size", "chunk_hashes", "mirrors"}
_HEX64 = re.compile(r"[A-Fa-f0-9]{64}")
_HEX32 = re.compile(r"[A-Fa-f0-9]{32}")
MAX_NUMBER = 2**63 - 1  # sizes and counts: what a file system, HTTP's Content-Length and numpy's int64 can hold
_ALIAS = re.compile(r"^\$\{([^}]+)\}$")
URL_SCHEMES = ("mmf://", "http://", "https://")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


@dataclass(frozen=True)
class Resource:
    url: str
    file_name: str
    category: str | None  # features / annotations / extras / ... ; None in a flat list
    hashcode: str | None = None
    compressed: bool = True
    dest_folder: str | None = None
    delete_original: bool = False
    size: int | None = None
    extracted_size: int | None = None
    chunk_hashes: dict | None = None
    mirrors: tuple[str, ...] = ()


@dataclass(frozen=True)
class Entry:
    key: str  # canonical key after aliases, e.g. "m4c.textvqa.with_stvqa"
    kind: str  # "datasets" or "models"
    # the YAML value as MMF's loader reads it: `1.0_2020_05_03` is the float 1.020200503 under YAML 1.1 (PyYAML
    # and OmegaConf agree), and MMF writes that float into .built.json, so we keep it as is for compatibility
    version: str | float | int
    resources: tuple[Resource, ...]
    zoo_requirements: tuple[str, ...] = ()
    conflict: str | None = None  # why this entry cannot be fetched (e.g. textvqa.caffe2)
    source: str = ""  # manifest file
    invalid: str | None = None  # what is malformed in this entry (it is listed, and refused when fetched)
    version_text: str = ""  # the version as written in the manifest, for people

    @property
    def version_str(self) -> str:
        return self.version_text or str(self.version)


@dataclass
class Zoo:
    """All entries of the loaded manifests, by canonical key, plus the aliases that point at them."""

    entries: dict[str, Entry] = field(default_factory=dict)
    aliases: dict[str, str] = field(default_factory=dict)  # alias key -> canonical key

    def keys(self) -> list[str]:
        return sorted(set(self.entries) | set(self.aliases))

    def resolve(self, key: str) -> Entry:
        """`textvqa` -> textvqa.defaults; aliases followed; unknown keys list the closest ones."""
        key = key.strip()
        for candidate in (key, f"{key}.defaults"):
            if candidate in self.aliases:
                candidate = self.aliases[candidate]
            if candidate in self.entries:
                return self.entries[candidate]
        close = self.closest(key)
        hint = f"closest: {', '.join(close)}" if close else "run `mmf zoo list` to see all keys"
        raise UnknownKeyError(f"unknown zoo key '{key}' ({hint})")

    def closest(self, key: str, n: int = 4) -> list[str]:
        """The keys nearest to a mistyped `key` (short forms like `textvqa` included); may be empty."""
        short = sorted({k[: -len(".defaults")] for k in self.keys() if k.endswith(".defaults")})  # `textvqa`
        close = difflib.get_close_matches(key, short + self.keys(), n=n, cutoff=0.5)
        return close or [k for k in self.keys() if k.startswith(key.split(".")[0])][:n]

    def with_requirements(self, keys: list[str]) -> list[Entry]:
        """Entries for keys, each preceded by its zoo_requirements (recursively), without repeats."""
        out: list[Entry] = []
        seen: set[str] = set()

        def visit(k: str, stack: tuple[str, ...]) -> None:
            entry = self.resolve(k)
            if entry.key in stack:
                raise ManifestError(f"zoo_requirements cycle: {' -> '.join(stack + (entry.key,))}")
            for req in entry.zoo_requirements:
                visit(req, stack + (entry.key,))
            if entry.key not in seen:
                seen.add(entry.key)
                out.append(entry)

        for k in keys:
            visit(k, ())
        return out


def default_manifest_paths() -> list[tuple[str, Path]]:
    """MMF's env vars MMF_DATASET_ZOO / MMF_MODEL_ZOO, else the manifests shipped in configs/zoo."""
    ds = os.environ.get("MMF_DATASET_ZOO") or CONFIG_DIR / "datasets.yaml"
    md = os.environ.get("MMF_MODEL_ZOO") or CONFIG_DIR / "models.yaml"
    return [("datasets", Path(ds)), ("models", Path(md))]


def kind_of(path: Path) -> str:
    """A `--zoo PATH` is a model zoo when its file name says so (models.yaml), else a dataset zoo."""
    return "models" if "model" in path.stem.lower() else "datasets"


def load_zoo(extra: list | None = None, *, defaults: bool = True) -> Zoo:
    """Load the default manifests (unless defaults=False) and every `--zoo PATH`; later files win on a key clash.
    An extra may be a (kind, path) pair where the kind is known (MMF's env.model_zoo is a model zoo whatever the
    file is called), else its kind follows from its name (`kind_of`)."""
    paths = default_manifest_paths() if defaults else []
    paths += [(p[0], Path(p[1])) if isinstance(p, tuple) else (kind_of(Path(p)), Path(p)) for p in extra or []]
    zoo = Zoo()
    for kind, path in paths:
        merge(zoo, parse_manifest(path, kind))
    return zoo


def merge(into: Zoo, other: Zoo) -> None:
    into.entries.update(other.entries)
    into.aliases.update(other.aliases)
    for key in other.entries:
        into.aliases.pop(key, None)


def parse_manifest(path: Path, kind: str) -> Zoo:
    """Parse one manifest file. A file that is not YAML (or not a mapping) raises ManifestError; a malformed entry
    becomes an Entry whose `invalid` says why."""
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        raise ManifestError(f"manifest {path} not found (check --zoo / MMF_DATASET_ZOO / MMF_MODEL_ZOO)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ManifestError(f"manifest {path} cannot be read ({exc}); check the file") from None
    try:
        tree = safeyaml.load(text, keep_twins=True)  # `1:` beside `"1":` refuses that entry alone (_walk)
    except safeyaml.YamlError as exc:
        raise ManifestError(f"manifest {path}: {exc}") from None
    tree = tree if tree is not None else {}
    if not isinstance(tree, dict):
        raise ManifestError(f"manifest {path}: top level must be a mapping of keys, got {type(tree).__name__}")
    zoo = Zoo()
    _walk(tree, (), tree, kind, str(path), zoo)
    _check_duplicate_targets(zoo)
    _mark_conflicts(zoo)
    return zoo


def bad_component(part) -> str | None:
    """Why `part` cannot be one folder name (None when it can)."""
    if not isinstance(part, str) or not part.strip():
        return "is empty"
    if part in (".", ".."):
        return f"is {part!r}"
    if part in (MARKER, STATE_DIR):
        return f"is {part!r}, a name the zoo keeps for its records"
    if "/" in part or "\\" in part:
        return "contains a path separator"
    if _CONTROL.search(part):
        return "contains a control character"
    return None


def bad_url(url) -> str | None:
    """Why a manifest may not use `url`: only http(s):// and mmf:// (local folders come from the user), no `..`."""
    if not isinstance(url, str) or not url.lower().startswith(URL_SCHEMES):
        return ("is not http(s):// or mmf://; a manifest cannot point at local files "
                "(use --mirror FOLDER or --from PATH for those)")
    path = unquote(url.split("://", 1)[1].split("?", 1)[0].split("#", 1)[0])
    if any(p == ".." for p in path.replace("\\", "/").split("/")):
        return "has a '..' component (it would leave a mirror's folder)"
    return None


def _invalid(zoo: Zoo, key: str, kind: str, source: str, why: str) -> None:
    zoo.entries[key] = Entry(key, kind, "", (), (), None, source, why)


def _walk(node, path: tuple[str, ...], root, kind, source, zoo: Zoo) -> None:
    key = ".".join(path)
    if path:
        why = bad_component(path[-1])
        if why:
            _invalid(zoo, key, kind, source, f"'{key}': key {path[-1]!r} {why}; every key must be a plain folder name")
            return
    if isinstance(node, str) and _ALIAS.match(node.strip()):
        problems: list[str] = []
        target = _follow_alias(node.strip(), root, key, problems)
        if target is not None:
            zoo.aliases[key] = target
        else:
            _invalid(zoo, key, kind, source, "; ".join(problems))
        return
    if not isinstance(node, dict):
        _invalid(zoo, key, kind, source, f"'{key}' must be a mapping, got {type(node).__name__} {node!r:.40}")
        return
    has_v, has_r = "version" in node, "resources" in node
    if has_v or has_r:
        problems = []
        if not has_v:
            problems.append(f"'{key}' has resources but no version")
        elif not has_r:
            problems.append(f"'{key}' has a version but no resources")
        entry = _entry(node, key, kind, source, problems) if has_v and has_r else None
        if problems:
            entry = Entry(**{**(entry.__dict__ if entry else _invalid_fields(key, kind, source)),
                             "invalid": "; ".join(problems[:6])})
        zoo.entries[key] = entry
        return
    twins = _twins(node)
    for child, value in node.items():
        name = child if isinstance(child, str) else str(child)
        if name in twins:
            where = ".".join(path + (name,))
            _invalid(zoo, where, kind, source, f"'{where}': keys {twins[name]} name {name!r}; keep one of them")
            continue
        _walk(value, path + (name,), root, kind, source, zoo)


def _twins(node: dict) -> dict[str, str]:
    """Names that two keys of a mapping share (`1:` and `"1":`; YAML keeps both, a folder can be only one)."""
    seen: dict[str, list] = {}
    for child in node:
        seen.setdefault(child if isinstance(child, str) else str(child), []).append(child)
    return {name: " and ".join(map(repr, keys)) + (" both" if len(keys) == 2 else " all")
            for name, keys in seen.items() if len(keys) > 1}


def _invalid_fields(key: str, kind: str, source: str) -> dict:
    return Entry(key, kind, "", (), (), None, source).__dict__


def _follow_alias(ref: str, root, key: str, problems: list[str]) -> str | None:
    seen = [key]
    while True:
        target = _ALIAS.match(ref).group(1).strip()
        if target in seen:
            problems.append(f"alias cycle: {' -> '.join(seen + [target])}")
            return None
        seen.append(target)
        node = root
        for part in target.split("."):
            if not isinstance(node, dict) or part not in node:
                problems.append(f"'{key}' is an alias to '{target}', which does not exist")
                return None
            node = node[part]
        if isinstance(node, str) and _ALIAS.match(node.strip()):
            ref = node.strip()
            continue
        if isinstance(node, dict) and "version" not in node and isinstance(node.get("defaults"), (dict, str)):
            ref = "${" + target + ".defaults}"
            continue
        return target


def _entry(node: dict, key: str, kind: str, source: str, problems: list[str]) -> Entry | None:
    unknown = set(node) - {"version", "resources", "zoo_requirements"}
    if unknown:
        problems.append(f"'{key}' has unknown field(s) {sorted(unknown)} (allowed: version, resources, zoo_requirements)")
    raw = node["resources"]
    items: list[tuple[str | None, object]] = []
    if isinstance(raw, list):
        items = [(None, r) for r in raw]
    elif isinstance(raw, dict):
        for name, keys in _twins(raw).items():
            problems.append(f"'{key}.resources': categories {keys} name {name!r}; keep one of them")
        for cat, lst in raw.items():
            why = bad_component(cat if isinstance(cat, str) else str(cat))
            if why:
                problems.append(f"category {cat!r} {why}; a category is a folder name like features or extras")
                continue
            if not isinstance(lst, list):
                problems.append(f"'{key}.resources.{cat}' must be a list of resources")
                continue
            items += [(str(cat), r) for r in lst]
    else:
        problems.append(f"'{key}.resources' must be a list or a mapping of categories to lists")
        return None
    resources = []
    for i, (cat, r) in enumerate(items):
        where = f"{key}.resources" + (f".{cat}" if cat else "") + f"[{i}]"
        res = _resource(r, cat, where, problems)
        if res:
            resources.append(res)
    reqs = node.get("zoo_requirements") or ()
    if isinstance(reqs, str):
        reqs = (reqs,)
    if not isinstance(reqs, (list, tuple)):
        problems.append(f"'{key}.zoo_requirements' must be a key or a list of keys")
        reqs = ()
    for req in reqs:
        bad = [p for p in str(req).split(".") if bad_component(p)]
        if not isinstance(req, str) or bad:
            problems.append(f"zoo_requirements entry {req!r} is not a zoo key (dot-separated plain names)")
    reqs = tuple(r for r in reqs if isinstance(r, str) and not any(bad_component(p) for p in r.split(".")))
    version = node["version"]
    if not isinstance(version, (str, int, float)) or isinstance(version, bool) or version == "" \
            or isinstance(version, float) and not math.isfinite(version) \
            or isinstance(version, int) and abs(version) > MAX_NUMBER or len(str(version)) > 100:
        problems.append(f"'{key}.version' must be a version like 1.0_2020_06_30 (text or a finite number of at "
                        f"most 100 characters), got {show(version)}")
        version = ""
    text = getattr(version, "text", "") or str(version)
    return Entry(key, kind, version, tuple(resources), reqs, None, source, version_text=text)


def _resource(r, cat, where: str, problems: list[str]) -> Resource | None:
    if not isinstance(r, dict):
        problems.append(f"'{where}' must be a mapping with url and file_name")
        return None
    unknown = set(r) - RESOURCE_FIELDS - EXTENSION_FIELDS
    if unknown:
        allowed = sorted(RESOURCE_FIELDS | EXTENSION_FIELDS)
        problems.append(f"'{where}' has unknown field(s) {sorted(unknown)} (allowed: {', '.join(allowed)})")
    for req in ("url", "file_name"):
        if not r.get(req) or not isinstance(r.get(req), str):
            problems.append(f"'{where}' is missing '{req}'")
    if problems and (not r.get("url") or not r.get("file_name")):
        return None
    fname = r["file_name"]
    if bad_component(fname):
        problems.append(f"'{where}.file_name' must be a plain file name, got {fname!r}")
    dest = r.get("dest_folder")
    if dest is not None and (not isinstance(dest, str) or str(dest).startswith(("/", "~"))
                             or any(bad_component(p) for p in str(dest).split("/"))):
        problems.append(f"'{where}.dest_folder' must be a relative folder of plain names (no '..'), got {dest!r}")
    mirrors = r.get("mirrors") or ()
    if isinstance(mirrors, str):
        mirrors = (mirrors,)
    for url in (r["url"], *mirrors):
        why = bad_url(url)
        if why:
            problems.append(f"'{where}' URL {str(url)!r:.60} {why}")
    h = r.get("hashcode")
    if h is not None and not (isinstance(h, str) and _HEX64.fullmatch(h)):
        problems.append(f"'{where}.hashcode' must be a sha256 of 64 hex digits, got {show(h)}")
    sizes = {num: _whole(r.get(num), f"'{where}.{num}'", "a whole number of bytes", 0, problems)
             for num in ("size", "extracted_size")}
    flags = {flag: _flag(r.get(flag, default), f"'{where}.{flag}'", problems)
             for flag, default in (("compressed", True), ("delete_original", False))}
    ch = _chunk_hashes(r.get("chunk_hashes"), sizes["size"], where, problems)
    return Resource(
        url=r["url"], file_name=fname, category=cat, hashcode=h.lower() if isinstance(h, str) else None,
        compressed=flags["compressed"], dest_folder=dest, delete_original=flags["delete_original"],
        size=sizes["size"], extracted_size=sizes["extracted_size"], chunk_hashes=ch, mirrors=tuple(mirrors),
    )


def _whole(value, name: str, what: str, low: int, problems: list[str]) -> int | None:
    """`value` if it is an int (not a bool) in [low, MAX_NUMBER]; else None and the reason in `problems`."""
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool) and low <= value <= MAX_NUMBER:
        return value
    kind = "true/false" if isinstance(value, bool) else "text" if isinstance(value, str) else type(value).__name__
    problems.append(f"{name} must be {what} from {low} to 2**63-1, got {show(value)} ({kind})")
    return None


def _flag(value, name: str, problems: list[str]) -> bool:
    if isinstance(value, bool):
        return value
    problems.append(f"{name} must be true or false, got {show(value)}")
    return False


def _chunk_hashes(ch, size: int | None, where: str, problems: list[str]) -> dict | None:
    """{chunk_size, xxh3_128: [32 hex digits per chunk]} or {chunk_size, url}; None (and a reason) otherwise."""
    if ch is None:
        return None
    name = f"'{where}.chunk_hashes'"
    before = len(problems)
    if not isinstance(ch, dict) or not (isinstance(ch.get("xxh3_128"), list) or isinstance(ch.get("url"), str)):
        problems.append(f"{name} needs chunk_size and xxh3_128 (a list) or url (a sidecar)")
        return None
    unknown = sorted(map(str, set(ch) - {"chunk_size", "xxh3_128", "url"}))
    if unknown:
        problems.append(f"{name} has unknown field(s) {unknown} (allowed: chunk_size, url, xxh3_128)")
    chunk = _whole(ch.get("chunk_size"), f"{name[:-1]}.chunk_size'", "a whole number of bytes", 1, problems)
    if chunk is None and ch.get("chunk_size") is None:
        problems.append(f"{name} needs chunk_size")
    hashes = ch.get("xxh3_128")
    if isinstance(hashes, list):
        bad = next((h for h in hashes if not (isinstance(h, str) and _HEX32.fullmatch(h))), None)
        if bad is not None or not hashes:
            problems.append(f"{name[:-1]}.xxh3_128' must list one xxh3-128 hash (32 hex digits) per chunk, got "
                            f"{show(bad) if hashes else 'none'}")
        elif chunk and size is not None and len(hashes) != max(1, -(-size // chunk)):
            problems.append(f"{name[:-1]}.xxh3_128' lists {len(hashes)} hashes, but size {size} in chunks of "
                            f"{chunk} makes {max(1, -(-size // chunk))}")
    elif not ch["url"].lower().startswith(("http://", "https://")):
        problems.append(f"{name[:-1]}.url' must be http(s)://")
    if len(problems) > before:
        return None
    return {**ch, "xxh3_128": [h.lower() for h in hashes]} if isinstance(hashes, list) else ch


def _check_duplicate_targets(zoo: Zoo) -> None:
    """Two resources of one version writing the same archive path would overwrite each other."""
    for key, entry in list(zoo.entries.items()):
        seen: dict[tuple, str] = {}
        for res in entry.resources:
            target = (res.category if res.category != "extras" else None, res.dest_folder, res.file_name)
            if target in seen and not entry.invalid:
                why = f"'{key}': two resources write the same file {res.file_name!r} ({seen[target]} and {res.url})"
                zoo.entries[key] = Entry(**{**entry.__dict__, "invalid": why})
            seen[target] = res.url


def _mark_conflicts(zoo: Zoo) -> None:
    """Same URL with two different hashes (MMF's textvqa.caffe2 vs textvqa.defaults): at most one can verify.

    The entry whose version is newest keeps the URL; the others are refused with the reason.
    """
    by_url: dict[str, list[tuple[Entry, Resource]]] = {}
    for entry in zoo.entries.values():
        for res in entry.resources:
            if res.hashcode:
                by_url.setdefault(res.url, []).append((entry, res))
    for url, users in by_url.items():
        if len({r.hashcode for _, r in users}) < 2:
            continue
        users.sort(key=lambda er: er[0].version_str, reverse=True)
        keeper = users[0][0]
        for entry, res in users[1:]:
            if entry.key == keeper.key:
                continue
            why = (f"its {res.file_name} shares {url} with '{keeper.key}' but expects sha256 {res.hashcode[:12]}…, "
                   f"not {users[0][1].hashcode[:12]}…; the file was re-uploaded, so it cannot verify")
            zoo.entries[entry.key] = Entry(**{**entry.__dict__, "conflict": why})
