"""`mmf demo`: the whole product on small embedded data, through the same code paths a real TextVQA run uses.

synthesize a TextVQA in MMF's format as zoo archives + manifest -> serve them from a loopback mirror -> the real
`mmf zoo fetch` into a fresh data dir -> `mmf data pack` -> `mmf train` (a small M4C, CPU) with val evaluation and
EvalAI prediction files -> a training-curve PNG -> a summary with the next commands to try.
"""
from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections import Counter
from pathlib import Path

TINY = "projects/m4c/configs/textvqa/tiny.yaml"


def _step(n: int, total: int, text: str) -> float:
    print(f"\n[{n}/{total}] {text}", flush=True)
    return time.monotonic()


def majority_baseline(data_dir: Path) -> tuple[float, str]:
    """Val accuracy of always answering the most common train answer: the 'chance' the model must beat."""
    from mmfdata import build_dataset, default_dataset_config
    from mmftrain.metrics import textvqa_accuracy

    cfg = default_dataset_config("textvqa")
    train = build_dataset("textvqa", cfg, "train", str(data_dir))
    val = build_dataset("textvqa", cfg, "val", str(data_dir))
    import numpy as np

    answers = train.get_batch(np.arange(len(train)))["gt_answers"]
    top = Counter(a for ans in answers for a in ans).most_common(1)[0][0]
    gts = val.get_batch(np.arange(len(val)))["gt_answers"]
    return sum(textvqa_accuracy(top, list(g)) for g in gts) / max(1, len(gts)), top


def run_demo(out: Path, questions: int = 1200, updates: int = 300, extra: list[str] | None = None) -> int:
    from mmftrain.cli import run_from_argv

    from mmfzoo_cli.demo_out import DemoOutError, claim, disk_estimate
    from zoo.fsutil import human

    out = Path(out).absolute()
    source, data_dir, save_dir = out / "source", out / "data", out / "save"
    try:
        removed = claim(out, questions)
    except (DemoOutError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"mmf demo writes about {human(disk_estimate(questions))} under {out} (synthetic archives, the installed "
          f"data, its packed store, checkpoints)" + (f"; replaced the previous demo's {', '.join(removed)}"
                                                     if removed else ""), flush=True)
    total, t_start = 6, time.monotonic()
    manifest, fetched = _fetch_and_pack(source, data_dir, questions, total)

    chance, top = majority_baseline(data_dir)
    args = [f"config={TINY}", "datasets=textvqa", "model=m4c", "run_type=train_val_test",
            f"env.data_dir={data_dir}", f"env.save_dir={save_dir}", f"env.dataset_zoo={manifest}",
            f"training.max_updates={updates}",
            *(extra or [])]
    t = _step(4, total, "mmf train " + " ".join(args))
    code = run_from_argv(args)
    if code != 0:
        print(f"error: training exited with code {code}; see {save_dir}/train.log", file=sys.stderr)
        return code
    train_s = time.monotonic() - t

    _step(5, total, f"mmf plot {save_dir}")
    curve = _plot(save_dir)

    _step(6, total, "summary")
    summary = json.loads((save_dir / "summary.json").read_text())
    acc = next((v for k, v in summary["metrics"].items() if k.endswith("textvqa_accuracy") and k.startswith("val")),
               None)
    _print_summary(summary, acc, (chance, top), fetched, data_dir, save_dir, train_s, curve)
    print(f"  total {time.monotonic() - t_start:.0f}s\n")
    _print_next(args, out, save_dir, updates)
    (out / "demo.json").write_text(json.dumps({"val_accuracy": acc, "majority_baseline": chance,
                                               "fetched_bytes": fetched, "save_dir": str(save_dir),
                                               "data_dir": str(data_dir), "reports": summary["reports"],
                                               "curve": str(curve) if curve else None}, indent=1))
    return 0 if acc is not None and acc > chance else 1


def _fetch_and_pack(source: Path, data_dir: Path, questions: int, total: int) -> tuple[Path, int]:
    """Steps 1-3: synthetic zoo archives, `mmf zoo fetch` from a loopback mirror, `mmf data pack`.
    Returns (the manifest, bytes fetched)."""
    from mmfdata import default_dataset_config, pack_dataset
    from mmfdata.synth import write_synthetic
    from zoo.fsutil import human
    from zoo.install import FetchOptions, fetch
    from zoo.logfmt import say_to, to_console
    from zoo.manifest import load_zoo
    from zoo.progress import Progress
    from zoo.serve import FolderMirror

    t = _step(1, total, f"synthesizing a TextVQA-format dataset ({questions} train questions) as zoo archives")
    synth = write_synthetic(str(source), questions=questions, seed=0, archive=True,
                            val_questions=max(100, questions // 6), test_questions=max(50, questions // 12))
    manifest = Path(synth["manifest"])
    print(f"  archives under {synth['archive_root']}, manifest {manifest} ({time.monotonic() - t:.1f}s)")

    to_console("zoo", "mmfdata")  # their lines in the one format, above the fetch's bars
    with FolderMirror(synth["archive_root"]) as mirror:
        t = _step(2, total, f"mmf zoo fetch textvqa textvqa.ocr_en --zoo {manifest.name} --mirror {mirror.url} "
                            f"--mirror-only --data-dir {data_dir}")
        bars = Progress(enabled=True)
        try:
            reports = fetch(load_zoo([manifest], defaults=False), ["textvqa", "textvqa.ocr_en"],
                            FetchOptions(data_dir=data_dir, mirrors=[mirror.url], mirror_only=True,
                                         progress=bars, say=say_to(logging.getLogger("zoo"))))
        finally:
            bars.close()
    fetched = sum(r.fetched for r in reports)
    print(f"  {len(reports)} archives, {human(fetched)} fetched, sha256-verified and extracted "
          f"({time.monotonic() - t:.1f}s)")

    t = _step(3, total, f"mmf data pack textvqa --data-dir {data_dir}")
    pack_dataset("textvqa", default_dataset_config("textvqa"), str(data_dir))
    print(f"  packed fp16 feature store written ({time.monotonic() - t:.1f}s)")
    return manifest, fetched


def _plot(save_dir: Path) -> Path | None:
    try:
        from mmftrain.plot import plot_run

        curve = plot_run(save_dir)
        print(f"  {curve}")
        return curve
    except Exception as exc:  # matplotlib is an optional extra; the demo's result does not depend on it
        print(f"  skipped ({exc}); `pip install -e .[plot]` adds matplotlib")
        return None


def _print_summary(summary: dict, acc: float | None, baseline: tuple[float, str], fetched: int, data_dir: Path,
                   save_dir: Path, train_s: float, curve: Path | None) -> None:
    from zoo.fsutil import human

    chance, top = baseline
    print(f"  data: {human(fetched)} fetched through the transfer engine, verified and installed in MMF's layout "
          f"under {data_dir}/datasets/textvqa")
    print(f"  model: {summary['train']['num_updates']} updates in {train_s:.0f}s on {summary.get('world_size', 1)} "
          f"process(es)")
    if acc is not None:
        print(f"  val TextVQA accuracy: {acc * 100:.1f}%  vs {chance * 100:.1f}% for always answering "
              f"'{top}' (the majority answer)  ->  {'LEARNED' if acc > chance + 0.2 else 'did not clearly learn'}")
    for k, v in summary["reports"].items():
        print(f"  predictions ({k}, EvalAI format): {v}")
    print(f"  checkpoints, metrics.jsonl, train.log, config.yaml: {save_dir}")
    if curve:
        print(f"  training curve: {curve}")


def _print_next(args: list[str], out: Path, save_dir: Path, updates: int) -> None:
    print("next:")
    print(f"  mmf train {' '.join(args[:-1])} training.max_updates={updates + 200} checkpoint.resume=true"
          "   # resume and train longer")
    other = [a if not a.startswith("env.save_dir=") else f"env.save_dir={out / 'save-mmt4'}" for a in args]
    print(f"  mmf train {' '.join(other)} model_config.m4c.mmt.num_hidden_layers=4   # another override, new save dir")
    print(f"  mmf plot {save_dir}   # the training curve again")
    print("  mmf zoo list --probe   # the real data's sizes, asked of the mirrors")
    print("  mmf zoo fetch textvqa textvqa.ocr_en   # the real TextVQA features (tens of GB; resumable)")


def demo_command(out: str, questions: int, updates: int) -> int:
    from zoo.extras import MissingExtra, require

    try:
        require("mmf demo")
    except MissingExtra as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, min(4, os.cpu_count() or 1))))
    return run_demo(Path(out), questions=questions, updates=updates)
