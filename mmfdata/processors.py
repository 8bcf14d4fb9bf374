"""Build the M4C processors from MMF's `dataset_config.<name>.processors` node, resolving their files.

A relative file option is looked for as MMF's `get_absolute_path` does, in the working directory first, then
relative to `<data_dir>/datasets` (MMF's data root); absolute ones as written. Two files MMF fetches from elsewhere
get a search list (first hit wins; the error lists what was tried). Where the zoo installs a key, and MMF's cache
dir, are asked of `zoo` (`zoo.layout`, `zoo.datadir`), never re-derived here; the lists live in `lookup.py` (no
numpy), which `mmf zoo pack --for` asks too:

BERT vocab (`text_processor.params.vocab_file`, ours; MMF downloads it from the HF hub):
    the option, `vocab.txt` of the zoo's `bert-base-uncased` install,
    `<data_dir>/datasets/<name>/defaults/extras/vocabs/bert-base-uncased-vocab.txt` (synthetic data).
fastText (`context_processor.params.model_file`, default `wiki.en.bin`; MMF keeps it in its cache dir):
    the option as given (absolute, or the working directory, then datasets/), `<data_dir>/<file>`, MMF's cache dir
    (`$MMF_CACHE_DIR`, else `$TORCH_HOME/mmf`, ...), the zoo's `fasttext` / `fasttext.wiki_en` installs,
    `<data_dir>/datasets/<name>/defaults/extras/fasttext/<file>`; for each folder the `.bin`, `.vec` and `.npy`
    spellings of the name are tried in that order.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

from .answers import M4CAnswerProcessor
from .errors import DataConfigError, DataFileError
from .fasttext import FASTTEXT_EXTRA, load_fasttext
from .lookup import (FASTTEXT_DEFAULT, FASTTEXT_ZOO_KEY, bert_vocab_candidates, datasets_root,  # noqa: F401
                     fasttext_candidates)
from .lookup import first_existing as _first_existing, params as _params
from .text import BertTokenizer


# dataset_config values this implementation supports (M4C's): anything else would be silently ignored, so it is
# refused. {dotted key under dataset_config.<name>: (allowed values, what the project does)}
_SUPPORTED = {
    "use_features": ((True,), "M4C reads region features"),
    "use_images": ((False,), "raw images are not read"),
    "use_ocr_info": ((True,), "M4C uses the OCR boxes"),
    "use_order_vectors": ((True,), "M4C uses the OCR order vectors"),
    "processors.text_processor.type": (("bert_tokenizer",), "questions are BERT-tokenized"),
    "processors.text_processor.params.mask_probability": ((0, 0.0, None), "no token masking (M4C trains with 0)"),
    "processors.text_processor.params.tokenizer_config.params.do_lower_case": ((True, None), "uncased BERT"),
    "processors.answer_processor.type": (("m4c_answer",), "M4C's answer processor"),
    "processors.context_processor.type": (("fasttext",), "fastText OCR vectors"),
    "processors.phoc_processor.type": (("phoc",), "PHOC OCR vectors"),
}


def check_options(name: str, dataset_config: dict) -> None:
    """Refuse dataset_config values this project does not implement (instead of ignoring them)."""
    for key, (allowed, what) in _SUPPORTED.items():
        node, present = dataset_config, True
        for part in key.split("."):
            if not isinstance(node, dict) or part not in node:
                present = False
                break
            node = node[part]
        if present and node not in allowed:
            raise DataConfigError(f"dataset_config.{name}.{key}={node!r} is not supported here ({what}); use "
                                  f"{' or '.join(repr(a) for a in allowed if a is not None)}")
    # slots per object / per OCR token are set once (max_features, answer_processor max_length) and must agree
    slots = {"copy_processor": ("max_features", int(dataset_config.get("max_features", 100))),
             "bbox_processor": ("answer_processor max_length",
                                int(_params(dataset_config, "answer_processor").get("max_length", 50)))}
    for proc, (source, want) in slots.items():
        value = _params(dataset_config, proc).get("max_length")
        if value is not None and int(value) != want:
            raise DataConfigError(f"dataset_config.{name}.processors.{proc}.params.max_length={value} must equal "
                                  f"{source} ({want})")


def answer_vocab_path(name: str, dataset_config: dict, data_dir: str) -> str:
    """The answer vocab file (`answer_processor.params.vocab_file`, relative to the datasets root)."""
    option = _params(dataset_config, "answer_processor").get("vocab_file")
    if not option:
        raise DataConfigError(f"dataset_config.{name}.processors.answer_processor.params.vocab_file is not set")
    option = str(option)
    return option if os.path.isabs(option) else os.path.join(datasets_root(dataset_config, data_dir), option)


@dataclass
class Processors:
    """Everything needed to turn one imdb entry + its features into a sample (see `sample.py`)."""

    tokenizer: BertTokenizer
    answers: M4CAnswerProcessor
    fasttext: object  # has get_word_vector(word) and dim
    max_features: int = 100
    max_ocr: int = 50
    use_ocr: bool = True
    files: dict = field(default_factory=dict)  # role -> resolved path (for pack fingerprints)

    def fingerprint(self) -> dict:
        """The options that change processed values (files are hashed separately)."""
        return {
            "max_seq_length": self.tokenizer.max_seq_length,
            "max_features": self.max_features,
            "max_ocr": self.max_ocr,
            "max_copy_steps": self.answers.max_copy_steps,
            "num_answers": self.answers.num_answers,
            "use_ocr": self.use_ocr,
            "fasttext_dim": int(self.fasttext.dim),
        }


def build_processors(name: str, dataset_config: dict, data_dir: str) -> Processors:
    """Processors for dataset `name` from its MMF dataset_config (paths resolved against data_dir)."""
    root = datasets_root(dataset_config, data_dir)
    text = _params(dataset_config, "text_processor")
    ans = _params(dataset_config, "answer_processor")
    ctx = _params(dataset_config, "context_processor")
    phoc = _params(dataset_config, "phoc_processor")
    max_ocr = int(ans.get("max_length", 50))
    for proc, params in (("context_processor", ctx), ("phoc_processor", phoc)):
        if int(params.get("max_length", max_ocr)) != max_ocr:
            raise DataConfigError(f"dataset_config.{name}.processors.{proc}.params.max_length must equal "
                                  f"answer_processor max_length ({max_ocr}): M4C copies from those OCR slots")

    vocab_cands = bert_vocab_candidates(text.get("vocab_file"), root, data_dir, name)
    vocab = _first_existing(vocab_cands)
    if vocab is None:
        raise DataFileError(f"no BERT vocab.txt for {name} (tried {', '.join(vocab_cands)}): run `mmf zoo fetch "
                            f"bert-base-uncased` or set dataset_config.{name}.processors.text_processor.params."
                            "vocab_file to a local vocab.txt")
    ans_vocab = answer_vocab_path(name, dataset_config, data_dir)
    ft_cands = fasttext_candidates(str(ctx.get("model_file", FASTTEXT_DEFAULT)), root, data_dir, name)
    ft_path = _first_existing(ft_cands)
    if ft_path is None:
        raise DataFileError(f"no fastText model/vectors for {name} (tried {', '.join(ft_cands[:6])}, ...): run "
                            f"`mmf zoo fetch {FASTTEXT_ZOO_KEY}` (its .bin needs {FASTTEXT_EXTRA}) or set "
                            f"dataset_config.{name}.processors.context_processor.params.model_file to a local "
                            ".bin, .vec or .npy file")
    size = ctx.get("expected_size")
    return Processors(
        tokenizer=BertTokenizer(vocab, int(text.get("max_seq_length", 20))),
        answers=M4CAnswerProcessor(ans_vocab, max_ocr, int(ans.get("max_copy_steps", 12)),
                                   int(ans.get("num_answers", 10))),
        fasttext=load_fasttext(ft_path, int(size) if size else None),
        max_features=int(dataset_config.get("max_features", 100)),
        max_ocr=max_ocr,
        use_ocr=bool(dataset_config.get("use_ocr", True)),
        files={"bert_vocab": vocab, "answer_vocab": ans_vocab, "fasttext": ft_path},
    )
