"""TextVQA / ST-VQA metrics with MMF's EvalAI answer normalisation (`mmf/utils/m4c_evaluators.py`).

The normalisation keeps the official VQA script's quirks on purpose (the period regex written `(?!<=\\d)`, and
`re.UNICODE` passed positionally as the substitution *count*): EvalAI scores with them, so local numbers match.
"""
from __future__ import annotations

import re

__all__ = ["normalize_answer", "textvqa_accuracy", "stvqa_accuracy", "stvqa_anls", "compute_metrics", "METRICS"]

_CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt": "couldn't",
    "couldn'tve": "couldn't've", "couldnt've": "couldn't've", "didnt": "didn't", "doesnt": "doesn't",
    "dont": "don't", "hadnt": "hadn't", "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't",
    "havent": "haven't", "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've", "hes": "he's", "howd": "how'd",
    "howll": "how'll", "hows": "how's", "Id've": "I'd've", "I'dve": "I'd've", "Im": "I'm", "Ive": "I've",
    "isnt": "isn't", "itd": "it'd", "itd've": "it'd've", "it'dve": "it'd've", "itll": "it'll", "let's": "let's",
    "maam": "ma'am", "mightnt": "mightn't", "mightnt've": "mightn't've", "mightn'tve": "mightn't've",
    "mightve": "might've", "mustnt": "mustn't", "mustve": "must've", "neednt": "needn't", "notve": "not've",
    "oclock": "o'clock", "oughtnt": "oughtn't", "ow's'at": "'ow's'at", "'ows'at": "'ow's'at",
    "'ow'sat": "'ow's'at", "shant": "shan't", "shed've": "she'd've", "she'dve": "she'd've", "she's": "she's",
    "shouldve": "should've", "shouldnt": "shouldn't", "shouldnt've": "shouldn't've",
    "shouldn'tve": "shouldn't've", "somebody'd": "somebodyd", "somebodyd've": "somebody'd've",
    "somebody'dve": "somebody'd've", "somebodyll": "somebody'll", "somebodys": "somebody's",
    "someoned": "someone'd", "someoned've": "someone'd've", "someone'dve": "someone'd've",
    "someonell": "someone'll", "someones": "someone's", "somethingd": "something'd",
    "somethingd've": "something'd've", "something'dve": "something'd've", "somethingll": "something'll",
    "thats": "that's", "thered": "there'd", "thered've": "there'd've", "there'dve": "there'd've",
    "therere": "there're", "theres": "there's", "theyd": "they'd", "theyd've": "they'd've",
    "they'dve": "they'd've", "theyll": "they'll", "theyre": "they're", "theyve": "they've", "twas": "'twas",
    "wasnt": "wasn't", "wed've": "we'd've", "we'dve": "we'd've", "weve": "we've", "werent": "weren't",
    "whatll": "what'll", "whatre": "what're", "whats": "what's", "whatve": "what've", "whens": "when's",
    "whered": "where'd", "wheres": "where's", "whereve": "where've", "whod": "who'd", "whod've": "who'd've",
    "who'dve": "who'd've", "wholl": "who'll", "whos": "who's", "whove": "who've", "whyll": "why'll",
    "whyre": "why're", "whys": "why's", "wont": "won't", "wouldve": "would've", "wouldnt": "wouldn't",
    "wouldnt've": "wouldn't've", "wouldn'tve": "wouldn't've", "yall": "y'all", "yall'll": "y'all'll",
    "y'allll": "y'all'll", "yall'd've": "y'all'd've", "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've",
    "youd": "you'd", "youd've": "you'd've", "you'dve": "you'd've", "youll": "you'll", "youre": "you're",
    "youve": "you've",
}
_NUMBERS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6",
            "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
_ARTICLES = {"a", "an", "the"}
_PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")  # sic: a lookahead, not the intended lookbehind
_COMMA_STRIP = re.compile(r"(?<=\d)(\,)+(?=\d)")
_PUNCT = [";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!"]


def word_tokenize(word: str) -> str:
    """MMF's `word_tokenize`: lowercase, drop `,` and `?`, split `'s` off, strip (also used for OCR tokens)."""
    return word.lower().replace(",", "").replace("?", "").replace("'s", " 's").strip()


def _punctuation(text: str) -> str:
    out = text
    has_digit_comma = _COMMA_STRIP.search(text) is not None
    for p in _PUNCT:
        if p + " " in text or " " + p in text or has_digit_comma:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    return _PERIOD_STRIP.sub("", out, re.UNICODE)  # count=32, as the official script (inherited quirk)


def _digits_articles(text: str) -> str:
    words = [_NUMBERS.get(w, w) for w in text.lower().split()]
    words = [_CONTRACTIONS.get(w, w) for w in words if w not in _ARTICLES]
    return " ".join(words)


def normalize_answer(s: str) -> str:
    """MMF's EvalAI answer normalisation, applied to predictions and ground-truth answers alike.

    >>> normalize_answer("The Coca-Cola.")
    'coca cola'
    """
    s = word_tokenize(s).replace("\n", " ").replace("\t", " ").strip()
    return _digits_articles(_punctuation(s))


def _soft_scores(gt_answers: list[str]) -> dict[str, float]:
    answers = [normalize_answer(a) for a in gt_answers]
    n = len(answers)
    scores = {}
    for ans in set(answers):
        matches = sum(a == ans for a in answers)
        # leave-one-out over the n human answers: positions holding `ans` see matches-1 others, the rest see all
        total = matches * min(1.0, (matches - 1) / 3) + (n - matches) * min(1.0, matches / 3)
        scores[ans] = total / n
    return scores


def textvqa_accuracy(pred: str, gt_answers: list[str]) -> float:
    """VQA soft accuracy of one prediction against the human answers (10 for TextVQA): 0, .3, .6, .9 or 1."""
    if not gt_answers:
        raise ValueError("textvqa_accuracy needs at least one ground-truth answer (test splits have none)")
    return _soft_scores(gt_answers).get(normalize_answer(pred), 0.0)


def stvqa_accuracy(pred: str, gt_answers: list[str]) -> float:
    """1.0 if the normalised prediction equals any normalised ground-truth answer, else 0.0 (MMF)."""
    if not gt_answers:
        raise ValueError("stvqa_accuracy needs at least one ground-truth answer (test splits have none)")
    p = normalize_answer(pred)
    return 1.0 if any(p == normalize_answer(g) for g in gt_answers) else 0.0


def _levenshtein(a: str, b: str) -> int:
    if len(a) < len(b):
        a, b = b, a
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def _similarity(pred: str, gt: str, mmf_compat: bool) -> float:
    if mmf_compat:  # MMF: lower + strip, keep when similarity >= 0.5
        p, g = pred.lower().strip(), gt.lower().strip()
    else:  # official ST-VQA: also collapse inner whitespace, keep when NL < 0.5
        p, g = " ".join(pred.lower().split()), " ".join(gt.lower().split())
    longest = max(len(p), len(g))
    if longest == 0:
        return 1.0  # both empty: identical (MMF would divide by zero here)
    nl = _levenshtein(p, g) / longest
    if mmf_compat:
        return 1.0 - nl if 1.0 - nl >= 0.5 else 0.0
    return 1.0 - nl if nl < 0.5 else 0.0


def stvqa_anls(pred: str, gt_answers: list[str], mmf_compat: bool = False) -> float:
    """Average Normalized Levenshtein Similarity of one prediction: max over answers of 1-NL, 0 when NL >= 0.5.

    `mmf_compat=True` reproduces MMF's evaluator (no whitespace collapsing; NL == 0.5 still scores 0.5).
    """
    if not gt_answers:
        raise ValueError("stvqa_anls needs at least one ground-truth answer (test splits have none)")
    return max(_similarity(pred, g, mmf_compat) for g in gt_answers)


METRICS = {"textvqa_accuracy": textvqa_accuracy, "stvqa_accuracy": stvqa_accuracy, "stvqa_anls": stvqa_anls,
           "ocrvqa_accuracy": stvqa_accuracy}


def compute_metrics(records: list[dict], names: list[str]) -> tuple[dict[str, float], int]:
    """Score a split once over its exact question set.

    Args:
        records: dicts with `question_id`, `answer` (prediction) and `gt_answers`, possibly gathered from several
            ranks with duplicates; duplicates by question_id are dropped (first kept).
        names: metric names from `METRICS`.
    Returns:
        ({name: mean score}, number of scored questions); empty when no question has answers (test splits).
    """
    unknown = [n for n in names if n not in METRICS]
    if unknown:
        raise ValueError(f"unknown metric(s) {unknown}; known: {', '.join(METRICS)}")
    seen: set = set()
    scored = []
    for r in records:
        if r["question_id"] in seen:
            continue
        seen.add(r["question_id"])
        if r["gt_answers"]:
            scored.append(r)
    if not scored:
        return {}, 0
    out = {n: sum(METRICS[n](r["answer"], list(r["gt_answers"])) for r in scored) / len(scored) for n in names}
    return out, len(scored)
