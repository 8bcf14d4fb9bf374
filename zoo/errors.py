"""One exception tree for the zoo. Every message names the thing and says what to do.

The CLI maps each class to a documented exit code (see `exit_code`).
"""
from __future__ import annotations


class ZooError(Exception):
    """Root of every error the zoo raises on purpose."""

    exit_code = 1


class ManifestError(ZooError, ValueError):
    """A manifest is malformed, or a key is unknown."""

    exit_code = 1


class UnknownKeyError(ManifestError, KeyError):
    """A zoo key that no manifest defines."""

    def __str__(self) -> str:  # KeyError would quote the message
        return self.args[0] if self.args else ""


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


EXIT_CODES = {
    0: "success",
    1: "usage or manifest error (bad key, malformed manifest, bad option)",
    2: "verification failure (hash mismatch, unsafe or corrupt archive)",
    3: "network failure after retries on every mirror (or network needed while offline)",
    4: "disk problem (not enough space, read-only data dir)",
    5: "timed out waiting for another process's lock",
    130: "interrupted (Ctrl-C); partial downloads stay resumable",
    143: "terminated (SIGTERM); partial downloads stay resumable",
}
