"""Data-path benchmark: samples/s at batch 128, MMF-equivalent path vs the packed store, in one run.

    python bench/data.py [--questions 20000] [--images 2000] [--dir /tmp/mmfdata-bench]

Data: synthetic TextVQA in MMF's layout with real shapes (100 x 2048 fp32 object rows per image, 3-8 OCR rows of
2048, 10 answers per question). To keep disk and generation time reasonable, `--questions` questions share
`--images` distinct images (every question still reads its image's records; LMDB: ~1.7 GB for 2,000 images).
Both paths read from a warm page cache; both run in this one process (no DataLoader workers), so the ratio
compares the work per sample, which is what DataLoader workers would parallelise.

(a) MMF-equivalent: per sample, two pickled LMDB reads padded to 100 x 2048 fp32 (OCR too), BERT tokenisation,
    fastText + PHOC per OCR token, answer matching with a dense 12 x (V+50) fp32 target and the 50 x 50 order
    vectors, then torch's default_collate.
(b) packed: `PackedDataset.get_batch` (vectorized gathers of fp16 memmaps, compact targets).
(c) our LMDB path through the trainer's loader (`mmftrain.data.Prefetcher`) with 1 and `--loader-workers` threads
    (the threads share one LMDB environment per store), as `mmf train` runs it without a packed store.
"""
from __future__ import annotations

import argparse
import logging
import os
import time

import numpy as np


def mmf_sample(ds, i: int) -> dict:
    """What MMF's TextVQADataset.__getitem__ hands to the collate function for one question."""
    import torch

    s = ds.get_sample(i)  # LMDB pickles, padding, BERT, fastText, PHOC, answer matching
    procs = ds.procs
    ocr_rec, _ = ds.ocr_reader.read(ds.feature_paths[i])
    ocr100 = np.zeros((procs.max_features, ocr_rec.shape[1]), np.float32)  # MMF pads OCR rows to 100 as well
    ocr100[: min(len(ocr_rec), procs.max_features)] = ocr_rec[: procs.max_features]
    v = len(ds.answer_vocab)
    dense = np.zeros((procs.answers.max_copy_steps, v + procs.max_ocr), np.float32)
    t = s["targets"]
    valid = t.first_inds >= 0
    dense[0, t.first_inds[valid]] = t.first_scores[valid]
    if len(t.cand_len):  # one sampled sequence, as MMF does with np.random.choice
        r = np.random.randint(len(t.cand_len))
        seq, n = t.cand_seq[r], int(t.cand_len[r])
        for step in range(1, min(n + 1, procs.answers.max_copy_steps)):
            dense[step, seq[step] if step < n else ds.eos] = 1.0
    order = np.eye(procs.max_ocr, dtype=np.float32)
    order[s["ocr_num"]:] = 0
    return {
        "question_id": torch.tensor(s["question_id"]), "text": torch.from_numpy(s["text"]),
        "text_len": torch.tensor(s["text_len"]), "image_feature_0": torch.from_numpy(s["obj_feat"]),
        "image_feature_1": torch.from_numpy(ocr100), "obj_bbox_coordinates": torch.from_numpy(s["obj_bbox"]),
        "context_feature_0": torch.from_numpy(s["ocr_fasttext"]), "context_feature_1": torch.from_numpy(s["ocr_phoc"]),
        "ocr_bbox_coordinates": torch.from_numpy(s["ocr_bbox"]), "order_vectors": torch.from_numpy(order),
        "targets": torch.from_numpy(dense), "train_loss_mask": torch.zeros(procs.answers.max_copy_steps),
    }


def warm(folder: str) -> float:
    """Read every file under `folder` once so both paths start from a warm page cache; returns GB read."""
    total = 0
    for dirpath, _, files in os.walk(folder):
        for fn in files:
            with open(os.path.join(dirpath, fn), "rb") as f:
                while chunk := f.read(16 << 20):
                    total += len(chunk)
    return total / 1e9


def bench(fn, batches: list[np.ndarray], warmup: int = 1) -> float:
    for b in batches[:warmup]:
        fn(b)
    t0 = time.perf_counter()
    n = 0
    for b in batches[warmup:]:
        fn(b)
        n += len(b)
    return n / (time.perf_counter() - t0)


def loader_rate(ds, batches: list[np.ndarray], workers: int) -> float:
    """samples/s of the trainer's threaded loader over `batches` (the first one, which opens the stores, excluded)."""
    from mmftrain.data import Prefetcher

    loader = Prefetcher(ds, iter(enumerate(batches)), pin=False, workers=workers)
    try:
        it = iter(loader)
        next(it)
        t0 = time.perf_counter()
        n = sum(len(batch["question_id"]) for _, batch, _ in it)
        return n / (time.perf_counter() - t0)
    finally:
        loader.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--questions", type=int, default=20000)
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--mmf-batches", type=int, default=8)
    ap.add_argument("--packed-batches", type=int, default=60)
    ap.add_argument("--dir", default="/tmp/mmfdata-bench")
    ap.add_argument("--loader-workers", type=int, default=4, help="(c): threads compared with 1 (0: skip (c))")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)

    from torch.utils.data import default_collate

    from mmfdata import LmdbDataset, PackedDataset, default_dataset_config, pack_dataset
    from mmfdata.build import split_entries
    from mmfdata.pack import pack_dir_for
    from mmfdata.processors import build_processors, datasets_root
    from mmfdata.synth import write_synthetic

    stamp = os.path.join(args.dir, f".bench-{args.questions}-{args.images}")
    t0 = time.perf_counter()
    if not os.path.exists(stamp):
        write_synthetic(args.dir, args.questions, seed=0, val_questions=8, test_questions=8, images=args.images)
        open(stamp, "w").close()
        print(f"generated {args.questions} questions / {args.images} images in {time.perf_counter() - t0:.0f} s")
    cfg = default_dataset_config("textvqa")
    t0 = time.perf_counter()
    pack_dataset("textvqa", cfg, args.dir, ["train"])
    print(f"pack (or freshness check) of train: {time.perf_counter() - t0:.1f} s")

    root = datasets_root(cfg, args.dir)
    (annotation, stores), = split_entries("textvqa", cfg, "train", root)
    procs = build_processors("textvqa", cfg, args.dir)
    lmdb_ds = LmdbDataset("textvqa", "train", annotation, stores, procs)
    packed = PackedDataset(pack_dir_for(args.dir, root, annotation))
    warm(os.path.join(args.dir, "datasets"))
    warm(packed.pack_dir)
    n = len(packed)
    rng = np.random.default_rng(0)
    perm = rng.permutation(n)
    batches = [perm[i * args.batch:(i + 1) * args.batch] for i in range(n // args.batch)]

    mmf = bench(lambda b: default_collate([mmf_sample(lmdb_ds, int(i)) for i in b]), batches[: args.mmf_batches])
    ours_lmdb = bench(lmdb_ds.get_batch, batches[: args.mmf_batches])
    fast = bench(packed.get_batch, batches[: args.packed_batches], warmup=2)
    gb = sum(os.path.getsize(os.path.join(dp, f)) for dp, _, fs in os.walk(os.path.join(args.dir, "datasets"))
             for f in fs) / 1e9
    print(f"data: {n} questions over {args.images} distinct images (reused), {gb:.1f} GB on disk, warm page cache, "
          f"batch {args.batch}, 1 process on {os.cpu_count()} cores")
    print(f"(a) MMF-equivalent path     : {mmf:8.0f} samples/s")
    print(f"    our LMDB path (compact) : {ours_lmdb:8.0f} samples/s")
    print(f"(b) packed path             : {fast:8.0f} samples/s")
    print(f"ratio packed / MMF-equivalent: {fast / mmf:.1f}x  (target >= 10x); packed target >= 6000 samples/s: "
          f"{'met' if fast >= 6000 else 'NOT met'}")
    if args.loader_workers > 0:
        fresh = LmdbDataset("textvqa", "train", annotation, stores, procs)
        one = loader_rate(fresh, batches[: args.mmf_batches + 1], 1)
        many = loader_rate(fresh, batches[: args.mmf_batches + 1], args.loader_workers)
        print(f"(c) LMDB path, trainer's loader, 1 thread : {one:8.0f} samples/s")
        print(f"    LMDB path, trainer's loader, {args.loader_workers} threads: {many:8.0f} samples/s  "
              f"({many / one:.2f}x of 1 thread)")


if __name__ == "__main__":
    main()
