"""The trainer's loader: several prefetch workers and the staging ring must not change a single batch.

Reference = the plain path: `set_epoch(epoch)` then `get_batch(indices)` for each sampler batch, one at a time.
The synthetic packed store has questions whose teacher-forcing sequence changes with the epoch, so a worker that
read a batch under the wrong epoch would be caught.
"""
import time
import traceback

import numpy as np
import pytest
import torch

from mmftrain.data import Prefetcher, TrainSampler, loader_workers, takes_out
from mmftrain.errors import ConfigError, DataError

BATCH = 8


@pytest.fixture(scope="module")
def packed(tmp_path_factory):
    from mmfdata.build import pack_dataset
    from mmfdata.configs import default_dataset_config
    from mmfdata.packed import PackedDataset
    from mmfdata.synth import write_synthetic

    out = tmp_path_factory.mktemp("synth")
    write_synthetic(str(out), questions=64, seed=3, val_questions=8, test_questions=8)
    (pack_dir,) = pack_dataset("textvqa", default_dataset_config("textvqa"), str(out), ["train"])
    return PackedDataset(pack_dir, seed=5)


class GatherDataset:
    """A dataset that supports `get_batch(indices, out=...)`: every field gathered with np.take from whole-split
    arrays, into the caller's arrays when given (and it remembers which ones it wrote into)."""

    def __init__(self, packed):
        self.packed, self.epoch = packed, 0
        self.name, self.split, self.answer_vocab = packed.name, packed.split, packed.answer_vocab
        self.wrote_into: list[int] = []

    def __len__(self):
        return len(self.packed)

    def set_epoch(self, epoch):
        self.epoch = epoch

    def get_batch(self, indices, out=None):
        # concurrent calls all set the same epoch: the Prefetcher switches epochs only while no batch is read
        self.packed.set_epoch(self.epoch)
        full = self.packed.get_batch(np.arange(len(self.packed)))
        batch = {}
        for k, v in full.items():
            dst = (out or {}).get(k)
            if dst is not None and v.dtype != object:
                np.take(v, indices, axis=0, out=dst)
                self.wrote_into.append(dst.__array_interface__["data"][0])
                batch[k] = dst
            else:
                batch[k] = v[indices]
        return batch


def sampler_keyed(n, seed, epoch=0, start=0, count=20):
    """`count` sampler keys and batches from global batch `start` of `epoch` (the sampler counts samples)."""
    sampler = TrainSampler(n, BATCH, seed=seed)
    it = sampler.iterate(epoch, start * BATCH)
    return [((e, at), idx) for (e, at, idx), _ in zip(it, range(count))]


def reference(ds, keyed):
    out = []
    for (epoch, _), idx in keyed:
        ds.set_epoch(epoch)
        out.append({k: (np.array(v) if v.dtype != object else list(v)) for k, v in ds.get_batch(idx).items()})
    return out


def collect(ds, keyed, **kw):
    loader = Prefetcher(ds, iter(keyed), pin=False, epoch_of=lambda key: key[0], **kw)
    try:
        return [(key, batch) for key, batch, _ in loader]
    finally:
        loader.close()


def assert_same(got, keyed, ref):
    assert [k for k, _ in got] == [k for k, _ in keyed]
    for (key, batch), want in zip(got, ref):
        assert set(batch) == set(want), key
        for name, value in want.items():
            if isinstance(value, list):
                assert batch[name] == value, (key, name)
            else:
                np.testing.assert_array_equal(batch[name].numpy(), value, err_msg=f"{key} {name}")


def test_epochs_change_teacher_forcing(packed):
    # guards the tests below: without this, reading under the wrong epoch would go unnoticed
    keyed = sampler_keyed(len(packed), seed=1, count=24)
    ref = reference(packed, keyed)
    by_epoch = {}
    for ((epoch, _), idx), batch in zip(keyed, ref):
        for q, prev in zip(idx, batch["train_prev_inds"]):
            by_epoch.setdefault(int(q), {})[epoch] = tuple(prev)
    assert any(len(set(v.values())) > 1 for v in by_epoch.values())


@pytest.mark.parametrize("workers", [1, 2, 4])
@pytest.mark.parametrize("staged", [False, True])
def test_workers_give_the_plain_batches_in_order(packed, workers, staged):
    keyed = sampler_keyed(len(packed), seed=1, count=24)  # 8 batches per epoch: crosses two epoch boundaries
    ref = reference(packed, keyed)
    got = collect(packed, keyed, workers=workers, depth=1, device=torch.device("cpu") if staged else None)
    # the staged batches are kept until here: a reused ring slot showing through would corrupt earlier ones
    assert_same(got, keyed, ref)


def test_four_workers_on_the_lmdb_path_give_the_plain_batches(tmp_path):
    """The LMDB dataset (stores never opened in this process before) read by 4 loader threads at once."""
    from mmfdata.build import build_dataset
    from mmfdata.configs import default_dataset_config
    from mmfdata.synth import write_synthetic

    write_synthetic(str(tmp_path), questions=64, seed=6, val_questions=8, test_questions=8)
    cfg = default_dataset_config("textvqa")
    ds = build_dataset("textvqa", cfg, "train", str(tmp_path), prefer_packed=False, seed=2)
    keyed = sampler_keyed(len(ds), seed=1, count=12)
    got = collect(ds, keyed, workers=4, depth=1)
    plain = build_dataset("textvqa", cfg, "train", str(tmp_path), prefer_packed=False, seed=2)
    assert_same(got, keyed, reference(plain, keyed))


class SlowEpochDataset(GatherDataset):
    """Reads its epoch at the start and the end of a slow get_batch and remembers whether it moved."""

    moved = False

    def get_batch(self, indices, out=None):
        epoch = self.epoch
        time.sleep(0.01)
        self.moved |= epoch != self.epoch
        return super().get_batch(indices, out)


def test_the_epoch_never_changes_while_a_batch_is_read(packed):
    ds = SlowEpochDataset(packed)
    keyed = sampler_keyed(len(packed), seed=4, count=24)
    got = collect(ds, keyed, workers=4, depth=4, device=torch.device("cpu"))
    assert not ds.moved
    assert_same(got, keyed, reference(packed, keyed))


def test_resume_mid_epoch_gives_the_same_next_batches(packed):
    full = sampler_keyed(len(packed), seed=7, count=20)
    resumed = sampler_keyed(len(packed), seed=7, epoch=1, start=3, count=9)
    assert [k for k, _ in resumed] == [k for k, _ in full[11:20]]
    ref = reference(packed, full)[11:20]
    packed.set_epoch(0)  # a fresh process starts at epoch 0; the loader must switch to the resumed epoch
    assert_same(collect(packed, resumed, workers=3, device=torch.device("cpu")), resumed, ref)


def test_gathers_straight_into_reused_staging_buffers(packed):
    ds = GatherDataset(packed)
    assert takes_out(ds) and takes_out(packed)  # the packed store gathers in place too (mmfdata.packed)
    keyed = sampler_keyed(len(packed), seed=2, count=12)
    ref = reference(packed, keyed)
    got = collect(ds, keyed, workers=2, device=torch.device("cpu"))
    assert_same(got, keyed, ref)
    # a slot's first batch teaches it the shapes (3 slots for 2 workers); after that every array field of every
    # batch is gathered in place, into one of the slots' buffers
    fields = sum(1 for v in ref[0].values() if not isinstance(v, list))
    assert len(ds.wrote_into) >= fields * (len(keyed) - 3)
    assert len(set(ds.wrote_into)) <= fields * 3


class FailingDataset(GatherDataset):
    def get_batch(self, indices, out=None):
        if 13 in indices:
            raise ValueError("feature row 13 is corrupt")
        return super().get_batch(indices)


@pytest.mark.parametrize("staged", [False, True])
def test_a_failing_batch_raises_in_order_after_the_good_ones(packed, staged):
    keyed = [((0, i), np.arange(i * 4, i * 4 + 4)) for i in range(8)]  # batch 3 holds question 13
    loader = Prefetcher(FailingDataset(packed), iter(keyed), pin=False, workers=3,
                        device=torch.device("cpu") if staged else None)
    seen = []
    with pytest.raises(DataError, match="reading a batch failed: ValueError: feature row 13 is corrupt"):
        for key, _, _ in loader:
            seen.append(key)
    loader.close()
    assert seen == [(0, 0), (0, 1), (0, 2)]


def test_a_failing_sampler_raises_after_its_batches(packed):
    def keyed():
        yield (0, 0), np.arange(4)
        yield (0, 1), np.arange(4, 8)
        raise RuntimeError("sampler broke")

    loader = Prefetcher(packed, keyed(), pin=False, workers=2)
    seen = []
    with pytest.raises(DataError, match="RuntimeError: sampler broke"):
        for key, _, _ in loader:
            seen.append(key)
    loader.close()
    assert seen == [(0, 0), (0, 1)]


def test_close_mid_stream_stops_the_workers(packed):
    def forever():
        i = 0
        while True:
            yield (0, i), np.arange(i % 8 * 8, i % 8 * 8 + 8)
            i += 1

    loader = Prefetcher(packed, forever(), pin=False, workers=3, depth=2, device=torch.device("cpu"))
    for n, _ in enumerate(loader):
        if n == 4:
            break
    time.sleep(0.05)  # let the workers fill the window ahead; they must then wait, not run away
    assert loader.taken <= loader.consumed + loader.ahead
    t0 = time.perf_counter()
    loader.close()
    assert time.perf_counter() - t0 < 5
    assert not any(t.is_alive() for t in loader.threads)


def test_loader_workers_are_what_the_user_set():
    assert [loader_workers(n) for n in (None, 0, 1, 4, 64)] == [1, 1, 1, 4, 64]  # not capped to the cores
    for bad in (-1, 65, 2.5, "4", True):
        with pytest.raises(ConfigError, match="training.num_workers"):
            loader_workers(bad)


def test_a_worker_error_keeps_its_traceback(packed):
    keyed = [((0, i), np.arange(i * 4, i * 4 + 4)) for i in range(8)]
    loader = Prefetcher(FailingDataset(packed), iter(keyed), pin=False, workers=4)
    with pytest.raises(DataError) as err:
        for _ in loader:
            pass
    loader.close()
    text = "".join(traceback.format_exception(err.value))
    # the worker thread's frames, down to the line that raised, survive the hop to the consumer thread
    assert 'raise ValueError("feature row 13 is corrupt")' in text and "in get_batch" in text
    assert "in _work" in text


def test_packed_store_gathers_straight_into_caller_buffers(tmp_path):
    import numpy as np

    from mmfdata.build import build_dataset, pack_dataset
    from mmfdata.configs import default_dataset_config
    from mmfdata.synth import write_synthetic

    write_synthetic(str(tmp_path), questions=24, seed=5)
    cfg = default_dataset_config("textvqa")
    pack_dataset("textvqa", cfg, str(tmp_path))
    ds = build_dataset("textvqa", cfg, "train", str(tmp_path))
    idx = np.array([3, 0, 7, 5])
    plain = {k: v.copy() for k, v in ds.get_batch(idx).items() if k in ("obj_feat", "ocr_feat", "ocr_phoc")}
    bufs = {k: np.zeros_like(v) for k, v in plain.items()}
    got = ds.get_batch(idx, out=bufs)
    for k, v in plain.items():
        assert got[k] is bufs[k] and np.array_equal(bufs[k], v)


def test_mmf_train_on_the_lmdb_path_with_four_loader_workers(tmp_path):
    """The MMF-format data as users have it (no `mmf data pack`), through the real CLI, four loader threads all
    reaching their first LMDB read together (on the H100 this failed at the first batch)."""
    import json
    import os
    import subprocess
    import sys

    from mmfdata.synth import write_synthetic

    data = tmp_path / "data"
    write_synthetic(str(data), questions=64, seed=2, val_questions=8, test_questions=8)
    cmd = [sys.executable, "-c", "from mmfzoo_cli.main import main; main()", "train",
           "config=projects/m4c/configs/textvqa/tiny.yaml", "datasets=textvqa", "model=m4c", "run_type=train",
           f"env.data_dir={data}", f"env.save_dir={tmp_path / 'save'}", "env.fetch_missing_data=false",
           "training.num_workers=4", "training.batch_size=8", "training.max_updates=6", "training.log_interval=1",
           "training.evaluation_interval=1000", "training.checkpoint_interval=1000",
           "model_config.m4c.mmt.num_hidden_layers=1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    # the data logger's warning reaches the console (stderr, as every log line: zoo.logfmt) and train.log
    assert "falling back to the LMDB path" in r.stderr and not (data / "packed").exists(), r.stderr[-3000:]
    assert "falling back to the LMDB path" in (tmp_path / "save" / "train.log").read_text()
    records = [json.loads(line) for line in (tmp_path / "save" / "metrics.jsonl").read_text().splitlines()]
    assert [rec["num_updates"] for rec in records if "train/total_loss" in rec] == [1, 2, 3, 4, 5, 6]
