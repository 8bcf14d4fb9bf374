"""M4C answer processing (MMF's `m4c_answer`), kept compact.

MMF builds a dense [12, V+50] float target per sample inside the DataLoader. We keep what that tensor is made of:
the step-0 candidates (first index of every matched answer sequence, with its best soft score) and the list of
candidate index sequences; one is picked for teacher forcing later (`targets.py`), and the dense tensor is built on
the training device by `mmfdata.batch.expand_targets`.
"""
from __future__ import annotations

import os
from collections import defaultdict
from dataclasses import dataclass

import numpy as np

from .errors import DataFileError, ImdbFormatError, VocabError, fetch_advice
from .text import word_tokenize

MAX_MATCH_NUM = 20  # MMF: at most 20 index sequences per answer


def load_answer_vocab(path: str) -> list[str]:
    """MMF's VocabDict word list: stripped lines, `<unk>` prepended when absent; `<pad>` must end up at 0."""
    if not os.path.isfile(path):
        raise DataFileError(f"answer vocab {path} does not exist: "
                            f"{fetch_advice([path], 'processors.answer_processor.params.vocab_file')}")
    with open(path, encoding="utf-8") as f:
        words = [line.strip() for line in f]
    if words and words[-1] == "":
        words = words[:-1]
    if "<unk>" not in words:
        words = ["<unk>", *words]
    for special in ("<pad>", "<s>", "</s>"):
        if special not in words:
            raise VocabError(f"answer vocab {path} lacks {special}; an M4C vocab needs <pad> (first), <s>, </s>")
    if words[0] != "<pad>":
        raise VocabError(f"answer vocab {path}: <pad> must be index 0 (found at {words.index('<pad>')}); "
                         "put <pad> on the first line and <unk> anywhere")
    if len(set(words)) != len(words):
        dup = sorted({w for w in words if words.count(w) > 1})[:5]
        raise VocabError(f"answer vocab {path} repeats entries {dup}: indices would be ambiguous")
    return words


def answer_scores(answers: list[str]) -> dict[str, float]:
    """VQA soft score of each unique answer: mean over the 10 leave-one-out sets of min(1, matches / 3)."""
    scores = {}
    for ans in sorted(set(answers)):
        total = 0.0
        for i in range(len(answers)):
            matches = sum(1 for j, other in enumerate(answers) if j != i and other == ans)
            total += min(1.0, matches / 3)
        scores[ans] = total / len(answers)
    return scores


@dataclass
class AnswerTargets:
    """Compact targets of one question. `cand_seq` rows hold the first `max_copy_steps` indices (-1 padded)."""

    first_inds: np.ndarray  # int64 [K], -1 padded
    first_scores: np.ndarray  # float32 [K]
    cand_seq: np.ndarray  # int32 [M, max_copy_steps]
    cand_len: np.ndarray  # int32 [M] true sequence lengths


class M4CAnswerProcessor:
    """Matches answers word by word to the fixed vocab and to OCR positions (offset by V), as MMF does."""

    def __init__(self, vocab_file: str, max_length: int = 50, max_copy_steps: int = 12, num_answers: int = 10):
        self.vocab_file = vocab_file
        self.words = load_answer_vocab(vocab_file)
        self.word2idx = {w: i for i, w in enumerate(self.words)}
        self.bos = self.word2idx["<s>"]
        self.eos = self.word2idx["</s>"]
        self.max_length = max_length
        self.max_copy_steps = max_copy_steps
        self.num_answers = num_answers
        # every unique first index is a vocab word of some answer or an OCR position: at most this many
        self.max_first = num_answers + max_length

    def match(self, answer: str, ocr2inds: dict[str, list[int]]) -> list[tuple[int, ...]]:
        """Every index sequence spelling `answer` (vocab word or OCR copy per word), capped at 20; [] if a word is
        neither in the vocab nor in the OCR tokens."""
        num_vocab = len(self.word2idx)
        matches = []
        for word in answer.split():
            inds = [self.word2idx[word]] if word in self.word2idx else []
            inds.extend(num_vocab + i for i in ocr2inds.get(word, ()))
            if not inds:
                return []
            matches.append(inds)
        if not matches:
            return []
        seqs = [()]
        for inds in matches:
            seqs = [s + (i,) for s in seqs for i in inds]
            if len(seqs) > MAX_MATCH_NUM:
                seqs = seqs[:MAX_MATCH_NUM]
        return seqs

    def __call__(self, answers: list[str], ocr_tokens: list[str], where: str = "") -> AnswerTargets:
        """Compact targets for one question; `ocr_tokens` are the processed tokens (first `max_length` are used)."""
        first_inds = np.full(self.max_first, -1, dtype=np.int64)
        first_scores = np.zeros(self.max_first, dtype=np.float32)
        steps = self.max_copy_steps
        if not answers:
            return AnswerTargets(first_inds, first_scores, np.zeros((0, steps), np.int32), np.zeros(0, np.int32))
        answers = [word_tokenize(a) for a in answers]
        if len(answers) != self.num_answers:
            raise ImdbFormatError(f"{where} has {len(answers)} answers; the answer processor expects "
                                  f"num_answers={self.num_answers} (MMF tiles ST-VQA answers to 10 in its imdbs)")
        scores = answer_scores(answers)
        ocr2inds = defaultdict(list)
        for i, tok in enumerate(ocr_tokens[: self.max_length]):
            ocr2inds[tok].append(i)
        best: dict[int, float] = {}
        seqs = []
        for ans in answers:
            for seq in self.match(ans, ocr2inds):
                seqs.append(seq)
                best[seq[0]] = max(best.get(seq[0], 0.0), scores[ans])
        firsts = sorted(best)
        first_inds[: len(firsts)] = firsts
        first_scores[: len(firsts)] = [best[i] for i in firsts]
        cand_seq = np.full((len(seqs), steps), -1, dtype=np.int32)
        cand_len = np.zeros(len(seqs), dtype=np.int32)
        for r, seq in enumerate(seqs):
            cand_seq[r, : min(len(seq), steps)] = seq[:steps]
            cand_len[r] = len(seq)
        return AnswerTargets(first_inds, first_scores, cand_seq, cand_len)
