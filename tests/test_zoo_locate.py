"""The bad-range locator alone: a pure function over spans and readings, no threads, no I/O."""
from zoo.transfer.locate import Hypothesis, Span, locate

A, B, C = "http://a/", "http://b/", "http://c/"


def test_agreement_everywhere_is_no_hypothesis():
    spans = [Span(0, 9, A), Span(10, 19, B)]
    readings = {(0, 9): {A: "x", B: "x"}, (10, 19): {B: "y", A: "y"}}
    assert locate(spans, readings) == []


def test_two_mirrors_one_hypothesis_per_mirror_suspect_first():
    spans = [Span(0, 9, A), Span(10, 19, B), Span(20, 29, A)]
    readings = {(0, 9): {A: "bad0", B: "good0"}, (10, 19): {B: "good1", A: "good1"}, (20, 29): {A: "bad2", B: "good2"}}
    hyps = locate(spans, readings, order=[A])
    assert hyps[0] == Hypothesis(frozenset({A}), ((0, 9, B), (20, 29, B)))
    # the other explanation (B lied) needs A's readings of B's ranges... which agree: B's range is vouched for,
    # so blaming B swaps nothing and is not offered
    assert all(h.blamed != frozenset({B}) for h in hyps)


def test_order_decides_which_of_two_disputed_mirrors_is_tried_first():
    spans = [Span(0, 9, A), Span(10, 19, B)]
    readings = {(0, 9): {A: "a0", B: "b0"}, (10, 19): {B: "b1", A: "a1"}}
    first = locate(spans, readings, order=[B])[0]
    assert first.blamed == frozenset({B}) and first.swaps == ((10, 19, A),)
    assert locate(spans, readings, order=[A])[0].blamed == frozenset({A})


def test_three_mirrors_majority_blames_only_the_outvoted_one():
    spans = [Span(0, 9, A), Span(10, 19, B), Span(20, 29, C)]
    readings = {(0, 9): {A: "bad", B: "g0", C: "g0"}, (10, 19): {B: "g1", C: "g1"}, (20, 29): {C: "g2", B: "g2"}}
    hyps = locate(spans, readings)
    assert hyps[0] == Hypothesis(frozenset({A}), ((0, 9, B),))


def test_a_flaky_witness_that_never_answered_leaves_the_range_unswappable():
    spans = [Span(0, 9, A), Span(10, 19, A)]
    readings = {(0, 9): {A: "bad", B: "good"}, (10, 19): {A: "bad?"}}  # B failed to answer for 10-19
    hyps = locate(spans, readings)
    # blaming A swaps what B vouched for; the unanswered range stays (the sha256 decides if that was enough)
    assert hyps == [Hypothesis(frozenset({A}), ((0, 9, B),))]


def test_no_reading_from_anyone_else_means_no_hypothesis_for_that_mirror():
    spans = [Span(0, 9, A), Span(10, 19, B)]
    readings = {(0, 9): {A: "a", B: "b"}, (10, 19): {B: "b1", A: "a1"}}
    hyps = locate(spans, readings, order=[A, B])
    assert [h.blamed for h in hyps] == [frozenset({A}), frozenset({B})]
    assert hyps[0].swaps == ((0, 9, B),) and hyps[1].swaps == ((10, 19, A),)
