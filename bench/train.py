"""Training throughput of the full-size M4C: samples/s and data-wait share per precision mode.

    python bench/train.py                                   # CPU smoke: batch 8, fp32 vs bf16
    python bench/train.py --device cuda --batch 128 --steps 60 --modes fp32,bf16,bf16+compile

Each mode runs the trainer's own pieces end to end: a dataset's `get_batch` (fancy-indexed fp16 feature arrays
shaped like the packed store: 100x2048 objects, 50x2048 OCR, fastText, PHOC; compact targets) in the trainer's
background `Prefetcher`, `torch.from_numpy` + pinned copies, `expand_targets` on the device, forward under the
mode's autocast, M4C's loss, backward, clip 0.25, fused Adam (CUDA) with M4C's parameter groups. With
`--pack-dir` it reads an `mmfdata` packed store instead of the in-memory arrays. Ratios are against fp32 eager
(MMF's setting) measured in the same run.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mmfdata.batch import expand_targets  # noqa: E402
from mmftrain.data import Prefetcher, to_device  # noqa: E402
from mmftrain.loss import m4c_decoding_bce_with_mask  # noqa: E402
from mmftrain.models import build_m4c  # noqa: E402


class ArrayDataset:
    """`n` questions over `images` distinct images held as fp16 arrays (the packed store's layout, in RAM)."""

    def __init__(self, n: int, images: int, vocab: int = 5000, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.n, self.answer_vocab = n, ["<pad>", "<s>", "</s>", "<unk>"] + [f"w{i}" for i in range(vocab - 4)]
        self.name, self.split = "textvqa", "train"
        half = lambda *s: rng.standard_normal(s, dtype=np.float32).astype(np.float16)  # noqa: E731
        self.obj, self.ocr = half(images, 100, 2048), half(images, 50, 2048)
        self.ft, self.phoc = half(images, 50, 300), (rng.random((images, 50, 604)) < 0.05).astype(np.float16)
        self.image = rng.integers(0, images, n)
        self.text = rng.integers(1000, 30000, (n, 20))
        self.ocr_num = rng.integers(1, 51, images)
        self.first = rng.integers(0, vocab + 50, (n, 4))
        self.seq = np.where(rng.random((n, 12)) < 0.2, rng.integers(0, vocab + 50, (n, 12)), -1)

    def __len__(self) -> int:
        return self.n

    def get_batch(self, idx: np.ndarray) -> dict:
        im = self.image[idx]
        b = len(idx)
        mask = np.zeros((b, 12), np.float32)
        mask[:, :3] = 1
        prev = np.zeros((b, 12), np.int64)
        prev[:, 0] = 1
        return {"question_id": idx.astype(np.int64), "image_id": np.array([str(i) for i in im], dtype=object),
                "text": self.text[idx], "text_len": np.full(b, 12), "obj_feat": self.obj[im],
                "obj_bbox": np.random.rand(b, 100, 4).astype(np.float32), "obj_num": np.full(b, 100),
                "ocr_feat": self.ocr[im], "ocr_fasttext": self.ft[im], "ocr_phoc": self.phoc[im],
                "ocr_bbox": np.random.rand(b, 50, 4).astype(np.float32), "ocr_num": self.ocr_num[im],
                "ocr_tokens": np.array([["tok"] * 50 for _ in range(b)] + [None], dtype=object)[:-1],
                "gt_answers": np.array([[] for _ in range(b)] + [None], dtype=object)[:-1],
                "train_prev_inds": prev, "train_loss_mask": mask, "target_first_inds": self.first[idx],
                "target_first_scores": np.full((b, 4), 0.6, np.float32), "target_seq": self.seq[idx]}


def bench_mode(mode: str, ds, device: torch.device, batch: int, steps: int, warmup: int) -> dict:
    torch.manual_seed(0)
    model = build_m4c(len(ds.answer_vocab)).to(device).train()
    cuda = device.type == "cuda"
    opt = torch.optim.Adam(model.optimizer_groups(1e-4), lr=1e-4, eps=1e-8, **({"fused": True} if cuda else {}))
    run_model = model
    if "compile" in mode:
        try:
            run_model = torch.compile(model)
        except Exception as e:  # noqa: BLE001
            print(f"  compile unavailable: {e}")
    dtype = torch.bfloat16 if "bf16" in mode else None
    rng = np.random.default_rng(1)
    keyed = ((i, rng.choice(len(ds), batch, replace=False)) for i in range(warmup + steps))
    loader = Prefetcher(ds, keyed, pin=cuda, depth=3)
    wait = 0.0
    t0 = None
    try:
        for i, (_, cpu_batch, w) in enumerate(loader):
            if i == warmup:
                if cuda:
                    torch.cuda.synchronize()
                t0, wait = time.perf_counter(), 0.0
            wait += w
            b = to_device(cpu_batch, device)
            with torch.autocast(device.type, dtype=dtype) if dtype else torch.autocast(device.type, enabled=False):
                scores = run_model(b)
            loss = m4c_decoding_bce_with_mask(scores, expand_targets(b, scores.size(-1)), b["train_loss_mask"])
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 0.25)
            opt.step()
            opt.zero_grad(set_to_none=True)
        if cuda:
            torch.cuda.synchronize()
    finally:
        loader.close()
    elapsed = time.perf_counter() - t0
    mem = torch.cuda.max_memory_allocated(device) / 2**30 if cuda else float("nan")
    return {"samples_per_s": steps * batch / elapsed, "data_wait_share": wait / elapsed, "loss": float(loss.detach()),
            "max_mem_gib": mem}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batch", type=int, default=None, help="default 128 on CUDA, 8 on CPU")
    p.add_argument("--steps", type=int, default=None, help="timed steps (default 40 CUDA, 3 CPU)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 10 CUDA, 1 CPU)")
    p.add_argument("--modes", default=None, help="comma list of fp32, bf16, bf16+compile (default all on CUDA)")
    p.add_argument("--questions", type=int, default=4096)
    p.add_argument("--images", type=int, default=512, help="distinct feature rows (real shapes, reused)")
    p.add_argument("--pack-dir", default=None, help="read an mmfdata packed store instead of in-memory arrays")
    a = p.parse_args()
    device = torch.device(a.device)
    cuda = device.type == "cuda"
    batch = a.batch or (128 if cuda else 8)
    steps = a.steps or (40 if cuda else 3)
    warmup = a.warmup if a.warmup is not None else (10 if cuda else 1)
    modes = (a.modes or ("fp32,bf16,bf16+compile" if cuda else "fp32,bf16")).split(",")
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = False  # fp32 = strict fp32, MMF's reference setting
    if a.pack_dir:
        from mmfdata.packed import PackedDataset

        ds = PackedDataset(a.pack_dir)
        source = f"packed store {a.pack_dir} ({len(ds)} questions)"
    else:
        ds = ArrayDataset(a.questions, a.images)
        source = f"in-memory fp16 arrays: {a.questions} questions over {a.images} distinct images (real shapes)"
    name = torch.cuda.get_device_name(device) if cuda else "CPU"
    print(f"M4C full size (90.85M params, vocab {len(ds.answer_vocab)}), batch {batch}, {steps} timed steps after "
          f"{warmup} warm-up, device {name}, torch {torch.__version__}\ndata: {source}")
    base = None
    for mode in modes:
        r = bench_mode(mode, ds, device, batch, steps, warmup)
        base = base or r["samples_per_s"]
        print(f"{mode:>14}: {r['samples_per_s']:9.1f} samples/s  x{r['samples_per_s'] / base:5.2f} vs fp32  "
              f"data wait {100 * r['data_wait_share']:5.1f}%  max mem {r['max_mem_gib']:.1f} GiB  loss {r['loss']:.3f}",
              flush=True)


if __name__ == "__main__":
    main()
