"""Install zoo entries: plan -> (lock) -> transfer or local source -> verify -> extract -> publish -> mark built.

Per resource, under its lock: skip when installed (our record, or MMF's own marker), else get a verified archive
(kept archive, --from source, or the transfer engine with streaming extraction into a private temp folder),
publish the extracted tree by renames, write the install record, and only when every resource of a folder is in
place write MMF's `.built.json`. Nothing unverified is ever published.
"""
from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from zoo import layout
from zoo.errors import DiskError, ManifestError, OfflineError
from zoo.lock import resource_lock
from zoo.manifest import Entry, Resource, Zoo
from zoo.mirrors import mirror_roots, resource_urls
from zoo.sources import LocalSource, sha256_file
from zoo.space import preflight
from zoo.transfer import Transfer, TransferOptions

log = logging.getLogger("zoo")


@dataclass
class FetchOptions:
    data_dir: Path
    mirrors: list[str] = field(default_factory=list)
    mirror_only: bool | None = None
    transfer: TransferOptions = field(default_factory=TransferOptions)
    from_path: Path | None = None
    force: bool = False
    extract: bool = True
    delete_archives: bool = False
    stream_extract: bool = True
    lock_timeout: float | None = None
    progress: object | None = None  # zoo.progress.Progress: plan(total, n) and bar(label, total) -> advance
    say: Callable[[str], None] = print


@dataclass
class ResourceReport:
    key: str
    file_name: str
    status: str  # installed | already installed | built by MMF | downloaded (not extracted)
    path: str
    size: int | None = None
    sha256: str | None = None
    fetched: int = 0
    resumed: int = 0
    seconds: float = 0.0
    mirrors: dict = field(default_factory=dict)


def plan(zoo: Zoo, keys: list[str]) -> list[layout.Target]:
    """Targets for the keys, zoo_requirements first; refuses entries with a known manifest conflict."""
    targets: list[layout.Target] = []
    for entry in zoo.with_requirements(keys):
        requested = next((k for k in keys if _same(zoo, k, entry)), entry.key)
        if entry.conflict:
            raise ManifestError(f"'{entry.key}' cannot be fetched: {entry.conflict}")
        targets.append(layout.target_for(zoo, requested))
    return targets


def _same(zoo: Zoo, key: str, entry: Entry) -> bool:
    try:
        return zoo.resolve(key).key == entry.key
    except ManifestError:
        return False


def fetch(zoo: Zoo, keys: list[str], opts: FetchOptions) -> list[ResourceReport]:
    targets = plan(zoo, keys)
    source = LocalSource(opts.from_path) if opts.from_path else None
    if source is not None:
        opts.transfer.offline = True  # --from never touches the network
    roots = mirror_roots(opts.mirrors, mirror_only=opts.mirror_only)
    todo = [(t, r) for t in targets for r in t.entry.resources if not _installed(t, r, opts)[0]]
    sizes = preflight(todo, opts, lambda res: _urls(res, roots, source))
    if opts.progress is not None:
        known = [sizes.get(id(r)) for _, r in todo]
        opts.progress.plan(sum(known) if todo and None not in known else None, len(todo))
    reports = []
    for target in targets:
        for res in target.entry.resources:
            reports.append(_install_one(target, res, opts, _urls(res, roots, source), sizes.get(id(res))))
        if not opts.extract:
            continue  # archives only: MMF must not see the data as built
        for folder in target.marker_folders(opts.data_dir):
            mine = [r for r in target.entry.resources if target.marker_folder(opts.data_dir, r) == folder]
            if all(_installed(target, r, opts, quick=True)[0] for r in mine):
                layout.mark_built(folder, target.entry.version)
    return reports


def _urls(res: Resource, roots: list[str], source: LocalSource | None) -> list[str]:
    if source is None:
        return resource_urls(res, roots)
    url = source.url_for(res)
    if url is None:
        raise OfflineError(f"{res.file_name} ({res.url}) is not in --from {source.path}: add the archive there "
                           "(matched by file name and sha256) or fetch it online")
    return [url]


def _installed(target: layout.Target, res: Resource, opts: FetchOptions, quick: bool = False) -> tuple[bool, str]:
    folder = target.folder(opts.data_dir, res)
    if opts.force and not quick:
        return False, ""
    rec = layout.read_record(folder, res)
    if rec and rec.get("version") == target.entry.version and (not res.hashcode or rec.get("sha256") == res.hashcode):
        wanted_tree = res.compressed and opts.extract
        if rec.get("extracted") or not wanted_tree:
            if all((folder / p).exists() for p in rec.get("top_level", [])):
                return True, "already installed"
    if not rec and layout.is_built(target.marker_folder(opts.data_dir, res), target.entry.version):
        return True, "built by MMF"
    return False, ""


def _install_one(target: layout.Target, res: Resource, opts: FetchOptions, urls: list[str],
                 size: int | None) -> ResourceReport:
    label = f"{target.entry.key}:{res.file_name}"
    folder = target.folder(opts.data_dir, res)
    state = layout.state_dir(folder)
    try:
        state.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DiskError(f"cannot create {state}: {exc.strerror}; choose a writable --data-dir or MMF_DATA_DIR") from None
    t0 = time.monotonic()
    with resource_lock(state / f"{res.file_name}.lock", label, opts.lock_timeout, opts.say):
        done, why = _installed(target, res, opts)
        if done:  # maybe another process finished it while we waited
            return ResourceReport(target.entry.key, res.file_name, why, str(folder))
        for stale in state.glob(f"extract-{res.file_name}-*"):
            shutil.rmtree(stale, ignore_errors=True)  # left by a killed extraction; we hold the lock
        archive = folder / res.file_name
        report = ResourceReport(target.entry.key, res.file_name, "installed", str(folder))
        tree, files = _obtain(target, res, opts, urls, size, archive, report)
        if opts.extract and res.compressed:
            if tree is None:
                tree, files = _extract(res, archive, state, report.size)
            # an interrupted publish must not look installed: drop the record and MMF's marker first
            layout.record_path(folder, res).unlink(missing_ok=True)
            layout.unmark(target.marker_folder(opts.data_dir, res))
            top = _publish(tree, folder)
        else:
            top = [res.file_name]
            report.status = "installed" if not res.compressed else "downloaded (not extracted)"
        layout.write_record(folder, res, {
            "version": target.entry.version, "url": res.url, "sha256": report.sha256, "size": report.size,
            "extracted": bool(opts.extract and res.compressed), "top_level": top, "files": files,
            "archive_kept": True, "installed_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
        })
        if res.compressed and opts.extract and (opts.delete_archives or res.delete_original):
            archive.unlink(missing_ok=True)
            rec = layout.read_record(folder, res)
            rec["archive_kept"] = False
            layout.write_record(folder, res, rec)
        report.seconds = time.monotonic() - t0
        return report


def _obtain(target, res, opts, urls, size, archive: Path, report: ResourceReport):
    """A verified archive at `archive`; returns (extracted temp tree or None, file list) when streamed."""
    state = archive.parent / layout.STATE_DIR
    if archive.exists() and not opts.force:
        digest = sha256_file(archive)
        if not res.hashcode or digest == res.hashcode:
            report.size, report.sha256, report.status = archive.stat().st_size, digest, "installed (kept archive)"
            return None, None
        log.warning("%s: kept archive %s does not match its sha256; fetching it again", res.file_name, archive)
    if not res.hashcode:
        opts.say(f"warning: {res.file_name} has no hashcode in the manifest; it is checked for size only")
    chunk_hashes = _chunk_hashes(res, urls, opts)
    streamer = _Streamer(res, state, opts, archive) if opts.stream_extract and opts.extract and res.compressed else None
    advance = opts.progress.bar(f"{target.entry.key}:{res.file_name}", size) if opts.progress else None
    tr = Transfer(f"{target.entry.key}:{res.file_name}", urls, state / f"{res.file_name}.part",
                  state / f"{res.file_name}.journal.json", size=res.size, sha256=res.hashcode,
                  chunk_hashes=chunk_hashes, chunk_size=(res.chunk_hashes or {}).get("chunk_size"),
                  opts=opts.transfer, progress=advance, sink=streamer.feed if streamer else None)
    if streamer:
        streamer.part = tr.part
    try:
        result = tr.run()
    except BaseException:
        if streamer:
            streamer.abort()
        raise
    report.size, report.sha256, report.fetched, report.resumed = result.size, result.sha256, result.fetched, result.resumed
    report.mirrors = result.mirrors
    tree = files = None
    if streamer:
        tree, files = streamer.finish(result.sink_error)
    os.replace(tr.part, archive)  # verified: publish the archive under MMF's name
    Path(tr.journal_path).unlink(missing_ok=True)
    return tree, files


def _chunk_hashes(res: Resource, urls: list[str], opts: FetchOptions) -> list[str] | None:
    spec = res.chunk_hashes
    if not spec:
        return None
    if "xxh3_128" in spec:
        return [str(h) for h in spec["xxh3_128"]]
    if opts.transfer.offline:
        return None  # a sidecar URL needs the network; the sha256 still guards the file
    import requests

    try:
        resp = requests.get(spec["url"], timeout=(opts.transfer.connect_timeout, opts.transfer.stall_timeout))
        resp.raise_for_status()
        data = resp.json()
        return [str(h) for h in data.get("xxh3_128", data if isinstance(data, list) else [])]
    except (requests.RequestException, ValueError) as exc:
        log.warning("%s: chunk hash sidecar %s unavailable (%s); relying on sha256", res.file_name, spec["url"], exc)
        return None


class _Streamer:
    """Extract while downloading into a private temp folder; published only after the sha256 matched."""

    def __init__(self, res: Resource, state: Path, opts: FetchOptions, archive: Path):
        self.res, self.state, self.archive = res, state, archive
        self.part: Path | None = None
        self.ex = None
        self.dest: Path | None = None
        self.off = False

    def feed(self, view) -> None:
        if self.off:
            return
        if self.ex is None:
            from zoo import extract

            fmt = extract.detect_format(self.part)
            if fmt is None or not extract.StreamExtractor.supports(fmt):
                self.off = True
                return
            self.dest = _fresh_tmp(self.state, self.res)
            self.ex = extract.StreamExtractor(self.dest, fmt, max_bytes=_max_bytes(self.res, self.res.size))
        self.ex.feed(view)

    def abort(self) -> None:
        if self.ex is not None:
            self.ex.abort()
        if self.dest is not None:
            shutil.rmtree(self.dest, ignore_errors=True)

    def finish(self, sink_error: str | None):
        if self.ex is None or sink_error:
            self.abort()
            return None, None
        try:
            return self.dest, self.ex.close()
        except Exception as exc:  # noqa: BLE001 - fall back to a fresh extraction that reports the real error
            log.info("%s: streamed extraction failed (%s); extracting again from the verified archive",
                     self.res.file_name, exc)
            self.abort()
            return None, None


def _max_bytes(res: Resource, size: int | None) -> int | None:
    if res.extracted_size:
        return int(res.extracted_size * 1.5) + (1 << 20)
    return max(size * 50, 1 << 30) if size else None


def _fresh_tmp(state: Path, res: Resource) -> Path:
    path = state / f"extract-{res.file_name}-{os.getpid()}-{time.monotonic_ns()}"
    path.mkdir(parents=True)
    return path


def _extract(res: Resource, archive: Path, state: Path, size: int | None):
    from zoo import extract

    tmp = _fresh_tmp(state, res)
    try:
        files = extract.extract_archive(archive, tmp, declared_size=res.extracted_size,
                                        max_bytes=_max_bytes(res, size or archive.stat().st_size))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return tmp, files


def _publish(tree: Path, folder: Path) -> list[str]:
    """Move the extracted tree into folder by renames (same filesystem), merging into existing folders."""
    top = sorted(p.name for p in tree.iterdir())
    try:
        _merge(tree, folder)
    finally:
        shutil.rmtree(tree, ignore_errors=True)
    return top


def _merge(src: Path, dst: Path) -> None:
    dst.mkdir(parents=True, exist_ok=True)
    for item in src.iterdir():
        target = dst / item.name
        if item.is_dir() and not item.is_symlink() and target.is_dir() and not target.is_symlink():
            _merge(item, target)
        elif item.is_dir() and not item.is_symlink() and (target.exists() or target.is_symlink()):
            target.unlink()  # a file where the new tree has a folder
            os.rename(item, target)
        else:
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            os.replace(item, target)


def verify_installed(zoo: Zoo, keys: list[str], data_dir: Path) -> list[tuple[str, str, bool, str]]:
    """Re-hash kept archives and check extracted files against the recorded list: (key, file, ok, detail)."""
    out = []
    for target in plan(zoo, keys):
        for res in target.entry.resources:
            folder = target.folder(data_dir, res)
            rec = layout.read_record(folder, res)
            if not rec:
                built = any(layout.is_built(f, target.entry.version) for f in target.marker_folders(data_dir))
                out.append((target.entry.key, res.file_name, False,
                            "built by MMF, no file list to check" if built else "not installed"))
                continue
            problems = []
            archive = folder / res.file_name
            if archive.exists():
                digest = sha256_file(archive)
                if res.hashcode and digest != res.hashcode:
                    problems.append(f"archive sha256 {digest[:12]}… != manifest {res.hashcode[:12]}…")
            elif rec.get("archive_kept"):
                problems.append("archive missing")
            for rel, size in rec.get("files") or []:
                p = folder / rel
                if not p.is_file():
                    problems.append(f"missing {rel}")
                elif p.stat().st_size != size:
                    problems.append(f"{rel} is {p.stat().st_size} bytes, extracted {size}")
                if len(problems) > 5:
                    break
            out.append((target.entry.key, res.file_name, not problems, "; ".join(problems) or
                        f"ok ({len(rec.get('files') or [])} files{', archive re-hashed' if archive.exists() else ''})"))
    return out
