"""One exception tree for the zoo, and the one table of `mmf zoo` exit codes.

Every message names the thing and says what to do. Each class carries its exit code (a row of `EXIT_CODES`) and a
`kind`, the stable name scripts read from `--json`'s `error.kind` (derived from the class name unless set).
An error may carry `details`, a JSON-able dict (per-mirror causes, say), which --json shows as `error.details`.
README's exit-code table is checked against `EXIT_CODES` by tests/test_cli_exit_codes.py.
"""
from __future__ import annotations

import re

OK = 0
USAGE = 1  # click's own default (2) would collide with a verification failure: the zoo CLI routes it here
INTERNAL = 70  # BSD sysexits' EX_SOFTWARE: an unexpected exception, i.e. a bug in this program
INTERRUPTED = 130  # 128 + SIGINT, what shells report for Ctrl-C
TERMINATED = 143  # 128 + SIGTERM

EXIT_CODES = {
    OK: "success",
    USAGE: "usage or manifest error (bad option or argument, unknown key, malformed manifest)",
    2: "verification failure (hash mismatch, unsafe or corrupt archive, damaged install)",
    3: "network failure after retries on every mirror (or network needed while offline)",
    4: "disk problem (not enough space, disk full, read-only data dir)",
    5: "timed out waiting for another process's lock",
    INTERNAL: "internal error (a bug: please report it with the traceback printed on stderr)",
    INTERRUPTED: "interrupted (Ctrl-C); partial downloads stay resumable",
    TERMINATED: "terminated (SIGTERM); partial downloads stay resumable",
}


def kind_of(cls: type) -> str:
    """`HashMismatchError` -> 'hash_mismatch': the error's name in `--json`, unless the class sets `kind_name`."""
    own = cls.__dict__.get("kind_name")
    if own:
        return own
    name = cls.__name__[:-len("Error")] if cls.__name__.endswith("Error") else cls.__name__
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def with_result(exc: BaseException, result) -> BaseException:
    """Attach what a failing command got to (verify's checks, fetch's per-resource reports) for --json's
    `result`; zoo.outcome prints it beside the error."""
    exc.result = result
    return exc


class ZooError(Exception):
    """Root of every error the zoo raises on purpose."""

    exit_code = USAGE
    kind_name = "error"  # raised as itself: no more specific cause

    @property
    def kind(self) -> str:
        return kind_of(type(self))


class UsageError(ZooError, ValueError):
    """A command line that cannot work (an option out of range, a missing argument, options that exclude each
    other)."""

    exit_code = USAGE


class ManifestError(ZooError, ValueError):
    """A manifest is malformed, or a key is unknown."""

    exit_code = USAGE


class UnknownKeyError(ManifestError, KeyError):
    """A zoo key that no manifest defines."""

    def __str__(self) -> str:  # KeyError would quote the message
        return self.args[0] if self.args else ""


class OtherInstallError(ManifestError):
    """The key is installed from another manifest's entry; fetching or adopting the active one would mix or
    replace that data (pass that manifest, or --force)."""


class VerificationError(ZooError):
    """Bytes on disk do not match what the manifest promises."""

    exit_code = 2


class HashMismatchError(VerificationError, ValueError):
    """A whole-file sha256 (or a chunk hash) does not match."""


class UnsafeArchiveError(VerificationError):
    """An archive member would escape its destination, is a device file, or the archive is a bomb."""


class CorruptArchiveError(VerificationError):
    """An archive cannot be read to the end (truncated, not an archive, wrong format)."""


class NetworkError(ZooError):
    """Every mirror failed for a resource after retries."""

    exit_code = 3


class MirrorsExhaustedError(NetworkError):
    """No healthy mirror is left for a resource."""


class OfflineError(NetworkError):
    """The network was needed while offline mode is on."""


class DiskError(ZooError, OSError):
    """Not enough space, a read-only data dir, or another filesystem problem."""

    exit_code = 4


class LockTimeoutError(ZooError):
    """Another process holds the lock of a resource for too long."""

    exit_code = 5
