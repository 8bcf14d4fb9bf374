"""Greedy decoding speed: incremental (cached keys/values) vs full recompute (MMF), same model, same batches.

    python bench/decode.py                                 # CPU: tiny model at batch 100, full size at batch 8
    python bench/decode.py --device cuda --models full --batch 128 --questions 5000 --amp bf16

For each model (`tiny` = configs/projects/m4c/configs/textvqa/tiny.yaml, `full` = MMF's 90.85M M4C) it decodes
the same random full-shape batches (real feature shapes, varied text/object/OCR lengths) both ways, 12 steps
(no early exit: MMF's setting), checks that every step's argmax is identical and reports the largest score
difference, then prints questions/s and the ratio incremental / full recompute measured in the same run (each
way timed `--repeat` times, alternating, the fastest run counting).

Identical predictions are what the arithmetic gives when both ways round alike: fp32 on a CPU, where the bench
requires them. Elsewhere (GPU kernels picked per shape, bf16/fp16 autocast) a 182-key and a 1-query attention
round differently, and where two candidates are tied within that rounding at some step the ways may pick
differently there, and everything after differs (the pick is fed back). There the bench counts the questions
decoded differently and requires no more than the precision's own scale of such flips: full recompute in bf16
against fp32 (for an fp32 run) or in fp32 against the autocast precision. A cache that attended to a wrong
position flips far more (tested: attending to the unwritten slots flips 57 of 100 questions against bf16's 26).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mmftrain.data import to_device, to_tensors  # noqa: E402
from mmftrain.models import build_m4c  # noqa: E402
from mmftrain.models.bert import init_bert_weights  # noqa: E402

TINY = "projects/m4c/configs/textvqa/tiny.yaml"
VOCAB = 5000


def random_batch(b: int, seed: int) -> dict:
    """A numpy batch with the packed store's shapes and dtypes, every length varying per question."""
    rng = np.random.default_rng(seed)
    half = lambda *s: rng.standard_normal(s, dtype=np.float32).astype(np.float16)  # noqa: E731
    return {"question_id": np.arange(b), "text": rng.integers(1000, 30000, (b, 20)),
            "text_len": rng.integers(3, 21, b), "obj_feat": np.maximum(half(b, 100, 2048), 0),
            "obj_bbox": rng.random((b, 100, 4), dtype=np.float32), "obj_num": rng.integers(10, 101, b),
            "ocr_feat": np.maximum(half(b, 50, 2048), 0), "ocr_fasttext": half(b, 50, 300),
            "ocr_phoc": (rng.random((b, 50, 604)) < 0.05).astype(np.float16),
            "ocr_bbox": rng.random((b, 50, 4), dtype=np.float32), "ocr_num": rng.integers(1, 51, b),
            "train_prev_inds": np.zeros((b, 12), np.int64), "train_loss_mask": np.zeros((b, 12), np.float32),
            "target_first_inds": np.full((b, 4), -1), "target_first_scores": np.zeros((b, 4), np.float32),
            "target_seq": np.full((b, 12), -1)}


def build(name: str):
    """The named model in eval mode; weights wider than BERT's init so that predictions vary across steps."""
    torch.manual_seed(0)
    if name == "tiny":
        from mmftrain.config import build_config
        from mmftrain.models.m4c import M4C

        cfg = build_config([f"config={TINY}", "datasets=textvqa", "model=m4c"])
        model = M4C(cfg["model_config"]["m4c"], VOCAB)
    else:
        model = build_m4c(VOCAB)
    init_bert_weights(model.mmt, 0.2)  # random-init M4C repeats BOS forever, which would hide a broken cache
    return model.eval()


def run(model, batches: list, incremental: bool, device, amp) -> tuple[float, list]:
    """(seconds, per-batch scores on the host) for decoding every batch; full recompute is MMF's computation
    (every row of every layer at each step)."""
    model.trim_last_layer = incremental  # (incremental decoding computes the rows it needs by construction)
    out = []
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for b in batches:
        with amp():
            out.append(model.greedy_decode(b, 1, None, incremental=incremental))
    if device.type == "cuda":
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - t0
    return elapsed, [s.float().cpu() for s in out]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--models", default="tiny,full")
    p.add_argument("--batch", type=int, default=None, help="questions per batch (default: tiny 100, full 8 on "
                   "CPU; 128 on CUDA)")
    p.add_argument("--questions", type=int, default=None, help="questions decoded per model and way (default: "
                   "tiny 200, full 16 on CPU; 1280 on CUDA)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice); 1 is "
                   "steadier when other jobs share the cores")
    p.add_argument("--repeat", type=int, default=3, help="timed runs of each way; the fastest counts")
    p.add_argument("--amp", choices=["fp32", "bf16", "fp16"], default="fp32")
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    device = torch.device(a.device)
    cuda = device.type == "cuda"
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(a.amp)
    amp = (lambda: torch.autocast(device.type, dtype=dtype)) if dtype else (
        lambda: torch.autocast(device.type, enabled=False))
    name = torch.cuda.get_device_name(device) if cuda else f"CPU ({os.cpu_count()} cores)"
    print(f"greedy decoding, 12 steps, no early exit; device {name}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, {a.amp}", flush=True)
    for which in a.models.split(","):
        model = build(which).to(device)
        bs = a.batch or (128 if cuda else (100 if which == "tiny" else 8))
        n = a.questions or (1280 if cuda else (200 if which == "tiny" else 16))
        batches = [to_device(to_tensors(random_batch(bs, seed), cuda), device)
                   for seed in range(max(1, n // bs))]
        run(model, batches[:1], True, device, amp)  # warm-up (allocator, kernels)
        run(model, batches[:1], False, device, amp)
        t_full = t_inc = float("inf")
        for _ in range(a.repeat):  # alternating, best of each: robust to other jobs sharing the machine
            t, s_full = run(model, batches, False, device, amp)
            t_full = min(t_full, t)
            t, s_inc = run(model, batches, True, device, amp)
            t_inc = min(t_inc, t)
        same = all(torch.equal(f.argmax(-1), i.argmax(-1)) for f, i in zip(s_full, s_inc))
        diff = max(float((f - i)[f > -5000].abs().max()) for f, i in zip(s_full, s_inc))
        steps_vary = any(bool((f.argmax(-1)[:, 1:] != f.argmax(-1)[:, :-1]).any()) for f in s_full)
        q = len(batches) * bs
        params = sum(p.numel() for p in model.parameters()) / 1e6
        print(f"{which:>5} ({params:.2f}M params) batch {bs}, {q} questions: full recompute {q / t_full:9.1f} q/s "
              f"({t_full:.2f} s)  incremental {q / t_inc:9.1f} q/s ({t_inc:.2f} s)  x{t_full / t_inc:.2f}  "
              f"argmax identical at every step: {same}  max |score diff| {diff:.2e}  "
              f"predictions vary across steps: {steps_vary}", flush=True)
        check_predictions(which, model, batches, s_full, s_inc, device, a.amp)


def check_predictions(which: str, model, batches: list, s_full: list, s_inc: list, device, amp_name: str) -> None:
    """Exits (a bug) unless the two ways agree as the module docstring says: exactly in fp32 on a CPU, elsewhere
    on no fewer questions than the precision's own rounding flips."""
    low = amp_name != "fp32"
    if device.type == "cpu" and not low:
        if not all(torch.equal(f.argmax(-1), i.argmax(-1)) for f, i in zip(s_full, s_inc)):
            raise SystemExit(f"{which}: incremental decoding predicted differently from full recompute in fp32 "
                             "on the CPU: a bug")
        return
    other = (lambda: torch.autocast(device.type, enabled=False)) if low else (
        lambda: torch.autocast(device.type, dtype=torch.bfloat16))
    _, s_other = run(model, batches, False, device, other)
    flips, scale, q = differ(s_inc, s_full), differ(s_full, s_other), sum(len(f) for f in s_full)
    print(f"{which:>5} {amp_name}: questions decoded differently by incremental and full recompute {flips}/{q}; "
          f"by full recompute in {amp_name} and in {'fp32' if low else 'bf16'} {scale}/{q} "
          f"(the scale of rounding flips)", flush=True)
    if flips > scale:
        raise SystemExit(f"{which}: incremental decoding disagrees with full recompute on more questions than "
                         "rounding does: a bug")

def differ(xs: list, ys: list) -> int:
    """Questions whose predicted sequences differ between two decodings of the same batches."""
    return sum(int((x.argmax(-1) != y.argmax(-1)).any(-1).sum()) for x, y in zip(xs, ys))

if __name__ == "__main__":
    main()
