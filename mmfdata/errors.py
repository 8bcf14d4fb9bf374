"""Errors raised by `mmfdata`. Each message names the file / question / key and says what to do.

`DataError` is the root; the CLI turns any of them into one line on stderr and exit code 1.
"""
from __future__ import annotations


class DataError(Exception):
    """Root of every error `mmfdata` raises on purpose."""


class DataFileError(DataError, OSError):
    """A file the dataset needs is missing, truncated or unreadable."""


class UntrustedPickleError(DataError, PermissionError):
    """Pickled data (imdb `.npy`, LMDB values) outside a zoo-verified install, without `trust_pickle`."""


class ImdbFormatError(DataError, ValueError):
    """An imdb file does not have MMF's shape (header + per-question dicts) or lacks a field."""


class FeatureKeyError(DataError, KeyError):
    """A question's feature_path has no record in a feature store."""

    def __str__(self) -> str:  # KeyError would quote the message
        return self.args[0] if self.args else ""


class DataConfigError(DataError, ValueError):
    """A dataset_config / processor option is missing or invalid."""


class VocabError(DataError, ValueError):
    """A vocabulary file is malformed (missing `<pad>` at 0, duplicates, ...)."""


class PackError(DataError):
    """The packed store cannot be built or read."""


def zoo_key_of(path: str) -> str | None:
    """The zoo key whose install holds `path` (the zoo's layout answers), or None outside it."""
    from zoo.layout import key_of_path

    return key_of_path(path)


def repair_advice(path: str) -> str:
    """What to do about a damaged file: the zoo's repair command for its key, else replacing the file."""
    key = zoo_key_of(path)
    if key is None:
        return f"replace {path} with an intact copy"
    return f"run `mmf zoo verify --repair {key}` (re-installs only the damaged files)"


def fetch_advice(paths: list[str], option: str) -> str:
    """How to get missing files: `mmf zoo fetch <keys>` for files in the zoo's layout, else the option to fix."""
    keys = sorted({k for k in map(zoo_key_of, paths) if k})
    hints = [f"run `mmf zoo fetch {' '.join(keys)}`"] if keys else []
    if not keys or any(zoo_key_of(p) is None for p in paths):
        hints.append(f"point {option} at existing files")
    return " or ".join(hints)
