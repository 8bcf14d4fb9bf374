"""Metric vectors computed with MMF's evaluator (reference m4c-recipe-metrics.md §3.5)."""
import pytest

from mmftrain.metrics import compute_metrics, normalize_answer, stvqa_accuracy, stvqa_anls, textvqa_accuracy

NORMALIZED = [
    ("The Coca-Cola.", "coca cola"), ("Two", "2"), ("none", "0"), ("Ten Dollars", "10 dollars"),
    ("a dog", "dog"), ("the the", ""), ("3.5", "3.5"), ("5.", "5"), ("U.S.A.", "usa"), ("a.m.", "am"),
    ("dont", "don't"), ("Youre", "you're"), ("won't", "won't"), ("it's", "it 's"), ("McDonald's", "mcdonald 's"),
    ("1,000", "1000"), ("hello, world", "hello world"), ("e-mail", "e mail"), ("one-way", "1 way"),
    ("(305) 555-1234", "305 555 1234"), ("yes!", "yes"), ("100%", "100%"), ("$5.99", "$5.99"),
    ("rock & roll", "rock & roll"), ("Hello:World", "hello:world"), ("  Stop\tSign ", "stop sign"),
]


@pytest.mark.parametrize("raw,expected", NORMALIZED)
def test_normalize_answer_matches_mmf(raw, expected):
    assert normalize_answer(raw) == expected


@pytest.mark.parametrize("n,expected", [(0, 0.0), (1, 0.3), (2, 0.6), (3, 0.9), (4, 1.0), (7, 1.0), (10, 1.0)])
def test_textvqa_accuracy_soft_score(n, expected):
    gts = ["stop"] * n + ["go"] * (10 - n)
    assert textvqa_accuracy("stop", gts) == pytest.approx(expected)


def test_textvqa_accuracy_normalises_both_sides():
    assert textvqa_accuracy("Coca Cola", ["coca-cola"] * 10) == pytest.approx(1.0)
    assert textvqa_accuracy("two", ["2"] * 3 + ["two"] * 3 + ["three"] * 4) == pytest.approx(1.0)
    assert textvqa_accuracy("three", ["2"] * 3 + ["two"] * 3 + ["three"] * 4) == pytest.approx(1.0)
    assert textvqa_accuracy("four", ["2"] * 3 + ["two"] * 3 + ["three"] * 4) == 0.0


@pytest.mark.parametrize("pred,expected", [("The Coca", 0.0), ("CocaCola", 8 / 9), ("Coca cola", 1.0),
                                           ("Cola", 0.0), ("Cat", 0.0)])
def test_anls_rrc_example(pred, expected):
    assert stvqa_anls(pred, ["Coca Cola", "Coca Cola Company"]) == pytest.approx(expected)


def test_anls_threshold_official_vs_mmf():
    assert stvqa_anls("ab", ["ax"]) == 0.0  # NL = 0.5 is not < 0.5
    assert stvqa_anls("ab", ["ax"], mmf_compat=True) == pytest.approx(0.5)
    # official collapses inner whitespace, MMF does not
    assert stvqa_anls("coca  cola", ["coca cola"]) == 1.0
    assert stvqa_anls("coca  cola", ["coca cola"], mmf_compat=True) == pytest.approx(0.9)


def test_stvqa_accuracy():
    assert stvqa_accuracy("Coca-Cola", ["coca cola"]) == 1.0
    assert stvqa_accuracy("pepsi", ["coca cola", "coke"]) == 0.0


def test_metrics_refuse_empty_answers_and_split_skips_them():
    with pytest.raises(ValueError, match="ground-truth"):
        textvqa_accuracy("x", [])
    records = [{"question_id": 1, "answer": "stop", "gt_answers": ["stop"] * 10},
               {"question_id": 2, "answer": "go", "gt_answers": ["stop"] * 10},
               {"question_id": 1, "answer": "WRONG duplicate", "gt_answers": ["stop"] * 10},
               {"question_id": 3, "answer": "x", "gt_answers": []}]
    scores, n = compute_metrics(records, ["textvqa_accuracy", "stvqa_accuracy"])
    assert n == 2  # duplicate question 1 dropped, unanswered question 3 not scored
    assert scores["textvqa_accuracy"] == pytest.approx(0.5)
    assert compute_metrics([records[3]], ["textvqa_accuracy"]) == ({}, 0)
    with pytest.raises(ValueError, match="unknown metric"):
        compute_metrics(records, ["bleu"])
