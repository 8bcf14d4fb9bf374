"""`mmf zoo ...`: list, info, fetch, verify, adopt, pack, hash, mirrors, serve. Thin wrappers over the library.

Exit codes: 0 ok, 1 usage or manifest error, 2 verification failure, 3 network failure after retries (or network
needed while offline), 4 disk problem, 5 lock timeout, 130 interrupted.
"""
from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import List, Optional

import typer

from zoo.errors import EXIT_CODES, ZooError
from zoo.serve_conns import Limits
from zoo.transfer.options import DEFAULT_MIN_RATE

app = typer.Typer(no_args_is_help=True, add_completion=False,
                  help="Fetch, verify and install MMF zoo datasets and models.\n\nExit codes: "
                  + "; ".join(f"{k} {v}" for k, v in EXIT_CODES.items()))
log = logging.getLogger("zoo")

ZooOpt = typer.Option(None, "--zoo", help="Extra manifest(s) in MMF's schema (models if the name says so).")
DataDirOpt = typer.Option(None, "--data-dir", help="MMF data dir (default: $MMF_DATA_DIR or MMF's cache).")


def _setup_logging(quiet: bool) -> None:
    if not log.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("mmf zoo: %(message)s"))
        log.addHandler(handler)
    log.setLevel(logging.WARNING if quiet else logging.INFO)
    log.propagate = False


def _run(fn):
    """Turn ZooErrors into one line on stderr and their exit code."""
    try:
        return fn()
    except ZooError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(exc.exit_code) from None
    except KeyboardInterrupt as exc:
        typer.echo(f"interrupted: {_kept(exc)}", err=True)
        raise typer.Exit(getattr(exc, "exit_code", 130)) from None


def _kept(exc: BaseException) -> str:
    """What an interrupted fetch left to resume (the transfer attaches it to the KeyboardInterrupt)."""
    kept = getattr(exc, "zoo_kept", None)
    if not kept:
        return "what was downloaded is kept and resumes on the next run"
    part, n, size = kept
    if n <= 0:  # never claim a partial download that does not exist
        return "nothing of the file in progress had arrived yet; run the same command to start again"
    return f"{_human(n)} of {_human(size)} kept in {part}; run the same command to resume"


class Terminated(KeyboardInterrupt):
    """SIGTERM: stop like Ctrl-C (journal consistent, partial kept), exit 143."""

    exit_code = 143


def _stop_on_sigterm() -> None:
    import signal

    def handler(signum, frame):
        raise Terminated()

    try:
        signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread (embedded use): leave the default
        pass


def _zoo(zoo_paths, from_path=None, trust_pack: bool = False):
    from zoo.errors import ManifestError
    from zoo.manifest import load_zoo
    from zoo.sources import is_pack

    zoo = load_zoo(zoo_paths or [])
    if from_path and Path(from_path).is_file() and is_pack(Path(from_path)):
        from zoo.pack import merge_pack_entries, pack_entries

        merge_pack_entries(zoo, pack_entries(Path(from_path)), Path(from_path), consent=trust_pack)
    elif trust_pack:
        raise ManifestError(f"--trust-pack needs --from PACK (a file written by `mmf zoo pack`), got "
                            f"{'--from ' + str(from_path) if from_path else 'no --from'}")
    return zoo


TrustPackOpt = typer.Option(False, "--trust-pack", help="Use the --from pack's own manifest entries as a manifest you "
                            "chose: they may replace the built-in ones and their pickles are trusted (this runs the "
                            "pack author's code at training time).")


def _data_dir(data_dir: Optional[Path]) -> Path:
    from zoo.datadir import default_data_dir

    return Path(data_dir).expanduser() if data_dir else default_data_dir()


def _human(n):
    from zoo.fsutil import human

    return human(n)


@app.command("list")
def list_(zoo: Optional[List[Path]] = ZooOpt, data_dir: Optional[Path] = DataDirOpt,
          as_json: bool = typer.Option(False, "--json")) -> None:
    """Keys, versions, sizes when known, installed state, and manifest conflicts."""
    from zoo import layout

    def go():
        z, dd = _zoo(zoo), _data_dir(data_dir)
        rows = []
        for key in sorted(z.entries):
            e = z.entries[key]
            sizes = [r.size for r in e.resources]
            size = sum(sizes) if all(s is not None for s in sizes) else None
            aliases = sorted(a for a, t in z.aliases.items() if t == key)
            state = "invalid" if e.invalid else "conflict" if e.conflict else "-"
            if state == "-":
                # a model installs under the key the user typed (MMF's rule): an alias folder counts too
                names = [key] + (aliases if e.kind == "models" else [])
                built = [n for n in names if _built(layout.target_for(z, n), dd)]
                if built:
                    state = "installed" + (f" (as {', '.join(built)})" if built != [key] else "")
            rows.append({"key": key, "kind": e.kind, "version": e.version_str, "resources": len(e.resources),
                         "size": size, "state": state, "aliases": aliases, "conflict": e.conflict,
                         "invalid": e.invalid})
        if as_json:
            typer.echo(json.dumps(rows, indent=1))
            return
        typer.echo(f"{'key':34} {'kind':8} {'version':18} {'res':>3} {'size':>9}  state")
        for r in rows:
            alias = f"  (= {', '.join(r['aliases'])})" if r["aliases"] else ""
            typer.echo(f"{r['key']:34} {r['kind']:8} {str(r['version']):18} {r['resources']:>3} "
                       f"{_human(r['size']):>9}  {r['state']}{alias}")
        for r in rows:
            if r["conflict"]:
                typer.echo(f"conflict: {r['key']}: {r['conflict']}", err=True)
            if r["invalid"]:
                typer.echo(f"invalid: {r['key']}: {r['invalid']} (refused if fetched)", err=True)
    _run(go)


def _built(target, data_dir: Path) -> bool:
    from zoo import layout

    return all(layout.is_built(f, target.entry.version) for f in target.marker_folders(data_dir))


@app.command()
def info(key: str, zoo: Optional[List[Path]] = ZooOpt, data_dir: Optional[Path] = DataDirOpt,
         mirror: Optional[List[str]] = typer.Option(None, "--mirror"),
         mirror_only: bool = typer.Option(False, "--mirror-only")) -> None:
    """Resources of KEY: URL per mirror, hashes, destination, state."""
    from zoo import layout, records, trust
    from zoo.mirrors import mirror_roots, resource_urls

    def go():
        z, dd = _zoo(zoo), _data_dir(data_dir)
        target = layout.target_for(z, key)
        e = target.entry
        roots = mirror_roots(mirror or [], mirror_only=mirror_only or None)
        typer.echo(f"{e.key} ({e.kind}, version {e.version_str}, from {e.source})")
        if e.zoo_requirements:
            typer.echo(f"  requires: {', '.join(e.zoo_requirements)}")
        if e.conflict:
            typer.echo(f"  CONFLICT: {e.conflict}")
        if e.invalid:
            typer.echo(f"  INVALID (refused if fetched): {e.invalid}")
        for res in e.resources:
            folder = target.folder(dd, res)
            rec = layout.read_record(folder, res)
            damage = records.check_record(folder, rec, full=False, limit=1) if rec else []
            untrusted = trust.record_problem(layout.record_path(folder, res)) if rec and not damage else None
            state = (f"damaged: {damage[0].rel} {damage[0].problem}; run `mmf zoo verify --repair {key}`" if damage
                     else f"installed, pickles not trusted: {untrusted}" if untrusted
                     else "installed" if rec else
                     "built by MMF" if layout.is_built(target.marker_folder(dd, res), e.version) else "not installed")
            typer.echo(f"  - {res.category + ': ' if res.category else ''}{res.file_name}  [{state}]")
            typer.echo(f"    sha256: {res.hashcode or '(none: size-only check)'}  size: {_human(res.size)}")
            typer.echo(f"    destination: {folder}")
            for url in resource_urls(res, roots):
                typer.echo(f"    url: {url}")
    _run(go)


@app.command()
def fetch(
    keys: List[str] = typer.Argument(..., help="Zoo keys, e.g. textvqa textvqa.ocr_en m4c.textvqa.defaults"),
    mirror: Optional[List[str]] = typer.Option(None, "--mirror", help="Mirror NAME (configs/zoo/mirrors.yaml) or root URL/folder; first in line. Repeatable."),
    mirror_only: bool = typer.Option(False, "--mirror-only", help="Use only --mirror and MMF_ZOO_MIRRORS roots (never the origin)."),
    data_dir: Optional[Path] = DataDirOpt,
    zoo: Optional[List[Path]] = ZooOpt,
    connections: int = typer.Option(8, "--connections", min=1, max=64, help="Parallel connections per file."),
    chunk_size: float = typer.Option(8.0, "--chunk-size", min=0.0625, max=4096, help="Chunk size in MiB (resume and verification unit, 64 KiB to 4 GiB)."),
    stall_timeout: float = typer.Option(30.0, "--stall-timeout", min=0.5, help="Drop a connection silent for this many seconds (also the limit for headers and the window of --min-rate)."),
    min_rate: float = typer.Option(DEFAULT_MIN_RATE / 1000, "--min-rate", min=0, help="KB/s a connection must sustain (over --stall-timeout) while another mirror could take its work; 0 = off."),
    from_path: Optional[Path] = typer.Option(None, "--from", help="Install from an archive, a folder of archives or a pack; no network."),
    trust_pack: bool = TrustPackOpt,
    no_trust: bool = typer.Option(False, "--no-trust", help="Install and verify, but do not trust the data's pickles "
                                  "(for a third party's manifest or pack); `mmf zoo adopt KEY` trusts it later."),
    offline: bool = typer.Option(False, "--offline", help="Refuse any network access (also MMF_ZOO_OFFLINE=1)."),
    force: bool = typer.Option(False, "--force", help="Fetch and extract again even if installed."),
    no_extract: bool = typer.Option(False, "--no-extract", help="Only download and verify the archives."),
    delete_archives: bool = typer.Option(False, "--delete-archives", help="Delete each archive after its verified extraction."),
    no_stream: bool = typer.Option(False, "--no-stream", help="Extract after the download instead of while it runs."),
    lock_timeout: Optional[float] = typer.Option(None, "--lock-timeout", help="Give up waiting for another process after this many seconds."),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
    as_json: bool = typer.Option(False, "--json", help="One JSON report on stdout."),
) -> None:
    """Fetch, verify and install KEYS (with their zoo_requirements) into MMF's layout."""
    from zoo.install import FetchOptions, fetch as do_fetch
    from zoo.transfer import TransferOptions

    _setup_logging(quiet or as_json)
    _stop_on_sigterm()

    def go():
        z = _zoo(zoo, from_path, trust_pack)
        from zoo.progress import Progress

        bars = Progress(enabled=not (quiet or as_json))
        opts = FetchOptions(
            data_dir=_data_dir(data_dir), mirrors=mirror or [], mirror_only=mirror_only or None,
            transfer=TransferOptions(connections=connections, chunk_size=max(1, int(chunk_size * (1 << 20))),
                                     stall_timeout=stall_timeout, min_rate=min_rate * 1000, offline=offline),
            from_path=from_path, force=force, extract=not no_extract, delete_archives=delete_archives,
            stream_extract=not no_stream, lock_timeout=lock_timeout, progress=bars, trust=not no_trust,
            say=(lambda m: typer.echo(f"mmf zoo: {m}", err=True)) if not as_json else (lambda m: None))
        try:
            reports = do_fetch(z, keys, opts)
        finally:
            bars.close()
        if as_json:
            typer.echo(json.dumps([r.__dict__ for r in reports], indent=1))
        elif not quiet:
            for r in reports:
                extra = f", fetched {_human(r.fetched)} in {r.seconds:.1f}s" if r.fetched else ""
                extra += f", resumed {_human(r.resumed)}" if r.resumed else ""
                typer.echo(f"{r.key}: {r.file_name}: {r.status}{extra} -> {r.path}")
    _run(go)


@app.command()
def verify(keys: List[str], zoo: Optional[List[Path]] = ZooOpt, data_dir: Optional[Path] = DataDirOpt,
           repair: bool = typer.Option(False, "--repair", help="Re-install just the damaged resources (kept archive "
                                       "first, else the mirrors)."),
           mirror: Optional[List[str]] = typer.Option(None, "--mirror", help="Mirror for --repair (as for fetch)."),
           offline: bool = typer.Option(False, "--offline", help="--repair from kept archives only."),
           quiet: bool = typer.Option(False, "--quiet", "-q")) -> None:
    """Re-hash every installed file (xxh3-128) and kept archive (sha256) against the install records; report
    damaged, missing and extra files. --repair mends the damaged resources and leaves the others untouched."""
    from zoo.install import FetchOptions, repair as do_repair, verify_installed
    from zoo.transfer import TransferOptions

    _setup_logging(quiet)

    def show(checks):
        for c in checks:
            typer.echo(f"{'ok ' if c.ok else 'BAD'} {c.key}: {c.file_name}: {c.detail}")

    def go():
        z, dd = _zoo(zoo), _data_dir(data_dir)
        if repair:
            opts = FetchOptions(data_dir=dd, mirrors=mirror or [],
                                transfer=TransferOptions(offline=offline),  # or MMF_ZOO_OFFLINE
                                say=lambda m: typer.echo(f"mmf zoo: {m}", err=True))
            before, reports = do_repair(z, keys, opts)
            for r in reports:
                typer.echo(f"repaired {r.key}: {r.file_name}: {r.status} -> {r.path}")
        checks = verify_installed(z, keys, dd)
        show(checks)
        if any(c.extra for c in checks):
            typer.echo("note: extra files are not the zoo's; they are never unpickled without trust and never "
                       "deleted by the zoo: remove them if they are not yours", err=True)
        if not all(c.ok for c in checks):
            adopt = (f" (where only trust is missing, `mmf zoo adopt {' '.join(keys)}` re-verifies without "
                     "re-installing)" if any(c.untrusted for c in checks) else "")
            typer.echo(f"error: verification failed; run `mmf zoo verify --repair {' '.join(keys)}` to re-install "
                       f"the damaged resources{adopt}", err=True)
            raise typer.Exit(2)
    _run(go)


@app.command()
def adopt(keys: List[str], zoo: Optional[List[Path]] = ZooOpt, data_dir: Optional[Path] = DataDirOpt,
          from_path: Optional[Path] = typer.Option(None, "--from", help="A pack whose own entries KEYS come from "
                                                   "(with --trust-pack)."),
          trust_pack: bool = TrustPackOpt,
          lock_timeout: Optional[float] = typer.Option(None, "--lock-timeout")) -> None:
    """Trust an install this user's zoo did not write here (a data dir copied, moved, rsynced or unpacked from
    elsewhere, or another user's): re-verify each kept archive against the manifest's sha256 and every installed
    file against the archive's content, then record it in your trust store. Nothing is written into another
    user's folders."""
    from zoo.adopt import adopt as do_adopt

    def go():
        results = do_adopt(_zoo(zoo, from_path, trust_pack), keys, _data_dir(data_dir), lock_timeout)
        for r in results:
            typer.echo(f"{'ok ' if r.ok else 'BAD'} {r.key}: {r.file_name}: {r.detail}")
        bad = [r for r in results if not r.ok]
        if bad:
            typer.echo(f"error: {len(bad)} of {len(results)} resource(s) not adopted; their pickles stay untrusted "
                       "(what to do is on each BAD line)", err=True)
            raise typer.Exit(2)
    _run(go)


@app.command("pack")
def pack_cmd(keys: List[str], out: Path = typer.Option(..., "-o", "--output", help="Pack file to write."),
             zoo: Optional[List[Path]] = ZooOpt, data_dir: Optional[Path] = DataDirOpt) -> None:
    """Bundle the verified archives of KEYS and their manifest entries into one file for an offline machine."""
    from zoo.pack import pack

    def go():
        index = pack(_zoo(zoo), keys, _data_dir(data_dir), out, say=lambda m: typer.echo(m, err=True))
        typer.echo(f"wrote {out} ({len(index['resources'])} archives); install with "
                   f"`mmf zoo fetch {' '.join(keys)} --from {out}`")
    _run(go)


@app.command("hash")
def hash_cmd(file: Path, chunk_size: float = typer.Option(8.0, "--chunk-size", help="MiB per chunk hash."),
             url: str = typer.Option(None, "--url", help="The resource's URL (mmf://... or https://...)."),
             compressed: bool = typer.Option(True, "--compressed/--not-compressed",
                                             help="Whether the file is an archive to extract.")) -> None:
    """Print FILE as one manifest resource (YAML list item: url, file_name, hashcode, size, chunk hashes), ready to
    paste under a resource list (`resources:` or a category such as `features:`)."""
    import hashlib

    import xxhash
    import yaml

    def go():
        if not file.is_file():
            typer.echo(f"error: {file} is not a file", err=True)
            raise typer.Exit(1)
        cs = max(1, int(chunk_size * (1 << 20)))
        sha, chunks = hashlib.sha256(), []
        with open(file, "rb") as f:
            while block := f.read(cs):
                sha.update(block)
                chunks.append(xxhash.xxh3_128_hexdigest(block))
        item = {"url": url or f"https://CHANGE-ME/{file.name}", "file_name": file.name, "hashcode": sha.hexdigest(),
                "compressed": compressed, "size": file.stat().st_size,
                "chunk_hashes": {"chunk_size": cs, "xxh3_128": chunks}}
        if not url:
            typer.echo("# set url: below (mmf://... or https://...), then paste under a resource list", err=True)
        typer.echo(yaml.safe_dump([item], sort_keys=False, default_flow_style=False).rstrip())
    _run(go)


@app.command()
def mirrors(key: str = typer.Argument("textvqa", help="Zoo key whose largest resource is timed."),
            mirror: Optional[List[str]] = typer.Option(None, "--mirror"),
            mirror_only: bool = typer.Option(False, "--mirror-only"),
            zoo: Optional[List[Path]] = ZooOpt,
            sample: float = typer.Option(8.0, "--sample", help="MiB read from each mirror to time throughput."),
            as_json: bool = typer.Option(False, "--json")) -> None:
    """Latency and throughput of every configured mirror for KEY's largest resource."""
    from zoo import layout
    from zoo.mirrors import mirror_roots, resource_urls
    from zoo.speedtest import measure
    from zoo.transfer import TransferOptions

    def go():
        z = _zoo(zoo)
        resources = layout.target_for(z, key).entry.resources
        res = max(resources, key=lambda r: r.size or 0)  # the biggest known file says most about throughput
        urls = resource_urls(res, mirror_roots(mirror or [], mirror_only=mirror_only or None))
        rows = [measure(u, TransferOptions(stall_timeout=10), int(sample * (1 << 20))) for u in urls]
        if as_json:
            typer.echo(json.dumps([r.__dict__ for r in rows], indent=1))
            return
        typer.echo(f"{res.file_name} ({_human(rows[0].size if rows and rows[0].size else res.size)})")
        for r in rows:
            lat = f"{r.latency_ms:7.1f} ms" if r.latency_ms is not None else "      - "
            rate = f"{r.mb_per_s:8.1f} MB/s" if r.mb_per_s is not None else "       -     "
            typer.echo(f"  {'ok ' if r.ok else 'BAD'} {lat} {rate}  {r.url}{'  ' + r.detail if r.detail else ''}")
        if not any(r.ok for r in rows):
            raise typer.Exit(3)
    _run(go)


@app.command()
def serve(folder: Path = typer.Argument(..., help="Folder laid out like the origin (datasets/..., models/...)."),
          host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on (0.0.0.0 for other machines)."),
          port: int = typer.Option(8765, "--port"),
          header_timeout: float = typer.Option(Limits.header_timeout, "--header-timeout",
                                               help="Seconds from connect to a complete request head."),
          idle_timeout: float = typer.Option(Limits.idle_timeout, "--idle-timeout",
                                             help="Seconds a kept-alive connection may wait for its next request."),
          send_timeout: float = typer.Option(Limits.send_timeout, "--send-timeout",
                                             help="Seconds a client may take no data before it is dropped."),
          max_connections: int = typer.Option(Limits.max_connections, "--max-connections",
                                              help="Open connections at most (lowered to fit the file limit, "
                                                   "ulimit -n); at the cap the idlest one is closed.")) -> None:
    """Serve FOLDER as a Range-capable mirror, for `mmf zoo fetch --mirror http://HOST:PORT/` on other machines."""
    import time

    from zoo.serve import FolderMirror

    if not folder.is_dir():
        typer.echo(f"error: {folder} is not a folder", err=True)
        raise typer.Exit(1)
    try:
        limits = Limits(header_timeout, idle_timeout, send_timeout, max_connections).fitted()
    except ValueError as exc:
        typer.echo(f"error: --{exc}", err=True)
        raise typer.Exit(1) from None
    try:
        mirror = FolderMirror(folder, host, port, verbose=True, limits=limits)
    except OSError as exc:
        typer.echo(f"error: cannot listen on {host}:{port}: {exc.strerror}; pick another --port", err=True)
        raise typer.Exit(1) from None
    with mirror:
        if limits.max_connections < max_connections:
            typer.echo(f"note: at most {limits.max_connections} connections (the file limit, ulimit -n, allows no "
                       f"more than --max-connections {max_connections}); raise ulimit -n for more", err=True)
        typer.echo(f"serving {folder} at {mirror.url} (Ctrl-C to stop)")
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
