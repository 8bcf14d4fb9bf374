"""Text processors: MMF's `simple_word` normalisation and an uncased BERT WordPiece tokenizer.

The tokenizer reproduces `bert-base-uncased` (basic tokenisation + greedy longest-match WordPiece) from a plain
`vocab.txt`, so the question ids equal what MMF's `bert_tokenizer` processor produces, without `transformers`.
"""
from __future__ import annotations

import os
import unicodedata

import numpy as np

from .errors import DataFileError, VocabError, repair_advice


def word_tokenize(word: str, remove=(",", "?")) -> str:
    """MMF's `simple_word` / `word_tokenize`: lowercase, drop `,` and `?`, split `'s` off, strip."""
    word = word.lower()
    for item in remove:
        word = word.replace(item, "")
    return word.replace("'s", " 's").strip()


def _is_whitespace(ch: str) -> bool:
    if ch in " \t\n\r":
        return True
    return unicodedata.category(ch) == "Zs"


def _is_control(ch: str) -> bool:
    if ch in "\t\n\r":
        return False
    return unicodedata.category(ch) in ("Cc", "Cf")


def _is_punctuation(ch: str) -> bool:
    cp = ord(ch)
    # BERT treats every non-alphanumeric ASCII char as punctuation, plus Unicode P* categories
    if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
        return True
    return unicodedata.category(ch).startswith("P")


def _is_cjk(cp: int) -> bool:
    return (
        0x4E00 <= cp <= 0x9FFF or 0x3400 <= cp <= 0x4DBF or 0x20000 <= cp <= 0x2A6DF or 0x2A700 <= cp <= 0x2B73F
        or 0x2B740 <= cp <= 0x2B81F or 0x2B820 <= cp <= 0x2CEAF or 0xF900 <= cp <= 0xFAFF or 0x2F800 <= cp <= 0x2FA1F
    )


def basic_tokenize(text: str) -> list[str]:
    """BERT's BasicTokenizer with do_lower_case=True: clean, split CJK, lowercase, strip accents, split punctuation."""
    out = []
    for ch in text:
        cp = ord(ch)
        if cp == 0 or cp == 0xFFFD or _is_control(ch):
            continue
        if _is_whitespace(ch):
            out.append(" ")
        elif _is_cjk(cp):
            out.append(f" {ch} ")
        else:
            out.append(ch)
    tokens = []
    for tok in "".join(out).split():
        tok = unicodedata.normalize("NFD", tok.lower())
        tok = "".join(c for c in tok if unicodedata.category(c) != "Mn")
        word = []
        for ch in tok:
            if _is_punctuation(ch):
                if word:
                    tokens.append("".join(word))
                    word = []
                tokens.append(ch)
            else:
                word.append(ch)
        if word:
            tokens.append("".join(word))
    return tokens


def load_vocab(path: str) -> dict[str, int]:
    """A BERT `vocab.txt` (one token per line, id = line number) as a dict."""
    if not os.path.isfile(path):
        raise DataFileError(f"BERT vocab file {path} does not exist: run `mmf zoo fetch bert-base-uncased` or "
                            "set processors.text_processor.params.vocab_file to a local vocab.txt")
    with open(path, encoding="utf-8") as f:
        vocab = {}
        for i, line in enumerate(f):
            tok = line.rstrip("\n")
            vocab.setdefault(tok, i)
    for special in ("[PAD]", "[UNK]", "[CLS]", "[SEP]"):
        if special not in vocab:
            raise VocabError(f"BERT vocab {path} lacks {special}: it is not a BERT vocab.txt (or is damaged); "
                             f"{repair_advice(path)}")
    return vocab


class BertTokenizer:
    """Question -> fixed-length BERT ids `[CLS] ... [SEP]`, 0-padded, as MMF's `bert_tokenizer` processor."""

    def __init__(self, vocab_file: str, max_seq_length: int = 20, max_chars_per_word: int = 100):
        self.vocab_file = vocab_file
        self.vocab = load_vocab(vocab_file)
        self.max_seq_length = max_seq_length
        self.max_chars_per_word = max_chars_per_word
        self.unk_id = self.vocab["[UNK]"]
        self.pad_id = self.vocab["[PAD]"]

    def wordpiece(self, token: str) -> list[str]:
        """Greedy longest-match-first WordPiece split of one basic token."""
        if len(token) > self.max_chars_per_word:
            return ["[UNK]"]
        pieces, start = [], 0
        while start < len(token):
            end = len(token)
            cur = None
            while start < end:
                sub = token[start:end]
                if start > 0:
                    sub = "##" + sub
                if sub in self.vocab:
                    cur = sub
                    break
                end -= 1
            if cur is None:
                return ["[UNK]"]
            pieces.append(cur)
            start = end
        return pieces

    def tokenize(self, text: str) -> list[str]:
        return [p for tok in basic_tokenize(text) for p in self.wordpiece(tok)]

    def encode(self, text: str) -> tuple[np.ndarray, int]:
        """(ids int64 [max_seq_length], number of real tokens including [CLS]/[SEP])."""
        pieces = self.tokenize(text)[: self.max_seq_length - 2]
        tokens = ["[CLS]", *pieces, "[SEP]"]
        ids = np.full(self.max_seq_length, self.pad_id, dtype=np.int64)
        ids[: len(tokens)] = [self.vocab.get(t, self.unk_id) for t in tokens]
        return ids, len(tokens)
