"""Feeding the trainer: datasets from `mmfdata`, deterministic sharded sampling, a prefetching batch loader.

Sampling belongs to the trainer so that it can be checkpointed: the train order is a permutation drawn from
(seed, epoch), cut into global batches, each split evenly across ranks; the position (epoch, batch) is saved, so a
resumed run continues with exactly the next batch. Evaluation splits the question list into contiguous per-rank
ranges: no question is dropped or repeated (unlike a padding DistributedSampler).

The loader (`Prefetcher`) runs `get_batch` in several threads (numpy gathers and memcpy release the GIL) and
hands batches back strictly in sampler order. For a CUDA device it stages each batch in a ring of reusable pinned
buffers and copies it on a side stream, so the ~80 MB of fp16 features per batch-128 cross the bus while the
previous step computes.
"""
from __future__ import annotations

import inspect
import threading
import time
from dataclasses import dataclass

import numpy as np
import torch

from mmftrain.errors import ConfigError, DataError

TENSOR_KEYS = ("question_id", "text", "text_len", "obj_feat", "obj_bbox", "obj_num", "ocr_feat", "ocr_fasttext",
               "ocr_phoc", "ocr_bbox", "ocr_num", "train_prev_inds", "train_loss_mask", "target_first_inds",
               "target_first_scores", "target_seq")


def build_datasets(cfg: dict, split: str, seed: int = 0, pack_args=None) -> dict:
    """{dataset name: dataset} for `split`, each built by `mmfdata.build_dataset` from `dataset_config.<name>`.

    `seed` fixes the teacher-forcing sequence mmfdata draws per (question, epoch); `pack_args` is what
    `mmf data pack` needs to resolve this run's dataset_config (mmftrain.cli.pack_args), for its hint.
    """
    try:
        import mmfdata
    except ImportError as e:
        raise DataError(f"the data package is missing ({e}); install the project with pip install -e .") from None
    out = {}
    for name in cfg["datasets"]:
        dc = cfg["dataset_config"].get(name)
        if dc is None:
            raise ConfigError(f"dataset_config.{name} is missing; add configs/datasets/{name}/defaults.yaml")
        try:
            out[name] = mmfdata.build_dataset(name, dc, split, str(cfg["env"]["data_dir"]),
                                              trust_pickle=bool(cfg["training"]["trust_pickle"]),
                                              prefer_packed=bool(cfg["training"]["prefer_packed"]), seed=seed,
                                              pack_args=pack_args)
        except (mmfdata.DataError, FileNotFoundError, KeyError, ValueError, OSError) as e:
            msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise DataError(f"cannot build dataset {name} split {split} from {cfg['env']['data_dir']}: {msg}") \
                from e  # the cause keeps the traceback for train.log; the console shows the one line
    return out


def concat(datasets: dict):
    """One dataset over several (joint TextVQA + ST-VQA training), via mmfdata's ConcatDataset."""
    if len(datasets) == 1:
        return next(iter(datasets.values()))
    from mmfdata import ConcatDataset

    return ConcatDataset(list(datasets.values()))


def check_global_batch(global_batch: int, world: int) -> None:
    """training.batch_size is the global batch (MMF): each of the `world` processes takes an equal slice of it."""
    if global_batch % world:
        raise ConfigError(f"training.batch_size={global_batch} (the global batch, split evenly across processes) "
                          f"is not divisible by the {world} processes of this launch; launch a number of "
                          f"processes that divides {global_batch}, or set training.batch_size to a multiple of "
                          f"{world}")


@dataclass
class TrainSampler:
    """Deterministic per-epoch permutation, global batches of `global_batch`, this rank's slice of each.

    A position in the order is a sample offset within the epoch, not a batch number: it means the same for any
    number of processes and any global batch, so a run resumed on another world size (or, with
    training.batch_size_per_device, another global batch) continues with the next unseen question.
    """

    num_samples: int
    global_batch: int
    rank: int = 0
    world: int = 1
    seed: int = 0

    def __post_init__(self):
        check_global_batch(self.global_batch, self.world)
        if self.num_samples < self.global_batch:
            raise ConfigError(f"training.batch_size={self.global_batch} is larger than the training set "
                              f"({self.num_samples} questions); lower training.batch_size")

    @property
    def batches_per_epoch(self) -> int:
        # the incomplete last global batch is dropped: it could not be split evenly across ranks
        return self.num_samples // self.global_batch

    def permutation(self, epoch: int) -> np.ndarray:
        """The epoch's order: the same on every rank, a pure function of (seed, epoch)."""
        g = torch.Generator().manual_seed(self.seed * 100003 + epoch)
        return torch.randperm(self.num_samples, generator=g).numpy()

    def iterate(self, epoch: int, position: int = 0):
        """Yield (epoch, position, indices) for the global batches from sample `position` of `epoch`'s order on,
        forever across epochs; a global batch that would run past the end of the epoch is dropped."""
        per_rank = self.global_batch // self.world
        while True:
            perm = self.permutation(epoch)
            for start in range(position, self.num_samples - self.global_batch + 1, self.global_batch):
                s = start + self.rank * per_rank
                yield epoch, start, perm[s:s + per_rank].astype(np.int64)
            epoch, position = epoch + 1, 0

    def after(self, epoch: int, position: int) -> tuple[int, int]:
        """(epoch, position) of the global batch after the one at `position`."""
        position += self.global_batch
        return (epoch, position) if position + self.global_batch <= self.num_samples else (epoch + 1, 0)


def sampler_state(epoch: int, position: int, global_batch: int, seed: int) -> dict:
    """A checkpoint's `sampler` entry: the next global batch starts at sample `position` of `epoch`'s order."""
    return {"epoch": epoch, "position": position, "global_batch": global_batch, "seed": seed}


def resume_position(saved: dict, saved_global_batch: int) -> tuple[int, int]:
    """(epoch, sample position) where the run of a checkpoint's `sampler` entry continues. Checkpoints written
    before positions were saved count global batches (`index`) of `saved_global_batch` questions."""
    if "position" in saved:
        return int(saved["epoch"]), int(saved["position"])
    return int(saved["epoch"]), int(saved["index"]) * saved_global_batch


def eval_shard(num_samples: int, rank: int, world: int) -> np.ndarray:
    """This rank's contiguous range of question indices: together the ranks cover each question exactly once."""
    lo, hi = num_samples * rank // world, num_samples * (rank + 1) // world
    return np.arange(lo, hi, dtype=np.int64)


def _check_keys(out: dict) -> dict:
    missing = [k for k in TENSOR_KEYS if k not in out]
    if missing:
        raise DataError(f"dataset batch lacks keys {missing} required by mmfdata/batch.py")
    return out


def to_tensors(batch: dict, pin: bool) -> dict:
    """numpy batch -> torch tensors (zero-copy `from_numpy`, pinned for CUDA); object arrays -> Python lists."""
    out = {}
    for k, v in batch.items():
        if isinstance(v, np.ndarray) and v.dtype != object:
            t = torch.from_numpy(np.ascontiguousarray(v))
            out[k] = t.pin_memory() if pin else t
        else:
            out[k] = list(v)
    return _check_keys(out)


def to_device(batch: dict, device: torch.device) -> dict:
    """Tensors of `batch` on `device` (a no-op for batches the Prefetcher already delivered there)."""
    return {k: (v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}


MAX_LOADER_WORKERS = 64


def loader_workers(requested) -> int:
    """Prefetch threads for `training.num_workers`: exactly as many as asked (MMF honours num_workers), 0 or
    unset = 1 (MMF's 0 loads in the main process; here one thread does). No silent cap to the core count: a
    worker count the user set is the one the loader runs with (they are threads: the GIL-free numpy gathers and
    LMDB reads overlap, the rest queue)."""
    if requested is None:
        return 1
    if isinstance(requested, bool) or not isinstance(requested, int) or not 0 <= requested <= MAX_LOADER_WORKERS:
        raise ConfigError(f"training.num_workers must be an integer from 0 to {MAX_LOADER_WORKERS}, "
                          f"got {requested!r}")
    return max(1, requested)


def takes_out(dataset) -> bool:
    """Whether `dataset.get_batch(indices, out=...)` can gather straight into caller-owned arrays."""
    try:
        return "out" in inspect.signature(dataset.get_batch).parameters
    except (TypeError, ValueError):
        return False


class Staging:
    """Host buffers for one batch in flight, reused batch after batch (pinned when the batch goes to CUDA).

    Fresh 80 MB arrays per batch cost as much in page faults as the copy itself, and pinning them costs a second
    copy; here a dataset gathers straight into these buffers (`get_batch(..., out=arrays(n))`) or its batch is
    copied in once. `ready` is the event of the last host->device copy out of them: refill only after it.
    """

    def __init__(self, pin: bool):
        self.pin, self.bufs, self.ready = pin, {}, None

    def arrays(self, n: int) -> dict:
        """numpy views of the first `n` rows of every buffer seen so far (the `out=` of `get_batch`)."""
        return {k: b[:n].numpy() for k, b in self.bufs.items() if b.shape[0] >= n}

    def fill(self, batch: dict) -> dict:
        """Tensors viewing the buffers, holding `batch`'s arrays (copied unless gathered in place); lists as is."""
        out = {}
        for k, v in batch.items():
            if not (isinstance(v, np.ndarray) and v.dtype != object):
                out[k] = list(v)
                continue
            buf = self.bufs.get(k)
            if buf is None or buf.shape[1:] != v.shape[1:] or buf.shape[0] < len(v) or \
                    buf.numpy().dtype != v.dtype:
                buf = self.bufs[k] = torch.empty(v.shape, dtype=torch.from_numpy(v[:0]).dtype, pin_memory=self.pin)
            view = buf[:len(v)]
            dst = view.numpy()
            if not np.may_share_memory(dst, v):
                np.copyto(dst, v)
            out[k] = view
        return _check_keys(out)


_PENDING = object()


class Prefetcher:
    """Runs `dataset.get_batch` for the next batches in `workers` background threads; yields them in order.

    Iterating yields (key, batch, wait_seconds): `wait_seconds` is how long the consumer blocked on data.
    With `device=None` a batch holds host tensors (pinned if `pin`); with a device, its tensors are already
    there: gathered into a ring of reusable (pinned) `Staging` buffers, copied on a per-worker CUDA stream, and
    the consumer's stream waits for that copy's event (CPU: a plain copy, which keeps the ring logic testable).
    The teacher-forcing sequence mmfdata draws is a hash of (seed, epoch, question); workers switch the
    dataset's epoch only when no batch is being read (`set_epoch(epoch_of(key))`), so batches do not depend on
    the number of workers or how far ahead they run: a resumed run gets identical batches.
    """

    def __init__(self, dataset, keyed_indices, pin: bool, depth: int = 2, epoch_of=None, workers: int = 1,
                 device: torch.device | None = None):
        self.dataset, self.items, self.epoch_of = dataset, iter(keyed_indices), epoch_of
        self.device = torch.device(device) if device is not None else None
        self.cuda = self.device is not None and self.device.type == "cuda"
        if self.cuda and self.device.index is None:  # worker threads set it as their current device
            self.device = torch.device("cuda", torch.cuda.current_device())
        self.pin = pin or self.cuda
        self.workers = max(1, int(workers))
        # batches taken ahead of the consumer: `depth` ready ones plus one in the hands of each worker
        self.ahead = max(1, depth) + self.workers
        self.takes_out = self.device is not None and takes_out(dataset)
        self.slots = [Staging(self.pin) for _ in range(self.workers + 1)] if self.device is not None else []
        self.cond = threading.Condition()
        self.take_lock = threading.Lock()  # one worker pulls from the sampler (and switches epochs) at a time
        self.results: dict = {}
        self.taken = self.consumed = self.in_flight = 0
        self.end: int | None = None  # sequence number after the last batch (the sampler ended or failed)
        self.epoch = _PENDING
        self.stop = False
        self.local = threading.local()
        self.threads = [threading.Thread(target=self._work, daemon=True, name=f"mmftrain-prefetch-{i}")
                        for i in range(self.workers)]
        for t in self.threads:
            t.start()

    # ---- workers
    def _take(self):
        """Next (seq, key, indices) in sampler order, or None when done; switches the epoch when it changes."""
        with self.take_lock:
            with self.cond:
                self.cond.wait_for(lambda: self.stop or self.end is not None or
                                   self.taken < self.consumed + self.ahead)
                if self.stop or self.end is not None:
                    return None
                seq = self.taken
            try:
                key, idx = next(self.items)
                epoch = self.epoch_of(key) if self.epoch_of is not None else _PENDING
            except StopIteration:
                self._finish(seq, None)
                return None
            except BaseException as e:  # noqa: BLE001 - re-raised in the consumer thread, in order
                self._finish(seq, e)
                return None
            with self.cond:
                if epoch is not _PENDING and epoch != self.epoch and hasattr(self.dataset, "set_epoch"):
                    # the epoch is dataset state read by get_batch: change it only while nobody reads
                    self.cond.wait_for(lambda: self.stop or self.in_flight == 0)
                    if self.stop:
                        return None
                    self.dataset.set_epoch(epoch)
                    self.epoch = epoch
                self.taken, self.in_flight = seq + 1, self.in_flight + 1
            return seq, key, idx

    def _finish(self, seq: int, error):
        with self.cond:
            if error is not None:
                self.results[seq] = error
                seq += 1
            self.end = seq if self.end is None else min(self.end, seq)
            self.cond.notify_all()

    def _work(self):
        if self.cuda:
            torch.cuda.set_device(self.device)
        while (job := self._take()) is not None:
            seq, key, idx = job
            try:
                item = (key,) + self._produce(idx)
            except BaseException as e:  # noqa: BLE001 - re-raised in the consumer thread, in order
                item = e
            with self.cond:
                self.in_flight -= 1
                self.results[seq] = item
                if isinstance(item, BaseException):
                    self.end = seq + 1 if self.end is None else min(self.end, seq + 1)
                self.cond.notify_all()

    def _produce(self, idx) -> tuple:
        """(batch, copy-done event or None) for `idx`."""
        if self.device is None:
            return to_tensors(self.dataset.get_batch(idx), self.pin), None
        with self.cond:  # a free slot always exists: each of the workers holds at most one
            slot = self.slots.pop()
        try:
            if slot.ready is not None:
                slot.ready.synchronize()  # its previous batch is still being copied to the device
                slot.ready = None
            out = slot.arrays(len(idx)) if self.takes_out else None
            host = slot.fill(self.dataset.get_batch(idx, out=out) if out else self.dataset.get_batch(idx))
            if not self.cuda:  # numpy's copy: large numpy allocations get huge pages, torch's clone does not
                return {k: (torch.from_numpy(v.numpy().copy()) if isinstance(v, torch.Tensor) else v)
                        for k, v in host.items()}, None
            stream = getattr(self.local, "stream", None)
            if stream is None:
                stream = self.local.stream = torch.cuda.Stream(self.device)
            with torch.cuda.stream(stream):
                batch = {k: (v.to(self.device, non_blocking=True) if isinstance(v, torch.Tensor) else v)
                         for k, v in host.items()}
                slot.ready = torch.cuda.Event()
                slot.ready.record(stream)
            return batch, slot.ready
        finally:
            with self.cond:
                self.slots.append(slot)

    # ---- consumer
    def __iter__(self):
        while True:
            t0 = time.perf_counter()
            with self.cond:
                self.cond.wait_for(lambda: self.consumed in self.results or
                                   (self.end is not None and self.consumed >= self.end))
                if self.consumed not in self.results:
                    return
                item = self.results.pop(self.consumed)
                self.consumed += 1
                self.cond.notify_all()
            wait = time.perf_counter() - t0
            if isinstance(item, BaseException):
                if isinstance(item, (DataError, ConfigError)):
                    raise item
                raise DataError(f"reading a batch failed: {type(item).__name__}: {item}") from item
            key, batch, ready = item
            if ready is not None:
                # the compute stream waits for the side-stream copy; record_stream keeps the caching allocator
                # from handing these blocks to the side stream again before the compute stream is done with them
                current = torch.cuda.current_stream(self.device)
                current.wait_event(ready)
                for v in batch.values():
                    if isinstance(v, torch.Tensor):
                        v.record_stream(current)
            yield key, batch, wait

    def close(self):
        with self.cond:
            self.stop = True
            self.results.clear()
            self.cond.notify_all()
        for t in self.threads:
            t.join(timeout=5)
