"""mmfdata: TextVQA / ST-VQA datasets from MMF's prepared data (imdb + LMDB), M4C processors, a packed store.

    from mmfdata import build_dataset, default_dataset_config
    ds = build_dataset("textvqa", default_dataset_config("textvqa"), "train", data_dir)
    batch = ds.get_batch(np.arange(128))        # keys and shapes: mmfdata/batch.py

Names are imported lazily so that `mmf --help` (which mounts `mmfdata.cli`) does not import numpy.
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "build_dataset": "build", "pack_dataset": "build", "default_dataset_config": "configs",
    "ConcatDataset": "concat", "LmdbDataset": "lmdb_dataset", "PackedDataset": "packed",
    "write_synthetic": "synth",
    "DataError": "errors", "DataFileError": "errors", "UntrustedPickleError": "errors", "ImdbFormatError": "errors",
    "FeatureKeyError": "errors", "DataConfigError": "errors", "VocabError": "errors", "PackError": "errors",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module 'mmfdata' has no attribute {name!r}")
