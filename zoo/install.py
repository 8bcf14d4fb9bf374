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
from contextlib import ExitStack, nullcontext
from dataclasses import dataclass, field
from pathlib import Path

from zoo import layout, origin, publish, records, trust
from zoo.errors import DiskError, ManifestError, OfflineError, UnknownKeyError, ZooError, with_result
from zoo.journal import Journal
from zoo.lock import resource_lock
from zoo.manifest import Entry, Resource, Zoo
from zoo.content import check_for
from zoo.mirrors import Source, mirror_roots, resource_sources
from zoo.fsutil import folder_problem, human, is_inside, sha256_file
from zoo.sources import LocalSource
from zoo.space import preflight
from zoo.transfer import Transfer, TransferOptions

log = logging.getLogger("zoo")


@dataclass
class FetchOptions:
    data_dir: Path
    mirrors: list[str] = field(default_factory=list)
    mirror_only: bool | None = None
    transfer: TransferOptions = field(default_factory=TransferOptions)
    from_path: Path | list[Path] | None = None  # --from: one path or several (zoo.sources.LocalSource)
    force: bool = False
    extract: bool = True
    delete_archives: bool = False
    stream_extract: bool = True
    lock_timeout: float | None = None
    trust: bool = True  # False (--no-trust): verified installs do not go into the user's trust store
    progress: object | None = None  # zoo.progress.Progress: plan(total, n) and bar(label, total) -> advance
    say: Callable[[str], None] = print


@dataclass
class ResourceReport:
    key: str
    file_name: str
    status: str  # installed | already installed | built by MMF | downloaded (not extracted) | failed | interrupted
    path: str
    size: int | None = None
    sha256: str | None = None
    fetched: int = 0
    resumed: int = 0
    seconds: float = 0.0
    mirrors: dict = field(default_factory=dict)
    restarted: str | None = None  # why an earlier run's partial download was not reused (also said on stderr)
    error: str | None = None  # failed / interrupted: why (the fetch stops there; its error carries these reports)


def plan(zoo: Zoo, keys: list[str]) -> list[layout.Target]:
    """Targets for the keys, zoo_requirements first; refuses entries with a known manifest conflict."""
    targets: list[layout.Target] = []
    for entry in zoo.with_requirements(keys):
        requested = next((k for k in keys if _same(zoo, k, entry)), entry.key)
        if entry.invalid:
            raise ManifestError(f"'{entry.key}' in {entry.source} cannot be fetched: {entry.invalid}")
        if entry.conflict:
            raise ManifestError(f"'{entry.key}' cannot be fetched: {entry.conflict}")
        targets.append(layout.target_for(zoo, requested))
    return targets


def _same(zoo: Zoo, key: str, entry: Entry) -> bool:
    try:
        return zoo.resolve(key).key == entry.key
    except ManifestError:
        return False


def fetch(zoo: Zoo, keys: list[str], opts: FetchOptions, redo: set | None = None) -> list[ResourceReport]:
    """Install keys; `redo` = {(entry key, file_name)} re-installs those resources even if they look installed."""
    redo = redo or set()
    targets = plan(zoo, keys)
    source = LocalSource(opts.from_path) if opts.from_path else None
    if source is not None:
        opts.transfer.offline = True  # --from never touches the network
    roots = mirror_roots(opts.mirrors, mirror_only=opts.mirror_only)
    todo = [(t, r) for t in targets for r in t.entry.resources
            if (t.entry.key, r.file_name) in redo or not _installed(t, r, opts)[0]]
    if not todo:  # all installed: a no-op that needs no write (a second user of a read-only shared data dir)
        return [_already(t, r, opts, _installed(t, r, opts)[1]) for t in targets for r in t.entry.resources]
    problem = folder_problem(opts.data_dir)
    if problem:
        raise DiskError(f"data dir {opts.data_dir} {problem}; pass another --data-dir (or set MMF_DATA_DIR)")
    if not opts.force:
        origin.refuse_other([(t, r) for t, r in todo if (t.entry.key, r.file_name) not in redo], opts.data_dir,
                            "fetching", "to keep using it, or --force to replace it")
    with ExitStack() as locks:
        # every resource of the keys, not only those to install: installing a key checks its installed ones under
        # their locks too, and a lock taken later, out of the one order, deadlocks with a fetch that holds it
        # and waits in order for ours. Before any probe: --lock-timeout bounds the wait, not probes + wait.
        held = _lock_all([(t, r) for t in targets for r in t.entry.resources], opts, locks)
        # what another process installed while we waited for its locks is neither planned nor probed again
        todo = [(t, r) for t, r in todo if (t.entry.key, r.file_name) in redo or not _installed(t, r, opts)[0]]
        sizes = preflight(todo, opts, lambda res: _urls(res, roots, source))
        if opts.progress is not None:
            known = [sizes.get(id(r)) for _, r in todo]
            opts.progress.plan(sum(known) if todo and None not in known else None, len(todo))
        reports: list[ResourceReport] = []
        try:
            for target in targets:
                _install_target(target, opts, roots, source, sizes, redo, held, reports)
        except (ZooError, KeyboardInterrupt) as exc:  # what finished stays installed: say so beside the error
            raise with_result(exc, reports)
        return reports


def _install_target(target, opts, roots, source, sizes, redo, held, reports: list[ResourceReport]) -> None:
    """Install the target's resources, appending a report for each (a "failed" one for the resource that raised),
    then mark its folders built for MMF."""
    for res in target.entry.resources:
        try:
            reports.append(_install_one(target, res, opts, _urls(res, roots, source), sizes.get(id(res)),
                                        redo=(target.entry.key, res.file_name) in redo, held=held))
        except (ZooError, KeyboardInterrupt) as exc:
            stopped = "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"
            reports.append(ResourceReport(target.entry.key, res.file_name, stopped, str(target.folder(
                opts.data_dir, res)), error=str(exc) or type(exc).__name__))
            raise
    if not opts.extract:
        return  # archives only: MMF must not see the data as built
    for folder in target.marker_folders(opts.data_dir):
        mine = [r for r in target.entry.resources if target.marker_folder(opts.data_dir, r) == folder]
        if all(_installed(target, r, opts, quick=True)[0] for r in mine):
            if not layout.is_built(folder, target.entry.version):  # unchanged: not rewritten
                layout.mark_built(folder, target.entry.version)
            publish.clear_mmf_note(folder)  # every file now has a record: MMF's marker is the zoo's own


def _lock_path(target: layout.Target, res: Resource, opts: FetchOptions) -> Path:
    return layout.state_dir(target.folder(opts.data_dir, res)) / f"{res.file_name}.lock"


def _lock_all(pairs, opts: FetchOptions, locks: ExitStack) -> set[Path]:
    """Take the lock of every resource of `pairs`, in path order (two fetches of overlapping keys never deadlock),
    and hold them for the whole fetch; returns their paths."""
    paths = {_lock_path(t, r, opts): f"{t.entry.key}:{r.file_name}" for t, r in pairs}
    for path in sorted(paths):
        _make_state_dir(path.parent)
        locks.enter_context(resource_lock(path, paths[path], opts.lock_timeout,
                                          progress=lambda: _holder_progress(pairs, opts)))
    return set(paths)


def _journal_path(target: layout.Target, res: Resource, opts: FetchOptions) -> Path:
    return layout.state_dir(target.folder(opts.data_dir, res)) / f"{res.file_name}.journal.json"


def _holder_progress(pairs, opts: FetchOptions) -> str | None:
    """How far whoever holds these resources' locks got, as the shared data dir shows it (for a waiter's note):
    the journaled bytes of the downloads in progress and how many of the resources are installed."""
    moving, installed = [], 0
    for t, r in pairs:
        journal = Journal.load(_journal_path(t, r, opts))
        if journal is not None and journal.size:
            kept = journal.kept_bytes()
            moving.append(f"{r.file_name} {human(kept)} of {human(journal.size)} ({100 * kept // journal.size}%)")
        elif (layout.read_record(t.folder(opts.data_dir, r), r) or {}).get("version") == t.entry.version:
            installed += 1
    said = [f"downloaded so far: {', '.join(moving)}"] if moving else []
    return "; ".join(said + ([f"{installed} of {len(pairs)} resources installed"] if installed else [])) or None


def _make_state_dir(state: Path) -> None:
    try:
        state.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DiskError(f"cannot create {state}: {exc.strerror}; choose a writable --data-dir or MMF_DATA_DIR") from None


def _urls(res: Resource, roots: list[str], source: LocalSource | None) -> list[Source | str]:
    if source is None:
        return resource_sources(res, roots)
    url = source.url_for(res)
    if url is None:
        raise OfflineError(f"{res.file_name} ({res.url}) is not in --from {source.path}: {source.missing(res)}")
    return [url]


def _installed(target: layout.Target, res: Resource, opts: FetchOptions, quick: bool = False) -> tuple[bool, str]:
    folder = target.folder(opts.data_dir, res)
    if opts.force and not quick or publish.interrupted(folder, res.file_name):
        return False, ""
    rec = layout.read_record(folder, res)
    if rec and rec.get("version") == target.entry.version and (not res.hashcode or rec.get("sha256") == res.hashcode):
        wanted_tree = res.compressed and opts.extract
        if rec.get("extracted") or not wanted_tree:
            # damaged or missing files mean not installed: fetch mends them (stamp check, hashing only changed files)
            if all((folder / p).exists() for p in rec.get("top_level", [])) and \
                    not records.check_record(folder, rec, full=False, limit=1):
                return True, "already installed"
    if not rec and layout.is_built(target.marker_folder(opts.data_dir, res), target.entry.version):
        return True, "built by MMF"
    return False, ""


def _already(target: layout.Target, res: Resource, opts: FetchOptions, why: str) -> ResourceReport:
    """The report of a resource found installed (`why`: already installed, built by MMF); reads, never writes."""
    folder = target.folder(opts.data_dir, res)
    untrusted = trust.record_problem(layout.record_path(folder, res)) if why == "already installed" else None
    if untrusted:
        opts.say(f"note: {target.entry.key}:{res.file_name}: installed, but its pickles are not trusted: {untrusted}")
    return ResourceReport(target.entry.key, res.file_name, why, str(folder))


def _install_one(target: layout.Target, res: Resource, opts: FetchOptions, urls: list[str],
                 size: int | None, redo: bool = False, held: set[Path] = frozenset()) -> ResourceReport:
    label = f"{target.entry.key}:{res.file_name}"
    folder = target.folder(opts.data_dir, res)
    state = layout.state_dir(folder)
    _make_state_dir(state)
    t0 = time.monotonic()
    lock = _lock_path(target, res, opts)
    with nullcontext() if lock in held else resource_lock(
            lock, label, opts.lock_timeout, progress=lambda: _holder_progress([(target, res)], opts)), \
            ExitStack() as publishing:
        done, why = (False, "") if redo else _installed(target, res, opts)
        if done:  # maybe another process finished it while we waited
            return _already(target, res, opts, why)
        for stale in state.glob(f"extract-{res.file_name}-*"):
            shutil.rmtree(stale, ignore_errors=True)  # left by a killed extraction; we hold the lock
        archive = folder / res.file_name
        report = ResourceReport(target.entry.key, res.file_name, "installed", str(folder))
        previous = layout.read_record(folder, res) or {}
        tree, files = _obtain(target, res, opts, urls, size, archive, report)
        if opts.extract and res.compressed:
            if tree is None:
                tree, files = _extract(res, archive, state)
            top = _publish(target, res, opts, tree, files, previous, label, publishing)
            rows = records.file_rows(folder, files)
        else:
            top = [res.file_name]
            report.status = "installed" if not res.compressed else "downloaded (not extracted)"
            rows = records.file_rows(folder, [(res.file_name, archive.stat().st_size, None)]) \
                if not res.compressed else []
        _record(target, res, opts, report, top, rows, archive)
        report.seconds = time.monotonic() - t0
        return report


def _record(target: layout.Target, res: Resource, opts: FetchOptions, report: ResourceReport, top: list[str],
            rows: list, archive: Path) -> None:
    """Write the install record; it grants pickle trust (goes into the user's trust store) only when the archive
    matched the sha256 of a manifest the user chose (not a pack's own entry without --trust-pack), unless the
    user declined (--no-trust)."""
    folder = target.folder(opts.data_dir, res)
    verified = bool(res.hashcode) and report.sha256 == res.hashcode
    grant = verified and opts.trust and trust.chosen(target.entry.source)
    rec = {
        "format": records.RECORD_FORMAT, "key": target.name.replace("/", "."),
        "version": target.entry.version, "url": res.url, "manifest": target.entry.source,
        "sha256": report.sha256, "verified": verified,
        "size": report.size, "extracted": bool(opts.extract and res.compressed), "top_level": top,
        "files": rows, "archive_kept": True, "installed_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
        **origin.remember(target.entry, res),
    }
    if not opts.trust:
        rec["no_trust"] = True
    layout.write_record(folder, res, rec, grant)
    publish.end(folder, res.file_name)
    if verified and not opts.trust:
        opts.say(f"note: {target.entry.key}:{res.file_name}: installed with --no-trust: its pickles are not trusted "
                 f"until `mmf zoo adopt {rec['key']}`")
    elif verified and not grant:
        opts.say(f"note: {target.entry.key}:{res.file_name}: installed from the pack's own entry without "
                 f"--trust-pack: its pickles are not trusted (if you trust the pack's author: `mmf zoo adopt "
                 f"{rec['key']} --from {trust.pack_path(target.entry.source)} --trust-pack`)")
    if res.compressed and opts.extract and (opts.delete_archives or res.delete_original):
        archive.unlink(missing_ok=True)
        rec["archive_kept"] = False
        layout.write_record(folder, res, rec, grant)


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
                  _journal_path(target, res, opts), size=res.size, sha256=res.hashcode,
                  chunk_hashes=chunk_hashes, chunk_size=(res.chunk_hashes or {}).get("chunk_size"),
                  opts=opts.transfer, progress=advance, sink=streamer.feed if streamer else None,
                  sink_restart=streamer.restart if streamer else None, content_check=check_for(res.file_name))
    if streamer:
        streamer.part = tr.part
    try:
        result = tr.run()
    except BaseException:
        if streamer:
            streamer.abort()
        raise
    report.size, report.sha256, report.fetched, report.resumed = result.size, result.sha256, result.fetched, result.resumed
    report.mirrors, report.restarted = result.mirrors, result.restarted
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
            from zoo.archive import StreamExtractor, detect_format

            fmt = detect_format(self.part)
            if fmt is None or not StreamExtractor.supports(fmt):
                self.off = True
                return
            self.dest = _fresh_tmp(self.state, self.res)
            self.ex = StreamExtractor(self.dest, fmt, archive_size=self.res.size,
                                      declared_size=self.res.extracted_size, name=self.res.file_name)
        try:
            self.ex.feed(view)
        except BaseException:
            self.abort()  # now, not after the download: a refused tree (a bomb, bad bytes) must not stay on disk
            self.off = True
            raise

    def abort(self) -> None:
        if self.ex is not None:
            self.ex.abort()
            self.ex = None
        if self.dest is not None:
            shutil.rmtree(self.dest, ignore_errors=True)
            self.dest = None

    def restart(self) -> None:
        """The transfer starts over with another file (another size's turn): drop what was streamed so far."""
        self.abort()
        self.ex, self.dest, self.off = None, None, False

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


def _fresh_tmp(state: Path, res: Resource) -> Path:
    path = state / f"extract-{res.file_name}-{os.getpid()}-{time.monotonic_ns()}"
    path.mkdir(mode=0o700, parents=True)  # private until the sha256 vouches for it; what moves out has shared modes
    return path


def _extract(res: Resource, archive: Path, state: Path):
    from zoo.archive import extract_archive

    tmp = _fresh_tmp(state, res)
    try:
        files = extract_archive(archive, tmp, declared_size=res.extracted_size)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return tmp, files


def _publish(target: layout.Target, res: Resource, opts: FetchOptions, tree: Path, files, previous: dict,
             label: str, publishing: ExitStack) -> list[str]:
    """Move the extracted tree into the resource's folder, writing only what is its own (see `zoo.publish`): any
    clash is refused before the record, MMF's marker or a single file is touched. `publishing` receives the entry's
    publish lock, held until the caller has written the record: from check to record, no other resource of the
    entry moves files under this one."""
    data_dir = opts.data_dir
    folder = target.folder(data_dir, res)
    marker = target.marker_folder(data_dir, res)
    try:
        publishing.enter_context(resource_lock(layout.state_dir(target.root(data_dir)) / "publish.lock",
                                               f"{target.entry.key} (publishing)", opts.lock_timeout))
        owned, roots = publish.ownership(folder, res.file_name, previous)
        adopt = _mmf_region(target, res, data_dir) if not previous else None
        mine = publish.Mine(label, layout.record_path(folder, res), res.file_name, owned, roots, adopt)
        keep = publish.check(tree, files, folder, data_dir, mine)
        top = sorted(p.name for p in tree.iterdir())
        if adopt is not None:
            publish.note_mmf_built(marker)  # the marker goes next; MMF's files stay adoptable after a crash
        # an interrupted publish must not look installed: MMF's marker goes first, then the record goes aside
        layout.unmark(marker)
        publish.begin(folder, res.file_name, layout.record_path(folder, res), top)
        publish.merge(tree, folder, keep)
    finally:
        shutil.rmtree(tree, ignore_errors=True)
    return top


def _mmf_region(target: layout.Target, res: Resource, data_dir: Path):
    """Where this resource may replace files MMF extracted: its marker folder, minus other resources' marker
    folders inside it (an `extras` archive must not take over `features/`); None unless MMF built it."""
    marker = target.marker_folder(data_dir, res)
    sharing = [layout.record_path(target.folder(data_dir, r), r) for r in target.entry.resources
               if target.marker_folder(data_dir, r) == marker]
    if not publish.built_by_mmf(marker, sharing):
        return None
    inner = [m for m in target.marker_folders(data_dir) if m != marker and is_inside(m, marker)]
    return marker, inner


BUILT_BY_MMF = "built by MMF, not verifiable by content (no install record; `mmf zoo adopt KEY` checks it " \
    "against its kept archives)"


@dataclass
class Check:
    """What `mmf zoo verify` found for one resource."""

    key: str
    file_name: str
    ok: bool
    detail: str
    problems: list[str] = field(default_factory=list)  # damaged / missing files, bad archive: repair mends these
    extra: list[str] = field(default_factory=list)  # files nobody installed: reported, never deleted
    untrusted: str | None = None  # why its pickles would not be trusted (copied data dir, --no-trust, ...)
    unverifiable: bool = False  # built by MMF: nothing to check its content against (fails only with --strict)
    foreign: str | None = None  # installed from another manifest's entry (this one): judged by its own record

    @property
    def tag(self) -> str:
        return "MMF" if self.unverifiable else "ok " if self.ok else "BAD"


def verify_installed(zoo: Zoo, keys: list[str], data_dir: Path, limit: int = 20) -> list[Check]:
    """Re-hash every installed file (xxh3-128) and kept archive (sha256) against the install records. A key no
    active manifest has is judged by the entry its install records remember (zoo.origin)."""
    out = []
    for target in _verify_targets(zoo, keys, data_dir):
        for res in target.entry.resources:
            out.append(_check_one(target, res, data_dir, limit))
    return out


def _verify_targets(zoo: Zoo, keys: list[str], data_dir: Path) -> list[layout.Target]:
    targets: list[layout.Target] = []
    for key in keys:
        try:
            found = plan(zoo, [key])
        except UnknownKeyError:
            recorded = origin.recorded_target(data_dir, key)
            if recorded is None:
                raise
            found = [recorded]
        targets += [t for t in found if t not in targets]
    return targets


def _check_one(target: layout.Target, res: Resource, data_dir: Path, limit: int) -> Check:
    folder = target.folder(data_dir, res)
    rec = layout.read_record(folder, res)
    key = target.entry.key
    if not rec:
        if _built_by_mmf(target, res, data_dir):
            return Check(key, res.file_name, True, BUILT_BY_MMF, unverifiable=True)
        return Check(key, res.file_name, False, "not installed", ["not installed"])
    came = origin.judge(rec, target.entry, res)
    # an install from another manifest's entry is judged by its own record: its archive's sha256 and file hashes
    expected = rec.get("sha256") if came.how == "other" else res.hashcode
    problems = _entry_problems(rec, target.entry, res, came) + _archive_problems(rec, folder / res.file_name, expected)
    if not records.has_hashes(rec):
        problems.append("record has no content hashes (written by an older version)")
    untrusted = trust.record_problem(layout.record_path(folder, res))
    if untrusted:
        problems.append(untrusted)
    problems += [f"{d.rel}: {d.problem}" for d in records.check_record(folder, rec, full=True, limit=limit)]
    found = records.records_in(folder)
    siblings = [r for _, r in found]
    # every archive this entry lands in this folder, installed or not (one refused for a clash stays, verified)
    archives = {name for name, _ in found} | \
        {r.file_name for r in target.entry.resources if target.folder(data_dir, r) == folder}
    extra = records.extra_files(folder, siblings, archives, records.listed_above(folder, target.root(data_dir))) \
        if rec.get("extracted") else []
    n = len(rec.get("files") or [])
    archive = folder / res.file_name
    detail = "; ".join(problems[:6] + [f"extra file {e}" for e in extra[:4]]) or \
        f"ok ({n} files re-hashed{', archive re-hashed' if archive.exists() and rec.get('extracted') else ''})"
    if came.how == "other":
        detail += f"; {came.note}"
    return Check(key, res.file_name, not problems and not extra, detail, problems, extra, untrusted,
                 foreign=came.use if came.how == "other" else None)


def _built_by_mmf(target: layout.Target, res: Resource, data_dir: Path) -> bool:
    """MMF's marker for this version and no install record of ours beside it (a resource whose record is gone
    from a folder the zoo installed is missing, not MMF's)."""
    marker = target.marker_folder(data_dir, res)
    sharing = [layout.record_path(target.folder(data_dir, r), r) for r in target.entry.resources
               if target.marker_folder(data_dir, r) == marker]
    return layout.is_built(marker, target.entry.version) and publish.built_by_mmf(marker, sharing)


def _entry_problems(rec: dict, entry: Entry, res: Resource, came: origin.Origin) -> list[str]:
    """Where the install differs from the entry that judges it (nothing for another manifest's install)."""
    if came.how != "changed":
        return []
    since = f" ({came.note})" if came.note else ""
    if rec.get("version") != entry.version:
        return [f"installed version {rec.get('version')!r}, manifest has {entry.version!r}{since}"]
    return [f"installed from archive sha256 {str(rec.get('sha256'))[:12]}…, manifest has {res.hashcode[:12]}…{since}"]


def _archive_problems(rec: dict, archive: Path, expected: str | None) -> list[str]:
    if rec.get("extracted") and archive.exists():
        digest = sha256_file(archive)
        if expected and digest != expected:
            return [f"kept archive: sha256 {digest[:12]}…, not the installed archive's {expected[:12]}…"]
    elif rec.get("extracted") and rec.get("archive_kept"):
        return ["kept archive missing"]
    return []


def repair(zoo: Zoo, keys: list[str], opts: FetchOptions,
           replace_foreign: bool = False) -> tuple[list[Check], list[ResourceReport]]:
    """Re-install just the resources whose files are damaged or missing (and MMF-built ones, so they get a record):
    from the kept archive when it verifies, else from the mirrors. Other resources are not touched. An install
    from another manifest's entry is not replaced by the active manifest's data unless `replace_foreign` (--force).
    Returns (checks before, install reports)."""
    before = verify_installed(zoo, keys, opts.data_dir)
    foreign = [c for c in before if c.foreign and c.problems]
    for c in foreign:
        if c.key not in zoo.entries:  # rebuilt from its records: no manifest to repair it from
            raise ManifestError(f"cannot repair {c.key}:{c.file_name}: no active manifest has '{c.key}'; pass "
                                f"{c.foreign} to repair it from the entry it was installed from")
        if not replace_foreign:
            raise ManifestError(f"not repairing {c.key}:{c.file_name}: it was installed from another manifest's "
                                f"entry, and repairing from the active manifest would replace that data with other "
                                f"data; pass {c.foreign} to repair it from its own entry, or --force to replace it")
    # replacing another manifest's install replaces all of it: a mix of two entries' data is no install at all
    redo = {(c.key, c.file_name) for c in before if c.problems or c.unverifiable or replace_foreign and c.foreign}
    reports = fetch(zoo, keys, opts, redo=redo) if redo else []
    return before, [r for r in reports if (r.key, r.file_name) in redo]
