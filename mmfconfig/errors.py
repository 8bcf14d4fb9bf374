"""The one error config resolution raises on purpose: a file, key or value is wrong (the message says which and
what to do). `mmftrain.errors.ConfigError` derives from it, so `mmf train` prints either as one line."""
from __future__ import annotations


class ConfigError(ValueError):
    """A config file, key, path or value is wrong."""
