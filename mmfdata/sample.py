"""Per-question processing shared by the LMDB path and the packer, so both produce the same values."""
from __future__ import annotations

import numpy as np

from .answers import AnswerTargets
from .fasttext import fasttext_matrix
from .imdb import obj_boxes, ocr_boxes, question_text
from .lmdb_features import pad_rows
from .phoc import phoc_matrix
from .processors import Processors
from .text import word_tokenize


def ocr_tokens_of(item: dict, procs: Processors) -> list[str]:
    """Processed OCR tokens (simple_word), cut to the OCR slots; [] when use_ocr is off."""
    if not procs.use_ocr:
        return []
    return [word_tokenize(t) for t in item.get("ocr_tokens", [])][: procs.max_ocr]


def process_question(item: dict, procs: Processors, where: str) -> dict:
    """Everything about one question that does not come from the feature stores."""
    ids, text_len = procs.tokenizer.encode(question_text(item))
    tokens = ocr_tokens_of(item, procs)
    targets: AnswerTargets = procs.answers(list(item.get("answers", []) or []), tokens, where)
    ocr_bbox = ocr_boxes(item, procs.max_ocr) if procs.use_ocr else np.zeros((procs.max_ocr, 4), np.float32)
    return {
        "question_id": int(item["question_id"]),
        "image_id": str(item["image_id"]),
        "text": ids,
        "text_len": text_len,
        "obj_bbox": obj_boxes(item, procs.max_features),
        "ocr_bbox": ocr_bbox,
        "ocr_num": len(tokens),
        "ocr_tokens": tokens,
        "gt_answers": [str(a) for a in (item.get("answers", []) or [])],
        "targets": targets,
    }


def token_features(tokens: list[str], procs: Processors) -> tuple[np.ndarray, np.ndarray]:
    """(fastText [max_ocr, D], PHOC [max_ocr, 604]) float32, computed per token as MMF's processors do."""
    return fasttext_matrix(procs.fasttext, tokens, procs.max_ocr), phoc_matrix(tokens, procs.max_ocr)


def image_features(obj: np.ndarray, ocr: np.ndarray | None, procs: Processors) -> dict:
    """Padded float32 object and OCR appearance features of one image."""
    obj_feat, obj_num = pad_rows(obj, procs.max_features)
    if ocr is None or not procs.use_ocr:
        ocr_feat = np.zeros((procs.max_ocr, obj.shape[1]), np.float32)
    else:
        ocr_feat, _ = pad_rows(ocr, procs.max_ocr)
    return {"obj_feat": obj_feat, "obj_num": obj_num, "ocr_feat": ocr_feat}
