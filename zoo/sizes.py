"""What a zoo key weighs before it is fetched: download and extracted bytes per resource.

Download size: the manifest's `size`, else what a HEAD probe learned (kept in `<data_dir>/.mmfzoo/probed-sizes.json`
per URL, sha256 and validator), else unknown. Probing happens only when asked (`--probe`): `mmf zoo list` and
`info` never touch the network by default. Extracted size: the manifest's `extracted_size`, else what an install
record lists (the sum of its files), else unknown. No number is invented: unknown prints as '?'.
"""
from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from zoo.fsutil import atomic_write_text
from zoo.manifest import MAX_NUMBER, Resource
from zoo.records import STATE_DIR

CACHE_NAME = "probed-sizes.json"
CACHE_MAX_BYTES = 4 << 20  # a cache bigger than this was not written by us: ignore it rather than parse it
VALIDATOR_MAX = 256  # an ETag longer than this is kept cut; it only tells a replaced file from the same one
PROBE_TIMEOUT = 5.0  # seconds per HEAD (connect, headers, read): a dead mirror costs the listing at most this
PROBE_THREADS = 32  # HEADs wait on the network, not the CPU: a tarpit mirror costs one PROBE_TIMEOUT in all


@dataclass
class ResourceSizes:
    download: int | None
    extracted: int | None
    download_from: str | None  # "manifest" | "probe" | None
    extracted_from: str | None  # "manifest" | "record" | None


def cache_path(data_dir: Path) -> Path:
    return Path(data_dir) / STATE_DIR / CACHE_NAME


def _cache_key(res: Resource) -> str:
    # the manifest's URL (mmf://... stays the same whichever mirror answered) and sha256: a new version behind the
    # same URL is not the old size
    return f"{res.url} {res.hashcode or '-'}"


def load_cache(data_dir: Path) -> dict:
    """The probe cache, or {} when it is missing, unreadable, too big or not ours (never an error: it is a hint)."""
    path = cache_path(data_dir)
    try:
        if path.is_symlink() or path.stat().st_size > CACHE_MAX_BYTES:
            return {}
        data = json.loads(path.read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        return {}
    return {k: v for k, v in data.items() if _valid_row(v)} if isinstance(data, dict) else {}


def _valid_row(row) -> bool:
    return (isinstance(row, dict) and type(row.get("size")) is int and 0 <= row["size"] <= MAX_NUMBER
            and isinstance(row.get("validator"), (str, type(None))))


def cached_size(res: Resource, cache: dict) -> int | None:
    row = cache.get(_cache_key(res))
    return row["size"] if row is not None else None


def record_extracted(record: dict | None) -> int | None:
    """The bytes an install record lists (its files' sizes), or None when it lists none or any size is not a
    plain non-negative number (a hand-edited or foreign record)."""
    rows = record.get("files") if isinstance(record, dict) else None
    if not isinstance(rows, list) or not rows:
        return None
    sizes = [row[1] if isinstance(row, list) and len(row) > 1 else None for row in rows]
    if not all(type(s) is int and 0 <= s <= MAX_NUMBER for s in sizes):
        return None
    return sum(sizes)


def sizes_of(res: Resource, cache: dict, record: dict | None) -> ResourceSizes:
    download, dfrom = res.size, "manifest" if res.size is not None else None
    if download is None:
        download = cached_size(res, cache)
        dfrom = "probe" if download is not None else None
    extracted, efrom = res.extracted_size, "manifest" if res.extracted_size is not None else None
    if extracted is None:
        extracted = record_extracted(record)
        efrom = "record" if extracted is not None else None
    return ResourceSizes(download, extracted, dfrom, efrom)


def table(zoo, data_dir: Path, entries, probe_roots: list[str] | None = None) -> dict:
    """{(entry key, file_name): ResourceSizes} for `entries`; with `probe_roots`, a HEAD to those mirrors first for
    the sizes the manifest lacks."""
    from zoo import layout
    from zoo.mirrors import resource_urls

    pairs = [(layout.target_for(zoo, e.key), r) for e in entries if not e.invalid for r in e.resources]
    if probe_roots is not None:
        cache = probe([(r, resource_urls(r, probe_roots)) for _, r in pairs], data_dir)
    else:
        cache = load_cache(data_dir)
    return {(t.entry.key, r.file_name): sizes_of(r, cache, _record_of(t, r, data_dir)) for t, r in pairs}


def _record_of(target, res: Resource, data_dir: Path) -> dict | None:
    from zoo import layout
    from zoo.errors import ManifestError

    try:
        return layout.read_record(target.folder(data_dir, res), res)
    except ManifestError:  # an entry whose folder would leave the data dir has no record to read
        return None


def target_total(target, data_dir: Path) -> tuple[int | None, int | None]:
    """(download, extracted) of an install no active manifest has (its record remembers the entry)."""
    cache = load_cache(data_dir)
    rows = [sizes_of(r, cache, _record_of(target, r, data_dir)) for r in target.entry.resources]
    return total(r.download for r in rows), total(r.extracted for r in rows)


def entry_total(table: dict, entry) -> tuple[int | None, int | None]:
    """(download, extracted) of a whole entry: known only when every resource's is."""
    rows = [table.get((entry.key, r.file_name)) for r in entry.resources]
    return (total(r.download if r else None for r in rows), total(r.extracted if r else None for r in rows))


def total(values) -> int | None:
    """The sum, or None when any part is unknown (a partial sum would understate what a fetch takes)."""
    values = list(values)
    return sum(values) if values and None not in values else None


def probe(wanted: list[tuple[Resource, list[str]]], data_dir: Path) -> dict:
    """HEAD each resource's URLs (in order, the first that states a size wins) for those the manifest gives no
    size; keep what was learned in the data dir's cache and return the updated cache."""
    from zoo.transfer.http import head

    def one(item):
        res, urls = item
        for url in urls:
            if url.startswith(("http://", "https://")):
                size, validator = head(url, PROBE_TIMEOUT)
                if size is not None:
                    return _cache_key(res), {"size": size, "validator": (validator or "")[:VALIDATOR_MAX] or None,
                                             "url": url, "at": int(time.time())}
        return None, None

    todo = [(res, urls) for res, urls in wanted if res.size is None]
    cache = load_cache(data_dir)
    if not todo:
        return cache
    with ThreadPoolExecutor(min(PROBE_THREADS, len(todo)), thread_name_prefix="zoo-size-probe") as pool:
        learned = {k: v for k, v in pool.map(one, todo) if k is not None}
    if learned:
        cache.update(learned)
        _save(data_dir, cache)
    return cache


def _save(data_dir: Path, cache: dict) -> None:
    """Atomically (a temp file renamed over it, which replaces a planted symlink instead of writing through it);
    a data dir we cannot write loses only the hint."""
    path = cache_path(data_dir)
    if not Path(data_dir).is_dir() or path.parent.is_symlink():
        return  # listing sizes does not create a data dir, nor write where a planted link points
    try:
        atomic_write_text(path, json.dumps(cache, indent=0, sort_keys=True))
    except OSError:
        pass
