"""Disk preflight: fail before the first byte when archives (+ extracted trees, when their size is known) can't fit."""
from __future__ import annotations

import logging
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from zoo import layout
from zoo.content import check_for
from zoo.errors import DiskError, ZooError
from zoo.fsutil import existing_ancestor, human
from zoo.journal import Journal

log = logging.getLogger("zoo")


def discover_size(urls: list, opts, journal: Journal | None = None, content_check=None) -> int | None:
    """The size the transfer will try first (probed in parallel, with a deadline: one tarpit does not hold it up).

    When the mirrors disagree, that is the first candidate (a partial download's, else by the pool's order), not
    the largest claim; and every claim is tested by reading its last bytes first, so a mirror whose Content-Range
    total lies (alone or not) makes no disk-space demand. A later candidate is checked for room by the transfer
    before its turn."""
    from zoo.transfer.pool import MirrorPool

    try:
        first = getattr(urls[0], "url", urls[0]) if urls else "?"
        pool = MirrorPool(first.rsplit("/", 1)[-1], urls, opts, lambda: None, content_check)
        if journal is not None:
            pool.remember(journal.verdicts)
        return pool.settle(None, resume=journal.size if journal else None, verify=True)
    except ZooError:
        return None


def _sizes(todo, opts, urls_for) -> dict[int, tuple[Journal | None, int | None]]:
    """id(resource) -> (its partial download's journal, its size) for each resource without a kept archive. The
    sizes the manifest lacks are probed for every resource at once, not one after another."""
    out, probe = {}, []
    for target, res in todo:
        folder = target.folder(opts.data_dir, res)
        if (folder / res.file_name).exists():
            continue
        journal = Journal.load(layout.state_dir(folder) / f"{res.file_name}.journal.json")
        out[id(res)] = (journal, res.size)
        if res.size is None:
            probe.append((res, journal))
    if probe:
        with ThreadPoolExecutor(max_workers=min(16, len(probe)), thread_name_prefix="zoo-size") as ex:
            found = ex.map(lambda rj: discover_size(urls_for(rj[0]), opts.transfer, rj[1], check_for(rj[0].file_name)),
                           probe)
            for (res, journal), size in zip(probe, found):
                out[id(res)] = (journal, size)
    return out


def not_enough(where: Path, need: str, free: int, hint: str = "") -> DiskError:
    """The one wording of a disk-space refusal: where, what is needed, what is free, what to do."""
    return DiskError(f"not enough space in {where}: need {need}, {human(free)} free{hint}; free space or choose "
                     "another --data-dir / MMF_DATA_DIR")


def preflight(todo, opts, urls_for) -> dict[int, int]:
    """Check free space for the (target, resource) pairs still to install; returns known sizes by id(resource)."""
    sizes: dict[int, int] = {}
    archives = extracted = biggest = 0
    unknown = []
    found = _sizes(todo, opts, urls_for)
    for target, res in todo:
        if id(res) not in found:
            continue  # kept archive: only its extraction needs room
        journal, size = found[id(res)]
        if size is None:
            unknown.append(res.file_name)
            continue
        sizes[id(res)] = size
        have = journal.kept_bytes() if journal and journal.size == size else 0
        archives += max(0, size - have)
        biggest = max(biggest, size)
        if res.compressed and opts.extract:
            extracted += res.extracted_size or 0
    # with --delete-archives each archive goes once its tree is out: peak = all trees + the largest archive
    need = extracted + biggest if opts.delete_archives and extracted else archives + extracted
    where = existing_ancestor(opts.data_dir)
    free = shutil.disk_usage(where).free
    if unknown:
        log.info("size unknown for %s (no size in the manifest and no mirror answered)", ", ".join(unknown))
    if need > free:
        hint = ""
        if extracted and not opts.delete_archives and extracted + biggest <= free:
            hint = "; --delete-archives (removes each archive after its verified extraction) would make it fit"
        raise not_enough(where, f"{human(need)} ({human(archives)} of archives"
                                f"{f' + {human(extracted)} extracted' if extracted else ''})", free, hint)
    return sizes
