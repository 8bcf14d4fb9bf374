"""Training throughput of the full-size M4C: samples/s and data-wait share per precision mode and loader.

    python bench/train.py                                   # CPU smoke: batch 8, fp32 vs bf16
    python bench/train.py --device cuda --modes fp32,bf16,bf16+compile,bf16+compile@host,bf16+compile@resident
    python bench/train.py --device cuda --modes bf16+graphs+fullrows@resident,bf16+graphs@resident --profile bf16+graphs@resident
    python bench/train.py --data-only --loaders host,copy,device      # the loader alone, no model

Each mode runs the trainer's own pieces end to end: a dataset's `get_batch` (fp16 feature arrays shaped like the
packed store: 100x2048 objects, 50x2048 OCR, fastText, PHOC; compact targets) in the trainer's `Prefetcher`,
`expand_targets` on the device, forward under the mode's autocast, M4C's loss, backward, clip 0.25, fused Adam
(CUDA) with M4C's parameter groups. A mode's `@loader` suffix picks the data path:

    host    the previous path: one thread, fresh arrays, `pin_memory()` copies, `.to(device)` on the compute stream
    copy    `--workers` threads, the batch copied into a ring of reusable pinned buffers, side-stream copy to the
            device (what `PackedDataset.get_batch` without `out=` gets)
    device  as copy, but the gathers write straight into the pinned ring (`get_batch(indices, out=...)`)
    resident  no data path: one batch kept on the device and reused every step (the step's own ceiling)

Default: device on CUDA, host on CPU. With `--pack-dir` it reads an `mmfdata` packed store instead of the in-memory
arrays. Ratios are against the first mode (fp32 eager, MMF's setting) measured in the same run; `--check` first
verifies that the threaded loader delivers exactly the batches of plain `get_batch` calls.
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

from mmfdata.batch import expand_targets  # noqa: E402
from mmftrain.data import Prefetcher, loader_workers, to_device, to_tensors  # noqa: E402
from mmftrain.kernels import TrainForward  # noqa: E402
from mmftrain.loss import m4c_decoding_bce_with_mask  # noqa: E402
from mmftrain.models import build_m4c  # noqa: E402


class ArrayDataset:
    """`n` questions over `images` distinct images held as fp16 arrays (the packed store's layout, in RAM).

    `get_batch(indices, out=None)` gathers every field with one `np.take` (which releases the GIL), into the
    caller's arrays when given, as the loader's staging ring asks.
    """

    def __init__(self, n: int, images: int, vocab: int = 5000, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.n, self.answer_vocab = n, ["<pad>", "<s>", "</s>", "<unk>"] + [f"w{i}" for i in range(vocab - 4)]
        self.name, self.split = "textvqa", "train"
        half = lambda *s: rng.standard_normal(s, dtype=np.float32).astype(np.float16)  # noqa: E731
        self.per_image = {"obj_feat": half(images, 100, 2048), "ocr_feat": half(images, 50, 2048),
                          "ocr_fasttext": half(images, 50, 300),
                          "ocr_phoc": (rng.random((images, 50, 604)) < 0.05).astype(np.float16),
                          "obj_num": np.full(images, 100), "ocr_num": rng.integers(1, 51, images)}
        mask = np.zeros((n, 12), np.float32)
        mask[:, :3] = 1
        prev = np.zeros((n, 12), np.int64)
        prev[:, 0] = 1
        self.per_question = {
            "question_id": np.arange(n, dtype=np.int64), "text": rng.integers(1000, 30000, (n, 20)),
            "text_len": np.full(n, 12), "obj_bbox": rng.random((n, 100, 4), dtype=np.float32),
            "ocr_bbox": rng.random((n, 50, 4), dtype=np.float32), "train_prev_inds": prev, "train_loss_mask": mask,
            "target_first_inds": rng.integers(0, vocab + 50, (n, 4)),
            "target_first_scores": np.full((n, 4), 0.6, np.float32),
            "target_seq": np.where(rng.random((n, 12)) < 0.2, rng.integers(0, vocab + 50, (n, 12)), -1)}
        self.image = rng.integers(0, images, n)

    def __len__(self) -> int:
        return self.n

    def get_batch(self, indices: np.ndarray, out: dict | None = None) -> dict:
        idx = np.asarray(indices, dtype=np.int64)
        im = self.image[idx]
        out = out or {}
        batch = {}
        for rows, arrays in ((idx, self.per_question), (im, self.per_image)):
            for k, a in arrays.items():
                # mode="clip": take() would otherwise buffer the output instead of writing it in place
                batch[k] = np.take(a, rows, axis=0, out=out.get(k), mode="clip")
        b = len(idx)
        batch["image_id"] = np.array([str(i) for i in im] + [None], dtype=object)[:-1]
        batch["ocr_tokens"] = np.array([["tok"] * 50 for _ in range(b)] + [None], dtype=object)[:-1]
        batch["gt_answers"] = np.array([[] for _ in range(b)] + [None], dtype=object)[:-1]
        return batch


class NoOut:
    """`ds` without the `out=` gathers (like `PackedDataset` today): the loader copies each batch into its ring."""

    def __init__(self, ds):
        self.ds, self.answer_vocab, self.name, self.split = ds, ds.answer_vocab, ds.name, ds.split

    def __len__(self) -> int:
        return len(self.ds)

    def get_batch(self, indices: np.ndarray) -> dict:
        return self.ds.get_batch(indices)


class Resident:
    """No data path at all: the first batch, moved to the device once, served for every key (the step's ceiling)."""

    def __init__(self, ds, keyed, device: torch.device):
        self.keyed, self.batch = keyed, None
        self.ds, self.device = ds, device

    def __iter__(self):
        for key, idx in self.keyed:
            if self.batch is None:
                self.batch = to_device(to_tensors(self.ds.get_batch(idx), False), self.device)
            yield key, self.batch, 0.0

    def close(self):
        pass


def make_loader(loader: str, ds, keyed, device: torch.device, workers: int):
    """The data path named `loader` (see the module docstring) over `keyed` (key, indices) pairs."""
    cuda = device.type == "cuda"
    if loader == "resident":
        return Resident(ds, keyed, device)
    if loader == "host":
        return Prefetcher(NoOut(ds), keyed, pin=cuda, depth=3)
    if loader in ("copy", "device"):
        src = ds if loader == "device" else NoOut(ds)
        return Prefetcher(src, keyed, pin=cuda, depth=3, workers=workers, device=device)
    raise SystemExit(f"unknown loader {loader!r}: use host, copy, device or resident")


def check_loader(ds, device: torch.device, batch: int, workers: int, n: int = 12) -> None:
    """Exit non-zero unless the threaded, staged loader yields exactly the batches of plain get_batch calls."""
    rng = np.random.default_rng(2)
    keyed = [(i, rng.choice(len(ds), batch, replace=False)) for i in range(n)]
    for loader in ("copy", "device"):
        pf = make_loader(loader, ds, iter(keyed), device, workers)
        try:
            got = [(k, b) for k, b, _ in pf]
        finally:
            pf.close()
        for (key, idx), (gkey, b) in zip(keyed, got, strict=True):
            want = ds.get_batch(idx)
            for k, v in want.items():
                same = b[k] == list(v) if v.dtype == object else np.array_equal(b[k].cpu().numpy(), v)
                if gkey != key or not same:
                    raise SystemExit(f"loader {loader} batch {key} field {k} differs from get_batch: a bug")
    print(f"check: loaders copy/device ({workers} workers) deliver {n} batches identical to plain get_batch")


def bench_data(loader: str, ds, device: torch.device, batch: int, steps: int, warmup: int, workers: int) -> float:
    """Samples/s of the loader alone: batches delivered on `device`, nothing computed."""
    rng = np.random.default_rng(1)
    keyed = ((i, rng.choice(len(ds), batch, replace=False)) for i in range(warmup + steps))
    pf = make_loader(loader, ds, keyed, device, workers)
    t0 = None
    try:
        for i, (_, b, _) in enumerate(pf):
            if i == warmup:
                t0 = time.perf_counter()
            b = to_device(b, device)
        if device.type == "cuda":
            torch.cuda.synchronize()
    finally:
        pf.close()
    return steps * batch / (time.perf_counter() - t0)


PROFILED = 5  # the last steps of a profiled mode
# kernel name pattern -> what the step spends it on (first match wins; "other" is the rest)
KERNEL_KINDS = (("matmul", r"^triton_tem_.*mm"),  # max-autotune's matmul templates
                ("fused elementwise/norm (triton)", r"^triton_"),
                ("attention", r"fmha|flash|attention|sdpa|_attn|mha"),
                ("matmul", r"gemm|cutlass|xmma|nvjet|cublas|matmul|splitk|wgmma"),
                ("optimizer + clip", r"adam|multi_tensor|foreach|lpnorm"),
                ("copy/fill/gather", r"memcpy|memset|copy|fill|index_select|gather|scatter"),
                ("elementwise/reduce (aten)", r"elementwise|reduce|vectorized|layer_norm|softmax|dropout"))


def kernel_kind(name: str) -> str:
    import re

    low = name.lower()
    return next((kind for kind, pattern in KERNEL_KINDS if re.search(pattern, low)), "other")


def print_kernel_shares(prof, wall_s: float, steps: int) -> None:
    """GPU time per kind of kernel over the profiled steps, and the share of the wall time the GPU was busy.
    Kernels replayed inside CUDA graphs appear only where the profiler traces graph nodes; none seen is said."""
    from collections import defaultdict

    per_kind, total = defaultdict(float), 0.0
    for evt in prof.key_averages():
        if str(getattr(evt, "device_type", "")).split(".")[-1] != "CUDA":
            continue
        us = float(getattr(evt, "self_device_time_total", getattr(evt, "self_cuda_time_total", 0.0)))
        per_kind[kernel_kind(evt.key)] += us
        total += us
    if not total:
        print(f"profile: no GPU kernels recorded over {steps} steps ({1e3 * wall_s / steps:.2f} ms/step wall)")
        return
    step_ms = total / 1e3 / steps
    print(f"profile: {step_ms:.2f} ms of kernels per step, {1e3 * wall_s / steps:.2f} ms wall per step "
          f"(GPU busy {100 * total / 1e6 / wall_s:.0f}%)")
    for kind, us in sorted(per_kind.items(), key=lambda kv: -kv[1]):
        print(f"  {kind:<28} {us / 1e3 / steps:7.2f} ms/step  {100 * us / total:5.1f}%")


def sdpa_report(device: torch.device, batch: int) -> None:
    """Which scaled_dot_product_attention kernel eager torch picks for the MMT's attention (batch x 12 heads x
    182 positions x 64, M4C's additive prefix-LM mask, attention dropout 0.1), per training.attention_backend,
    and why each fused kernel is refused (torch's own debug reasons)."""
    import warnings

    from torch.nn.attention import SDPBackend

    from mmftrain.kernels import set_attention_backend
    from mmftrain.models.m4c import M4C

    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    q, k, v = (torch.randn(batch, 12, 182, 64, device=device, dtype=dtype, requires_grad=True) for _ in range(3))
    enc = (torch.arange(170, device=device)[None] < torch.randint(60, 171, (batch, 1), device=device)).float()
    mask = M4C.prefix_lm_mask(enc, 12).to(dtype)
    checks = {"flash": "can_use_flash_attention", "efficient": "can_use_efficient_attention",
              "cudnn": "can_use_cudnn_attention"}
    for backend in ("auto", "cudnn", "flash", "efficient", "math"):
        if device.type == "cuda":
            set_attention_backend(backend)
        choice = SDPBackend(torch._fused_sdp_choice(q, k, v, mask, 0.1, False)).name
        print(f"sdpa: attention_backend={backend}: eager picks {choice}", flush=True)
    if device.type == "cuda":
        set_attention_backend("auto")
    for name, fn in checks.items():
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                ok = getattr(torch.backends.cuda, fn)(torch.backends.cuda.SDPAParams(q, k, v, mask, 0.1, False,
                                                                                       False), True)
            except Exception as e:  # noqa: BLE001 - the signature moves between torch versions
                ok = f"check failed ({type(e).__name__}: {e})"
        reasons = "; ".join(str(w.message).splitlines()[0][:160] for w in caught) or "-"
        print(f"sdpa: {name}: usable {ok}; reasons: {reasons}", flush=True)


def loss_function(mode: str, model, device: torch.device):
    """batch -> M4C's loss under the mode's precision, through the mode's forward: eager; "graphs", the trainer's
    compiled forward (CUDA graphs on one GPU); "compilestep", forward, target expansion and loss in one graph;
    "compile", torch.compile of the model alone."""
    dtype = torch.bfloat16 if "bf16" in mode else None

    def loss_through(forward):
        def loss(b):
            with torch.autocast(device.type, dtype=dtype) if dtype else torch.autocast(device.type, enabled=False):
                scores = forward(b)
            return m4c_decoding_bce_with_mask(scores, expand_targets(b, scores.size(-1)), b["train_loss_mask"])
        return loss

    if "graphs" in mode:
        return loss_through(TrainForward(model, {"compile": True, "compile_mode": "reduce-overhead",
                                                 "update_frequency": 1, "find_unused_parameters": False},
                                         device, world=1))
    try:
        if "compilestep" in mode:
            return torch.compile(loss_through(model))
        if "compile" in mode:
            return loss_through(torch.compile(model))
    except Exception as e:  # noqa: BLE001
        print(f"  compile unavailable: {e}")
    return loss_through(model)


def bench_mode(mode: str, ds, device: torch.device, batch: int, steps: int, warmup: int, workers: int,
               profile: bool = False) -> dict:
    """One mode; with `profile`, the last PROFILED (5) timed steps run under torch.profiler and its kernels print."""
    cuda = device.type == "cuda"
    prof = None
    mode, _, loader = mode.partition("@")
    loader = loader or ("device" if cuda else "host")
    torch.manual_seed(0)
    # +fullrows: the last MMT layer over every row, as MMF
    model = build_m4c(len(ds.answer_vocab), trim_last_layer="fullrows" not in mode).to(device).train()
    opt = torch.optim.Adam(model.optimizer_groups(1e-4), lr=1e-4, eps=1e-8, **({"fused": True} if cuda else {}))
    run_loss = loss_function(mode, model, device)
    rng = np.random.default_rng(1)
    keyed = ((i, rng.choice(len(ds), batch, replace=False)) for i in range(warmup + steps))
    pf = make_loader(loader, ds, keyed, device, workers)
    wait = 0.0
    t0 = None
    try:
        for i, (_, cpu_batch, w) in enumerate(pf):
            if i == warmup:
                if cuda:
                    torch.cuda.synchronize()
                t0, wait = time.perf_counter(), 0.0
            wait += w
            b = to_device(cpu_batch, device)
            if profile and i == warmup + steps - min(PROFILED, steps):
                if cuda:
                    torch.cuda.synchronize()
                prof = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU,
                                                          torch.profiler.ProfilerActivity.CUDA])
                prof.__enter__()
                profiled_from = time.perf_counter()
            loss = run_loss(b)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 0.25)
            opt.step()
            opt.zero_grad(set_to_none=True)
        if cuda:
            torch.cuda.synchronize()
    finally:
        pf.close()
    elapsed = time.perf_counter() - t0
    if profile and prof is not None:
        profiled_s = time.perf_counter() - profiled_from
        prof.__exit__(None, None, None)
        key = "self_cuda_time_total" if cuda else "self_cpu_time_total"
        print(prof.key_averages().table(sort_by=key, row_limit=18, max_name_column_width=60), flush=True)
        print_kernel_shares(prof, profiled_s, min(PROFILED, steps))
    mem = torch.cuda.max_memory_allocated(device) / 2**30 if cuda else float("nan")
    return {"samples_per_s": steps * batch / elapsed, "data_wait_share": wait / elapsed, "loss": float(loss.detach()),
            "max_mem_gib": mem, "loader": loader}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batch", type=int, default=None, help="default 128 on CUDA, 8 on CPU")
    p.add_argument("--steps", type=int, default=None, help="timed steps (default 40 CUDA, 3 CPU)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 10 CUDA, 1 CPU)")
    p.add_argument("--modes", default=None, help="comma list of fp32, bf16, bf16+compile, bf16+compilestep, "
                   "bf16+graphs (the trainer's compiled forward, CUDA graphs), +fullrows (the last MMT layer over every "
                   "row, as MMF: without it only the rows read after it), each with an optional "
                   "@host/@copy/@device/@resident loader (default fp32,bf16,bf16+compile on CUDA)")
    p.add_argument("--workers", type=int, default=loader_workers(4),
                   help="loader threads for copy/device (default: the trainer's for num_workers=4)")
    p.add_argument("--data-only", action="store_true", help="time the loaders alone (no model)")
    p.add_argument("--profile", default="", help="comma list of modes whose last steps are profiled")
    p.add_argument("--loaders", default="host,copy,device", help="loaders timed by --data-only")
    p.add_argument("--check", action="store_true", help="first verify the loaders' batches against get_batch")
    p.add_argument("--sdpa-check", action="store_true", help="first print the attention kernel eager torch picks "
                   "for the MMT's shapes and mask, and why fused kernels are refused")
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
          f"{warmup} warm-up, device {name}, torch {torch.__version__}, {os.cpu_count()} cores, loader workers "
          f"{a.workers}\ndata: {source}", flush=True)
    if a.check:
        check_loader(ds, device, batch, a.workers)
    if a.sdpa_check:
        sdpa_report(device, batch)
    if a.data_only:
        base = None
        for loader in a.loaders.split(","):
            r = bench_data(loader, ds, device, batch, steps, warmup, a.workers)
            base = base or r
            print(f"data only {loader:>7}: {r:9.1f} samples/s  x{r / base:5.2f} vs {a.loaders.split(',')[0]}",
                  flush=True)
        return
    base = None
    for mode in modes:
        r = bench_mode(mode, ds, device, batch, steps, warmup, a.workers, profile=mode in a.profile.split(","))
        base = base or r["samples_per_s"]
        print(f"{mode:>20}: {r['samples_per_s']:9.1f} samples/s  x{r['samples_per_s'] / base:5.2f} vs {modes[0]}  "
              f"data wait {100 * r['data_wait_share']:5.1f}%  loader {r['loader']}  max mem {r['max_mem_gib']:.1f} "
              f"GiB  loss {r['loss']:.3f}", flush=True)

if __name__ == "__main__":
    main()
