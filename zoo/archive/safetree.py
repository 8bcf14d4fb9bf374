"""Write archive members into a private folder without letting anything escape it.

Every extractor (tar, zip, single gzip, streaming) goes through `SafeTree`, so the safety rules live in one
place and hold on every Python version (we do not rely on 3.12's `tarfile` filters):

- member names are relative, have no `..` component and no control character;
- a symlink may only point inside the folder, checked when it is made and again once everything is out
  (a later link can redirect an earlier, dangling one);
- a hard link may only point at a regular file extracted earlier;
- every write goes through a parent whose real path is inside the folder, into a file opened with
  O_NOFOLLOW | O_EXCL, so a link planted by the archive is never written through;
- modes are what the user's umask gives (`zoo.fsutil.shared_mode`: 0644, 0755 for folders and executables under
  umask 022), never setuid/setgid/sticky; nothing is chowned, so files belong to the user;
- what the tree takes on disk is capped, in bytes and in entries (decompression and directory bombs; the
  policy and the accounting are `zoo.archive.limits.Budget`), charged before each entry is made;
- nothing may be named like the zoo's own records (`.built.json`, `.mmfzoo/`): an archive must not mark data
  as installed or forge an install record;
- every file's xxh3-128 is computed as it is written, for the install record (content-level verify and trust).
"""
from __future__ import annotations

import errno
import os
import stat

import xxhash

from zoo.archive.limits import Budget
from zoo.errors import CorruptArchiveError, DiskError, UnsafeArchiveError
from zoo.fsutil import EXECUTABLE, FILE, FOLDER, human, shared_mode
from zoo.records import MARKER, STATE_DIR


_DISK_FULL = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
_OPEN_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
RESERVED = {MARKER, STATE_DIR}


def _bad_chars(text: str) -> bool:
    return any(ord(c) < 32 or ord(c) == 127 for c in text)


def safe_relpath(name: str, label: str) -> str | None:
    """Turn an archive member name into a clean relative posix path, or None for the root entry ('./').

    Raises UnsafeArchiveError for absolute names, `..` components and control characters (NUL included).
    """
    if _bad_chars(name):
        raise UnsafeArchiveError(
            f"{label}: member name {name!r} contains a control character; refusing to extract it "
            "(the archive is malformed or hostile; do not use it)")
    if name.startswith("/"):
        raise UnsafeArchiveError(
            f"{label}: member {name!r} has an absolute path; refusing to extract it "
            "(a safe archive only holds relative paths)")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if any(p in RESERVED for p in parts):
        raise UnsafeArchiveError(
            f"{label}: member {name!r} is named like the zoo's own records ({', '.join(sorted(RESERVED))}); "
            "refusing to extract it (an archive must not mark data as installed)")
    # a backslash is a literal character on POSIX, but '..\\x' must not sneak past on other tools either
    if any(p == ".." or ".." in p.split("\\") for p in parts):
        raise UnsafeArchiveError(
            f"{label}: member {name!r} contains a '..' component that would escape the destination; "
            "refusing to extract it")
    return "/".join(parts) or None


class SafeTree:
    """The destination folder of one extraction, with its budget (`zoo.archive.limits.Budget`: bytes on disk
    and entries, fixed or growing with a stream's bytes) and the list of files written."""

    def __init__(self, dest, budget: Budget, progress=None):
        os.makedirs(dest, mode=0o700, exist_ok=True)
        self.dest = os.path.realpath(dest)
        self.budget = budget
        self.label = budget.label
        self.progress = progress
        self.written = 0  # content bytes, for messages; the budget counts footprints
        self._sizes: dict[int, int] = {}  # open fd -> bytes written to it so far
        self.files: dict[str, int] = {}  # insertion order = archive order
        self.hashes: dict[str, str] = {}  # rel -> xxh3-128 of the content written
        self._hashers: dict[int, object] = {}  # open fd -> running xxh3
        self._links: list[str] = []
        self._dirs: set[str] = {self.dest}  # folders known to exist and to resolve inside dest

    # ----------------------------------------------------------------------------------------- writes
    def write(self, fd: int, data, member: str) -> None:
        """Write all of `data` to `fd`, counting it against the budget and mapping disk errors."""
        n = len(data)
        old = self._sizes.get(fd, 0)
        self.budget.grow(old, old + n, member)
        self._sizes[fd] = old + n
        view = memoryview(data)
        hasher = self._hashers.get(fd)
        if hasher is not None:
            hasher.update(view)
        try:
            while view:
                done = os.write(fd, view)
                self.written += done  # counted per call: a disk-full message says how far we got
                view = view[done:]
        except OSError as exc:
            raise self.disk_error(exc, member) from exc
        if self.progress is not None:
            self.progress(n)

    def disk_error(self, exc: OSError, member: str) -> DiskError:
        """A DiskError naming the member, what was written so far and what to do."""
        if exc.errno in _DISK_FULL:
            return DiskError(
                f"No space left while extracting {member!r} from {self.label} into {self.dest} "
                f"({exc.strerror}) after writing {human(self.written)}; the archive itself is intact: "
                "free some space (or point the data dir elsewhere) and run the command again")
        return DiskError(
            f"Could not write {member!r} from {self.label} into {self.dest}: {exc.strerror or exc}; "
            "check that the data dir is writable and on a healthy filesystem")

    # ------------------------------------------------------------------------------------ path checks
    def _inside(self, path: str) -> bool:
        return path == self.dest or path.startswith(self.dest + os.sep)

    def _check_real(self, path: str, member: str) -> None:
        # only needed once the archive made a link: before that nothing in dest can redirect a path
        if self._links and not self._inside(os.path.realpath(path)):
            raise UnsafeArchiveError(
                f"{self.label}: member {member!r} would be written through a symlink that leads outside "
                "the destination; refusing to extract it")

    def _parent(self, rel: str, member: str) -> str:
        path = os.path.join(self.dest, rel)
        parent = os.path.dirname(path)
        if parent not in self._dirs:
            self._check_real(parent, member)
            self._charge_parents(parent, member)
            try:
                os.makedirs(parent, mode=shared_mode(FOLDER), exist_ok=True)
            except (FileExistsError, NotADirectoryError):
                raise CorruptArchiveError(
                    f"{self.label}: member {member!r} needs a folder where the archive already put a "
                    "file; the archive is inconsistent, download it again or report it") from None
            except OSError as exc:
                raise self.disk_error(exc, member) from exc
            self._dirs.add(parent)
        return path

    def _charge_parents(self, parent: str, member: str) -> None:
        """Charge the folders that makedirs is about to create: a member named a/a/a/.../x makes one per level."""
        missing = 0
        while parent not in self._dirs and not os.path.lexists(parent):
            missing += 1
            parent = os.path.dirname(parent)
        if missing:
            self.budget.entry(member, missing)

    def _clear(self, path: str, rel: str, member: str) -> None:
        """Remove what an earlier member put at `path` (tar semantics: a later member wins)."""
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return
        if stat.S_ISDIR(st.st_mode):
            raise CorruptArchiveError(
                f"{self.label}: member {member!r} would replace a folder extracted earlier; the archive is "
                "inconsistent, download it again or report it")
        os.unlink(path)
        self.files.pop(rel, None)
        self.hashes.pop(rel, None)

    # -------------------------------------------------------------------------------------- writers
    def make_dir(self, rel: str, mode: int, member: str) -> None:
        """Create folder `rel` (and its parents) with the mode the umask gives (the archive's own mode is not
        kept: the data dir may be shared, and its owner must be able to replace and repair what is installed)."""
        path = self._parent(rel, member)
        if path in self._dirs:
            return
        self._check_real(path, member)
        if not os.path.lexists(path):
            self.budget.entry(member)
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:
            if not os.path.isdir(path):
                raise CorruptArchiveError(
                    f"{self.label}: folder member {member!r} clashes with a file extracted earlier; the "
                    "archive is inconsistent, download it again or report it") from None
        except OSError as exc:
            raise self.disk_error(exc, member) from exc
        os.chmod(path, shared_mode(FOLDER))
        self._dirs.add(path)

    def open_file(self, rel: str, member: str) -> int:
        """Open a new file for member `rel`, replacing an earlier member of the same name."""
        path = self._parent(rel, member)
        self.budget.entry(member)
        try:
            fd = os.open(path, _OPEN_FLAGS, 0o600)
        except FileExistsError:
            self._clear(path, rel, member)
            try:
                fd = os.open(path, _OPEN_FLAGS, 0o600)
            except OSError as exc:
                raise self.disk_error(exc, member) from exc
        except OSError as exc:
            raise self.disk_error(exc, member) from exc
        self._hashers[fd] = xxhash.xxh3_128()
        self._sizes[fd] = 0
        return fd

    def finish_file(self, fd: int, rel: str, size: int, mode: int, mtime, member: str) -> None:
        """Set the mode the umask gives (executable when the member is; never setuid) and the member's mtime,
        close, and record (rel, size). Files are written 0600 until then, inside a private (0700) folder."""
        try:
            os.fchmod(fd, shared_mode(EXECUTABLE if mode & 0o111 else FILE))
            if mtime is not None:
                try:
                    os.utime(fd, (mtime, mtime))
                except (OverflowError, ValueError):
                    pass  # an absurd timestamp is not worth failing an install for
        except OSError as exc:
            raise self.disk_error(exc, member) from exc
        finally:
            os.close(fd)
            hasher = self._hashers.pop(fd, None)
            self._sizes.pop(fd, None)
        self.files[rel] = size
        self.hashes[rel] = hasher.hexdigest() if hasher is not None else None

    def symlink(self, rel: str, target: str, member: str) -> None:
        """Create a symlink that must resolve inside the destination."""
        bad = UnsafeArchiveError(
            f"{self.label}: symlink {member!r} -> {target!r} points outside the destination; "
            "refusing to extract it")
        if not target or _bad_chars(target) or target.startswith("/") or RESERVED & set(target.split("/")):
            raise bad
        lexical = os.path.normpath(os.path.join(os.path.dirname(rel), target))
        if lexical == ".." or lexical.startswith("../"):
            raise bad
        path = self._parent(rel, member)
        self._check_real(os.path.dirname(path), member)
        if not self._inside(os.path.realpath(os.path.join(os.path.dirname(path), target))):
            raise bad
        self._clear(path, rel, member)
        self.budget.entry(member)
        try:
            os.symlink(target, path)
        except OSError as exc:
            raise self.disk_error(exc, member) from exc
        self._links.append(rel)
        self._dirs = {self.dest}  # a new link may change where cached folders resolve

    def hardlink(self, rel: str, target: str, member: str) -> None:
        """Create a hard link to a regular file extracted earlier from the same archive."""
        parts = [p for p in target.split("/") if p not in ("", ".")]
        source = os.path.realpath(os.path.join(self.dest, *parts))
        try:
            st = os.lstat(source)
        except OSError:
            st = None
        if (not parts or target.startswith("/") or ".." in parts or _bad_chars(target)
                or not self._inside(source) or st is None or not stat.S_ISREG(st.st_mode)):
            raise UnsafeArchiveError(
                f"{self.label}: hard link {member!r} -> {target!r} does not point at a file extracted earlier "
                "inside the destination; refusing to extract it")
        path = self._parent(rel, member)
        self._check_real(os.path.dirname(path), member)
        self._clear(path, rel, member)
        self.budget.entry(member)
        try:
            os.link(source, path, follow_symlinks=False)
        except OSError as exc:
            raise self.disk_error(exc, member) from exc
        self.files[rel] = st.st_size
        self.hashes[rel] = self.hashes.get(os.path.relpath(source, self.dest).replace(os.sep, "/"))

    def verify_links(self) -> None:
        """Check again, once everything is out, that no symlink resolves outside the destination."""
        for rel in self._links:
            path = os.path.join(self.dest, rel)
            if os.path.islink(path) and not self._inside(os.path.realpath(path)):
                raise UnsafeArchiveError(
                    f"{self.label}: symlink {rel!r} resolves outside the destination through other links in "
                    "the archive; refusing it")

    def drop_links(self) -> None:
        """After a failure: remove every symlink made so far, so a half-extracted tree points nowhere outside."""
        for rel in self._links:
            try:
                os.unlink(os.path.join(self.dest, rel))
            except OSError:
                pass  # already replaced by a later member, or gone with its folder
        self._links.clear()

    def file_list(self) -> list[tuple[str, int, str]]:
        """(relative posix path, size, xxh3-128) of every regular file written, in archive order."""
        return [(rel, size, self.hashes.get(rel)) for rel, size in self.files.items()]
