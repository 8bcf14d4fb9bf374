"""PHOC (pyramidal histogram of characters), 604-d, bit-exact with MMF's `mmf/utils/phoc` C extension.

Layout: 36 unigrams (a-z, 0-9) at pyramid levels 2..5 (14 regions, 504 dims, level-major then region then char),
then 50 common English bigrams at level 2 (2 regions x 50 = 100 dims). A character (bigram) marks a region when at
least half of its span lies inside it. The C code does this arithmetic in float32; so do we, because the >= 0.5
test sits exactly on the boundary for some (length, position) pairs.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np

PHOC_DIM = 604
UNIGRAMS = "abcdefghijklmnopqrstuvwxyz0123456789"
BIGRAMS = (
    "th he in er an re es on st nt en at ed nd to or ea ti ar te ng al it as is ha et se ou of "
    "le sa ve ro ra ri hi ne me de co ta ec si ll so na li la el"
).split()
_UNI = {c: i for i, c in enumerate(UNIGRAMS)}
_BI = {b: i for i, b in enumerate(BIGRAMS)}
_LEVEL_OFFSET = {2: 0, 3: 2, 4: 5, 5: 9}  # sum of the region counts of lower levels
_F = np.float32


def _covers(occ0, occ1, level: int, region: int) -> bool:
    r0 = _F(region) / _F(level)
    r1 = _F(region + 1) / _F(level)
    o0 = max(occ0, r0)
    o1 = min(occ1, r1)
    return bool((o1 - o0) / (occ1 - occ0) >= _F(0.5))


@lru_cache(maxsize=None)
def _unigram_slots(n: int, index: int) -> tuple[int, ...]:
    """Offsets (without the char index) that character `index` of an `n`-char word sets."""
    occ0, occ1 = _F(index) / _F(n), _F(index + 1) / _F(n)
    return tuple(
        (_LEVEL_OFFSET[level] + region) * 36
        for level in range(2, 6)
        for region in range(level)
        if _covers(occ0, occ1, level, region)
    )


@lru_cache(maxsize=None)
def _bigram_slots(n: int, i: int) -> tuple[int, ...]:
    occ0, occ1 = _F(i) / _F(n), _F(i + 2) / _F(n)
    return tuple(504 + region * 50 for region in range(2) if _covers(occ0, occ1, 2, region))


def normalize(token: str) -> str:
    """MMF's pre-processing: lowercase, strip, keep only a-z and 0-9."""
    return "".join(c for c in token.lower().strip() if c in _UNI)


def build_phoc(token: str) -> np.ndarray:
    """The 604-d float32 PHOC of one OCR token (all zeros when nothing alphanumeric is left)."""
    word = normalize(token)
    out = np.zeros(PHOC_DIM, dtype=np.float32)
    n = len(word)
    for index, ch in enumerate(word):
        c = _UNI[ch]
        for off in _unigram_slots(n, index):
            out[off + c] = 1.0
    for i in range(n - 1):
        b = _BI.get(word[i : i + 2])
        if b is not None:
            for off in _bigram_slots(n, i):
                out[off + b] = 1.0
    return out


def phoc_matrix(tokens: list[str], max_length: int = 50) -> np.ndarray:
    """[max_length, 604] PHOC rows for the first `max_length` tokens, zero rows after (MMF's PhocProcessor)."""
    out = np.zeros((max_length, PHOC_DIM), dtype=np.float32)
    for i, tok in enumerate(tokens[:max_length]):
        out[i] = build_phoc(tok)
    return out
