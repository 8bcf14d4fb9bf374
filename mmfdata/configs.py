"""The dataset_config nodes MMF's M4C project configs produce (canonical copy shared with `mmftrain`).

`default_dataset_config("textvqa")` equals `dataset_config.textvqa` after MMF merges
`configs/datasets/textvqa/defaults.yaml` with `projects/m4c/configs/textvqa/defaults.yaml`;
`variant="joint_with_stvqa"` adds the ST-VQA train pair of `joint_with_stvqa.yaml`; `"stvqa"` is
`projects/m4c/configs/stvqa/defaults.yaml`. Two options are ours: `text_processor.params.vocab_file` (MMF fetches
the BERT vocab from the HF hub; None = search, see `processors.py`) and `context_processor.params.expected_size`
(the recorded byte size of the fastText model, to catch truncated files).
"""
from __future__ import annotations

import copy

_TEXTVQA_FEATURES = "textvqa/defaults/features/open_images/detectron.lmdb,textvqa/ocr_en/features/ocr_en_frcn_features.lmdb"
_STVQA_FEATURES = "stvqa/defaults/features/detectron.lmdb,stvqa/ocr_en/features/ocr_en_frcn_features.lmdb"


def _processors(answer_vocab: str) -> dict:
    return {
        "text_processor": {"type": "bert_tokenizer", "params": {
            "tokenizer_config": {"type": "bert-base-uncased", "params": {"do_lower_case": True}},
            "mask_probability": 0, "max_seq_length": 20, "vocab_file": None}},
        "answer_processor": {"type": "m4c_answer", "params": {
            "vocab_file": answer_vocab,
            "preprocessor": {"type": "simple_word", "params": {}},
            "context_preprocessor": {"type": "simple_word", "params": {}},
            "max_length": 50, "max_copy_steps": 12, "num_answers": 10}},
        "copy_processor": {"type": "copy", "params": {"max_length": 100}},
        "phoc_processor": {"type": "phoc", "params": {"max_length": 50}},
        "context_processor": {"type": "fasttext", "params": {
            "max_length": 50, "model_file": "wiki.en.bin", "expected_size": None}},
        "ocr_token_processor": {"type": "simple_word", "params": {}},
        "bbox_processor": {"type": "bbox", "params": {"max_length": 50}},
    }


_FLAGS = {
    "data_dir": None,  # MMF: ${env.data_dir}/datasets; None = <data_dir>/datasets
    "depth_first": False, "fast_read": False, "use_images": False, "use_features": True,
    "max_features": 100, "use_ocr": True, "use_ocr_info": True, "use_order_vectors": True,
    "return_features_info": True,
}

_TEXTVQA = {
    **_FLAGS,
    "zoo_requirements": ["textvqa.defaults", "textvqa.ocr_en"],
    "features": {s: [_TEXTVQA_FEATURES] for s in ("train", "val", "test")},
    "annotations": {s: [f"textvqa/defaults/annotations/imdb_{s}_ocr_en.npy"] for s in ("train", "val", "test")},
    "processors": _processors("textvqa/defaults/extras/vocabs/fixed_answer_vocab_textvqa_5k.txt"),
}

_STVQA = {
    **_FLAGS,
    "zoo_requirements": ["stvqa.defaults", "stvqa.ocr_en"],
    "features": {s: [_STVQA_FEATURES] for s in ("train", "val", "test")},
    "annotations": {
        "train": ["stvqa/defaults/annotations/imdb_subtrain.npy"],
        "val": ["stvqa/defaults/annotations/imdb_subval.npy"],
        "test": ["stvqa/defaults/annotations/imdb_test_task3.npy"],
    },
    "processors": _processors("stvqa/defaults/extras/vocabs/fixed_answer_vocab_stvqa_5k.txt"),
}


def default_dataset_config(name: str, variant: str | None = None) -> dict:
    """A fresh copy of MMF's M4C dataset_config for `textvqa` or `stvqa` (variant: None | "joint_with_stvqa")."""
    if name == "textvqa":
        cfg = copy.deepcopy(_TEXTVQA)
        if variant == "joint_with_stvqa":
            cfg["zoo_requirements"] += ["stvqa.defaults", "stvqa.ocr_en"]
            cfg["features"]["train"].append(_STVQA_FEATURES)
            cfg["annotations"]["train"].append("stvqa/defaults/annotations/imdb_subtrain.npy")
        elif variant is not None:
            raise ValueError(f"unknown textvqa variant {variant!r}; known: joint_with_stvqa")
        return cfg
    if name == "stvqa":
        if variant is not None:
            raise ValueError(f"stvqa has no variant {variant!r}")
        return copy.deepcopy(_STVQA)
    raise ValueError(f"no default dataset_config for {name!r}; known: textvqa, stvqa")
