"""Read MMF LMDB feature stores: a pickled `keys` list plus one pickled dict (`features` N x 2048, ...) per image.

Opened lazily and read-only (`lock=False, readahead=False`) as MMF does, so a reader can live in every worker.
"""
from __future__ import annotations

import os
import pickle

import numpy as np

from .errors import DataFileError, FeatureKeyError
from .imdb import feature_keys
from .trust import REPAIR_HINT, require_trusted


# py-lmdb refuses to open one environment twice in a process, so readers of the same store share it.
# Read-only, lock-free environments stay usable in forked DataLoader workers (no lock table, no live txn).
_ENVS: dict[str, tuple] = {}


class LmdbFeatureReader:
    """Features of one LMDB file/folder, looked up by an imdb `feature_path`."""

    def __init__(self, path: str, trust_pickle: bool = False):
        if not os.path.exists(path):
            raise DataFileError(f"feature store {path} does not exist: install features with `mmf zoo fetch` or fix "
                                "dataset_config.features")
        require_trusted(path, trust_pickle, "LMDB features")
        self.path = path
        self.env = None
        self.keys: set[bytes] | None = None

    def _open(self) -> None:
        import lmdb

        real = os.path.realpath(self.path)
        if real in _ENVS:
            self.env, self.keys = _ENVS[real]
            return
        try:
            self.env = lmdb.open(self.path, subdir=os.path.isdir(self.path), readonly=True, lock=False,
                                 readahead=False, meminit=False, max_readers=256)
            with self.env.begin(write=False, buffers=True) as txn:
                raw = txn.get(b"keys")
                if raw is None:
                    raise DataFileError(f"feature store {self.path} has no 'keys' record: it is not an MMF LMDB")
                self.keys = {k.encode() if isinstance(k, str) else bytes(k) for k in pickle.loads(bytes(raw))}
            _ENVS[real] = (self.env, self.keys)
        except lmdb.Error as e:
            raise DataFileError(f"feature store {self.path} cannot be opened ({e}): it is truncated or corrupt; "
                                f"{REPAIR_HINT}") from e

    def key_for(self, feature_path: str) -> bytes:
        """The LMDB key MMF would read for `feature_path`."""
        if self.env is None:
            self._open()
        for key in feature_keys(feature_path):
            if key in self.keys:
                return key
        raise FeatureKeyError(f"feature store {self.path} has no record for feature_path {feature_path!r} "
                              f"(tried keys {[k.decode() for k in feature_keys(feature_path)]}): the imdb and the "
                              "features come from different releases, or the store is incomplete")

    def read(self, feature_path: str) -> tuple[np.ndarray, dict]:
        """(features float32 [N, D], the rest of the record) for one image."""
        key = self.key_for(feature_path)
        import lmdb

        try:
            with self.env.begin(write=False, buffers=True) as txn:
                raw = txn.get(key)
                if raw is None:
                    raise FeatureKeyError(f"feature store {self.path} lists key {key.decode()!r} but has no value")
                info = pickle.loads(bytes(raw))
        except (lmdb.Error, pickle.UnpicklingError, EOFError) as e:
            raise DataFileError(f"feature store {self.path}: record {key.decode()!r} is unreadable ({e}); "
                                f"{REPAIR_HINT}") from e
        feats = np.asarray(info.pop("features"), dtype=np.float32)
        return feats, info

    def __getstate__(self):  # an lmdb Environment must not cross a fork/pickle; reopen lazily
        state = dict(self.__dict__)
        state["env"] = None
        return state


def pad_rows(feats: np.ndarray, rows: int) -> tuple[np.ndarray, int]:
    """Zero-pad / truncate to `rows` rows (MMF's PaddedFasterRCNNFeatureReader); returns (array, real rows)."""
    out = np.zeros((rows, feats.shape[1]), dtype=np.float32)
    n = min(len(feats), rows)
    out[:n] = feats[:n]
    return out, n
