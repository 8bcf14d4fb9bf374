"""Processors against hand-computed vectors: PHOC, BERT WordPiece, simple_word, M4C answers, fastText files."""
from __future__ import annotations

import os
import struct

import numpy as np
import pytest

from mmfdata.answers import M4CAnswerProcessor, answer_scores
from mmfdata.errors import DataFileError, VocabError
from mmfdata.fasttext import load_fasttext
from mmfdata.phoc import PHOC_DIM, build_phoc, phoc_matrix
from mmfdata.targets import choose, teacher_forcing
from mmfdata.text import BertTokenizer, basic_tokenize, word_tokenize


def ones(v):
    return set(np.nonzero(v)[0].tolist())


# index = (sum of lower level sizes + region) * 36 + char; bigrams: 504 + region * 50 + bigram
def test_phoc_single_char_sets_both_level2_regions_only():
    assert ones(build_phoc("a")) == {0, 36}
    assert build_phoc("a").shape == (PHOC_DIM,) and build_phoc("a").dtype == np.float32


def test_phoc_two_chars_by_hand():
    # 'a' spans [0, .5]: L2 r0; L3 r0 (overlap 2/3); L4 r0, r1; nothing at L5 (best overlap .4)
    a = {0 * 36 + 0, 2 * 36 + 0, 5 * 36 + 0, 6 * 36 + 0}
    b = {1 * 36 + 1, 4 * 36 + 1, 7 * 36 + 1, 8 * 36 + 1}
    assert ones(build_phoc("ab")) == a | b


def test_phoc_bigram_and_normalisation():
    t, h = 19, 7
    expect = {0 * 36 + t, 2 * 36 + t, 5 * 36 + t, 6 * 36 + t, 1 * 36 + h, 4 * 36 + h, 7 * 36 + h, 8 * 36 + h,
              504 + 0, 504 + 50}  # "th" is bigram 0 and covers both level-2 halves
    assert ones(build_phoc("th")) == expect
    assert np.array_equal(build_phoc(" T-h! "), build_phoc("th"))
    assert not build_phoc("!!").any()


def test_phoc_float32_boundary_like_mmf_c_code():
    # middle char of a 3-char word spans [1/3, 2/3]; exact overlap with each half is exactly 0.5, but in float32
    # (as MMF's C code computes) the left half gives 0.49999994 and the right one 0.50000003
    v = build_phoc("abc")
    assert v[1 * 36 + 1] == 1.0 and v[0 * 36 + 1] == 0.0


def test_phoc_matrix_pads_and_truncates():
    m = phoc_matrix(["ab"] * 60, max_length=50)
    assert m.shape == (50, 604) and m[49].any()
    assert not phoc_matrix(["ab"], 50)[1:].any()


def test_word_tokenize_is_mmf_simple_word():
    assert word_tokenize("What's up, Doc?") == "what 's up doc"
    assert word_tokenize("  Coca-Cola ") == "coca-cola"


@pytest.fixture
def bert_vocab(tmp_path):
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "hello", ",", "world", "!", "un", "##aff", "##able",
             "what", "is", "the", "?"]
    p = tmp_path / "vocab.txt"
    p.write_text("\n".join(words) + "\n")
    return str(p), {w: i for i, w in enumerate(words)}


def test_bert_basic_tokenizer():
    assert basic_tokenize("Hello, World!") == ["hello", ",", "world", "!"]
    assert basic_tokenize("Héllo\tthere\x00") == ["hello", "there"]


def test_bert_wordpiece_ids_and_length(bert_vocab):
    path, ids = bert_vocab
    tok = BertTokenizer(path, max_seq_length=20)
    assert tok.tokenize("unaffable") == ["un", "##aff", "##able"]
    out, n = tok.encode("Hello, unaffable World! zzz")
    expect = [ids[t] for t in ["[CLS]", "hello", ",", "un", "##aff", "##able", "world", "!", "[UNK]", "[SEP]"]]
    assert n == len(expect) and out.tolist() == expect + [0] * (20 - len(expect))
    out, n = tok.encode("what is " * 30)
    assert n == 20 and out[0] == ids["[CLS]"] and out[-1] == ids["[SEP]"]


def test_bert_vocab_without_specials_is_rejected(tmp_path):
    p = tmp_path / "v.txt"
    p.write_text("a\nb\n")
    with pytest.raises(VocabError, match=r"\[PAD\]"):
        BertTokenizer(str(p))


@pytest.fixture
def answer_proc(tmp_path):
    p = tmp_path / "answers.txt"
    p.write_text("<pad>\n<s>\n</s>\n<unk>\nred\napple\n")
    return M4CAnswerProcessor(str(p), max_length=50, max_copy_steps=12, num_answers=10)


def test_answer_scores_are_vqa_soft_scores():
    s = answer_scores(["a"] * 4 + ["b"] * 3 + ["c"] * 2 + ["d"])
    assert s["a"] == 1.0 and s["b"] == pytest.approx(0.9) and s["c"] == pytest.approx(0.6)
    assert s["d"] == pytest.approx(0.3)


def test_m4c_answer_matching_by_hand(answer_proc):
    v = 6  # vocab size; OCR position i is index v + i
    t = answer_proc(["Red apple"] * 4 + ["red flag"] * 3 + ["blue"] * 3, ["red", "flag", "red"])
    firsts = t.first_inds[t.first_inds >= 0].tolist()
    assert firsts == [4, v + 0, v + 2]
    assert t.first_scores[:3].tolist() == [1.0, 1.0, 1.0] and not t.first_scores[3:].any()
    seqs = [tuple(r[:2]) for r in t.cand_seq]
    one_apple = [(4, 5), (v, 5), (v + 2, 5)]
    one_flag = [(4, v + 1), (v, v + 1), (v + 2, v + 1)]
    assert seqs == one_apple * 4 + one_flag * 3  # duplicates kept: MMF samples proportionally to answer counts
    assert (t.cand_len == 2).all() and (t.cand_seq[:, 2:] == -1).all()


def test_m4c_answer_scores_take_the_max_per_first_index(answer_proc):
    t = answer_proc(["red"] * 3 + ["apple"] * 7, [])
    assert dict(zip(t.first_inds[:2].tolist(), t.first_scores[:2].tolist())) == {4: pytest.approx(0.9), 5: 1.0}


def test_m4c_no_answers_and_wrong_count(answer_proc):
    t = answer_proc([], ["red"])
    assert (t.first_inds == -1).all() and len(t.cand_len) == 0
    with pytest.raises(Exception, match="expects num_answers=10"):
        answer_proc(["red"] * 3, [], where="q 7")


def test_teacher_forcing_matches_mmf_loop():
    seq = np.full((2, 12), -1)
    seq[0, :2] = [6, 5]
    prev, mask, tgt = teacher_forcing(seq, np.array([2, 0]), bos=1, eos=2, steps=12)
    assert prev[0].tolist() == [1, 6, 5] + [0] * 9
    assert mask[0].tolist() == [1, 1, 1] + [0] * 9
    assert tgt[0].tolist() == [-1, 5, 2] + [-1] * 9
    assert not prev[1].any() and not mask[1].any() and (tgt[1] == -1).all()


def test_expand_targets_equals_mmf_dense_targets(answer_proc):
    torch = pytest.importorskip("torch")
    from mmfdata.batch import expand_targets

    t = answer_proc(["red apple"] * 4 + ["red flag"] * 3 + ["blue"] * 3, ["red", "flag", "red"])
    seq = t.cand_seq[4:5].astype(np.int64)  # (v, 5): copy OCR 0 then vocab 'apple'
    prev, mask, tgt = teacher_forcing(seq, t.cand_len[4:5], answer_proc.bos, answer_proc.eos)
    batch = {"target_first_inds": torch.tensor(t.first_inds[None]),
             "target_first_scores": torch.tensor(t.first_scores[None]), "target_seq": torch.tensor(tgt)}
    dense = expand_targets(batch, 6 + 50)[0].numpy()
    mmf = np.zeros((12, 56), np.float32)  # MMF's M4CAnswerProcessor loop, written out
    for i, s in zip(t.first_inds, t.first_scores):
        if i >= 0:
            mmf[0, i] = max(mmf[0, i], s)
    mmf[1, 5] = 1.0
    mmf[2, answer_proc.eos] = 1.0
    assert np.array_equal(dense, mmf)


def test_answer_vocab_needs_pad_first(tmp_path):
    p = tmp_path / "a.txt"
    p.write_text("<s>\n<pad>\n</s>\n<unk>\n")
    with pytest.raises(VocabError, match="<pad> must be index 0"):
        M4CAnswerProcessor(str(p))


def test_choose_is_reproducible_and_in_range():
    n = np.array([0, 1, 5, 21] * 50)
    idx = np.arange(200)
    a = choose(n, idx, seed=0, epoch=0)
    assert np.array_equal(a, choose(n, idx, seed=0, epoch=0))
    assert ((a >= 0) & ((a < n) | (n == 0))).all() and (a[n == 0] == 0).all()
    assert not np.array_equal(a, choose(n, idx, seed=0, epoch=1))
    assert len(set(a[n == 21].tolist())) > 10  # spread over the candidates


def test_fasttext_vec_file_and_truncation(tmp_path):
    p = tmp_path / "v.vec"
    p.write_text("2 3\nhello 1 2 3\nworld 4 5 6\n")
    m = load_fasttext(str(p))
    assert m.dim == 3 and m.get_word_vector("world").tolist() == [4, 5, 6]
    assert not m.get_word_vector("missing").any()
    p.write_text("3 3\nhello 1 2 3\nworld 4 5 6\n")
    with pytest.raises(DataFileError, match="truncated"):
        load_fasttext(str(p))


def test_fasttext_npy_needs_matching_vocab(tmp_path):
    np.save(tmp_path / "w.npy", np.ones((2, 4), np.float32))
    with pytest.raises(DataFileError, match="word list"):
        load_fasttext(str(tmp_path / "w.npy"))
    (tmp_path / "w.vocab.txt").write_text("a\nb\nc\n")
    with pytest.raises(DataFileError, match="lists 3 words"):
        load_fasttext(str(tmp_path / "w.npy"))


def test_fasttext_bin_size_and_magic_checked(tmp_path):
    p = tmp_path / "wiki.en.bin"
    p.write_bytes(struct.pack("<ii", 793712314, 12) + b"\0" * 100)
    with pytest.raises(DataFileError, match="truncated"):
        load_fasttext(str(p), expected_size=10_000)
    p.write_bytes(b"<html>not a model</html>")
    with pytest.raises(DataFileError, match="not a fastText"):
        load_fasttext(str(p), expected_size=os.path.getsize(p))
