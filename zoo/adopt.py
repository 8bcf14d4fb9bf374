"""`mmf zoo adopt KEY`: trust an install this user's zoo did not write here, after verifying it again.

A data dir copied, moved, rsynced or unpacked from elsewhere, or another user's, carries install records that grant
nothing (`zoo.trust`). Adopting checks each resource from scratch: the kept archive's sha256 against the active
manifest entry, then every file the archive holds against the installed one (size and xxh3-128, the archive's
members hashed while reading it; the hashes of the record that came with the copy are never used). Then, in this
user's own folder, a fresh record is written and registered in the trust store; in another user's folder nothing
is written: their record is registered if it lists exactly what the archive holds, with the stamps seen now.
"""
from __future__ import annotations

import json
import os
import stat
import time
from dataclasses import dataclass
from pathlib import Path

from zoo import layout, origin, records, trust, truststore
from zoo.errors import HashMismatchError, VerificationError
from zoo.fsutil import sha256_file, xxh3_file
from zoo.install import plan
from zoo.lock import resource_lock
from zoo.manifest import Resource, Zoo


@dataclass
class Adopted:
    key: str
    file_name: str
    ok: bool
    detail: str


def adopt(zoo: Zoo, keys: list[str], data_dir: Path, lock_timeout: float | None = None) -> list[Adopted]:
    """Adopt every resource of `keys` (with their zoo_requirements); one result per resource."""
    out = []
    targets = plan(zoo, keys)
    # its pickles are trusted only by a manifest the user chose: an install from another manifest's entry is
    # checked against that entry (--zoo), never against a record anyone with write access could have forged
    origin.refuse_other([(t, r) for t in targets for r in t.entry.resources], Path(data_dir), "adopting",
                        "to adopt it against that entry")
    for target in targets:
        for res in target.entry.resources:
            try:
                detail = _adopt_one(target, res, Path(data_dir), lock_timeout)
                out.append(Adopted(target.entry.key, res.file_name, True, detail))
            except VerificationError as exc:
                out.append(Adopted(target.entry.key, res.file_name, False, str(exc)))
    return out


def _adopt_one(target: layout.Target, res: Resource, data_dir: Path, lock_timeout) -> str:
    key = target.name.replace("/", ".")
    folder = target.folder(data_dir, res)
    source = target.entry.source
    if not trust.chosen(source):
        raise VerificationError(f"it comes from a pack's own manifest entry ({source}); pass --trust-pack with "
                                "--from if you trust the pack's author (its pickles then run their code)")
    if not res.hashcode:
        raise VerificationError(f"the manifest ({source}) has no sha256 for it, so the zoo cannot verify it; its "
                                "pickles are read only with --trust-pickle / training.trust_pickle=true")
    archive = folder / res.file_name
    if not archive.is_file() and not layout.record_path(folder, res).exists() and \
            not (target.marker_folder(data_dir, res) / records.MARKER).exists():
        raise VerificationError(f"it is not installed in {data_dir} (no install record, no MMF marker): nothing to "
                                f"adopt; install it with `mmf zoo fetch {key}`, or pass the --data-dir that holds it")
    if not archive.is_file():
        raise VerificationError(f"adopting needs its archive {archive} (sha256 {res.hashcode[:12]}…), which is not "
                                f"there: put it back and run `mmf zoo adopt {key}` again, or re-install with "
                                f"`mmf zoo verify --repair {key}` (downloads it)")
    if _mine(folder):
        layout.state_dir(folder).mkdir(exist_ok=True)
        with resource_lock(layout.state_dir(folder) / f"{res.file_name}.lock", f"{key}:{res.file_name}",
                           lock_timeout):
            digest, files, tops = _verified_content(archive, res, key)
            rows = _check_installed(folder, files, key)
            layout.write_record(folder, res, {
                "format": records.RECORD_FORMAT, "key": key, "version": target.entry.version, "url": res.url,
                "manifest": source, "sha256": digest, "verified": True, "size": archive.stat().st_size,
                "extracted": res.compressed, "top_level": tops, "files": rows, "archive_kept": True,
                "installed_at": time.strftime("%Y-%m-%dT%H:%M:%S"), "adopted": True,
                **origin.remember(target.entry, res)}, grant=True)
        return f"adopted: archive and {len(rows)} installed file(s) verified, trusted from now on"
    digest, files, _ = _verified_content(archive, res, key)
    rows = _check_installed(folder, files, key)
    _register_foreign(layout.record_path(folder, res), target, res, digest, rows, key)
    return (f"adopted read-only (another user's folder): archive and {len(rows)} installed file(s) verified, "
            "trusted by you while they keep their current stamps")


def _mine(folder: Path) -> bool:
    """This user's folder (a copy or a move): adopting may rewrite its record. Else another user's: read-only."""
    for path in (folder, layout.state_dir(folder)):
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            continue
        if st.st_uid != os.getuid() or not os.access(path, os.W_OK):
            return False
    return True


def _verified_content(archive: Path, res: Resource, key: str) -> tuple[str, list, list[str]]:
    """The archive's sha256 (must be the manifest's) and the files it holds: [(rel, size, xxh3)], top-level names."""
    from zoo.archive.members import archive_members

    digest = sha256_file(archive)
    if digest != res.hashcode:
        raise HashMismatchError(f"its archive {archive} has sha256 {digest[:12]}…, the manifest says "
                                f"{res.hashcode[:12]}…: it is not the manifest's file; re-install with "
                                f"`mmf zoo fetch {key} --force`")
    if not res.compressed:
        return digest, [(res.file_name, archive.stat().st_size, xxh3_file(archive))], [res.file_name]
    files, tops = archive_members(archive)
    return digest, files, tops


def _check_installed(folder: Path, files: list, key: str) -> list[list]:
    """Rows [rel, size, xxh3, stamp] for the installed files, each matching the archive; else VerificationError."""
    rows, bad = [], []
    for rel, size, digest in files:
        path = folder / rel
        try:
            before = os.lstat(path)
            problem = (None if stat.S_ISREG(before.st_mode) else "not a regular file") or \
                (f"{before.st_size} bytes, the archive has {size}" if before.st_size != size else None) or \
                (None if xxh3_file(path) == digest else "content differs from the archive")
            after = os.lstat(path)
        except FileNotFoundError:
            problem = "missing"
        except OSError as exc:
            problem = f"unreadable ({exc.strerror})"
        if not problem and (after.st_ino, after.st_mtime_ns, after.st_ctime_ns) != \
                (before.st_ino, before.st_mtime_ns, before.st_ctime_ns):
            problem = "changed while it was being checked"
        if problem:
            bad.append(f"{rel}: {problem}")
            continue
        rows.append([rel, size, digest, [after.st_ino, after.st_mtime_ns, after.st_ctime_ns]])
    if bad:
        raise VerificationError(f"{len(bad)} installed file(s) differ from its archive ({'; '.join(bad[:3])}"
                                f"{'; …' if len(bad) > 3 else ''}); re-install them from the archive with "
                                f"`mmf zoo verify --repair {key}`")
    return rows


def _register_foreign(path: Path, target: layout.Target, res: Resource, digest: str, rows: list, key: str) -> None:
    """Another user's install: register their record (never written by us) if it says exactly what we verified."""
    real = os.path.realpath(path)
    mismatch = (f"its install record {real} does not list exactly what its archive holds; ask the folder's owner to "
                f"run `mmf zoo verify --repair {key}`, or install your own copy with `mmf zoo fetch {key} --data-dir "
                "DIR`")
    try:
        st = os.lstat(real)
        raw = Path(real).read_bytes() if stat.S_ISREG(st.st_mode) else b""
        rec = json.loads(raw)
    except (OSError, ValueError):
        raise VerificationError(mismatch) from None
    listed = {tuple(r[:3]) for r in rec.get("files") or [] if isinstance(r, list) and len(r) >= 3} \
        if isinstance(rec, dict) else set()
    if not isinstance(rec, dict) or rec.get("sha256") != digest or rec.get("version") != target.entry.version \
            or not rec.get("verified") or listed != {tuple(r[:3]) for r in rows}:
        raise VerificationError(mismatch)
    truststore.register(real, raw, archive_sha256=digest, key=key, version=target.entry.version,
                        source=target.entry.source, foreign=True, stamps={r[0]: r[3] for r in rows})
