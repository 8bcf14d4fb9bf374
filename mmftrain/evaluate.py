"""Evaluation and prediction: greedy decoding over a whole split, answers assembled as MMF does, metrics once over
the exact question set gathered from all ranks, and EvalAI prediction files."""
from __future__ import annotations

import contextlib
import csv
import io
import json
import time
from pathlib import Path

import numpy as np
import torch

from mmfdata.batch import expand_targets
from mmftrain import distributed
from mmftrain.checkpoint import atomic_write_bytes
from mmftrain.data import Prefetcher, eval_shard, loader_workers, to_device
from mmftrain.logs import log
from mmftrain.loss import m4c_decoding_bce_with_mask
from mmftrain.metrics import compute_metrics, word_tokenize


def assemble_answer(ids, ocr_tokens: list[str], vocab: list[str], eos_idx: int) -> tuple[str, list[str]]:
    """MMF's answer assembly: ids >= |vocab| copy OCR token id-|vocab|; stop at the EOS word; join with spaces."""
    words, sources = [], []
    v = len(vocab)
    for i in ids:
        i = int(i)
        if i >= v:
            j = i - v
            words.append(word_tokenize(ocr_tokens[j]) if j < len(ocr_tokens) else "")
            sources.append("OCR")
        else:
            if i == eos_idx:
                break
            words.append(vocab[i])
            sources.append("VOCAB")
    return " ".join(words).replace(" 's", "'s"), sources


def padded_chunks(idx, batch_size: int, pad: bool = True) -> tuple[list, dict[int, int]]:
    """Batches of `idx` as (start, indices), the last one padded (with `pad`) to `batch_size` by repeating its
    last index, and {start: number of real rows}. Every batch then has one shape: on a GPU a short last batch
    would otherwise build new kernel plans (and CUDA graphs) for each decoding step of every val pass."""
    chunks, real = [], {}
    for i in range(0, len(idx), batch_size):
        part = np.asarray(idx[i:i + batch_size])
        real[i] = len(part)
        if pad and len(part) < batch_size:
            part = np.concatenate([part, np.full(batch_size - len(part), part[-1], dtype=part.dtype)])
        chunks.append((i, part))
    return chunks, real


def evaluate_all(model, datasets: dict, *, split: str, cfg: dict, dist: distributed.DistInfo, device,
                 amp: contextlib.AbstractContextManager | None = None) -> tuple[dict, dict[str, list[dict]]]:
    """Evaluate every dataset of `split` with the run's evaluation settings (the periodic val passes and the
    final val/test passes share this). Returns (metrics of all datasets, {dataset name: records}).

    evaluation.use_cpu=true runs the passes on the CPU (the model is moved there and back), for a model that
    trains on a GPU too full to also decode a split.
    """
    evaluation = cfg["evaluation"]
    per_rank = max(1, int(evaluation["batch_size"] or cfg["training"]["batch_size"]) // dist.world)
    on_cpu = bool(evaluation["use_cpu"]) and torch.device(device).type != "cpu"
    if on_cpu:
        log.info("%s pass on the cpu (evaluation.use_cpu=true)", split)
        model.to("cpu")
    metrics: dict = {}
    records: dict[str, list[dict]] = {}
    try:
        for name, dataset in datasets.items():
            out, records[name] = evaluate(
                model, dataset, dataset_name=name, split=split, batch_size=per_rank,
                device=torch.device("cpu") if on_cpu else device, dist=dist, amp=None if on_cpu else amp,
                metrics=list(evaluation["metrics"]), pin=torch.device(device).type == "cuda" and not on_cpu,
                early_exit=bool(evaluation["early_exit_decoding"]))
            metrics.update(out)
    finally:
        if on_cpu:
            model.to(device)
    return metrics, records


def evaluate(model, dataset, *, dataset_name: str, split: str, batch_size: int, device, dist: distributed.DistInfo,
             amp: contextlib.AbstractContextManager | None = None, metrics: list[str] | None = None,
             pin: bool = False, early_exit: bool = True, pad: bool | None = None) -> tuple[dict, list[dict]]:
    """Run greedy decoding on this rank's share of `dataset`, gather all ranks' records, score once.

    Returns:
        (metrics, records) on every rank: metrics keyed `<split>/<dataset>/<metric>` plus `<split>/total_loss`
        when the split has answers; records are {question_id, image_id, answer, pred_source, gt_answers} for
        every question of the split exactly once, in dataset order. `early_exit` stops decoding once every
        answer has ended (same answers as MMF's 12 passes; the val loss then uses the scores at exit). `pad`
        the short last batch to `batch_size` (default: on CUDA with several batches, where one shape saves
        kernel plans and graphs; elsewhere the padding rows would be decoded for nothing).
    """
    vocab = list(dataset.answer_vocab)
    eos, bos = vocab.index("</s>"), vocab.index("<s>")
    idx = eval_shard(len(dataset), dist.rank, dist.world)
    if pad is None:
        pad = torch.device(device).type == "cuda" and len(idx) > batch_size
    chunks, real = padded_chunks(idx, batch_size, pad)
    was_training = model.training
    model.eval()
    records, loss_sum, loss_n = [], 0.0, 0
    t0 = time.perf_counter()
    # as the train loader: several gather threads and a side-stream copy, so that 5,000 questions' features
    # (~6 GB) reach the GPU while it decodes
    loader = Prefetcher(dataset, chunks, pin=pin, depth=2, workers=loader_workers(4),
                        device=device if pin else None)
    try:
        with torch.no_grad():
            for start, cpu_batch, _ in loader:
                batch = to_device(cpu_batch, device)
                with amp or contextlib.nullcontext():
                    scores = model.greedy_decode(batch, bos, eos if early_exit else None)
                n = real[start]  # the padding rows of a short last batch are decoded, then dropped
                scores = scores[:n]
                ids = scores.argmax(-1).cpu()
                has_answers = any(len(g) for g in cpu_batch["gt_answers"][:n])
                if has_answers:
                    targets = expand_targets(batch, scores.size(-1))[:n]
                    loss_sum += float(m4c_decoding_bce_with_mask(scores, targets, batch["train_loss_mask"][:n]))
                    loss_n += 1
                qids = cpu_batch["question_id"].tolist()  # one copy, not one device sync per question
                for b in range(ids.size(0)):
                    answer, sources = assemble_answer(ids[b].tolist(), list(cpu_batch["ocr_tokens"][b]), vocab, eos)
                    records.append({"question_id": int(qids[b]),
                                    "image_id": str(cpu_batch["image_id"][b]), "answer": answer,
                                    "pred_source": sources, "gt_answers": list(cpu_batch["gt_answers"][b])})
    finally:
        loader.close()
        model.train(was_training)
    gathered = distributed.gather_objects((records, loss_sum, loss_n))
    all_records = [r for part in gathered for r in part[0]]
    scored, n_scored = compute_metrics(all_records, metrics or [])
    out = {f"{split}/{dataset_name}/{k}": v for k, v in scored.items()}
    total_n = sum(p[2] for p in gathered)
    if total_n:
        out[f"{split}/{dataset_name}/m4c_decoding_bce_with_mask"] = sum(p[1] for p in gathered) / total_n
        out[f"{split}/total_loss"] = out[f"{split}/{dataset_name}/m4c_decoding_bce_with_mask"]
    out[f"{split}/{dataset_name}/num_questions"] = len({r["question_id"] for r in all_records})
    out[f"{split}/{dataset_name}/scored_questions"] = n_scored
    out[f"{split}_time"] = time.perf_counter() - t0
    return out, all_records


def write_predictions(records: list[dict], report_dir: Path, dataset: str, experiment: str, split: str,
                      fmt: str = "json") -> Path:
    """EvalAI file `<dataset>_<experiment>_<split>_<YYYY-MM-DDTHH:MM:SS>.json`: a list of {question_id,
    image_id, answer, pred_source} for every question of the split (answers un-normalised, as MMF)."""
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
    path = Path(report_dir) / f"{dataset}_{experiment}_{split}_{stamp}.{fmt}"
    rows = [{"question_id": r["question_id"], "image_id": r["image_id"], "answer": r["answer"],
             "pred_source": r["pred_source"]} for r in records]
    if fmt == "csv":
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=["question_id", "image_id", "answer", "pred_source"])
        writer.writeheader()
        for row in rows:
            writer.writerow({**row, "pred_source": " ".join(row["pred_source"])})
        data = buf.getvalue().encode()
    else:
        data = json.dumps(rows).encode()
    atomic_write_bytes(path, lambda f: f.write(data))
    return path
