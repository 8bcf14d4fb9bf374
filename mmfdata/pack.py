"""`mmf data pack`: convert imdb + LMDB features into the packed store that `PackedDataset` memory-maps.

One store per imdb file, at `<data_dir>/packed/<imdb path under datasets/, without .npy>/`:
    index.json            format, sizes, answer vocab, processor options, content fingerprints of every input
                          (not paths: a copied data dir reuses its store; see `fingerprint.py`)
    strings.json          image_id and raw answers per question, processed OCR tokens per token row
    question_id, image_row, tok_row, text, text_len, obj_bbox, ocr_bbox, ocr_num,
    first_inds, first_scores, cand_off, cand_seq, cand_len          per question / candidate (.npy)
    obj_feat [I,100,2048] f16, obj_num [I], ocr_feat [I,50,2048] f16   per distinct image
    ocr_fasttext [T,50,300] f16, ocr_phoc [T,50,604] f16              per distinct OCR token list
Nothing in it is a pickle. It is built in `<store>.partial/` (image rows are checkpointed, so an interrupted pack
resumes), fsynced, and renamed into place; `index.json` is written last.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import time

import numpy as np
from filelock import FileLock

from .errors import PackError
from .fingerprint import fingerprint, still_matches
from .imdb import fix_feature_path, load_imdb
from .lmdb_features import LmdbFeatureReader
from .processors import Processors
from .sample import image_features, process_question, token_features

log = logging.getLogger("mmfdata")
PACK_FORMAT = 1
CHECKPOINT_EVERY = 256  # image rows between progress checkpoints


def pack_dir_for(data_dir: str, root: str, annotation: str) -> str:
    """Where the packed store of one imdb file lives."""
    rel = os.path.relpath(os.path.abspath(annotation), os.path.abspath(root))
    if rel.startswith(".."):
        rel = os.path.join("external", os.path.abspath(annotation).lstrip(os.sep))
    return os.path.join(data_dir, "packed", rel[:-4] if rel.endswith(".npy") else rel)


def input_paths(annotation: str, feature_stores: list[str], procs: Processors) -> dict[str, str]:
    paths = {"imdb": annotation, "obj_features": feature_stores[0]}
    if len(feature_stores) > 1:
        paths["ocr_features"] = feature_stores[1]
    paths.update(procs.files)
    if procs.files["fasttext"].endswith(".npy"):
        paths["fasttext_vocab"] = procs.files["fasttext"][:-4] + ".vocab.txt"
    return paths


def params_of(procs: Processors, split: str) -> dict:
    return {"format": PACK_FORMAT, "split": split, **procs.fingerprint()}


def check_fresh(pack_dir: str, annotation: str, feature_stores: list[str], procs: Processors, split: str) -> str | None:
    """None when the store at `pack_dir` matches its inputs and options, else the reason it cannot be used."""
    index_path = os.path.join(pack_dir, "index.json")
    if not os.path.isfile(index_path):
        return f"no packed store at {pack_dir}"
    try:
        with open(index_path) as f:
            index = json.load(f)
    except (OSError, ValueError) as e:
        return f"{index_path} is unreadable ({e})"
    if index.get("params") != params_of(procs, split):
        return f"it was packed with other options {index.get('params')}"
    recorded = index.get("inputs", {})
    paths = input_paths(annotation, feature_stores, procs)
    if set(recorded) != set(paths):
        return f"it was packed from inputs {sorted(recorded)}, now {sorted(paths)}"
    for role, path in paths.items():
        why = still_matches(recorded[role], path)
        if why:
            return why
    return None


def _fsync_tree(folder: str) -> None:
    for name in os.listdir(folder):
        with open(os.path.join(folder, name), "rb") as f:
            os.fsync(f.fileno())
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_json(path: str, obj) -> None:
    from zoo.fsutil import atomic_write_text  # the one atomic-write helper

    atomic_write_text(path, json.dumps(obj))


def _questions(name, split, annotation, feature_stores, procs, trust_pickle):
    """Per-question arrays plus the distinct images and token lists they point to."""
    items = load_imdb(annotation, trust_pickle)
    obj_reader = LmdbFeatureReader(feature_stores[0], trust_pickle)
    ocr_reader = LmdbFeatureReader(feature_stores[1], trust_pickle) if len(feature_stores) > 1 else None
    images: dict[str, int] = {}
    token_rows: dict[tuple, int] = {}
    qs = []
    for i, item in enumerate(items):
        where = f"imdb {annotation} question {item.get('question_id')} (#{i})"
        fpath = fix_feature_path(item, annotation, split)
        if fpath not in images:
            obj_reader.key_for(fpath)  # fail now, naming the key, rather than mid-way through the features
            if ocr_reader is not None and procs.use_ocr:
                ocr_reader.key_for(fpath)
            images[fpath] = len(images)
        q = process_question(item, procs, where)
        q["image_row"] = images[fpath]
        q["tok_row"] = token_rows.setdefault(tuple(q["ocr_tokens"]), len(token_rows))
        qs.append(q)
    return qs, list(images), [list(t) for t in token_rows], obj_reader, ocr_reader


def _save_question_arrays(out: str, qs: list[dict], procs: Processors) -> int:
    n, k = len(qs), procs.answers.max_first
    n_cands = np.array([len(q["targets"].cand_len) for q in qs], dtype=np.int64)
    steps = procs.answers.max_copy_steps
    arrays = {
        "question_id": np.array([q["question_id"] for q in qs], dtype=np.int64),
        "image_row": np.array([q["image_row"] for q in qs], dtype=np.int32),
        "tok_row": np.array([q["tok_row"] for q in qs], dtype=np.int32),
        "text": np.stack([q["text"] for q in qs]).astype(np.int32) if n else np.zeros((0, procs.tokenizer.max_seq_length), np.int32),
        "text_len": np.array([q["text_len"] for q in qs], dtype=np.int16),
        "obj_bbox": np.stack([q["obj_bbox"] for q in qs]) if n else np.zeros((0, procs.max_features, 4), np.float32),
        "ocr_bbox": np.stack([q["ocr_bbox"] for q in qs]) if n else np.zeros((0, procs.max_ocr, 4), np.float32),
        "ocr_num": np.array([q["ocr_num"] for q in qs], dtype=np.int16),
        "first_inds": np.stack([q["targets"].first_inds for q in qs]).astype(np.int32) if n else np.zeros((0, k), np.int32),
        "first_scores": np.stack([q["targets"].first_scores for q in qs]) if n else np.zeros((0, k), np.float32),
        "cand_off": np.concatenate([[0], np.cumsum(n_cands)]).astype(np.int64),
        "cand_seq": np.concatenate([q["targets"].cand_seq for q in qs]) if n_cands.sum() else np.zeros((0, steps), np.int32),
        "cand_len": np.concatenate([q["targets"].cand_len for q in qs]) if n_cands.sum() else np.zeros(0, np.int32),
    }
    for key, arr in arrays.items():
        np.save(os.path.join(out, key + ".npy"), arr, allow_pickle=False)
    return int(n_cands.sum())


def _write_image_arrays(out, image_paths, obj_reader, ocr_reader, procs, inputs, progress: bool) -> None:
    """Fill obj/ocr feature rows, checkpointing so an interrupted run resumes where it stopped."""
    from numpy.lib.format import open_memmap

    n = len(image_paths)
    state_path = os.path.join(out, "progress.json")
    done = 0
    if os.path.isfile(state_path):
        with open(state_path) as f:
            state = json.load(f)
        if state.get("inputs") == inputs and state.get("images") == n:
            done = int(state["done"])
    mode = "r+" if done else "w+"
    dim = None
    if not done or not os.path.isfile(os.path.join(out, "obj_feat.npy")):
        mode, done = "w+", 0
        first, _ = obj_reader.read(image_paths[0]) if n else (np.zeros((0, 2048), np.float32), None)
        dim = first.shape[1]
    else:
        dim = np.load(os.path.join(out, "obj_feat.npy"), mmap_mode="r").shape[2]
    obj = open_memmap(os.path.join(out, "obj_feat.npy"), mode, np.float16, (n, procs.max_features, dim))
    ocr = open_memmap(os.path.join(out, "ocr_feat.npy"), mode, np.float16, (n, procs.max_ocr, dim))
    nums = open_memmap(os.path.join(out, "obj_num.npy"), mode, np.int16, (n,))
    if done:
        log.info("resuming pack of %s at image %d/%d", out, done, n)
    t0, last = time.time(), time.time()
    for r in range(done, n):
        o, _ = obj_reader.read(image_paths[r])
        c = ocr_reader.read(image_paths[r])[0] if ocr_reader is not None and procs.use_ocr else None
        feats = image_features(o, c, procs)
        obj[r], ocr[r], nums[r] = feats["obj_feat"], feats["ocr_feat"], feats["obj_num"]
        if (r + 1) % CHECKPOINT_EVERY == 0 or r + 1 == n:
            for arr in (obj, ocr, nums):
                arr.flush()
            _write_json(state_path, {"inputs": inputs, "images": n, "done": r + 1})
            if progress and time.time() - last > 10:
                last = time.time()
                log.info("packed %d/%d images (%.0f/s)", r + 1, n, (r + 1 - done) / (last - t0))
    del obj, ocr, nums


def _write_token_arrays(out: str, token_lists: list[list[str]], procs: Processors) -> None:
    t = len(token_lists)
    ft = np.zeros((t, procs.max_ocr, procs.fasttext.dim), np.float16)
    ph = np.zeros((t, procs.max_ocr, 604), np.float16)
    for r, toks in enumerate(token_lists):
        f, p = token_features(toks, procs)
        ft[r], ph[r] = f, p
    np.save(os.path.join(out, "ocr_fasttext.npy"), ft, allow_pickle=False)
    np.save(os.path.join(out, "ocr_phoc.npy"), ph, allow_pickle=False)


def pack_entry(name: str, split: str, annotation: str, feature_stores: list[str], procs: Processors, data_dir: str,
               root: str, *, trust_pickle: bool = False, force: bool = False, progress: bool = True) -> str:
    """Pack one imdb file (and its feature stores) unless an up-to-date store exists; returns its folder."""
    pack_dir = pack_dir_for(data_dir, root, annotation)
    os.makedirs(os.path.dirname(pack_dir), exist_ok=True)
    with FileLock(pack_dir + ".lock"):
        why = check_fresh(pack_dir, annotation, feature_stores, procs, split)
        if why is None and not force:
            log.info("packed store %s is up to date", pack_dir)
            return pack_dir
        paths = input_paths(annotation, feature_stores, procs)
        for role, path in paths.items():
            if not os.path.exists(path):
                raise PackError(f"cannot pack {name}/{split}: its {role} input {path} does not exist")
        log.info("packing %s/%s from %s (%s)", name, split, annotation, why or "forced")
        inputs = {role: fingerprint(path) for role, path in paths.items()}
        partial = pack_dir + ".partial"
        state_path = os.path.join(partial, "progress.json")
        if os.path.isdir(partial) and not os.path.isfile(state_path):
            shutil.rmtree(partial)
        os.makedirs(partial, exist_ok=True)
        qs, image_paths, token_lists, obj_reader, ocr_reader = _questions(
            name, split, annotation, feature_stores, procs, trust_pickle)
        n_cands = _save_question_arrays(partial, qs, procs)
        _write_token_arrays(partial, token_lists, procs)
        _write_json(os.path.join(partial, "strings.json"), {
            "image_id": [q["image_id"] for q in qs],
            "gt_answers": [q["gt_answers"] for q in qs],
            "ocr_tokens": token_lists,
        })
        _write_image_arrays(partial, image_paths, obj_reader, ocr_reader, procs, inputs, progress)
        os.remove(state_path)
        index = {
            "format": PACK_FORMAT, "name": name, "split": split, "annotation": os.path.abspath(annotation),
            "questions": len(qs), "images": len(image_paths), "token_rows": len(token_lists), "candidates": n_cands,
            "answer_vocab": procs.answers.words, "params": params_of(procs, split), "inputs": inputs,
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
        _write_json(os.path.join(partial, "index.json"), index)
        _fsync_tree(partial)
        if os.path.exists(pack_dir):
            old = f"{pack_dir}.old-{os.getpid()}"
            os.replace(pack_dir, old)
            os.replace(partial, pack_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(partial, pack_dir)
        log.info("packed %d questions / %d images into %s", len(qs), len(image_paths), pack_dir)
        return pack_dir
