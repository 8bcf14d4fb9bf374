"""Exceptions raised on purpose by `mmftrain`. Every message names the thing and says what to do."""
from __future__ import annotations

from mmfconfig.errors import ConfigError  # noqa: F401  (one class: config resolution raises it, so do we)


class TrainError(Exception):
    """Root of every error the trainer raises on purpose; the CLI prints it as one line and exits 1."""


class CheckpointError(TrainError):
    """A checkpoint is missing, unreadable or does not fit the model."""


class DataError(TrainError):
    """The dataset cannot be built or does not follow the batch contract."""
