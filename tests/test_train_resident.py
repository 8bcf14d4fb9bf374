"""`training.features_on_device`: batches gathered from device-resident features are byte for byte the plain
path's, through the trainer's loader, for one packed store and for a concatenation (joint training); the trainer
gives the same losses with it; LMDB-backed data gets a clear error."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from mmftrain.data import Prefetcher, TrainSampler
from mmftrain.errors import ConfigError
from mmftrain.resident import FEATURES, DeviceFeatures

ROOT = Path(__file__).resolve().parent.parent
TINY = "projects/m4c/configs/textvqa/tiny.yaml"


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from mmfdata.build import pack_dataset
    from mmfdata.configs import default_dataset_config
    from mmfdata.synth import write_synthetic

    out = tmp_path_factory.mktemp("synth")
    write_synthetic(str(out), questions=96, seed=4, val_questions=24, test_questions=8)
    dirs = pack_dataset("textvqa", default_dataset_config("textvqa"), str(out), ["train", "val"])
    return out, dirs


def _loaded(ds, keyed, features=None):
    """Batches as the trainer sees them: Prefetcher with a device (CPU here), then the device gather."""
    pf = Prefetcher(ds, iter(keyed), pin=False, depth=2, epoch_of=lambda k: k[0], workers=2,
                    device=torch.device("cpu"))
    try:
        return [features.materialize(b) if features else b for _, b, _ in pf]
    finally:
        pf.close()


def _assert_same(plain: list, resident: list):
    assert len(plain) == len(resident) > 0
    for a, b in zip(plain, resident):
        assert set(a) == set(b)
        for k in a:
            if isinstance(a[k], torch.Tensor):
                assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, k
                assert torch.equal(a[k].view(torch.uint8) if a[k].is_floating_point() else a[k],
                                   b[k].view(torch.uint8) if b[k].is_floating_point() else b[k]), k
            else:
                assert a[k] == b[k], k


@pytest.mark.parametrize("joint", [False, True])
def test_resident_batches_equal_the_plain_path_byte_for_byte(data, joint):
    from mmfdata import ConcatDataset
    from mmfdata.packed import PackedDataset

    _, dirs = data
    make = lambda: (ConcatDataset([PackedDataset(d, seed=7) for d in dirs]) if joint  # noqa: E731
                    else PackedDataset(dirs[0], seed=7))
    plain_ds, wrapped = make(), make()
    features = DeviceFeatures(wrapped, torch.device("cpu"))
    assert features.dataset is not wrapped and len(features.dataset) == len(plain_ds)
    sampler = TrainSampler(len(plain_ds), 16, seed=3)
    keyed = [((e, i), idx) for (e, i, idx), _ in zip(sampler.iterate(0), range(2 * sampler.batches_per_epoch))]
    assert {k[0] for k, _ in keyed} == {0, 1}  # two epochs: the teacher-forcing draw changes with the epoch
    plain = _loaded(plain_ds, keyed)
    resident = _loaded(features.dataset, keyed, features)
    _assert_same(plain, resident)
    # the loader moved row numbers, not features
    raw = _loaded(features.dataset, keyed[:1])[0]
    assert all(raw[k].shape == (16, 1) and raw[k].dtype == torch.int64 for k in FEATURES)
    n_img = sum(len(p.a["obj_feat"]) for p in (plain_ds.datasets if joint else [plain_ds]))
    assert features.tensors["obj_feat"].shape[0] == n_img
    # the wrapped dataset itself still serves real features (the proxies are copies)
    assert wrapped.get_batch(np.arange(4))["obj_feat"].dtype == np.float16


def test_resident_features_need_packed_stores(data):
    class LmdbLike:
        name, split = "textvqa", "train"

    with pytest.raises(ConfigError, match="mmf data pack textvqa"):
        DeviceFeatures(LmdbLike(), torch.device("cpu"))


def test_features_that_leave_no_room_to_train_are_refused_before_any_copy(data, tmp_path):
    """A store whose objects are a sparse file larger than this machine's RAM: refused with the sizes and the
    fix, before anything is copied (the copy would take minutes and then fail, or swap the machine to death)."""
    from mmfdata.packed import PackedDataset
    from mmftrain.resident import free_memory

    available, total = free_memory(torch.device("cpu"))
    ds = PackedDataset(data[1][0], seed=7)
    rows = (total + (1 << 30)) // (100 * 2048 * 2) + 1
    huge = tmp_path / "obj_feat.f16"
    with open(huge, "wb") as f:
        f.truncate(rows * 100 * 2048 * 2)  # sparse: no disk used
    ds.a = {**ds.a, "obj_feat": np.memmap(huge, np.float16, "r", shape=(rows, 100, 2048))}
    with pytest.raises(ConfigError, match=r"features_on_device=true needs .* GB on cpu .* only .* GB of .* GB is "
                                          r"free; set training.features_on_device=false"):
        DeviceFeatures(ds, torch.device("cpu"))
    assert 0 < available <= total


def _train(data_dir: Path, save: Path, *extra: str) -> list[float]:
    cmd = [sys.executable, "-m", "mmftrain.cli", f"config={TINY}", "datasets=textvqa", "model=m4c",
           "run_type=train", f"env.data_dir={data_dir}", f"env.save_dir={save}", "env.fetch_missing_data=false",
           "training.max_updates=4", "training.log_interval=1", "training.evaluation_interval=100",
           "training.checkpoint_interval=100", "training.batch_size=16", "training.num_workers=2", *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    recs = [json.loads(x) for x in (save / "metrics.jsonl").read_text().splitlines()]
    return [r["train/total_loss"] for r in recs if "train/total_loss" in r], proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def plain_losses(data, tmp_path_factory):
    losses, _ = _train(data[0], tmp_path_factory.mktemp("plain") / "save")
    assert len(losses) == 4
    return losses


def test_trainer_with_resident_features_gives_the_same_losses(data, plain_losses, tmp_path):
    resident, log = _train(data[0], tmp_path / "resident", "training.features_on_device=true")
    assert "train features resident on cpu" in log
    assert resident == plain_losses  # same batches, same arithmetic: bit-identical losses


@pytest.mark.slow  # inductor's C++ compilation of the tiny model takes ~2 min on 2 shared cores
def test_compiled_reduce_overhead_with_resident_features_tracks_the_eager_losses(data, plain_losses, tmp_path):
    losses, log = _train(data[0], tmp_path / "compiled", "training.compile=true",
                         "training.compile_mode=reduce-overhead", "training.features_on_device=true")
    assert "falling back to eager" not in log and "training eager" not in log, log[-2000:]
    assert losses != plain_losses  # really compiled: kernels round differently
    assert losses == pytest.approx(plain_losses, rel=2e-2)


def test_unknown_compile_mode_is_a_config_error(data, tmp_path):
    from mmftrain.config import build_config

    with pytest.raises(ConfigError, match="compile_mode"):
        build_config([f"config={TINY}", "datasets=textvqa", "model=m4c", "training.compile_mode=fast"])


def test_unknown_attention_backend_is_a_config_error():
    from mmftrain.config import build_config

    with pytest.raises(ConfigError, match="attention_backend=.*one of auto, cudnn, flash, efficient, math"):
        build_config([f"config={TINY}", "datasets=textvqa", "model=m4c", "training.attention_backend=fast"])


@pytest.mark.parametrize("cuda,world,accumulate,expected", [
    (True, 1, 1, "reduce-overhead"),  # one GPU: CUDA graphs
    (True, 2, 1, "default"),  # DDP's hooks stay out of graphs
    (True, 1, 2, "default"),  # a graph's next replay would overwrite the accumulated gradients
    (False, 1, 1, "default"),  # no CUDA graphs on a CPU
])
def test_compile_mode_auto_uses_cuda_graphs_only_where_they_are_safe(cuda, world, accumulate, expected):
    from mmftrain.config import build_config
    from mmftrain.kernels import compile_mode

    cfg = build_config([f"config={TINY}", "datasets=textvqa", "model=m4c", f"training.update_frequency={accumulate}"])
    assert cfg["training"]["compile_mode"] == "auto"
    assert compile_mode(cfg["training"], cuda, world) == expected
    for mode in ("max-autotune", "reduce-overhead", "default"):
        explicit = dict(cfg["training"], compile_mode=mode)
        if cuda and accumulate > 1 and mode != "default":  # CUDA graphs would silently lose accumulated gradients
            with pytest.raises(ConfigError, match=f"compile_mode={mode} records CUDA graphs, which lose "
                                                  "accumulated gradients with training.update_frequency=2"):
                compile_mode(explicit, cuda, world)
        else:
            assert compile_mode(explicit, cuda, world) == mode  # an explicit mode is kept


def test_attention_backend_enables_exactly_its_kernels():
    from mmftrain.kernels import set_attention_backend

    def enabled():
        b = torch.backends.cuda
        return (b.cudnn_sdp_enabled(), b.flash_sdp_enabled(), b.mem_efficient_sdp_enabled(), b.math_sdp_enabled())
    try:
        set_attention_backend("math")
        assert enabled() == (False, False, False, True)
        set_attention_backend("efficient")
        assert enabled() == (False, False, True, True)
    finally:
        set_attention_backend("auto")
    assert enabled() == (True, True, True, True)


def test_a_compiler_that_fails_on_the_first_step_leaves_training_eager(monkeypatch, caplog):
    from mmftrain import kernels

    model = torch.nn.Linear(3, 2)
    calls = []

    class Broken:  # what torch.compile returns when its backend cannot build: fails at the first call
        _orig_mod = model

        def __call__(self, x):
            calls.append(x)
            raise RuntimeError("no C++ compiler found\nmore detail")
    monkeypatch.setattr(torch, "compile", lambda module, mode: Broken())
    training = {"compile": True, "compile_mode": "auto", "update_frequency": 1, "find_unused_parameters": False}
    forward = kernels.TrainForward(model, training, torch.device("cpu"), 1)
    x = torch.ones(4, 3)
    with caplog.at_level("WARNING", logger="mmftrain"):
        out = forward(x)
    assert len(calls) == 1  # the fault fired
    assert torch.equal(out, model(x)) and forward.module is model
    assert "torch.compile failed on the first step (RuntimeError: no C++ compiler found); falling back to eager" \
        in caplog.text
    forward(x)
    assert len(calls) == 1  # eager from then on
