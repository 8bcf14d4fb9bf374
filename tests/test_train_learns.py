"""The tiny M4C learns: trained through the real trainer CLI on synthetic TextVQA, it answers held-out val questions
far better than the majority answer, and does so on both kinds of question (OCR copy through the pointer network,
object class through the vocab classifier).

Data is small (320 train questions over 160 images, 100 val questions on other images) so the run takes about a
minute on 2 CPU cores; the thresholds come from the data (majority answer) and from each kind's chance level.
"""
import glob
import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from mmftrain.logs import read_metrics
from mmftrain.metrics import textvqa_accuracy

TINY = "projects/m4c/configs/textvqa/tiny.yaml"
UPDATES = 180


def _imdb(data_dir: Path, split: str) -> list[dict]:
    # our own freshly written synthetic imdb, so unpickling it is safe
    arr = np.load(data_dir / f"datasets/textvqa/defaults/annotations/imdb_{split}_ocr_en.npy", allow_pickle=True)
    return list(arr[1:])


@pytest.mark.slow  # ~60 s; the default run checks learning through test_demo
def test_tiny_m4c_beats_majority_baseline_on_val(tmp_path):
    from mmfdata.build import pack_dataset
    from mmfdata.configs import default_dataset_config
    from mmfdata.synth import write_synthetic

    data, save = tmp_path / "data", tmp_path / "save"
    write_synthetic(str(data), questions=320, seed=11, val_questions=100, test_questions=8)
    pack_dataset("textvqa", default_dataset_config("textvqa"), str(data))

    train, val = _imdb(data, "train"), _imdb(data, "val")
    majority = Counter(a for q in train for a in q["answers"]).most_common(1)[0][0]
    baseline = float(np.mean([textvqa_accuracy(majority, q["answers"]) for q in val]))

    cmd = [sys.executable, "-m", "mmftrain.cli", f"config={TINY}", "datasets=textvqa", "model=m4c",
           "run_type=train_val", f"env.data_dir={data}", f"env.save_dir={save}", "env.fetch_missing_data=false",
           f"training.max_updates={UPDATES}", f"training.evaluation_interval={UPDATES}",
           f"training.checkpoint_interval={UPDATES}", "training.log_interval=50", "evaluation.batch_size=100"]
    env = {**os.environ, "OMP_NUM_THREADS": "2", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=420, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]

    # score the EvalAI prediction file ourselves, per question kind, against the imdb's answers
    reports = glob.glob(str(save / "reports" / "textvqa_*_val_*.json"))
    assert len(reports) == 1, reports
    predicted = {r["question_id"]: r["answer"] for r in json.loads(Path(reports[0]).read_text())}
    assert set(predicted) == {q["question_id"] for q in val}
    by_kind: dict[str, list[float]] = {"ocr": [], "object": []}
    chance: dict[str, list[float]] = {"ocr": [], "object": []}
    for q in val:
        kind = "ocr" if "written" in q["question"] else "object"
        by_kind[kind].append(textvqa_accuracy(predicted[q["question_id"]], q["answers"]))
        chance[kind].append(1.0 / len(q["ocr_tokens"]) if kind == "ocr" else 1.0 / 16)
    acc = float(np.mean(by_kind["ocr"] + by_kind["object"]))

    logged = [r for r in read_metrics(save) if "val/textvqa/textvqa_accuracy" in r]
    assert logged and abs(logged[-1]["val/textvqa/textvqa_accuracy"] - acc) < 1e-6, (logged, acc)
    assert baseline < 0.15, f"synthetic data too easy to guess: majority {majority!r} scores {baseline:.3f}"
    assert acc > max(0.5, baseline + 0.4), f"val accuracy {acc:.3f} vs majority baseline {baseline:.3f}"
    for kind in ("ocr", "object"):
        assert len(by_kind[kind]) >= 20, f"too few {kind} questions in val"
        got, guess = float(np.mean(by_kind[kind])), float(np.mean(chance[kind]))
        assert got > guess + 0.3, f"{kind} questions: val accuracy {got:.3f}, chance {guess:.3f}"

    _incremental_decoding_matches_full_recompute(cmd, data, save, predicted, tmp_path, env)


def _incremental_decoding_matches_full_recompute(cmd, data, save, predicted, tmp_path, env):
    """On the trained model: the same argmax at every step and the same scores, in process and through the CLI
    (`model_config.m4c.incremental_decoding=false`, MMF's full recompute, writes the same val answers)."""
    import torch

    from mmftrain.config import build_config
    from mmftrain.data import build_datasets, to_tensors
    from mmftrain.models import build_model, load_mmf_state_dict

    final = save / "m4c_final.pth"
    cfg = build_config(cmd[3:])
    val = build_datasets(cfg, "val")["textvqa"]
    model = build_model(cfg, len(val.answer_vocab)).eval()
    load_mmf_state_dict(model, torch.load(final, weights_only=True))
    eos = list(val.answer_vocab).index("</s>")
    batch = to_tensors(val.get_batch(np.arange(len(val))), False)
    full = model.greedy_decode(batch, 1, None, incremental=False)
    inc = model.greedy_decode(batch, 1, None, incremental=True)
    assert torch.equal(inc.argmax(-1), full.argmax(-1))
    real = full > -5000
    assert torch.allclose(inc[real], full[real], rtol=1e-4, atol=1e-4)
    ids = full.argmax(-1)
    assert (ids == eos).any(1).float().mean() > 0.9  # a trained model: answers end, early exit can happen
    early = model.greedy_decode(batch, 1, eos, incremental=True)
    for b in range(len(ids)):
        stop = int((ids[b] == eos).nonzero()[0]) + 1 if (ids[b] == eos).any() else 12
        assert torch.equal(early[b, :stop].argmax(-1), ids[b, :stop])

    base = [a for a in cmd if not a.startswith(("run_type=", "env.save_dir="))]
    proc = subprocess.run(base + ["run_type=val", f"env.save_dir={tmp_path / 'full'}",
                                  f"checkpoint.resume_file={final}",
                                  "model_config.m4c.incremental_decoding=false"],
                          capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    reports = glob.glob(str(tmp_path / "full" / "reports" / "textvqa_*_val_*.json"))
    assert len(reports) == 1, reports
    recomputed = {r["question_id"]: r["answer"] for r in json.loads(Path(reports[0]).read_text())}
    assert recomputed == predicted
