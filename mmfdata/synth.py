"""Synthetic TextVQA (and optionally ST-VQA) in exactly MMF's on-disk layout, with a learnable signal.

Layout under `out_dir` (a data_dir), as the zoo would install it:
    datasets/textvqa/defaults/annotations/imdb_{train,val,test}_ocr_en.npy
    datasets/textvqa/defaults/features/open_images/detectron.lmdb/      100 x 2048 fp32 per image
    datasets/textvqa/defaults/extras/vocabs/fixed_answer_vocab_textvqa_5k.txt
    datasets/textvqa/defaults/extras/vocabs/bert-base-uncased-vocab.txt  (BERT-style vocab.txt; ours)
    datasets/textvqa/defaults/extras/fasttext/wiki.en.npy + wiki.en.vocab.txt (300-d vectors; ours)
    datasets/textvqa/ocr_en/features/ocr_en_frcn_features.lmdb/         one 2048-d row per OCR token
    (stvqa_questions > 0: datasets/stvqa/{defaults,ocr_en}/... with imdb_subtrain/subval/test_task3)
and `.built.json` markers where the zoo writes them. With `archive=True`, zoo-style archives and a manifest are
written instead (see `synth_archive.py`).

The signal: each image shows objects of one class (a code vector added to 60-90 of its 100 object rows) and 3-8
OCR words, each OCR row carrying the code of a distinct colour; one of them is "the sign" and also carries a strong
shared sign code. "what is written on the <colour> sign?" (the sign's colour) is answered by copying that word;
"what object is shown in the image?" by the vocab word of the object class. Chance is 1 / #OCR words (~0.2) and
1 / 16 classes; the majority answer scores ~2%. The tiny M4C (tiny.yaml) reaches ~100% val within ~150 updates.
The sign code is there because matching the question's colour word to an OCR row's colour code alone (a
text-to-OCR binding) stays at chance for the tiny model after 300 updates at any lr/init we tried.
"""
from __future__ import annotations

import datetime
import json
import os
import pickle
import shutil
import tempfile

import numpy as np

COLORS = ["red", "green", "blue", "yellow", "white", "black", "orange", "purple"]
CLASSES = ["car", "dog", "bottle", "sign", "clock", "phone", "book", "shirt", "bus", "cup", "laptop", "bike",
           "tree", "door", "ball", "hat"]
FILLER = ["yes", "no", "1", "2", "3", "10", "coca", "cola", "stop", "open", "sale", "exit"]
QUESTION_WORDS = ["what", "is", "written", "on", "the", "sign", "object", "shown", "in", "image", "which", "?"]
VERSION = "0.5.5_synthetic"
DIM, MAX_OBJ = 2048, 100
SYLLABLES = ["ka", "lo", "mi", "ter", "ban", "so", "ru", "vel", "din", "po", "zu", "ran", "ce", "fo", "gul", "ne"]


def _word_pool(rng: np.random.Generator, n: int) -> list[str]:
    words: list[str] = []
    while len(words) < n:
        w = "".join(rng.choice(SYLLABLES, size=rng.integers(2, 4)))
        if w not in words and w not in CLASSES and w not in COLORS:
            words.append(w)
    return words


def _mark(folder: str, skip=()) -> None:
    from zoo.records import write_local_record  # what makes the files trusted (a marker alone grants nothing)

    os.makedirs(folder, exist_ok=True)
    write_local_record(folder, "synthetic", VERSION, "mmf data synth", skip)
    with open(os.path.join(folder, ".built.json"), "w") as f:
        json.dump({"created_at": str(datetime.datetime.today()), "version": VERSION}, f)


def _write_lines(path: str, lines: list[str]) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")


def _bert_vocab(words: list[str]) -> list[str]:
    # real bert-base-uncased layout for the specials: [PAD]=0, [unused0..98], [UNK]=100, [CLS]=101, [SEP]=102
    head = ["[PAD]"] + [f"[unused{i}]" for i in range(99)] + ["[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    punct = list("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~")
    rest = sorted(set(words) - set(head) - set(punct))
    return head + punct + rest + ["##s", "##ing", "##ed"]


def _box(rng, n):
    xy = rng.uniform(0, 0.8, size=(n, 2))
    wh = rng.uniform(0.05, 0.2, size=(n, 2))
    return np.concatenate([xy, np.minimum(xy + wh, 1.0)], axis=1).astype(np.float32)


def _write_lmdb(path: str, records: dict[str, dict]) -> None:
    import lmdb

    os.makedirs(path, exist_ok=True)
    size = sum(r["features"].nbytes for r in records.values())
    env = lmdb.open(path, map_size=int(size * 1.5) + (64 << 20), subdir=True)
    keys = sorted(records)
    for start in range(0, len(keys), 64):
        with env.begin(write=True) as txn:
            for k in keys[start : start + 64]:
                txn.put(k.encode(), pickle.dumps(records[k], protocol=4))
    with env.begin(write=True) as txn:
        txn.put(b"keys", pickle.dumps([k.encode() for k in keys], protocol=4))
    env.sync()
    env.close()


class _Generator:
    """Draws images and questions; one instance per call so everything follows from `seed`."""

    def __init__(self, seed: int):
        self.rng = np.random.default_rng(seed)
        self.pool = _word_pool(self.rng, 300)
        self.class_codes = self._codes(len(CLASSES))
        self.color_codes = self._codes(len(COLORS))
        self.sign_code = self._codes(1)[0]
        self.ft = {w: self.rng.standard_normal(300).astype(np.float32) for w in self.pool + CLASSES + COLORS + FILLER}

    def _codes(self, n):
        codes = self.rng.standard_normal((n, DIM)).astype(np.float32)
        # norm 0.75 sqrt(DIM): twice that of a noise row (|N(0,1)| / 2), so a linear map finds it quickly
        return 6.0 * codes / np.linalg.norm(codes, axis=1, keepdims=True) * np.sqrt(DIM) / 8

    def image(self, image_id: str):
        rng = self.rng
        cls = int(rng.integers(len(CLASSES)))
        obj = np.abs(rng.standard_normal((MAX_OBJ, DIM)).astype(np.float32)) * 0.5
        rows = rng.choice(MAX_OBJ, size=int(rng.integers(60, 91)), replace=False)
        obj[rows] += self.class_codes[cls]
        m = int(rng.integers(3, 9))
        words = list(rng.choice(self.pool, size=m, replace=False))
        colors = rng.permutation(len(COLORS))[:m]
        ocr = np.abs(rng.standard_normal((m, DIM)).astype(np.float32)) * 0.5 + self.color_codes[colors]
        sign = int(rng.integers(m))
        ocr[sign] += self.sign_code  # the one word on "the sign": what OCR questions ask about
        raw = [w.capitalize() if rng.random() < 0.3 else (w + "," if rng.random() < 0.1 else w) for w in words]
        return {"id": image_id, "cls": cls, "obj": obj, "obj_boxes": _box(rng, MAX_OBJ), "words": words,
                "raw_tokens": raw, "colors": colors, "sign": sign, "ocr": ocr, "ocr_boxes": _box(rng, m)}

    def question(self, img: dict, qid: int, folder: str, with_answers: bool) -> dict:
        rng = self.rng
        if rng.random() < 0.6:
            j = img["sign"]
            question, answer = f"what is written on the {COLORS[img['colors'][j]]} sign?", img["words"][j]
        else:
            question, answer = "what object is shown in the image?", CLASSES[img["cls"]]
        answers = [answer] * 10
        for k in rng.choice(10, size=int(rng.integers(0, 3)), replace=False):  # a little annotator noise
            answers[k] = str(rng.choice(FILLER))
        item = {
            "question": question, "question_id": qid, "image_id": img["id"],
            "question_tokens": question.rstrip("?").split(),
            "image_path": f"{folder}/{img['id']}.jpg", "feature_path": f"{img['id']}.npy",
            "image_width": 1024, "image_height": 768, "set_name": folder, "image_classes": [CLASSES[img["cls"]]],
            "ocr_tokens": list(img["raw_tokens"]),
            "ocr_info": [{"word": w, "bounding_box": {"topLeftX": float(b[0]), "topLeftY": float(b[1]),
                          "width": float(b[2] - b[0]), "height": float(b[3] - b[1]), "rotation": 0.0}}
                         for w, b in zip(img["raw_tokens"], img["ocr_boxes"])],
            "ocr_normalized_boxes": img["ocr_boxes"], "obj_normalized_boxes": img["obj_boxes"],
        }
        if with_answers:
            item["answers"] = answers
            item["valid_answers"] = list(answers)
        return item


def _write_split(gen, n_questions, n_images, folder, split, with_answers, qid0, obj_recs, ocr_recs, stvqa=False):
    images = []
    for i in range(max(1, n_images)):
        img = gen.image(f"{gen.rng.integers(1 << 62):016x}")
        key = f"{folder}/{img['id']}"
        obj_recs[key] = {"features": img["obj"], "image_width": 1024, "image_height": 768, "num_boxes": MAX_OBJ,
                         "bbox": img["obj_boxes"] * np.array([1024, 768, 1024, 768], np.float32),
                         "feature_path": key + ".npy"}
        ocr_recs[key] = {"features": img["ocr"], "ocr_boxes": img["ocr_boxes"], "ocr_tokens": img["raw_tokens"]}
        images.append(img)
    header = {"creation_time": 0.0, "version": 1, "dataset_type": split, "has_answer": with_answers}
    items = []
    for q in range(n_questions):
        item = gen.question(images[q % len(images)], qid0 + q, folder, with_answers)
        if stvqa:  # ST-VQA imdbs carry feature_path without the split folder; the dataset prefixes it
            item["feature_path"] = f"{images[q % len(images)]['id']}.npy"
        items.append(item)
    arr = np.empty(len(items) + 1, dtype=object)
    arr[0] = header
    for i, it in enumerate(items):
        arr[i + 1] = it
    return arr


def _write_dataset(datasets: str, name: str, gen: _Generator, counts: dict, qpi: int, images: dict | None,
                   qid0: int) -> int:
    """One dataset (textvqa or stvqa) in MMF's layout; returns the next free question id."""
    obj_recs, ocr_recs = {}, {}
    if name == "textvqa":
        imdbs = {"train": "imdb_train_ocr_en.npy", "val": "imdb_val_ocr_en.npy", "test": "imdb_test_ocr_en.npy"}
        folders = {"train": "train", "val": "train", "test": "test"}
        obj_lmdb = os.path.join(datasets, "textvqa/defaults/features/open_images/detectron.lmdb")
    else:
        imdbs = {"train": "imdb_subtrain.npy", "val": "imdb_subval.npy", "test": "imdb_test_task3.npy"}
        folders = {"train": "train", "val": "train", "test": "test_task3"}
        obj_lmdb = os.path.join(datasets, "stvqa/defaults/features/detectron.lmdb")
    for split, fname in imdbs.items():
        n = counts[split]
        n_img = (images or {}).get(split) or max(1, -(-n // qpi))
        arr = _write_split(gen, n, n_img, folders[split], split, split != "test", qid0, obj_recs, ocr_recs,
                           stvqa=name == "stvqa")
        qid0 += n
        path = os.path.join(datasets, name, "defaults/annotations", fname)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        np.save(path, arr, allow_pickle=True)
    _write_lmdb(obj_lmdb, obj_recs)
    _write_lmdb(os.path.join(datasets, name, "ocr_en/features/ocr_en_frcn_features.lmdb"), ocr_recs)
    answer_vocab = ["<pad>", "<s>", "</s>", "<unk>"] + CLASSES + COLORS + FILLER + gen.pool[:40]
    _write_lines(os.path.join(datasets, name, f"defaults/extras/vocabs/fixed_answer_vocab_{name}_5k.txt"),
                 answer_vocab)
    question_words = QUESTION_WORDS + COLORS + CLASSES
    _write_lines(os.path.join(datasets, name, "defaults/extras/vocabs/bert-base-uncased-vocab.txt"),
                 _bert_vocab(question_words))
    words = sorted(gen.ft)
    ft_dir = os.path.join(datasets, name, "defaults/extras/fasttext")
    os.makedirs(ft_dir, exist_ok=True)
    np.save(os.path.join(ft_dir, "wiki.en.npy"), np.stack([gen.ft[w] for w in words]))
    _write_lines(os.path.join(ft_dir, "wiki.en.vocab.txt"), words)
    return qid0


def write_synthetic(out_dir: str, questions: int = 200, seed: int = 0, archive: bool = False,
                    val_questions: int | None = None, test_questions: int | None = None, *,
                    stvqa_questions: int = 0, questions_per_image: int = 2, images: int | None = None) -> dict:
    """Write a synthetic dataset in MMF's layout under `out_dir` (see the module docstring).

    Args:
        questions / val_questions / test_questions: per split (val/test default to max(8, questions // 5)).
        stvqa_questions: also write ST-VQA (subtrain; subval/test get a fifth) for joint-training tests.
        questions_per_image: questions sharing one image (TextVQA has ~1.6); `images` overrides the train count
            (e.g. 20,000 questions over 2,000 images keeps benchmarks small while shapes stay real).
        archive: write `out_dir/archives/...tar.gz` + `out_dir/manifest.yaml` instead of an installed tree.
    Returns: {"data_dir", "datasets", "manifest", "archive_root", "answer_vocab", "bert_vocab", "fasttext",
        "questions": {split: n}} (paths relative to data_dir/datasets in archive mode, where data_dir is None).
    """
    if questions < 1:
        raise ValueError("questions must be >= 1")
    out_dir = os.path.abspath(out_dir)
    small = max(8, questions // 5)
    counts = {"train": questions, "val": val_questions if val_questions is not None else small,
              "test": test_questions if test_questions is not None else small}
    gen = _Generator(seed)
    os.makedirs(out_dir, exist_ok=True)
    target = tempfile.mkdtemp(prefix=".synth-", dir=out_dir) if archive else out_dir
    datasets = os.path.join(target, "datasets")
    qid = _write_dataset(datasets, "textvqa", gen, counts, questions_per_image, {"train": images}, 1)
    names = ["textvqa"]
    if stvqa_questions:
        s_small = max(8, stvqa_questions // 5)
        _write_dataset(datasets, "stvqa", gen, {"train": stvqa_questions, "val": s_small, "test": s_small},
                       questions_per_image, None, qid + 100000)
        names.append("stvqa")
    rel = {
        "answer_vocab": "textvqa/defaults/extras/vocabs/fixed_answer_vocab_textvqa_5k.txt",
        "bert_vocab": "textvqa/defaults/extras/vocabs/bert-base-uncased-vocab.txt",
        "fasttext": "textvqa/defaults/extras/fasttext/wiki.en.npy",
    }
    result = {"questions": counts, "names": names}
    if archive:
        from .synth_archive import write_archives

        try:
            manifest, archive_root = write_archives(datasets, out_dir, names, VERSION)
        finally:
            shutil.rmtree(target, ignore_errors=True)
        result.update({"data_dir": None, "datasets": None, "manifest": manifest, "archive_root": archive_root, **rel})
        return result
    for name in names:
        for folder in ("defaults", "defaults/features", "defaults/annotations", "ocr_en/features"):
            _mark(os.path.join(datasets, name, folder), ("features", "annotations") if folder == "defaults" else ())
    result.update({"data_dir": out_dir, "datasets": datasets, "manifest": None, "archive_root": None,
                   **{k: os.path.join(datasets, v) for k, v in rel.items()}})
    return result
