"""The MMF-layout dataset: imdb + LMDB features, processed per sample as MMF does (the slow, always-works path)."""
from __future__ import annotations

import numpy as np

from .collate import add_teacher_forcing, object_array
from .imdb import fix_feature_path, load_imdb
from .lmdb_features import LmdbFeatureReader
from .processors import Processors
from .sample import image_features, process_question, token_features


class LmdbDataset:
    """One imdb file with its feature stores (objects, then OCR), satisfying `mmfdata.batch`."""

    def __init__(self, name: str, split: str, annotation: str, feature_stores: list[str], procs: Processors,
                 *, trust_pickle: bool = False, seed: int = 0, stream: int = 0):
        self.name, self.split, self.annotation = name, split, annotation
        self.procs = procs
        self.items = load_imdb(annotation, trust_pickle)
        self.feature_paths = [fix_feature_path(it, annotation, split) for it in self.items]
        self.obj_reader = LmdbFeatureReader(feature_stores[0], trust_pickle)
        self.ocr_reader = LmdbFeatureReader(feature_stores[1], trust_pickle) if len(feature_stores) > 1 else None
        self.answer_vocab = procs.answers.words
        self.bos, self.eos = procs.answers.bos, procs.answers.eos
        self.max_copy_steps = procs.answers.max_copy_steps
        self.seed, self.epoch, self.stream = seed, 0, stream

    def __len__(self) -> int:
        return len(self.items)

    def set_epoch(self, epoch: int) -> None:
        """Teacher-forcing sequences are re-drawn per epoch (as MMF's per-sample sampling is)."""
        self.epoch = epoch

    def where(self, i: int) -> str:
        return f"imdb {self.annotation} question {self.items[i]['question_id']} (#{i})"

    def get_sample(self, i: int) -> dict:
        """One processed question in float32, MMF style: two pickled LMDB reads, fastText and PHOC per token."""
        item = self.items[i]
        q = process_question(item, self.procs, self.where(i))
        obj, _ = self.obj_reader.read(self.feature_paths[i])
        ocr = None
        if self.ocr_reader is not None and self.procs.use_ocr:
            ocr, _ = self.ocr_reader.read(self.feature_paths[i])
        q.update(image_features(obj, ocr, self.procs))
        q["ocr_fasttext"], q["ocr_phoc"] = token_features(q["ocr_tokens"], self.procs)
        return q

    def get_batch(self, indices) -> dict:
        """Batch of `indices` as in `mmfdata.batch` (per-sample loop, then stacking)."""
        indices = np.asarray(indices, dtype=np.int64)
        samples = [self.get_sample(int(i)) for i in indices]
        stack = lambda key, dtype: np.stack([s[key] for s in samples]).astype(dtype, copy=False)  # noqa: E731
        batch = {
            "question_id": np.array([s["question_id"] for s in samples], dtype=np.int64),
            "image_id": object_array([s["image_id"] for s in samples]),
            "text": stack("text", np.int64),
            "text_len": np.array([s["text_len"] for s in samples], dtype=np.int64),
            "obj_feat": stack("obj_feat", np.float16),
            "obj_bbox": stack("obj_bbox", np.float32),
            "obj_num": np.array([s["obj_num"] for s in samples], dtype=np.int64),
            "ocr_feat": stack("ocr_feat", np.float16),
            "ocr_fasttext": stack("ocr_fasttext", np.float16),
            "ocr_phoc": stack("ocr_phoc", np.float16),
            "ocr_bbox": stack("ocr_bbox", np.float32),
            "ocr_num": np.array([s["ocr_num"] for s in samples], dtype=np.int64),
            "ocr_tokens": object_array([s["ocr_tokens"] for s in samples]),
            "gt_answers": object_array([s["gt_answers"] for s in samples]),
            "target_first_inds": np.stack([s["targets"].first_inds for s in samples]).astype(np.int64),
            "target_first_scores": np.stack([s["targets"].first_scores for s in samples]).astype(np.float32),
        }
        n_cands = np.array([len(s["targets"].cand_len) for s in samples], dtype=np.int64)
        cand_off = np.concatenate([[0], np.cumsum(n_cands)[:-1]]).astype(np.int64)
        steps = self.max_copy_steps
        cand_seq = np.concatenate([s["targets"].cand_seq for s in samples]) if n_cands.sum() else np.zeros((0, steps), np.int32)
        cand_len = np.concatenate([s["targets"].cand_len for s in samples]) if n_cands.sum() else np.zeros(0, np.int32)
        return add_teacher_forcing(batch, cand_seq, cand_len, cand_off, n_cands, indices, self)
