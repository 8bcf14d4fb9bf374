"""Read MMF LMDB feature stores: a pickled `keys` list plus one pickled dict (`features` N x 2048, ...) per image.

Opened lazily and read-only (`lock=False, readahead=False`) as MMF does, so a reader can live in every worker.
py-lmdb refuses a second open of one environment in a process, so every reader of a store shares one environment,
opened exactly once under a process-wide lock: the trainer's loader threads all reach their first read at the
same moment. Read-only, lock-free environments are safe to read from several threads (each read has its own
transaction) and stay usable in forked workers (no lock table, no live transaction).
"""
from __future__ import annotations

import os
import pickle
import threading
from dataclasses import dataclass

import numpy as np

from .errors import DataFileError, FeatureKeyError, fetch_advice, repair_advice
from .fingerprint import data_file
from .imdb import feature_keys
from .trust import require_trusted


@dataclass(frozen=True)
class _Store:
    env: object  # lmdb.Environment
    keys: frozenset


_STORES: dict[str, _Store] = {}
_OPEN_LOCK = threading.Lock()
# a fork while another thread holds the lock would leave the child's copy locked forever
os.register_at_fork(after_in_child=lambda: globals().update(_OPEN_LOCK=threading.Lock()))


def _damaged(path: str, detail: str) -> DataFileError:
    return DataFileError(f"feature store {path} is damaged ({detail}): {repair_advice(path)}")


def _open_store(path: str) -> _Store:
    """Open `path` read-only and read its key list; a damaged file is told apart from any other failure."""
    import lmdb

    mdb = data_file(path)
    try:
        size = os.path.getsize(mdb)
    except OSError as e:
        raise DataFileError(f"feature store {path} cannot be read ({e.strerror}: {mdb}); check its permissions "
                            "and that the disk is mounted") from e
    if size == 0:
        raise _damaged(path, f"{mdb} is empty")
    try:
        env = lmdb.open(path, subdir=os.path.isdir(path), readonly=True, lock=False, readahead=False,
                        meminit=False, max_readers=256)
    except (lmdb.InvalidError, lmdb.CorruptedError, lmdb.VersionMismatchError, lmdb.PageNotFoundError) as e:
        raise _damaged(path, str(e)) from e
    except lmdb.Error as e:  # not the file's fault: memory map, permissions, an open elsewhere in this process
        raise DataFileError(f"feature store {path} cannot be opened: {e}") from e
    # a truncated data file opens fine but a read past its end kills the process with SIGBUS: check it now
    needed = (env.info()["last_pgno"] + 1) * env.stat()["psize"]
    if size < needed:
        env.close()
        raise _damaged(path, f"{mdb} is {size} bytes but its pages need {needed}: it is truncated")
    try:
        with env.begin(write=False, buffers=True) as txn:
            raw = txn.get(b"keys")
            if raw is None:
                raise DataFileError(f"feature store {path} has no 'keys' record: it is not an MMF LMDB")
            keys = frozenset(k.encode() if isinstance(k, str) else bytes(k) for k in pickle.loads(bytes(raw)))
    except (lmdb.Error, pickle.UnpicklingError, EOFError, TypeError, ValueError) as e:
        env.close()
        raise _damaged(path, f"its key list is unreadable: {type(e).__name__}: {e}") from e
    except BaseException:
        env.close()
        raise
    return _Store(env, keys)


def shared_store(path: str) -> _Store:
    """The process's one open environment (and key set) of `path`, opening it on first use (thread-safe)."""
    real = os.path.realpath(path)
    with _OPEN_LOCK:
        store = _STORES.get(real)
        if store is None:
            store = _STORES[real] = _open_store(path)
        return store


class LmdbFeatureReader:
    """Features of one LMDB file/folder, looked up by an imdb `feature_path`. Safe to share between threads."""

    def __init__(self, path: str, trust_pickle: bool = False):
        if not os.path.exists(path):
            raise DataFileError(f"feature store {path} does not exist: "
                                f"{fetch_advice([path], 'dataset_config.<name>.features')}")
        require_trusted(path, trust_pickle, "LMDB features")
        self.path = path
        self._store: _Store | None = None  # set once, in one assignment, so a thread never sees half of it

    @property
    def store(self) -> _Store:
        if self._store is None:
            self._store = shared_store(self.path)
        return self._store

    @property
    def env(self):
        return self.store.env

    def key_for(self, feature_path: str) -> bytes:
        """The LMDB key MMF would read for `feature_path`."""
        keys = self.store.keys
        for key in feature_keys(feature_path):
            if key in keys:
                return key
        raise FeatureKeyError(f"feature store {self.path} has no record for feature_path {feature_path!r} "
                              f"(tried keys {[k.decode() for k in feature_keys(feature_path)]}): the imdb and the "
                              "features come from different releases, or the store is incomplete")

    def read(self, feature_path: str) -> tuple[np.ndarray, dict]:
        """(features float32 [N, D], the rest of the record) for one image."""
        import lmdb

        key = self.key_for(feature_path)
        try:
            with self.store.env.begin(write=False, buffers=True) as txn:
                raw = txn.get(key)
                if raw is None:
                    raise FeatureKeyError(f"feature store {self.path} lists key {key.decode()!r} but has no value")
                info = pickle.loads(bytes(raw))
            feats = np.asarray(info.pop("features"), dtype=np.float32)
        except FeatureKeyError:
            raise
        except (lmdb.CorruptedError, lmdb.PageNotFoundError, pickle.UnpicklingError, EOFError, KeyError,
                AttributeError, TypeError, ValueError) as e:
            raise _damaged(self.path, f"record {key.decode()!r} is unreadable: {type(e).__name__}: {e}") from e
        except lmdb.Error as e:
            raise DataFileError(f"feature store {self.path}: reading record {key.decode()!r} failed: {e}") from e
        return feats, info

    def __getstate__(self):  # an lmdb Environment must not cross a pickle; the copy reopens (or shares) lazily
        state = dict(self.__dict__)
        state["_store"] = None
        return state


def pad_rows(feats: np.ndarray, rows: int) -> tuple[np.ndarray, int]:
    """Zero-pad / truncate to `rows` rows (MMF's PaddedFasterRCNNFeatureReader); returns (array, real rows)."""
    out = np.zeros((rows, feats.shape[1]), dtype=np.float32)
    n = min(len(feats), rows)
    out[:n] = feats[:n]
    return out, n
