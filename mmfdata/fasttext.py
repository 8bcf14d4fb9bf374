"""fastText 300-d vectors for OCR tokens, from a model (optional `fasttext` package) or a vectors file.

Sources, by extension:
  `.bin`  a fastText model (e.g. MMF's `wiki.en.bin`); needs the `fasttext` extra (pip install 'mmf-zoo[fasttext]'); out-of-vocabulary words get
          subword vectors exactly as in MMF. Its size is checked against the size the zoo recorded, because a
          truncated `wiki.en.bin` loads silently and costs ~2 accuracy points (MMF issue #414).
  `.vec`  fastText's text format (`N D` header, then `word v1 .. vD` lines); a short file is reported.
  `.npy`  an [N, D] float array plus `<stem>.vocab.txt` (one word per line, row order).
Vectors files have no subword table: unknown words get a zero vector (logged once with a count).
"""
from __future__ import annotations

import logging
import os
import struct

import numpy as np

from .errors import DataFileError, repair_advice
from .lookup import FASTTEXT_ZOO_KEY

log = logging.getLogger(__name__)
FASTTEXT_MAGIC = 793712314  # first int32 of every fastText .bin model
FASTTEXT_EXTRA = "the fasttext package: pip install 'mmf-zoo[fasttext]'"  # pyproject's extra for .bin models


class VectorTable:
    """word -> vector lookup over an in-memory [N, D] float32 matrix."""

    def __init__(self, words: list[str], vectors: np.ndarray, source: str):
        self.index = {w: i for i, w in enumerate(words)}
        self.vectors = np.asarray(vectors, dtype=np.float32)
        self.dim = int(self.vectors.shape[1])
        self.source = source
        self.misses = 0

    def get_word_vector(self, word: str) -> np.ndarray:
        i = self.index.get(word)
        if i is None:
            if self.misses == 0:
                log.info("fastText vectors %s have no entry for %r (and maybe others): using zeros", self.source, word)
            self.misses += 1
            return np.zeros(self.dim, dtype=np.float32)
        return self.vectors[i]


class FastTextModel:
    """Wrapper over a `fasttext` package model with the same `get_word_vector` / `dim` interface."""

    def __init__(self, model, source: str):
        self.model = model
        self.dim = int(model.get_dimension())
        self.source = source

    def get_word_vector(self, word: str) -> np.ndarray:
        return np.asarray(self.model.get_word_vector(word), dtype=np.float32)


def _check_bin(path: str, expected_size: int | None) -> None:
    size = os.path.getsize(path)
    if expected_size is not None and size != expected_size:
        raise DataFileError(
            f"fastText model {path} is {size} bytes but the zoo recorded {expected_size}: it is truncated or a "
            f"different file; {repair_advice(path)}"
        )
    with open(path, "rb") as f:
        head = f.read(8)
    if len(head) < 8 or struct.unpack("<i", head[:4])[0] != FASTTEXT_MAGIC:
        raise DataFileError(f"{path} is not a fastText .bin model (bad magic number); {repair_advice(path)}")


def _load_vec(path: str) -> VectorTable:
    with open(path, encoding="utf-8", errors="replace") as f:
        header = f.readline().split()
        if len(header) != 2 or not all(h.isdigit() for h in header):
            raise DataFileError(f"fastText .vec file {path} must start with a 'count dim' line, got {header!r}")
        count, dim = int(header[0]), int(header[1])
        words, vecs = [], np.zeros((count, dim), dtype=np.float32)
        for line in f:
            parts = line.rstrip("\n").rstrip(" ").split(" ")
            if len(parts) != dim + 1:
                raise DataFileError(f"fastText .vec file {path} line {len(words) + 2} has {len(parts) - 1} values, "
                                    f"expected {dim}: the file is damaged; {repair_advice(path)}")
            if len(words) >= count:
                raise DataFileError(f"fastText .vec file {path} has more rows than its header ({count})")
            vecs[len(words)] = np.asarray(parts[1:], dtype=np.float32)
            words.append(parts[0])
    if len(words) != count:
        raise DataFileError(f"fastText .vec file {path} has {len(words)} rows but its header says {count}: "
                            f"it is truncated; {repair_advice(path)}")
    return VectorTable(words, vecs, path)


def npy_vocab_path(path: str) -> str:
    """The word list that goes with an `.npy` vectors file: `<stem>.vocab.txt` next to it."""
    return path[: -len(".npy")] + ".vocab.txt"


def _load_npy(path: str) -> VectorTable:
    vocab = npy_vocab_path(path)
    if not os.path.isfile(vocab):
        raise DataFileError(f"fastText vectors {path} need their word list {vocab} (one word per line)")
    try:
        vecs = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise DataFileError(f"fastText vectors {path} cannot be read ({e}): the file is damaged; "
                            f"{repair_advice(path)}") from e
    with open(vocab, encoding="utf-8") as f:
        words = [line.rstrip("\n") for line in f]
    if vecs.ndim != 2 or len(words) != vecs.shape[0]:
        raise DataFileError(f"fastText vectors {path} have shape {vecs.shape} but {vocab} lists {len(words)} words")
    return VectorTable(words, vecs, path)


def load_fasttext(path: str, expected_size: int | None = None):
    """Load a fastText source (see module docstring); returns an object with `get_word_vector(word)` and `dim`."""
    if not os.path.isfile(path):
        raise DataFileError(f"fastText file {path} does not exist: run `mmf zoo fetch {FASTTEXT_ZOO_KEY}` or set "
                            "processors.context_processor.params.model_file")
    if path.endswith(".vec"):
        return _load_vec(path)
    if path.endswith(".npy"):
        return _load_npy(path)
    _check_bin(path, expected_size)
    try:
        import fasttext  # optional dependency
    except ImportError as e:
        raise DataFileError(
            f"{path} is a fastText model: reading it needs {FASTTEXT_EXTRA} (or pip install fasttext); or point "
            "processors.context_processor.params.model_file at a vectors file (.vec, or .npy + .vocab.txt)"
        ) from e
    return FastTextModel(fasttext.load_model(path), path)


def fasttext_matrix(model, tokens: list[str], max_length: int = 50) -> np.ndarray:
    """[max_length, dim] vectors for the first `max_length` tokens, zero rows after (MMF's FastTextProcessor)."""
    out = np.zeros((max_length, model.dim), dtype=np.float32)
    for i, tok in enumerate(tokens[:max_length]):
        out[i] = model.get_word_vector(tok)
    return out
