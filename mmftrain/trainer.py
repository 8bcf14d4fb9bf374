"""The training loop, readable top to bottom (nanoGPT/torchtune style): no callbacks, no mixins.

One update = `training.update_frequency` micro-batches of `training.batch_size` (global) questions: forward under
the chosen precision, masked BCE, backward, then unscale -> clip -> step -> LR step. Every `log_interval` a line
and a `metrics.jsonl` record; every `evaluation_interval` a full val pass (best checkpoint by
`training.early_stop.criteria`); every `checkpoint_interval` an atomic `current.ckpt` (+ periodic copy).
"""
from __future__ import annotations

import contextlib
import math
import random
import resource
import signal
import sys
import time
from pathlib import Path

import numpy as np
import torch

from mmfdata.batch import expand_targets
from mmftrain import checkpoint as C
from mmftrain import distributed as D
from mmftrain.data import Prefetcher, TrainSampler, loader_workers, to_device
from mmftrain.errors import CheckpointError, ConfigError, TrainError
from mmftrain.evaluate import evaluate
from mmftrain.logs import MetricsWriter, format_line, log
from mmftrain.loss import m4c_decoding_bce_with_mask
from mmftrain.models import build_model, load_mmf_state_dict
from mmftrain.optim import build_optimizer, build_scheduler


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class Trainer:
    """Owns model, optimizer, scheduler, scaler, counters and the sampler position of one run."""

    def __init__(self, cfg: dict, dist: D.DistInfo, answer_vocab_size: int, seed: int):
        self.cfg, self.dist, self.seed = cfg, dist, seed
        t = cfg["training"]
        self.t = t
        self.device = dist.device
        self.save_dir = Path(str(cfg["env"]["save_dir"])).expanduser()
        self.cuda = self.device.type == "cuda"
        if self.cuda:
            torch.backends.cuda.matmul.allow_tf32 = bool(t["tf32"])
            torch.backends.cudnn.allow_tf32 = bool(t["tf32"])
            torch.backends.cudnn.benchmark = bool(t["cudnn_benchmark"])
        if t["fp16"] and not self.cuda:
            raise ConfigError("training.fp16=true needs a CUDA device; use training.bf16=true on CPU")
        seed_everything(seed)  # same initial weights on every rank
        self.model = build_model(cfg, answer_vocab_size).to(self.device)
        seed_everything(seed + dist.rank)
        self.optimizer = build_optimizer(self.model, cfg, fused=self.cuda)
        self.scheduler = build_scheduler(self.optimizer, cfg)
        self.scaler = torch.amp.GradScaler("cuda", enabled=bool(t["fp16"]))
        self.num_updates = self.iteration = self.epoch = self.batch_in_epoch = 0
        self.best_update, self.best_metric = 0, None
        self.train_model = self.model
        self.stop_signal = None
        self._compile_checked = False

    # ---- precision
    def amp(self):
        """Autocast for fp16/bf16 (fp32 otherwise)."""
        if self.t["fp16"]:
            return torch.autocast(self.device.type, dtype=torch.float16)
        if self.t["bf16"]:
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def wrap(self) -> None:
        """DDP across ranks, then torch.compile when asked (eager fallback on failure)."""
        if self.dist.world > 1:
            ids = [self.device.index] if self.cuda else None
            self.train_model = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=ids, find_unused_parameters=bool(self.t["find_unused_parameters"]))
        if self.t["compile"]:
            try:
                # "reduce-overhead" = CUDA graphs (the batch shapes are static: the sampler drops ragged batches)
                self.train_model = torch.compile(self.train_model, mode=self.t["compile_mode"])
            except Exception as e:  # noqa: BLE001 - any backend failure means: run eager
                log.warning("torch.compile unavailable (%s); training eager", e)

    def _forward(self, batch: dict) -> torch.Tensor:
        if self.t["compile_mode"] == "reduce-overhead" and self.train_model is not self.model:
            torch.compiler.cudagraph_mark_step_begin()  # the previous step's graph outputs are no longer read
        if self._compile_checked or self.train_model is self.model:
            return self.train_model(batch)
        try:  # the first compiled call is where torch.compile fails (no compiler, unsupported op, ...)
            out = self.train_model(batch)
        except Exception as e:  # noqa: BLE001 - any compile failure means: run eager
            log.warning("torch.compile failed on the first step (%s: %s); falling back to eager",
                        type(e).__name__, (str(e).splitlines() or [""])[0][:200])
            self.train_model = getattr(self.train_model, "_orig_mod", self.model)
            out = self.train_model(batch)
        self._compile_checked = True
        return out

    # ---- checkpoints
    def state(self) -> dict:
        rngs = D.gather_objects(C.rng_state())
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "lr_scheduler": self.scheduler.state_dict(), "fp16_scaler": self.scaler.state_dict(),
                "num_updates": self.num_updates, "current_iteration": self.iteration,
                "current_epoch": self.epoch, "best_update": self.best_update, "best_iteration": self.best_update,
                "best_metric_value": self.best_metric, "config": self.cfg, "seed": self.seed,
                "sampler": {"epoch": self.epoch, "index": self.batch_in_epoch, "seed": self.seed},
                "world_size": self.dist.world, "rng": rngs}

    def save(self, *names: str) -> None:
        """Write the full state to each of `names` (relative to save_dir) atomically; collective across ranks."""
        state = self.state()
        if self.dist.is_main:
            for name in names:
                C.save(self.save_dir / name, state)
            if any(n.startswith("models/") for n in names):
                C.prune(self.save_dir / "models", int(self.cfg["checkpoint"]["max_to_keep"]))
        D.barrier()

    def load(self, path: Path, trusted: bool = False, model_only: bool = False, obj: dict | None = None) -> None:
        """Restore from a checkpoint (or its already loaded `obj`), honouring checkpoint.reset.*; own checkpoints
        also restore RNG states and the sampler position."""
        if obj is None:
            obj = C.load(path, trusted=trusted or bool(self.t["trust_pickle"]))
        load_mmf_state_dict(self.model, C.model_state_from(obj))
        reset = self.cfg["checkpoint"]["reset"]
        if model_only or reset["all"] or "model" not in obj:
            log.info("loaded model weights from %s", path)
            return
        if not reset["optimizer"] and "optimizer" in obj:
            try:
                self.optimizer.load_state_dict(obj["optimizer"])
            except (ValueError, KeyError) as e:
                raise CheckpointError(f"optimizer state in {path} does not fit ({e}); set "
                                      f"checkpoint.reset.optimizer=true") from None
        if not reset["fp16_scaler"] and obj.get("fp16_scaler"):
            self.scaler.load_state_dict(obj["fp16_scaler"])
        if not reset["counts"]:
            self.seed = int(obj.get("seed", self.seed))  # the sampler order depends on it
            self.num_updates = int(obj.get("num_updates", 0))
            self.iteration = int(obj.get("current_iteration", self.num_updates))
            self.epoch = int(obj.get("current_epoch", 0))
            self.best_update = int(obj.get("best_update", 0))
            self.best_metric = obj.get("best_metric_value")
            if obj.get("lr_scheduler"):
                self.scheduler.load_state_dict(obj["lr_scheduler"])
            if "sampler" in obj:
                self.epoch, self.batch_in_epoch = obj["sampler"]["epoch"], obj["sampler"]["index"]
            rngs = obj.get("rng") or []
            if rngs:
                if len(rngs) != self.dist.world:
                    log.warning("checkpoint saved with %d ranks, resuming with %d: RNG streams restart",
                                len(rngs), self.dist.world)
                else:
                    C.set_rng_state(rngs[self.dist.rank])
        log.info("resumed from %s at update %d (epoch %d, batch %d)", path, self.num_updates, self.epoch,
                 self.batch_in_epoch)

    # ---- signals
    def _on_signal(self, signum, _frame):
        self.stop_signal = signum
        signal.signal(signum, signal.SIG_DFL)  # a second signal kills at once

    # ---- the loop
    def train(self, train_ds, val_sets: dict, evaluate_during: bool = True) -> dict:
        """Train until max_updates/max_epochs, early stopping or a signal. Returns a summary dict."""
        t, ck = self.t, self.cfg["checkpoint"]
        uf = int(t["update_frequency"])
        sampler = TrainSampler(len(train_ds), int(t["batch_size"]), self.dist.rank, self.dist.world, self.seed)
        max_updates = int(t["max_updates"])
        if t["max_epochs"] is not None:  # MMF: max_epochs wins
            max_updates = math.ceil(float(t["max_epochs"]) * sampler.batches_per_epoch / uf)
        metrics_writer = MetricsWriter(self.save_dir, bool(t["tensorboard"]), self.num_updates) \
            if self.dist.is_main else None
        criteria = "val/" + str(t["early_stop"]["criteria"])
        minimize = bool(t["early_stop"]["minimize"])
        old_handlers = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}

        def keyed():
            for epoch, index, idx in sampler.iterate(self.epoch, self.batch_in_epoch):
                yield (epoch, index), idx

        features = None
        if t["features_on_device"]:  # the train features live on the device; the loader moves row numbers
            from mmftrain.resident import DeviceFeatures

            features = DeviceFeatures(train_ds, self.device)
            train_ds = features.dataset
            log.info("train features resident on %s: %.2f GB", self.device, features.nbytes / 1e9)
        loader = Prefetcher(train_ds, keyed(), pin=self.cuda, depth=int(t["prefetch_batches"]),
                            epoch_of=lambda key: key[0], workers=loader_workers(t["num_workers"]),
                            device=self.device if self.cuda else None)
        batches = iter(loader)
        per_update = int(t["batch_size"]) * uf
        bar = None
        show_bar = t["progress_bar"] is True or (t["progress_bar"] == "auto" and sys.stderr.isatty())
        if self.dist.is_main and show_bar:
            from tqdm import tqdm

            bar = tqdm(total=max_updates, initial=self.num_updates, unit="upd", dynamic_ncols=True)
        win = {"t0": time.perf_counter(), "wait": 0.0, "loss": 0.0, "n": 0, "updates": 0}
        start_updates, t_start = self.num_updates, time.perf_counter()
        stopped, last_eval = None, None
        self.model.train()
        try:
            while self.num_updates < max_updates:
                self.optimizer.zero_grad(set_to_none=True)
                loss_value = 0.0
                for micro in range(uf):
                    (epoch, index), cpu_batch, wait = next(batches)
                    win["wait"] += wait
                    batch = to_device(cpu_batch, self.device)
                    if features is not None:
                        batch = features.materialize(batch)
                    sync = micro == uf - 1 or self.dist.world == 1
                    ctx = contextlib.nullcontext() if sync else self.train_model.no_sync()
                    with ctx:
                        with self.amp():
                            scores = self._forward(batch)
                        targets = expand_targets(batch, scores.size(-1))
                        loss = m4c_decoding_bce_with_mask(scores, targets, batch["train_loss_mask"])
                        if t["exit_on_nan_losses"] and not torch.isfinite(loss):
                            raise TrainError(f"loss became {loss.item()} at update {self.num_updates + 1}; "
                                             f"lower optimizer.params.lr or use fp32 (training.exit_on_nan_losses)")
                        self.scaler.scale(loss / uf).backward()
                    loss_value += float(loss.detach()) / uf
                    self.iteration += 1
                    self.epoch, self.batch_in_epoch = (epoch, index + 1) if index + 1 < sampler.batches_per_epoch \
                        else (epoch + 1, 0)
                if t["clip_gradients"] and t["max_grad_l2_norm"]:
                    self.scaler.unscale_(self.optimizer)
                    torch.nn.utils.clip_grad_norm_(self.model.parameters(), float(t["max_grad_l2_norm"]))
                self.scaler.step(self.optimizer)
                self.scaler.update()
                self.scheduler.step()
                self.num_updates += 1
                win["loss"] += loss_value
                win["n"] += 1
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{loss_value:.4f}")

                if self.num_updates % int(t["log_interval"]) == 0 or self.num_updates == max_updates:
                    self._log_train(win, loss_value, per_update, max_updates, start_updates, t_start,
                                    metrics_writer, cpu_batch)
                    win = {"t0": time.perf_counter(), "wait": 0.0, "loss": 0.0, "n": 0, "updates": 0}

                names = []
                if evaluate_during and val_sets and self.num_updates % int(t["evaluation_interval"]) == 0:
                    last_eval = self._eval_and_track(val_sets, criteria, minimize, metrics_writer)
                    if last_eval.get("improved"):
                        names.append("best.ckpt")
                if self.num_updates % int(t["checkpoint_interval"]) == 0:
                    names += ["current.ckpt", f"models/model_{self.num_updates}.ckpt"]
                if names:
                    self.save(*names)
                if t["early_stop"]["enabled"] and self.best_metric is not None and \
                        self.num_updates - self.best_update > int(t["early_stop"]["patience"]):
                    log.info("early stopping at update %d: no improvement of %s since update %d",
                             self.num_updates, criteria, self.best_update)
                    stopped = "early_stop"
                    break
                if D.any_flag(self.stop_signal is not None, self.device):
                    stopped = signal.Signals(self.stop_signal or signal.SIGTERM).name
                    self.save("current.ckpt")
                    log.info("%s received: saved %s at update %d; resume with checkpoint.resume=true",
                             stopped, self.save_dir / "current.ckpt", self.num_updates)
                    break
        finally:
            loader.close()
            if bar is not None:
                bar.close()
            for s, h in old_handlers.items():
                signal.signal(s, h)
        if stopped is None or stopped == "early_stop":
            if evaluate_during and val_sets and self.num_updates % int(t["evaluation_interval"]) != 0:
                last_eval = self._eval_and_track(val_sets, criteria, minimize, metrics_writer)
                if last_eval.get("improved"):
                    self.save("best.ckpt")
            self.save("current.ckpt")
        if metrics_writer is not None:
            metrics_writer.close()
        return {"num_updates": self.num_updates, "stopped": stopped, "best_update": self.best_update,
                "best_metric": self.best_metric, "criteria": criteria, "last_eval": last_eval,
                "train_time": time.perf_counter() - t_start}

    def _log_train(self, win, loss_value, per_update, max_updates, start_updates, t_start, writer, cpu_batch):
        elapsed = time.perf_counter() - win["t0"]
        ups = win["n"] / elapsed if elapsed > 0 else 0.0
        done = self.num_updates - start_updates
        total_ups = done / max(time.perf_counter() - t_start, 1e-9)
        eta = (max_updates - self.num_updates) / total_ups if total_ups > 0 else 0.0
        mem = (torch.cuda.max_memory_allocated(self.device) / 2**20 if self.cuda
               else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
        qids = cpu_batch["question_id"]
        rec = {"num_updates": self.num_updates, "max_updates": max_updates, "epoch": self.epoch,
               "train/total_loss": loss_value, "train/total_loss/avg": win["loss"] / max(win["n"], 1),
               "lr": self.optimizer.param_groups[0]["lr"], "ups": ups,
               "samples_per_s": ups * per_update, "data_wait_share": win["wait"] / elapsed if elapsed else 0.0,
               "eta_s": eta, "max_mem_mb": mem,
               # fingerprint of the last batch: lets a resumed run be checked batch for batch
               "batch_qid_sum": int(qids.sum()), "batch_first_qid": int(qids[0])}
        if self.dist.is_main:
            log.info("progress: %d/%d, %s", self.num_updates, max_updates, format_line(
                {"train/total_loss": loss_value, "avg": rec["train/total_loss/avg"], "lr": rec["lr"],
                 "ups": ups, "samples/s": rec["samples_per_s"], "data_wait": rec["data_wait_share"],
                 "eta": time.strftime("%H:%M:%S", time.gmtime(eta)), "max_mem_mb": mem}))
            writer.write(rec)

    def _eval_and_track(self, val_sets: dict, criteria: str, minimize: bool, writer) -> dict:
        results: dict = {}
        bs = int(self.cfg["evaluation"]["batch_size"] or self.t["batch_size"])
        per_rank = max(1, bs // self.dist.world)
        for name, ds in val_sets.items():
            out, _ = evaluate(self.model, ds, dataset_name=name, split="val", batch_size=per_rank,
                              device=self.device, dist=self.dist, amp=self.amp(),
                              metrics=list(self.cfg["evaluation"]["metrics"]), pin=self.cuda,
                              early_exit=bool(self.cfg["evaluation"]["early_exit_decoding"]))
            results.update(out)
        if criteria not in results:
            keys = ", ".join(k[4:] for k in results if not k.endswith(("_time", "questions")))
            raise ConfigError(f"training.early_stop.criteria={criteria[4:]!r} is not a reported metric; "
                              f"use one of: {keys}")
        value = float(results[criteria])
        improved = self.best_metric is None or (value < self.best_metric if minimize else value > self.best_metric)
        if improved:
            self.best_metric, self.best_update = value, self.num_updates
        results.update({"num_updates": self.num_updates, "best_update": self.best_update,
                        f"best_{criteria}": self.best_metric})
        if self.dist.is_main:
            log.info("val at update %d: %s", self.num_updates, format_line(
                {k: v for k, v in results.items() if k.startswith("val")}))
            writer.write(results)
        results["improved"] = improved
        return results
