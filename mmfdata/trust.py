"""When may pickled data be loaded? Only from a zoo-verified install (`zoo.trust`) or with explicit user trust.

MMF's imdb `.npy` files and LMDB feature values are pickles; unpickling runs arbitrary code.
"""
from __future__ import annotations

from zoo.trust import untrusted_reason

from .errors import UntrustedPickleError

__all__ = ["require_trusted"]


def require_trusted(path: str, trust_pickle: bool, what: str = "pickled data") -> None:
    """Raise `UntrustedPickleError` unless the zoo verified every byte of `path` or the user trusts it."""
    if trust_pickle:
        return
    reason = untrusted_reason(path)
    if reason and reason.damaged:  # changed since a verified install: mend it, never trust it
        raise UntrustedPickleError(f"refusing to unpickle {what}: {reason}")
    if reason:
        raise UntrustedPickleError(f"refusing to unpickle {what} in {path}: {reason}; "
                                   + reason.hint("trust_pickle=True (CLI: --trust-pickle)"))
