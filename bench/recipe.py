"""Projected wall-clock of MMF's whole M4C TextVQA recipe on this machine, ours vs MMF's setting, same run.

    python bench/recipe.py                  # CUDA: full-size M4C, batch 128, synthetic full-shape data
    python bench/recipe.py --tiny           # CPU smoke (automatic without CUDA): tiny M4C, a few steps

The recipe (projects/m4c/configs/textvqa/defaults.yaml): 24,000 updates at batch 128, a full val evaluation
(5,000 questions) and a checkpoint every 1,000 updates (24 each), then test predictions (5,734 questions).
Measured parts, each with the real code on synthetic full-shape data (`mmf data synth` + `mmf data pack`, or
`--data-dir` with an existing packed synthetic dataset):

- steps: `mmftrain.run.run` (what `mmf train` runs) for warm-up + timed log windows; samples/s of the timed
  windows from metrics.jsonl (the trainer's own loader, packed store, optimizer, clipping, scheduler);
- evaluation: `mmftrain.evaluate.evaluate` (the trainer's val pass: loader, greedy decoding with early exit,
  val loss, answers, metrics) over 5,000 questions drawn from the val split, twice: the second pass is what
  counts (the recipe runs 24); the first pass and the loader alone over the same batches are printed too;
- checkpoint: `Trainer.save` of the full training state; the time until it returns is what the training loop
  waits for, the time until the file is in place is what a synchronous writer costs.

Settings: ours = bf16 autocast + torch.compile (compile_mode auto: CUDA graphs on one GPU) + incremental
decoding + the last MMT layer over the rows read only + the trainer's checkpoint writer (on a CPU fp32 eager:
no fast bf16 matmuls there, and compiling would dominate a smoke run);
MMF's = fp32 (strict, no TF32) eager, full-recompute decoding (12 MMT passes per batch), every row of the last
MMT layer, synchronous checkpoints. MMF's evaluation is timed on `--mmf-eval-questions` and scaled to 5,000 (it is linear in the
number of batches). The ratio printed is MMF's projected recipe / ours.

Coupling: besides `mmftrain.run.run` and `mmftrain.evaluate.evaluate`, this script builds a
`mmftrain.trainer.Trainer` (constructor + `save`) to time one checkpoint.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

RECIPE = {"updates": 24000, "batch": 128, "evals": 24, "val_questions": 5000, "checkpoints": 24,
          "test_questions": 5734}
FULL = "projects/m4c/configs/textvqa/defaults.yaml"
TINY = "projects/m4c/configs/textvqa/tiny.yaml"
OURS = ["training.bf16=true", "training.compile=true", "model_config.m4c.incremental_decoding=true",
        "model_config.m4c.trim_last_layer=true"]
MMF = ["training.bf16=false", "training.fp16=false", "training.tf32=false", "training.compile=false",
       "model_config.m4c.incremental_decoding=false", "model_config.m4c.trim_last_layer=false"]


class Repeated:
    """`n` questions cycling over `ds` (same shapes and reads as n distinct questions of the split)."""

    def __init__(self, ds, n: int):
        self.ds, self.n = ds, n
        self.answer_vocab, self.name, self.split = ds.answer_vocab, ds.name, ds.split

    def __len__(self) -> int:
        return self.n

    def get_batch(self, indices) -> dict:
        return self.ds.get_batch(np.asarray(indices, dtype=np.int64) % len(self.ds))


def make_data(data_dir: Path, tiny: bool) -> None:
    """Synthetic TextVQA in MMF's layout plus its packed store (what `mmf data synth` / `mmf data pack` do)."""
    from mmfdata.build import pack_dataset
    from mmfdata.configs import default_dataset_config
    from mmfdata.synth import write_synthetic

    t0 = time.perf_counter()
    if tiny:
        write_synthetic(str(data_dir), questions=160, images=40, val_questions=16, test_questions=8, seed=5)
    else:
        write_synthetic(str(data_dir), questions=3000, images=700, val_questions=640, test_questions=64, seed=5)
    pack_dataset("textvqa", default_dataset_config("textvqa"), str(data_dir))
    print(f"data: synthetic TextVQA + packed store in {data_dir} ({time.perf_counter() - t0:.1f} s)", flush=True)


def base_args(a, data_dir: Path, save_dir: Path) -> list[str]:
    args = [f"config={TINY if a.tiny else FULL}", "datasets=textvqa", "model=m4c", f"env.data_dir={data_dir}",
            f"env.save_dir={save_dir}", "env.fetch_missing_data=false", f"training.batch_size={a.batch}",
            f"evaluation.batch_size={a.batch}", "training.progress_bar=false", "training.seed=1",
            f"training.device={a.device}", "checkpoint.max_to_keep=1"]
    if a.tiny:
        args.append("training.num_workers=1")
    return args


def measure_steps(a, data_dir: Path, work: Path, name: str, setting: list[str]) -> dict:
    """Steady-state samples/s of `mmf train` in `setting`: the first log window is warm-up (compile, caches)."""
    from mmftrain.config import build_config
    from mmftrain.logs import read_metrics
    from mmftrain.run import run

    save = work / f"train-{name}"
    total = a.window * (1 + a.windows)
    cfg = build_config(base_args(a, data_dir, save) + setting + [
        "run_type=train", f"training.max_updates={total}", f"training.log_interval={a.window}",
        f"training.evaluation_interval={total}", f"training.checkpoint_interval={total}"])
    t0 = time.perf_counter()
    run(cfg)
    wall = time.perf_counter() - t0
    recs = [r for r in read_metrics(save) if "samples_per_s" in r and r["num_updates"] > a.window]
    if not recs:
        raise SystemExit(f"{name}: no timed log window in {save}/metrics.jsonl")
    # windows are equally long in updates: the mean rate over them is total samples / total time
    sps = len(recs) / sum(1.0 / r["samples_per_s"] for r in recs)
    wait = float(np.mean([r["data_wait_share"] for r in recs]))
    losses = [r["train/total_loss"] for r in read_metrics(save) if "train/total_loss" in r]
    return {"samples_per_s": sps, "data_wait": wait, "wall": wall, "losses": losses}


def trainer_for(a, data_dir: Path, work: Path, name: str, setting: list[str]):
    from mmftrain import distributed as D
    from mmftrain.config import build_config
    from mmftrain.data import build_datasets
    from mmftrain.trainer import Trainer

    cfg = build_config(base_args(a, data_dir, work / f"eval-{name}") + setting + ["run_type=val"])
    val = build_datasets(cfg, "val", 1)["textvqa"]
    dist = D.setup(cfg["training"]["device"], cfg["distributed"]["backend"])
    return Trainer(cfg, dist, len(val.answer_vocab), 1), val, dist


def measure_eval(trainer, val, dist, questions: int) -> dict:
    """Seconds of val passes over `questions` questions after a short warm-up pass: the first and second full
    pass (the recipe runs 24, so the second is the steady state), and the loader alone over the same batches."""
    from mmftrain.data import Prefetcher, loader_workers
    from mmftrain.evaluate import evaluate, padded_chunks

    kw = dict(dataset_name="textvqa", split="val", batch_size=int(trainer.cfg["evaluation"]["batch_size"]),
              device=trainer.device, dist=dist, metrics=["textvqa_accuracy"], pin=trainer.cuda, early_exit=True)

    def timed(fn) -> float:
        if trainer.cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if trainer.cuda:
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    evaluate(trainer.model, Repeated(val, min(questions, kw["batch_size"])), amp=trainer.amp(), **kw)
    passes = [timed(lambda: evaluate(trainer.model, Repeated(val, questions), amp=trainer.amp(), **kw))
              for _ in range(2)]
    chunks, _ = padded_chunks(np.arange(questions), kw["batch_size"])

    def load_only() -> None:  # what evaluate's loader does (same workers, pinning, side-stream copies)
        loader = Prefetcher(Repeated(val, questions), chunks, pin=trainer.cuda, depth=2, workers=loader_workers(4),
                            device=trainer.device if trainer.cuda else None)
        try:
            for _ in loader:
                pass
        finally:
            loader.close()
    return {"first": passes[0], "steady": passes[1], "loader": timed(load_only)}


def measure_checkpoint(trainer, timeout: float = 300.0) -> tuple[float, float]:
    """(seconds until `save` returns, seconds until the checkpoint file is in place)."""
    name = f"bench-{time.monotonic_ns()}.ckpt"
    path = trainer.save_dir / name
    t0 = time.perf_counter()
    trainer.save(name)
    blocked = time.perf_counter() - t0
    while not path.is_file():  # a background writer publishes the file atomically when done
        if time.perf_counter() - t0 > timeout:
            raise SystemExit(f"checkpoint {path} did not appear within {timeout:.0f} s")
        time.sleep(0.005)
    return blocked, time.perf_counter() - t0


def measure_setting(a, data_dir: Path, work: Path, key: str, setting: list[str], questions: int) -> dict:
    """Steps, val pass and checkpoint of one setting, printed; returns its projected recipe parts."""
    from mmftrain import distributed as D

    steps = measure_steps(a, data_dir, work, key, setting)
    trainer, val, dist = trainer_for(a, data_dir, work, key, setting)
    try:
        ev = {k: v * RECIPE["val_questions"] / questions for k, v in
              measure_eval(trainer, val, dist, questions).items()}
        blocked, written = measure_checkpoint(trainer)
    finally:
        D.cleanup()
    print(f"{key:>4}: steps {steps['samples_per_s']:8.1f} samples/s (data wait {100 * steps['data_wait']:.1f}%"
          f", losses {', '.join(f'{x:.3f}' for x in steps['losses'])}); val pass of 5,000 questions "
          f"{ev['steady']:.2f} s (timed on {questions}; first pass {ev['first']:.2f} s, its loader alone "
          f"{ev['loader']:.2f} s); checkpoint: save() returned after {blocked:.3f} s, "
          f"file in place after {written:.3f} s", flush=True)
    # ours writes in the background (the loop waits for save() only); MMF's writes synchronously
    return project(steps, ev["steady"], blocked if key == "ours" else written)


def project(steps: dict, eval_s: float, ckpt_s: float) -> dict:
    """Seconds of each part of the recipe from the measured rates."""
    r = RECIPE
    per_q = eval_s / r["val_questions"]
    return {"steps": r["updates"] * r["batch"] / steps["samples_per_s"], "evals": r["evals"] * eval_s,
            "checkpoints": r["checkpoints"] * ckpt_s, "test": r["test_questions"] * per_q}


def fmt(s: float) -> str:
    return f"{s / 60:7.2f} min" if s >= 60 else f"{s:7.2f} s  "


def main() -> None:
    cuda_ok = torch.cuda.is_available()
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tiny", action="store_true", help="tiny M4C and data (the default without CUDA)")
    p.add_argument("--device", default="cuda" if cuda_ok else "cpu")
    p.add_argument("--data-dir", default=None, help="existing synthetic data_dir with packed stores")
    p.add_argument("--batch", type=int, default=None, help="default 128 (tiny: 16)")
    p.add_argument("--window", type=int, default=None, help="updates per log window (default 20; tiny 2)")
    p.add_argument("--windows", type=int, default=None, help="timed windows after the warm-up one (default 3; "
                   "tiny 1)")
    p.add_argument("--eval-questions", type=int, default=None, help="questions in our timed val pass "
                   "(default 5000; tiny 32)")
    p.add_argument("--mmf-eval-questions", type=int, default=None, help="questions in MMF's timed val pass "
                   "(default 1280; tiny 16), scaled to 5,000")
    p.add_argument("--skip-mmf", action="store_true", help="measure ours only")
    p.add_argument("--ours", default="", help="extra overrides for our setting, comma separated")
    p.add_argument("--keep", action="store_true", help="keep the work folder")
    a = p.parse_args()
    a.tiny = a.tiny or a.device == "cpu"
    a.batch = a.batch or (16 if a.tiny else 128)
    a.window = a.window or (2 if a.tiny else 20)
    a.windows = a.windows or (1 if a.tiny else 3)
    eval_q = a.eval_questions or (32 if a.tiny else RECIPE["val_questions"])
    mmf_q = a.mmf_eval_questions or (16 if a.tiny else 1280)
    ours = OURS + [o for o in a.ours.split(",") if o]
    if a.device == "cpu":  # no fast bf16 matmuls here, and inductor's C++ build would dominate a smoke run
        ours = [o for o in ours if o not in ("training.compile=true", "training.bf16=true")]
    work = Path(tempfile.mkdtemp(prefix="mmf-recipe-"))
    name = torch.cuda.get_device_name() if a.device == "cuda" else f"CPU ({os.cpu_count()} cores)"
    print(f"recipe bench: {'tiny' if a.tiny else 'full-size'} M4C, batch {a.batch}, device {name}, torch "
          f"{torch.__version__}\nours: {' '.join(ours)}\nMMF's: {' '.join(MMF)}", flush=True)
    try:
        data_dir = Path(a.data_dir) if a.data_dir else work / "data"
        if not a.data_dir:
            make_data(data_dir, a.tiny)
        settings = [("ours", ours, eval_q)] + ([] if a.skip_mmf else [("MMF", MMF, mmf_q)])
        parts = {}
        for key, setting, questions in settings:
            parts[key] = measure_setting(a, data_dir, work, key, setting, questions)
        print("\nprojected recipe (24,000 updates x 128, 24 val passes of 5,000, 24 checkpoints, 5,734 test "
              "predictions; start-up and compilation not included):")
        print(f"{'part':>12} " + " ".join(f"{k:>12}" for k in parts))
        for part in ("steps", "evals", "checkpoints", "test"):
            print(f"{part:>12} " + " ".join(f"{fmt(v[part]):>12}" for v in parts.values()))
        totals = {k: sum(v.values()) for k, v in parts.items()}
        print(f"{'total':>12} " + " ".join(f"{fmt(t):>12}" for t in totals.values()))
        if "MMF" in totals:
            print(f"\nours vs MMF's setting: x{totals['MMF'] / totals['ours']:.2f} faster (projected recipe, "
                  f"measured in this run)")
        if a.device == "cpu":
            print("(CPU: both settings train in fp32 eager, so their step rates differ by noise only; this smoke "
                  "run checks the plumbing, the numbers that count come from a GPU)")
    finally:
        if a.keep:
            print(f"work folder kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
