"""`mmf zoo ...`: list, info, fetch, verify, adopt, pack, hash, mirrors, serve. Thin wrappers over the library.

How a command ends (exit code, the stderr line, --json's one document) is zoo.outcome's; the exit-code table is
zoo.errors.EXIT_CODES. -q/--quiet on every command keeps stderr to errors and warnings and drops success summaries;
what a command exists to show (list's table, info, hash's YAML) still prints.

`pack --for <mmf train options>` needs what only the packages above the zoo know (how a run is configured, what it
reads): the `mmf` entry point plugs that in (plug_run_keys), so the zoo imports nothing above itself.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import List, Optional

import typer
from typer.core import TyperCommand

from zoo.errors import EXIT_CODES, TERMINATED, MirrorsExhaustedError, UsageError, VerificationError, with_result
from zoo.outcome import ClickUsageError, ZooGroup, finish
from zoo.serve_conns import Limits
from zoo.transfer.options import DEFAULT_MIN_RATE

app = typer.Typer(cls=ZooGroup, no_args_is_help=True, add_completion=False,
                  help="Fetch, verify and install MMF zoo datasets and models.\n\nExit codes: "
                  + "; ".join(f"{k} {v}" for k, v in EXIT_CODES.items())
                  + ".\n\nWith --json (fetch, list, info, verify, pack, mirrors) stdout holds exactly one JSON "
                  "document: the result on exit 0, else {error: {message, exit_code, kind}, result}.")
log = logging.getLogger("zoo")

ZooOpt = typer.Option(None, "--zoo", help="Extra manifest(s) in MMF's schema (models if the name says so).")
DataDirOpt = typer.Option(None, "--data-dir", help="MMF data dir (default: $MMF_DATA_DIR or MMF's cache).")
QuietOpt = typer.Option(False, "--quiet", "-q", help="Only errors and warnings on stderr; no progress or summary.")
JsonOpt = typer.Option(False, "--json", help="Exactly one JSON document on stdout, on success or failure.")
ProbeOpt = typer.Option(False, "--probe", help="Ask the mirrors (one HEAD per resource, 5 s at most) for sizes the "
                        "manifest lacks; kept in the data dir for later listings.")


def _setup_logging(quiet: bool) -> None:
    from zoo.logfmt import to_console

    to_console("zoo", level=logging.WARNING if quiet else logging.INFO)


def _note(quiet: bool):
    """The `say` of library calls: a log line on stderr (zoo.logfmt); under -q/--json only warnings (stdout stays
    the JSON's)."""
    from zoo.logfmt import say_to

    return say_to(log, quiet)


class Terminated(KeyboardInterrupt):
    """SIGTERM: stop like Ctrl-C (journal consistent, partial kept), exit 143."""

    exit_code = TERMINATED


def _stop_on_sigterm() -> None:
    import signal

    def handler(signum, frame):
        raise Terminated()

    try:
        signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread (embedded use): leave the default
        pass


def _zoo(zoo_paths, from_paths=None, trust_pack: bool = False):
    from zoo.manifest import load_zoo
    from zoo.pack import merge_packs

    zoo = load_zoo(zoo_paths or [])
    merge_packs(zoo, from_paths, consent=trust_pack)
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


def _size_table(z, dd: Path, entries, probe: bool, quiet: bool, mirror=None, mirror_only=None) -> dict:
    from zoo import sizes
    from zoo.mirrors import mirror_roots

    from zoo.transfer.options import offline_env

    if probe and offline_env():
        raise UsageError("--probe needs the network, but MMF_ZOO_OFFLINE is set: unset it, or drop --probe")
    return sizes.table(z, dd, entries, mirror_roots(mirror or [], mirror_only=mirror_only) if probe else None,
                       say=_note(quiet))


@app.command("list")
def list_(zoo: Optional[List[Path]] = ZooOpt, data_dir: Optional[Path] = DataDirOpt, probe: bool = ProbeOpt,
          quiet: bool = QuietOpt, as_json: bool = JsonOpt) -> None:
    """Keys, versions, download and extracted sizes ('?': unknown; --probe asks the mirrors), installed state,
    and manifest conflicts."""
    from zoo import origin, sizes

    _setup_logging(quiet)  # the probe's notes are log lines (stderr), kept beside --json's stdout

    def go():
        z, dd = _zoo(zoo), _data_dir(data_dir)
        table = _size_table(z, dd, z.entries.values(), probe, quiet)
        rows = [_list_row(z, dd, key, table) for key in sorted(z.entries)]
        for t, manifest in origin.other_installs(z, dd):  # custom installs: their records remember the entry
            size, extracted = sizes.target_total(t, dd)
            rows.append({"key": t.entry.key, "kind": t.entry.kind, "version": t.entry.version_str,
                         "resources": len(t.entry.resources), "size": size, "extracted_size": extracted,
                         "aliases": [], "conflict": None, "invalid": None,
                         "state": f"installed from {manifest} (no active manifest has it)"})
        if not as_json:
            _print_list(rows, quiet)
        return rows
    finish(go, as_json)


def _list_row(z, dd: Path, key: str, table: dict) -> dict:
    from zoo import layout, origin
    from zoo.sizes import entry_total

    e = z.entries[key]
    aliases = sorted(a for a, t in z.aliases.items() if t == key)
    state = "invalid" if e.invalid else "conflict" if e.conflict else "-"
    if state == "-":
        # a model installs under the key the user typed (MMF's rule): an alias folder counts too
        names = [key] + (aliases if e.kind == "models" else [])
        built = [n for n in names if _built(layout.target_for(z, n), dd)]
        if built:
            state = "installed" + (f" (as {', '.join(built)})" if built != [key] else "")
        elif other := origin.recorded_manifest(layout.target_for(z, key), dd):  # a custom manifest's install
            state = f"installed from {other}'s entry"
    size, extracted = entry_total(table, e)
    return {"key": key, "kind": e.kind, "version": e.version_str, "resources": len(e.resources),
            "size": size, "extracted_size": extracted, "state": state, "aliases": aliases,
            "conflict": e.conflict, "invalid": e.invalid}


def _print_list(rows: list, quiet: bool) -> None:
    typer.echo(f"{'key':34} {'kind':8} {'version':18} {'res':>3} {'download':>9} {'extracted':>9}  state")
    for r in rows:
        alias = f"  (= {', '.join(r['aliases'])})" if r["aliases"] else ""
        typer.echo(f"{r['key']:34} {r['kind']:8} {str(r['version']):18} {r['resources']:>3} "
                   f"{_human(r['size']):>9} {_human(r['extracted_size']):>9}  {r['state']}{alias}")
    for r in rows:
        if r["conflict"]:
            typer.echo(f"conflict: {r['key']}: {r['conflict']}", err=True)
        if r["invalid"]:
            typer.echo(f"invalid: {r['key']}: {r['invalid']} (refused if fetched)", err=True)
    if not quiet and any(r["size"] is None for r in rows if not r["invalid"]):
        typer.echo("note: '?' = size unknown (the manifest has none): `mmf zoo list --probe` asks the mirrors",
                   err=True)


def _built(target, data_dir: Path) -> bool:
    from zoo import layout

    return all(layout.is_built(f, target.entry.version) for f in target.marker_folders(data_dir))


@app.command()
def info(key: str, zoo: Optional[List[Path]] = ZooOpt, data_dir: Optional[Path] = DataDirOpt,
         mirror: Optional[List[str]] = typer.Option(None, "--mirror"),
         mirror_only: bool = typer.Option(False, "--mirror-only"), probe: bool = ProbeOpt,
         quiet: bool = QuietOpt, as_json: bool = JsonOpt) -> None:
    """Resources of KEY: URL per mirror, hashes, download and extracted sizes, destination, state."""
    from zoo import origin
    from zoo.mirrors import mirror_roots, resource_urls
    from zoo.sizes import entry_total

    _setup_logging(quiet)  # the probe's notes are log lines (stderr), kept beside --json's stdout

    def go():
        z, dd = _zoo(zoo), _data_dir(data_dir)
        target = origin.target_or_recorded(z, key, dd)
        e = target.entry
        roots = mirror_roots(mirror or [], mirror_only=mirror_only or None)
        table = _size_table(z, dd, [e], probe, quiet, mirror, mirror_only or None)
        size, extracted = entry_total(table, e)
        doc = {"key": e.key, "kind": e.kind, "version": e.version_str, "source": str(e.source),
               "requires": list(e.zoo_requirements), "conflict": e.conflict, "invalid": e.invalid,
               "size": size, "extracted_size": extracted,
               "resources": [_info_resource(target, res, dd, key, table, resource_urls(res, roots))
                             for res in e.resources]}
        doc["notes"] = list(dict.fromkeys(r.pop("note") for r in doc["resources"] if r.get("note")))
        if not as_json:
            _print_info(doc)
        return doc
    finish(go, as_json)


def _info_resource(target, res, dd: Path, key: str, table: dict, urls: list) -> dict:
    from zoo import layout, origin, records, trust

    folder = target.folder(dd, res)
    rec = layout.read_record(folder, res)
    damage = records.check_record(folder, rec, full=False, limit=1) if rec else []
    untrusted = trust.record_problem(layout.record_path(folder, res)) if rec and not damage else None
    state = (f"damaged: {damage[0].rel} {damage[0].problem}; run `mmf zoo verify --repair {key}`" if damage
             else f"installed, pickles not trusted: {untrusted}" if untrusted
             else "installed" if rec else
             "built by MMF" if layout.is_built(target.marker_folder(dd, res), target.entry.version)
             else "not installed")
    sz = table.get((target.entry.key, res.file_name))
    came = origin.judge(rec, target.entry, res) if rec else None
    return {"note": came.note if came and came.how == "other" else None,"category": res.category, "file_name": res.file_name, "state": state, "sha256": res.hashcode,
            "size": sz.download if sz else None, "size_from": sz.download_from if sz else None,
            "extracted_size": sz.extracted if sz else None, "extracted_size_from": sz.extracted_from if sz else None,
            "destination": str(folder), "urls": urls}


def _print_info(doc: dict) -> None:
    typer.echo(f"{doc['key']} ({doc['kind']}, version {doc['version']}, from {doc['source']})")
    typer.echo(f"  download: {_human(doc['size'])}  extracted: {_human(doc['extracted_size'])}")
    if doc["requires"]:
        typer.echo(f"  requires: {', '.join(doc['requires'])}")
    if doc["conflict"]:
        typer.echo(f"  CONFLICT: {doc['conflict']}")
    if doc["invalid"]:
        typer.echo(f"  INVALID (refused if fetched): {doc['invalid']}")
    for note in doc["notes"]:
        typer.echo(f"  note: {note}")
    for r in doc["resources"]:
        typer.echo(f"  - {r['category'] + ': ' if r['category'] else ''}{r['file_name']}  [{r['state']}]")
        typer.echo(f"    sha256: {r['sha256'] or '(none: size-only check)'}  size: {_human(r['size'])}"
                   f"{' (probed)' if r['size_from'] == 'probe' else ''}  extracted: {_human(r['extracted_size'])}")
        typer.echo(f"    destination: {r['destination']}")
        for url in r["urls"]:
            typer.echo(f"    url: {url}")


@app.command()
def fetch(
    ctx: typer.Context,
    keys: Optional[List[str]] = typer.Argument(None, help="Zoo keys, e.g. textvqa textvqa.ocr_en m4c.textvqa.defaults; "
                                               "none with --from PACK: every key the pack was made for"),
    mirror: Optional[List[str]] = typer.Option(None, "--mirror", help="Mirror NAME (configs/zoo/mirrors.yaml) or root URL/folder; first in line. Repeatable."),
    mirror_only: bool = typer.Option(False, "--mirror-only", help="Use only --mirror and MMF_ZOO_MIRRORS roots (never the origin)."),
    data_dir: Optional[Path] = DataDirOpt,
    zoo: Optional[List[Path]] = ZooOpt,
    connections: int = typer.Option(8, "--connections", min=1, max=64, help="Parallel connections per file."),
    chunk_size: float = typer.Option(8.0, "--chunk-size", min=0.0625, max=4096, help="Chunk size in MiB (resume and verification unit, 64 KiB to 4 GiB)."),
    stall_timeout: float = typer.Option(30.0, "--stall-timeout", min=0.5, help="Drop a connection silent for this many seconds (also the limit for headers and the window of --min-rate)."),
    min_rate: float = typer.Option(DEFAULT_MIN_RATE / 1000, "--min-rate", min=0, help="KB/s a connection must sustain (over --stall-timeout) while another mirror could take its work; 0 = off."),
    from_path: Optional[List[Path]] = typer.Option(None, "--from", help="Install from an archive, a folder of archives (found by size and sha256, any name) or a pack; repeatable; no network."),
    trust_pack: bool = TrustPackOpt,
    no_trust: bool = typer.Option(False, "--no-trust", help="Install and verify, but do not trust the data's pickles "
                                  "(for a third party's manifest or pack); `mmf zoo adopt KEY` trusts it later."),
    offline: bool = typer.Option(False, "--offline", help="Refuse any network access (also MMF_ZOO_OFFLINE=1)."),
    force: bool = typer.Option(False, "--force", help="Fetch and extract again even if installed."),
    no_extract: bool = typer.Option(False, "--no-extract", help="Only download and verify the archives."),
    delete_archives: bool = typer.Option(False, "--delete-archives", help="Delete each archive after its verified extraction."),
    no_stream: bool = typer.Option(False, "--no-stream", help="Extract after the download instead of while it runs."),
    lock_timeout: Optional[float] = typer.Option(None, "--lock-timeout", help="Give up waiting for another process after this many seconds."),
    quiet: bool = QuietOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Fetch, verify and install KEYS (with their zoo_requirements) into MMF's layout; `--from PACK` without KEYS
    installs every key the pack was made for."""
    from zoo.install import FetchOptions, fetch as do_fetch
    from zoo.transfer import TransferOptions

    if not keys and not from_path:
        raise ClickUsageError("fetch needs KEYS (e.g. `mmf zoo fetch textvqa`), or --from PACK to install every key "
                              "a pack written by `mmf zoo pack` holds", ctx)
    _setup_logging(quiet or as_json)
    _stop_on_sigterm()

    def go():
        z = _zoo(zoo, from_path, trust_pack)
        from zoo.progress import Progress

        wanted = list(keys) if keys else _pack_keys(from_path)

        # bars on a terminal; in a log (stderr redirected), a line per resource every 30 s instead of bar redraws
        bars = Progress(enabled=False) if quiet or as_json else Progress.auto()
        opts = FetchOptions(
            data_dir=_data_dir(data_dir), mirrors=mirror or [], mirror_only=mirror_only or None,
            transfer=TransferOptions(connections=connections, chunk_size=max(1, int(chunk_size * (1 << 20))),
                                     stall_timeout=stall_timeout, min_rate=min_rate * 1000, offline=offline),
            from_path=from_path, force=force, extract=not no_extract, delete_archives=delete_archives,
            stream_extract=not no_stream, lock_timeout=lock_timeout, progress=bars, trust=not no_trust,
            say=_note(quiet or as_json))
        try:
            reports = do_fetch(z, wanted, opts)
        finally:
            bars.close()
        if not (quiet or as_json):
            for r in reports:
                extra = f", fetched {_human(r.fetched)} in {r.seconds:.1f}s" if r.fetched else ""
                extra += f", resumed {_human(r.resumed)}" if r.resumed else ""
                typer.echo(f"{r.key}: {r.file_name}: {r.status}{extra} -> {r.path}")
        return [r.__dict__ for r in reports]
    finish(go, as_json)


def _pack_keys(from_path) -> list[str]:
    """The keys of every pack among --from (a fetch without KEYS installs what its packs were made for)."""
    from zoo.errors import OfflineError
    from zoo.pack import pack_keys
    from zoo.sources import from_paths, is_pack

    paths = from_paths(from_path)
    for path in paths:
        if not path.exists():
            raise OfflineError(f"--from {path}: no such file or folder")
    packs = [p for p in paths if p.is_file() and is_pack(p)]
    if not packs:
        raise UsageError(f"--from {', '.join(map(str, paths))} holds no pack written by `mmf zoo pack`: name the "
                         "KEYS to install from it")
    return list(dict.fromkeys(k for p in packs for k in pack_keys(p)))


@app.command()
def verify(keys: List[str], zoo: Optional[List[Path]] = ZooOpt, data_dir: Optional[Path] = DataDirOpt,
           repair: bool = typer.Option(False, "--repair", help="Re-install just the damaged resources (kept archive "
                                       "first, else the mirrors)."),
           mirror: Optional[List[str]] = typer.Option(None, "--mirror", help="Mirror for --repair (as for fetch)."),
           offline: bool = typer.Option(False, "--offline", help="--repair from kept archives only."),
           force: bool = typer.Option(False, "--force", help="--repair may replace an install made from another "
                                      "manifest's entry with the active manifest's data."),
           strict: bool = typer.Option(False, "--strict", help="Fail (exit 2) on data built by MMF, which has no "
                                       "install record to verify its content against."),
           quiet: bool = QuietOpt, as_json: bool = JsonOpt) -> None:
    """Re-hash every installed file (xxh3-128) and kept archive (sha256) against the install records; report
    damaged, missing and extra files. --repair mends the damaged resources and leaves the others untouched.
    -q prints only the BAD lines."""
    from zoo.install import FetchOptions, repair as do_repair, verify_installed
    from zoo.transfer import TransferOptions

    _setup_logging(quiet or as_json)

    def go():
        z, dd = _zoo(zoo), _data_dir(data_dir)
        repaired = []
        if repair:
            opts = FetchOptions(data_dir=dd, mirrors=mirror or [],
                                transfer=TransferOptions(offline=offline),
                                say=_note(quiet or as_json))
            before, reports = do_repair(z, keys, opts, replace_foreign=force)
            repaired = [r.__dict__ for r in reports]
            for r in reports if not (quiet or as_json) else ():
                typer.echo(f"repaired {r.key}: {r.file_name}: {r.status} -> {r.path}")
        checks = verify_installed(z, keys, dd)
        result = {"checks": [c.__dict__ for c in checks], "repaired": repaired}
        if not as_json:
            _print_checks(checks, quiet)
        if not all(c.ok and not (strict and c.unverifiable) for c in checks):
            adopt = (f" (where only trust is missing, `mmf zoo adopt {' '.join(keys)}` re-verifies without "
                     "re-installing)" if any(c.untrusted for c in checks) else "")
            raise with_result(VerificationError(
                f"verification failed; run `mmf zoo verify --repair {' '.join(keys)}` to re-install the damaged "
                f"resources{adopt}"), result)
        return result
    finish(go, as_json)


def _print_checks(checks, quiet: bool) -> None:
    for c in checks:
        if not (quiet and c.ok):
            typer.echo(f"{c.tag} {c.key}: {c.file_name}: {c.detail}")
    if any(c.extra for c in checks) and not quiet:
        typer.echo("note: extra files are not the zoo's; they are never unpickled without trust and never "
                   "deleted by the zoo: remove them if they are not yours", err=True)


@app.command()
def adopt(keys: List[str], zoo: Optional[List[Path]] = ZooOpt, data_dir: Optional[Path] = DataDirOpt,
          from_path: Optional[Path] = typer.Option(None, "--from", help="A pack whose own entries KEYS come from "
                                                   "(with --trust-pack)."),
          trust_pack: bool = TrustPackOpt,
          lock_timeout: Optional[float] = typer.Option(None, "--lock-timeout"),
          quiet: bool = QuietOpt) -> None:
    """Trust an install this user's zoo did not write here (a data dir copied, moved, rsynced or unpacked from
    elsewhere, or another user's): re-verify each kept archive against the manifest's sha256 and every installed
    file against the archive's content, then record it in your trust store. Nothing is written into another
    user's folders. -q prints only the BAD lines."""
    from zoo.adopt import adopt as do_adopt

    _setup_logging(quiet)

    def go():
        results = do_adopt(_zoo(zoo, from_path, trust_pack), keys, _data_dir(data_dir), lock_timeout)
        for r in results:
            if not (quiet and r.ok):
                typer.echo(f"{'ok ' if r.ok else 'BAD'} {r.key}: {r.file_name}: {r.detail}")
        bad = [r for r in results if not r.ok]
        if bad:
            raise VerificationError(f"{len(bad)} of {len(results)} resource(s) not adopted; their pickles stay "
                                    "untrusted (what to do is on each BAD line)")
    finish(go)


RUN_ARGV = "zoo.pack.for"  # ctx.meta: the words after `pack --for`, the run's options as `mmf train` takes them


class ForCommand(TyperCommand):
    """A command whose `--for` takes the rest of the line: `mmf train`'s options (config=..., key=value,
    -co '{...}'), kept verbatim in ctx.meta[RUN_ARGV]. The command's own options may stand among or after them
    (`--for config=X datasets=Y -o X.pack`): a run option is never spelt like one of those."""

    def parse_args(self, ctx, args):
        args = list(args)
        if "--for" in args:
            at = args.index("--for")
            own, run = self._own_options(args[at + 1:])
            ctx.meta[RUN_ARGV] = run
            args = [*args[:at], "--for", *own]
        return super().parse_args(ctx, args)

    def _own_options(self, words: list[str]) -> tuple[list[str], list[str]]:
        takes_value = {}
        for param in self.params:
            for name in (*getattr(param, "opts", ()), *getattr(param, "secondary_opts", ())):
                if name.startswith("-"):
                    takes_value[name] = not (getattr(param, "is_flag", False) or getattr(param, "count", False))
        own, run, i = [], [], 0
        while i < len(words):
            name = words[i].split("=", 1)[0] if words[i].startswith("--") else words[i]
            if name in takes_value and name != "--for":
                width = 2 if takes_value[name] and "=" not in words[i] else 1
                own += words[i:i + width]
                i += width
            else:
                run.append(words[i])
                i += 1
        return own, run


FOR_HELP = ("Pack what `mmf train` with the options after --for reads (config=..., datasets=..., model=..., key=value, "
            "-co '{...}'; resolved as mmf train resolves them): the datasets' zoo_requirements, the BERT vocab and "
            "fastText vectors its processors would fetch, the model's pretrained weights, checkpoint.resume_zoo's "
            "model, each with its zoo_requirements. The run's env.data_dir is where they are read from (--data-dir "
            "overrides it); env.dataset_zoo / env.model_zoo are honoured.")


@app.command("pack", cls=ForCommand)
def pack_cmd(ctx: typer.Context,
             keys: Optional[List[str]] = typer.Argument(None, help="Zoo keys to pack, with their zoo_requirements."),
             out: Optional[Path] = typer.Option(None, "-o", "--output", help="Pack file to write."),
             run_for: bool = typer.Option(False, "--for", help=FOR_HELP),
             dry_run: bool = typer.Option(False, "--dry-run", help="List the keys, their archives and sizes ('?' "
                                          "where unknown) and whether each can be packed now; write nothing."),
             zoo: Optional[List[Path]] = ZooOpt, data_dir: Optional[Path] = DataDirOpt,
             quiet: bool = QuietOpt, as_json: bool = JsonOpt) -> None:
    """Bundle the verified archives of KEYS (or of everything a run reads: --for) and their manifest entries into
    one file for an offline machine, where `mmf zoo fetch --from PACK` installs them."""
    from zoo.pack import contents, pack

    if bool(keys) == run_for:  # click's usage errors: one line naming --help, exit USAGE (zoo.outcome)
        raise ClickUsageError("pack needs KEYS or --for <mmf train options>, not both: e.g. `mmf zoo pack textvqa "
                              "-o X.pack` or `mmf zoo pack --for config=C datasets=textvqa model=m4c -o X.pack`", ctx)
    if run_for and not ctx.meta.get(RUN_ARGV):
        raise ClickUsageError("--for needs the run's options after it, as `mmf train` takes them: e.g. --for "
                              "config=projects/m4c/configs/textvqa/defaults.yaml datasets=textvqa model=m4c", ctx)
    if out is None and not dry_run:
        raise ClickUsageError("pack needs -o FILE (the pack to write), or --dry-run to only list what it would hold",
                              ctx)
    _setup_logging(quiet or as_json)

    def go():
        if run_for:
            z, dd, wanted, manifests, whys = _run_keys(ctx.meta.get(RUN_ARGV) or [], zoo, data_dir)
        else:
            z, dd, wanted, manifests, whys = _zoo(zoo), _data_dir(data_dir), list(keys), [], {}
        if dry_run:
            return _pack_listing(contents(z, wanted, dd), whys, dd, quiet, as_json)
        say = (lambda m: None) if quiet or as_json else (lambda m: typer.echo(m, err=True))
        index = pack(z, wanted, dd, out, say=say)
        install = _install_hint(out, None if run_for else wanted, manifests)
        if not (quiet or as_json):
            total = sum(r["size"] for r in index["resources"])
            typer.echo(f"wrote {out} ({len(index['resources'])} archives, {_human(total)}); install with "
                       f"`{install}`")
        return {"pack": str(out), "keys": wanted, "resources": index["resources"], "install": install}
    finish(go, as_json)


# (argv, --zoo paths, --data-dir) -> (zoo, data dir, keys, the run's extra manifests, {key: why}); set by the `mmf`
# entry point (mmfzoo_cli), which may import mmfconfig and mmfdata
_run_keys_for = None


def plug_run_keys(fn) -> None:
    """Let `pack --for` ask `fn` which keys a run reads (see _run_keys_for)."""
    global _run_keys_for
    _run_keys_for = fn


def _run_keys(argv: list[str], zoo_paths, data_dir: Optional[Path]):
    if _run_keys_for is None:
        raise UsageError("--for needs the `mmf` command (it knows how a run is configured): run `mmf zoo pack --for "
                         "...`")
    return _run_keys_for(argv, zoo_paths, data_dir)


def _install_hint(out: Path, keys: Optional[List[str]], manifests) -> str:
    if keys is None:  # a run's pack: everything it holds, judged against the manifests the run reads
        from zoo.commands import install_command

        return install_command(str(out), None, manifests)
    return f"mmf zoo fetch {' '.join(keys)} --from {out}"


def _pack_listing(rows: list, whys: dict, dd: Path, quiet: bool, as_json: bool) -> dict:
    from zoo.sizes import total

    for row in rows:
        row["why"] = whys.get(row["key"]) or whys.get(row["entry"]) or ""
    size = total(r["size"] for r in rows)
    if not as_json:
        typer.echo(f"{'key':34} {'archives':>8} {'download':>9}  {'state':30} why")
        for r in rows:
            typer.echo(f"{r['key']:34} {r['archives']:>8} {_human(r['size']):>9}  {r['state']:30} {r['why']}")
        if not quiet:
            typer.echo(f"dry run: {len(rows)} keys, {_human(size)} in all, read from {dd}; nothing written", err=True)
    return {"keys": rows, "size": size, "data_dir": str(dd)}


@app.command("hash")
def hash_cmd(file: Path, chunk_size: float = typer.Option(8.0, "--chunk-size", help="MiB per chunk hash."),
             url: str = typer.Option(None, "--url", help="The resource's URL (mmf://... or https://...)."),
             compressed: bool = typer.Option(True, "--compressed/--not-compressed",
                                             help="Whether the file is an archive to extract."),
             quiet: bool = QuietOpt) -> None:
    """Print FILE as one manifest resource (YAML list item: url, file_name, hashcode, size, chunk hashes), ready to
    paste under a resource list (`resources:` or a category such as `features:`)."""
    import hashlib

    import xxhash
    import yaml

    def go():
        if not file.is_file():
            raise UsageError(f"{file} is not a file; pass the archive to hash")
        cs = max(1, int(chunk_size * (1 << 20)))
        sha, chunks = hashlib.sha256(), []
        with open(file, "rb") as f:
            while block := f.read(cs):
                sha.update(block)
                chunks.append(xxhash.xxh3_128_hexdigest(block))
        item = {"url": url or f"https://CHANGE-ME/{file.name}", "file_name": file.name, "hashcode": sha.hexdigest(),
                "compressed": compressed, "size": file.stat().st_size,
                "chunk_hashes": {"chunk_size": cs, "xxh3_128": chunks}}
        if not url and not quiet:
            typer.echo("# set url: below (mmf://... or https://...), then paste under a resource list", err=True)
        typer.echo(yaml.safe_dump([item], sort_keys=False, default_flow_style=False).rstrip())
    finish(go)


@app.command()
def mirrors(key: str = typer.Argument("textvqa", help="Zoo key whose largest resource is timed."),
            mirror: Optional[List[str]] = typer.Option(None, "--mirror"),
            mirror_only: bool = typer.Option(False, "--mirror-only"),
            zoo: Optional[List[Path]] = ZooOpt,
            sample: float = typer.Option(8.0, "--sample", help="MiB read from each mirror to time throughput."),
            quiet: bool = QuietOpt, as_json: bool = JsonOpt) -> None:
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
        if not as_json:
            _print_mirrors(res, rows)
        if not any(r.ok for r in rows):
            raise with_result(MirrorsExhaustedError(f"no mirror of {res.file_name} answered: check the network or "
                                                    "pass a working --mirror"), [r.__dict__ for r in rows])
        return [r.__dict__ for r in rows]
    finish(go, as_json)


def _print_mirrors(res, rows) -> None:
    typer.echo(f"{res.file_name} ({_human(rows[0].size if rows and rows[0].size else res.size)})")
    for r in rows:
        lat = f"{r.latency_ms:7.1f} ms" if r.latency_ms is not None else "      - "
        rate = f"{r.mb_per_s:8.1f} MB/s" if r.mb_per_s is not None else "       -     "
        typer.echo(f"  {'ok ' if r.ok else 'BAD'} {lat} {rate}  {r.url}{'  ' + r.detail if r.detail else ''}")


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
                                                   "ulimit -n); at the cap the idlest one is closed."),
          quiet: bool = typer.Option(False, "--quiet", "-q", help="No request log; errors and warnings only.")) -> None:
    """Serve FOLDER as a Range-capable mirror, for `mmf zoo fetch --mirror http://HOST:PORT/` on other machines."""
    finish(lambda: _serve(folder, host, port, (header_timeout, idle_timeout, send_timeout, max_connections), quiet))


def _serve(folder: Path, host: str, port: int, limit_values: tuple, quiet: bool) -> None:
    import time

    from zoo.serve import FolderMirror

    if not folder.is_dir():
        raise UsageError(f"{folder} is not a folder; pass the folder laid out like the origin")
    try:
        wanted = Limits(*limit_values)
        limits = wanted.fitted()
    except ValueError as exc:
        raise UsageError(f"--{exc}") from None
    try:
        mirror = FolderMirror(folder, host, port, verbose=not quiet, limits=limits)
    except OSError as exc:
        raise UsageError(f"cannot listen on {host}:{port}: {exc.strerror}; pick another --port") from None
    with mirror:
        if limits.max_connections < wanted.max_connections:
            typer.echo(f"note: at most {limits.max_connections} connections (the file limit, ulimit -n, allows no "
                       f"more than --max-connections {wanted.max_connections}); raise ulimit -n for more", err=True)
        typer.echo(f"serving {folder} at {mirror.url} (Ctrl-C to stop)")
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
