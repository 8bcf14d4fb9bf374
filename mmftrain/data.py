"""Feeding the trainer: datasets from `mmfdata`, deterministic sharded sampling, a prefetching batch loader.

Sampling belongs to the trainer so that it can be checkpointed: the train order is a permutation drawn from
(seed, epoch), cut into global batches, each split evenly across ranks; the position (epoch, batch) is saved, so a
resumed run continues with exactly the next batch. Evaluation splits the question list into contiguous per-rank
ranges: no question is dropped or repeated (unlike a padding DistributedSampler).
"""
from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass

import numpy as np
import torch

from mmftrain.errors import ConfigError, DataError

TENSOR_KEYS = ("question_id", "text", "text_len", "obj_feat", "obj_bbox", "obj_num", "ocr_feat", "ocr_fasttext",
               "ocr_phoc", "ocr_bbox", "ocr_num", "train_prev_inds", "train_loss_mask", "target_first_inds",
               "target_first_scores", "target_seq")
LIST_KEYS = ("image_id", "ocr_tokens", "gt_answers")


def build_datasets(cfg: dict, split: str, seed: int = 0) -> dict:
    """{dataset name: dataset} for `split`, each built by `mmfdata.build_dataset` from `dataset_config.<name>`.

    `seed` fixes the teacher-forcing sequence mmfdata draws per (question, epoch).
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
                                              prefer_packed=bool(cfg["training"]["prefer_packed"]), seed=seed)
        except (mmfdata.DataError, FileNotFoundError, KeyError, ValueError, OSError) as e:
            msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise DataError(f"cannot build dataset {name} split {split} from {cfg['env']['data_dir']}: {msg}") \
                from None
    return out


def concat(datasets: dict):
    """One dataset over several (joint TextVQA + ST-VQA training), via mmfdata's ConcatDataset."""
    if len(datasets) == 1:
        return next(iter(datasets.values()))
    from mmfdata import ConcatDataset

    return ConcatDataset(list(datasets.values()))


@dataclass
class TrainSampler:
    """Deterministic per-epoch permutation, global batches of `global_batch`, this rank's slice of each."""

    num_samples: int
    global_batch: int
    rank: int = 0
    world: int = 1
    seed: int = 0

    def __post_init__(self):
        if self.global_batch % self.world:
            raise ConfigError(f"training.batch_size={self.global_batch} must be divisible by the number of "
                              f"processes ({self.world})")
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

    def iterate(self, epoch: int, start: int = 0):
        """Yield (epoch, index, indices) from batch `start` of `epoch` onwards, forever across epochs."""
        while True:
            perm = self.permutation(epoch)
            per_rank = self.global_batch // self.world
            for index in range(start, self.batches_per_epoch):
                s = index * self.global_batch + self.rank * per_rank
                yield epoch, index, perm[s:s + per_rank].astype(np.int64)
            epoch, start = epoch + 1, 0


def eval_shard(num_samples: int, rank: int, world: int) -> np.ndarray:
    """This rank's contiguous range of question indices: together the ranks cover each question exactly once."""
    lo, hi = num_samples * rank // world, num_samples * (rank + 1) // world
    return np.arange(lo, hi, dtype=np.int64)


def to_tensors(batch: dict, pin: bool) -> dict:
    """numpy batch -> torch tensors (zero-copy `from_numpy`, pinned for CUDA); object arrays -> Python lists."""
    out = {}
    for k, v in batch.items():
        if isinstance(v, np.ndarray) and v.dtype != object:
            t = torch.from_numpy(np.ascontiguousarray(v))
            out[k] = t.pin_memory() if pin else t
        else:
            out[k] = list(v)
    missing = [k for k in TENSOR_KEYS if k not in out]
    if missing:
        raise DataError(f"dataset batch lacks keys {missing} required by mmfdata/batch.py")
    return out


def to_device(batch: dict, device: torch.device) -> dict:
    return {k: (v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}


_END = object()


class Prefetcher:
    """Runs `dataset.get_batch` for the next batches in a background thread, so reading overlaps compute.

    Iterating yields (key, batch, wait_seconds): `wait_seconds` is how long the consumer blocked on data.
    The teacher-forcing sequence mmfdata draws is a hash of (seed, epoch, question), so calling
    `dataset.set_epoch(epoch_of(key))` before each batch makes batches independent of how far ahead the thread
    runs: a resumed run gets identical batches.
    """

    def __init__(self, dataset, keyed_indices, pin: bool, depth: int = 2, epoch_of=None):
        self.dataset, self.items, self.pin = dataset, iter(keyed_indices), pin
        self.epoch_of = epoch_of
        self.q: queue.Queue = queue.Queue(maxsize=max(1, depth))
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._work, daemon=True, name="mmftrain-prefetch")
        self.thread.start()

    def _work(self):
        try:
            for key, idx in self.items:
                if self.stop.is_set():
                    return
                if self.epoch_of is not None and hasattr(self.dataset, "set_epoch"):
                    self.dataset.set_epoch(self.epoch_of(key))
                batch = to_tensors(self.dataset.get_batch(idx), self.pin)
                while not self.stop.is_set():
                    try:
                        self.q.put((key, batch), timeout=0.1)
                        break
                    except queue.Full:
                        continue
        except BaseException as e:  # noqa: BLE001 - re-raised in the consumer thread
            self.q.put(e)
            return
        self.q.put(_END)

    def __iter__(self):
        while True:
            t0 = time.perf_counter()
            item = self.q.get()
            wait = time.perf_counter() - t0
            if item is _END:
                return
            if isinstance(item, BaseException):
                if isinstance(item, (DataError, ConfigError)):
                    raise item
                raise DataError(f"reading a batch failed: {type(item).__name__}: {item}") from item
            yield item[0], item[1], wait

    def close(self):
        self.stop.set()
        while True:  # unblock a producer waiting on a full queue
            try:
                self.q.get_nowait()
            except queue.Empty:
                break
        self.thread.join(timeout=5)
