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
