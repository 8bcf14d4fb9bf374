"""The training loop, readable top to bottom (nanoGPT/torchtune style): no callbacks, no mixins.

One update = `training.update_frequency` micro-batches of `training.batch_size` (global) questions: forward under
the chosen precision, masked BCE, backward, then unscale -> clip -> step -> LR step. Every `log_interval` a line
and a `metrics.jsonl` record; every `evaluation_interval` a full val pass (best checkpoint by
`training.early_stop.criteria`); every `checkpoint_interval` `current.ckpt` (+ periodic copy), written in the
background (mmftrain.checkpoint.Checkpointer).

The step never waits for the GPU: losses are summed on the device and read only at log lines and checkpoints
(where exit_on_nan_losses is checked), and the stop-signal check is local on one process.
"""
from __future__ import annotations

import contextlib
import math
import random
import resource
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from mmfdata.batch import expand_targets
from mmftrain import checkpoint, distributed, kernels, trace
from mmftrain.config import run_record
from mmftrain.data import Prefetcher, TrainSampler, loader_workers, resume_position, sampler_state, to_device
from mmftrain.errors import CheckpointError, ConfigError, TrainError
from mmftrain.evaluate import evaluate_all
from mmftrain.logs import MetricsWriter, format_line, log
from mmftrain.loss import m4c_decoding_bce_with_mask
from mmftrain.models import build_model, load_mmf_state_dict
from mmftrain.optim import build_optimizer, build_scheduler

# With several processes, all ranks agree on a stop signal every this many updates (a collective is a host sync).
STOP_CHECK_EVERY = 10
# Signals that end training at the next update all ranks agree on, with current.ckpt on disk at that update: Ctrl-C,
# SIGTERM (scancel, SLURM's preemption and time limit, torchrun stopping its workers), SIGUSR1 (SLURM's warning
# before the time limit when asked for with sbatch --signal=USR1@<seconds>)
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@dataclass
class LogWindow:
    """What happened since the last log line; the loss stays on the device until the line is written."""
    start: float = field(default_factory=time.perf_counter)
    data_wait: float = 0.0
    loss_sum: torch.Tensor | float = 0.0
    last_loss: torch.Tensor | float = 0.0  # the latest update's loss (mean over its micro-batches)
    updates: int = 0


class Trainer:
    """Owns model, optimizer, scheduler, scaler, counters and the sampler position of one run."""

    def __init__(self, cfg: dict, dist: distributed.DistInfo, answer_vocab_size: int, seed: int):
        self.cfg, self.dist, self.seed = cfg, dist, seed
        self.training = cfg["training"]
        self.device = dist.device
        self.save_dir = Path(str(cfg["env"]["save_dir"])).expanduser()
        self.cuda = self.device.type == "cuda"
        kernels.set_precision(self.training, self.cuda)
        seed_everything(seed)  # same initial weights on every rank
        self.model = build_model(cfg, answer_vocab_size).to(self.device)
        seed_everything(seed + dist.rank)
        self.optimizer = build_optimizer(self.model, cfg, fused=self.cuda)
        self.scheduler = build_scheduler(self.optimizer, cfg)
        self.scaler = torch.amp.GradScaler("cuda", enabled=bool(self.training["fp16"]))
        # sample_in_epoch: where in the epoch's order the next global batch starts
        self.num_updates = self.iteration = self.epoch = self.sample_in_epoch = 0
        self.best_update, self.best_metric = 0, None
        self.forward = kernels.TrainForward(self.model, dict(self.training, compile=False), self.device, 1)
        self.features = None  # DeviceFeatures while training with training.features_on_device
        self.stop_signal = None
        self.trace = trace.from_env(dist.rank, dist.world)  # None unless MMF_TRAIN_SAMPLE_TRACE is set
        options = cfg["checkpoint"]
        self.checkpointer = checkpoint.Checkpointer(self.save_dir, int(options["max_to_keep"]),
                                                    background=bool(options["background_write"]))
        self.git = checkpoint.git_details() if options["save_git_details"] else None

    # ---- precision and compilation (mmftrain.kernels)
    def amp(self):
        """Autocast for fp16/bf16 (fp32 otherwise)."""
        return kernels.autocast(self.training, self.device.type)

    def wrap(self) -> None:
        """DDP across ranks, then torch.compile when asked (eager fallback on failure)."""
        self.forward = kernels.TrainForward(self.model, self.training, self.device, self.dist.world)

    # ---- checkpoints
    def state(self) -> dict:
        rngs = distributed.gather_objects(checkpoint.rng_state())
        state = {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                 "lr_scheduler": self.scheduler.state_dict(), "fp16_scaler": self.scaler.state_dict(),
                 "num_updates": self.num_updates, "current_iteration": self.iteration,
                 "current_epoch": self.epoch, "best_update": self.best_update, "best_iteration": self.best_update,
                 "best_metric_value": self.best_metric, "config": run_record(self.cfg, self.seed), "seed": self.seed,
                 "sampler": sampler_state(self.epoch, self.sample_in_epoch, int(self.training["batch_size"]),
                                          self.seed),
                 "world_size": self.dist.world, "rng": rngs}
        if self.git:
            state["git/commit"], state["git/branch"] = self.git
        return state

    def save(self, *names: str) -> None:
        """Checkpoint the full state under each of `names` (relative to save_dir); collective across ranks.
        Returns once the state is copied to host memory; the file is written in the background."""
        self._check_writes(block=True, due=names[0])  # a failed write stops every rank here, not rank 0 alone
        state = self.state()
        if self.dist.is_main:
            self.checkpointer.save(list(names), state)

    def _check_writes(self, block: bool, due: str | None = None) -> None:
        """Stop every rank once a background checkpoint write has failed (disk full, permissions): training on
        would only lose more work. Rank 0 raises the write's own error, the others a pointer to it."""
        failed = self.dist.is_main and self.checkpointer.failed(block, due)
        if self.dist.world > 1:
            failed = distributed.any_flag(failed, self.device)
        if not failed:
            return
        if self.dist.is_main:
            self.checkpointer.wait()
        raise CheckpointError("rank 0 could not write a checkpoint (its error is in its log); the previous "
                              "checkpoint is intact: fix the cause and resume with checkpoint.resume=true")

    def finish_writes(self) -> None:
        """Wait until every checkpoint is on disk (raising a write's error); all ranks return together."""
        try:
            if self.dist.is_main:
                self.checkpointer.wait()
        finally:
            distributed.barrier()

    def load(self, path: Path, model_only: bool = False, obj: dict | None = None) -> None:
        """Restore from a checkpoint (or its already loaded `obj`), honouring checkpoint.reset.*; own checkpoints
        also restore RNG states, the sampler position and the list of periodic checkpoints."""
        if obj is None:
            obj = checkpoint.load(path, trusted=bool(self.training["trust_pickle"]))
        load_mmf_state_dict(self.model, checkpoint.model_state_from(obj))
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
            self._restore_counts(obj)
        log.info("resumed from %s at update %d (epoch %d, sample %d)", path, self.num_updates, self.epoch,
                 self.sample_in_epoch)

    def _restore_counts(self, obj: dict) -> None:
        self.seed = int(obj.get("seed", self.seed))  # the sampler order depends on it
        self.num_updates = int(obj.get("num_updates", 0))
        self.iteration = int(obj.get("current_iteration", self.num_updates))
        self.epoch = int(obj.get("current_epoch", 0))
        self.best_update = int(obj.get("best_update", 0))
        self.best_metric = obj.get("best_metric_value")
        self.checkpointer.periodic = list(obj.get("periodic_checkpoints") or [])
        if obj.get("lr_scheduler"):
            self.scheduler.load_state_dict(obj["lr_scheduler"])
        if "sampler" in obj:
            self._restore_position(obj)
        rngs = obj.get("rng") or []
        if rngs and len(rngs) != self.dist.world:
            log.warning("checkpoint saved at world size %d, resuming at world size %d: the sample order, counters, "
                        "optimizer, LR schedule and scaler continue, but each process's random streams (dropout) "
                        "restart from the run's seed, so the run will not repeat an uninterrupted one bit for bit",
                        len(rngs), self.dist.world)
        elif rngs:
            checkpoint.set_rng_state(rngs[self.dist.rank])

    def _restore_position(self, obj: dict) -> None:
        """The sampler position, kept in samples: another world size or global batch continues the same order."""
        global_batch, saved = int(self.training["batch_size"]), obj["sampler"]
        recorded = (obj.get("config") or {}).get("training", {}).get("batch_size")
        saved_batch = int(saved.get("global_batch") or recorded or global_batch)
        self.epoch, self.sample_in_epoch = resume_position(saved, saved_batch)
        if saved_batch != global_batch:
            log.warning("training.batch_size (the global batch) is %d, the checkpoint's was %d: the order continues "
                        "at sample %d of epoch %d in batches of %d", global_batch, saved_batch, self.sample_in_epoch,
                        self.epoch, global_batch)

    # ---- setup and teardown of a training session
    def _on_signal(self, signum, _frame):
        self.stop_signal = signum
        signal.signal(signum, signal.SIG_DFL)  # a second signal kills at once

    @contextlib.contextmanager
    def _session(self, train_ds, sampler: TrainSampler, max_updates: int):
        """Yields (batches, metrics writer or None, progress bar or None); restores signals and closes everything
        on the way out, waiting for the checkpoint in flight."""
        training = self.training
        with contextlib.ExitStack() as stack:
            stack.callback(self.finish_writes)
            writer = None
            if self.dist.is_main:
                writer = MetricsWriter(self.save_dir, self._tensorboard_dir(), self.num_updates)
                stack.callback(writer.close)
            old_handlers = {s: signal.signal(s, self._on_signal) for s in STOP_SIGNALS}
            stack.callback(lambda: [signal.signal(s, h) for s, h in old_handlers.items()])
            if training["detect_anomaly"]:
                stack.enter_context(torch.autograd.detect_anomaly(check_nan=True))
            keyed = (((epoch, at), idx) for epoch, at, idx in sampler.iterate(self.epoch, self.sample_in_epoch))
            if training["features_on_device"]:  # the train features live on the device; the loader moves row numbers
                from mmftrain.resident import DeviceFeatures

                self.features = DeviceFeatures(train_ds, self.device)
                train_ds = self.features.dataset
                stack.callback(lambda: setattr(self, "features", None))
                log.info("train features resident on %s: %.2f GB", self.device, self.features.nbytes / 1e9)
            loader = Prefetcher(train_ds, keyed, pin=self.cuda, depth=int(training["prefetch_batches"]),
                                epoch_of=lambda key: key[0], workers=loader_workers(training["num_workers"]),
                                device=self.device if self.cuda else None)
            stack.callback(loader.close)
            bar = None
            # the key's default is the string "auto", so an override arrives as the string "True"/"False"
            wanted = str(training["progress_bar"]).lower()
            show_bar = wanted == "true" or (wanted == "auto" and sys.stderr.isatty())
            if self.dist.is_main and show_bar:
                from tqdm import tqdm

                bar = tqdm(total=max_updates, initial=self.num_updates, unit="upd", dynamic_ncols=True)
                stack.callback(bar.close)
            yield iter(loader), writer, bar

    def _tensorboard_dir(self) -> Path | None:
        if not self.training["tensorboard"]:
            return None
        return Path(self.cfg["env"]["tensorboard_logdir"])  # mmfconfig's default: <save_dir>/tensorboard

    # ---- the loop
    def train(self, train_ds, val_sets: dict) -> dict:
        """Train until max_updates/max_epochs, early stopping or a signal. Returns a summary dict."""
        training = self.training
        accumulate = int(training["update_frequency"])
        sampler = TrainSampler(len(train_ds), int(training["batch_size"]), self.dist.rank, self.dist.world,
                               self.seed)
        max_updates = int(training["max_updates"])
        if training["max_epochs"] is not None:  # MMF: max_epochs wins
            max_updates = math.ceil(float(training["max_epochs"]) * sampler.batches_per_epoch / accumulate)
        criteria = "val/" + str(training["early_stop"]["criteria"])
        self._warn_if_checkpoints_will_not_fit(max_updates)
        start_updates, started = self.num_updates, time.perf_counter()
        stopped, last_eval, current_saved_at = None, None, None
        self.model.train()
        with self._session(train_ds, sampler, max_updates) as (batches, writer, bar):
            window = LogWindow()
            while self.num_updates < max_updates:
                cpu_batch = self._update(batches, window, accumulate, sampler)
                if self.dist.world == 1 or self.num_updates % STOP_CHECK_EVERY == 0:
                    self._check_writes(block=False)
                if bar is not None:
                    bar.update(1)
                if self.num_updates % int(training["log_interval"]) == 0 or self.num_updates == max_updates:
                    loss = self._log_train(window, max_updates, start_updates, started, writer, cpu_batch)
                    if bar is not None:
                        bar.set_postfix(loss=f"{loss:.4f}")
                    window = LogWindow()

                names = []
                if val_sets and self.num_updates % int(training["evaluation_interval"]) == 0:
                    last_eval = self._evaluate(val_sets, criteria, writer)
                    if last_eval["improved"]:
                        names.append(checkpoint.BEST)
                if self.num_updates % int(training["checkpoint_interval"]) == 0:
                    names += [checkpoint.CURRENT, f"{checkpoint.PERIODIC_DIR}/model_{self.num_updates}.ckpt"]
                if names:
                    self._check_finite(window)
                    self.save(*names)
                    current_saved_at = self.num_updates if checkpoint.CURRENT in names else current_saved_at
                if self._early_stop(criteria):
                    stopped = "early_stop"
                    break
                if self._stop_requested():
                    stopped = self._stop_at_signal(current_saved_at)
                    break
            if stopped in (None, "early_stop"):
                names = []
                if val_sets and self.num_updates % int(training["evaluation_interval"]) != 0:
                    last_eval = self._evaluate(val_sets, criteria, writer)
                    names += [checkpoint.BEST] if last_eval["improved"] else []
                names += [checkpoint.CURRENT] if current_saved_at != self.num_updates else []
                if names:
                    self._check_finite(window)
                    self.save(*names)
        if self.dist.is_main:
            log.info("checkpoint writes stalled training for %.2fs in total", self.checkpointer.stall_s)
        return {"num_updates": self.num_updates, "stopped": stopped, "best_update": self.best_update,
                "best_metric": self.best_metric, "criteria": criteria, "last_eval": last_eval,
                "train_time": time.perf_counter() - started, "checkpoint_stall_s": self.checkpointer.stall_s}

    def _warn_if_checkpoints_will_not_fit(self, max_updates: int) -> None:
        if not self.dist.is_main:
            return
        # a checkpoint holds the weights and Adam's two moments, all in the parameters' dtype
        file_bytes = 3 * sum(p.numel() * p.element_size() for p in self.model.parameters())
        checkpoint.warn_if_disk_short(self.save_dir, file_bytes,
                                      (max_updates - self.num_updates) // int(self.training["checkpoint_interval"]),
                                      int(self.cfg["checkpoint"]["max_to_keep"]))

    def _update(self, batches, window: LogWindow, accumulate: int, sampler: TrainSampler) -> dict:
        """One optimizer update over `accumulate` micro-batches; returns the last (CPU) batch."""
        self.optimizer.zero_grad(set_to_none=True)
        update_loss = 0.0
        traced = ([], []) if self.trace is not None else None
        for micro in range(accumulate):
            (epoch, position), cpu_batch, wait = next(batches)
            window.data_wait += wait
            if traced is not None:
                traced[0].append([epoch, position])
                traced[1].extend(cpu_batch["question_id"].tolist())
            batch = to_device(cpu_batch, self.device)
            if self.features is not None:
                batch = self.features.materialize(batch)
            sync_grads = micro == accumulate - 1 or self.dist.world == 1
            with contextlib.nullcontext() if sync_grads else self.forward.no_sync():
                with self.amp():
                    scores = self.forward(batch)
                targets = expand_targets(batch, scores.size(-1))
                loss = m4c_decoding_bce_with_mask(scores, targets, batch["train_loss_mask"])
                self.scaler.scale(loss / accumulate).backward()
            update_loss = update_loss + loss.detach().float() / accumulate
            self.iteration += 1
            self.epoch, self.sample_in_epoch = sampler.after(epoch, position)
        if self.training["clip_gradients"] and self.training["max_grad_l2_norm"]:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), float(self.training["max_grad_l2_norm"]))
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.num_updates += 1
        if traced is not None:
            self.trace.record(self.num_updates, *traced)
        window.updates += 1
        window.loss_sum = window.loss_sum + update_loss
        window.last_loss = update_loss
        return cpu_batch

    def _check_finite(self, window: LogWindow) -> None:
        """exit_on_nan_losses: a NaN/inf loss since the last log line stops the run before it is checkpointed."""
        if not self.training["exit_on_nan_losses"] or not window.updates:
            return
        if not math.isfinite(float(window.loss_sum)):
            raise TrainError(f"the loss became {float(window.loss_sum)} by update {self.num_updates}; lower "
                             "optimizer.params.lr or use fp32 (training.exit_on_nan_losses; "
                             "training.detect_anomaly=true finds the op)")

    def _early_stop(self, criteria: str) -> bool:
        patience = self.training["early_stop"]
        if not patience["enabled"] or self.best_metric is None:
            return False
        if self.num_updates - self.best_update <= int(patience["patience"]):
            return False
        log.info("early stopping at update %d: no improvement of %s since update %d", self.num_updates, criteria,
                 self.best_update)
        return True

    def _stop_at_signal(self, current_saved_at: int | None) -> str:
        """current.ckpt of this update on disk (not only in the writer's hands: the process exits next, and a job
        requeue must find it), on every rank; returns the name of the signal the ranks agreed on."""
        stopped = signal.Signals(self.stop_signal or signal.SIGTERM).name
        if current_saved_at != self.num_updates:
            self.save(checkpoint.CURRENT)
        self.finish_writes()
        log.info("%s received: saved %s at update %d; resume with checkpoint.resume=true",
                 stopped, self.save_dir / checkpoint.CURRENT, self.num_updates)
        return stopped

    def _stop_requested(self) -> bool:
        if self.dist.world == 1:
            return self.stop_signal is not None
        if self.num_updates % STOP_CHECK_EVERY:
            return False
        # the signal itself is agreed (the highest number, if ranks got different ones): every rank exits with the
        # same code, and rank 0 knows to requeue a job whose SIGUSR1 reached another rank only
        agreed = distributed.max_int(self.stop_signal or 0, self.device)
        if agreed:
            self.stop_signal = agreed  # set, never cleared here: a signal arriving during the collective counts next
        return bool(agreed)

    def _log_train(self, window: LogWindow, max_updates: int, start_updates: int, started: float, writer,
                   cpu_batch: dict) -> float:
        """Write the log line and metrics record (the step's only host sync); returns the last loss."""
        self._check_finite(window)
        last_loss = float(window.last_loss)
        elapsed = time.perf_counter() - window.start
        updates_per_s = window.updates / elapsed if elapsed > 0 else 0.0
        overall = (self.num_updates - start_updates) / max(time.perf_counter() - started, 1e-9)
        eta = (max_updates - self.num_updates) / overall if overall > 0 else 0.0
        mem = (torch.cuda.max_memory_allocated(self.device) / 2**20 if self.cuda
               else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
        per_update = int(self.training["batch_size"]) * int(self.training["update_frequency"])
        question_ids = cpu_batch["question_id"]
        record = {"num_updates": self.num_updates, "max_updates": max_updates, "epoch": self.epoch,
                  "train/total_loss": last_loss, "train/total_loss/avg": float(window.loss_sum) / window.updates,
                  "lr": self.optimizer.param_groups[0]["lr"], "ups": updates_per_s,
                  "samples_per_s": updates_per_s * per_update,
                  "data_wait_share": window.data_wait / elapsed if elapsed else 0.0, "eta_s": eta,
                  "max_mem_mb": mem,
                  # fingerprint of the last batch: lets a resumed run be checked batch for batch
                  "batch_qid_sum": int(question_ids.sum()), "batch_first_qid": int(question_ids[0])}
        if self.dist.is_main:
            log.info("progress: %d/%d, %s", self.num_updates, max_updates, format_line(
                {"train/total_loss": last_loss, "avg": record["train/total_loss/avg"], "lr": record["lr"],
                 "ups": updates_per_s, "samples/s": record["samples_per_s"], "data_wait": record["data_wait_share"],
                 "eta": time.strftime("%H:%M:%S", time.gmtime(eta)), "max_mem_mb": mem}))
            writer.write(record)
        return last_loss

    def _evaluate(self, val_sets: dict, criteria: str, writer) -> dict:
        """A val pass over every dataset; tracks the best value of `criteria`."""
        results, _ = evaluate_all(self.model, val_sets, split="val", cfg=self.cfg, dist=self.dist,
                                  device=self.device, amp=self.amp())
        if criteria not in results:
            keys = ", ".join(k[4:] for k in results if not k.endswith(("_time", "questions")))
            raise ConfigError(f"training.early_stop.criteria={criteria[4:]!r} is not a reported metric; "
                              f"use one of: {keys}")
        value = float(results[criteria])
        minimize = bool(self.training["early_stop"]["minimize"])
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
