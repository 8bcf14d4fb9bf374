"""What a checkpoint costs the training thread: synchronous writes (MMF's way) vs the trainer's background writer.

    python bench/checkpoint.py                       # full-size M4C + Adam state on this machine's device
    python bench/checkpoint.py --device cuda --step-ms 28
    python bench/checkpoint.py --tiny                # seconds; what the smoke test runs

For each way it saves the real trainer state (M4C weights, Adam moments, counters, RNG) under current.ckpt and
models/model_<N>.ckpt with `mmftrain.checkpoint.Checkpointer`, `--repeat` times, and reports the stall: the time
the training thread is blocked in save() (sync: serialise + fsync + copy; background: the copy to host memory
and waiting for the previous write). Then it runs a matmul loop while a background write is in flight and reports
its speed relative to the same loop alone (the writer competes for CPU and memory bandwidth). The projected share
of a run is stall / (interval x step time) for checkpoint_interval 1000 and 100, with --step-ms the measured
time of one update on the target machine (28 ms = batch 128 at ~4,550 samples/s on an H100, issue 12).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mmftrain import checkpoint  # noqa: E402
from mmftrain.models import build_m4c  # noqa: E402

TINY = {"text_bert": {"num_hidden_layers": 1, "hidden_size": 64, "num_attention_heads": 2,
                      "intermediate_size": 128},
        "mmt": {"hidden_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 128},
        "classifier": {"ocr_ptr_net": {"hidden_size": 64, "query_key_size": 64}}}


def trainer_state(device: torch.device, tiny: bool) -> dict:
    """The state a Trainer checkpoints, with Adam's moments filled by one step."""
    model = build_m4c(5000, **(TINY if tiny else {})).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    for p in model.parameters():
        p.grad = torch.randn_like(p) * 1e-3
    optimizer.step()
    return {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "num_updates": 1000,
            "rng": [checkpoint.rng_state()], "config": {"bench": True}}


def measure(state: dict, folder: Path, background: bool, repeat: int) -> tuple[list[float], list[float]]:
    """(stalls, write times) of `repeat` saves spaced so that each write finishes before the next save, as in
    training, where saves are checkpoint_interval updates apart."""
    writer = checkpoint.Checkpointer(folder, max_to_keep=2, background=background)
    stall, write = [], []
    for i in range(repeat):
        before = writer.stall_s
        start = time.perf_counter()
        writer.save(["current.ckpt", f"models/model_{i}.ckpt"], state)
        stall.append(writer.stall_s - before)
        writer.wait()
        write.append(time.perf_counter() - start)
    return stall, write


def interference(state: dict, folder: Path, device: torch.device) -> float:
    """Speed of a matmul loop while a background write runs, relative to the loop alone."""
    a = torch.randn(512, 512, device=device)

    def loop(seconds: float) -> float:
        n, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            (a @ a).sum().item()
            n += 1
        return n / (time.perf_counter() - start)

    alone = loop(1.0)
    writer = checkpoint.Checkpointer(folder, max_to_keep=1)
    writer.save(["current.ckpt"], state)
    start, n = time.perf_counter(), 0
    while writer._thread is not None and writer._thread.is_alive():
        (a @ a).sum().item()
        n += 1
    during = n / max(time.perf_counter() - start, 1e-9)
    writer.wait()
    return during / alone


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--step-ms", type=float, default=28.0, help="one update's time on the target machine")
    ap.add_argument("--tiny", action="store_true", help="a tiny model (smoke test)")
    ap.add_argument("--dir", default=None, help="where to write (default: a temp folder)")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    state = trainer_state(device, args.tiny)
    size = sum(t.numel() * t.element_size() for t in _tensors(state))
    print(f"state: {size / 2**20:.0f} MiB of tensors on {device}; two files per save (current + periodic)")
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        sync, _ = measure(state, Path(tmp) / "sync", False, args.repeat)
        snapshot, write = measure(state, Path(tmp) / "background", True, args.repeat)
        ratio = interference(state, Path(tmp) / "interference", device)
    sync_s, snapshot_s, write_s = (statistics.median(x) for x in (sync, snapshot, write))
    show = lambda xs: ", ".join(f"{x * 1e3:.0f}" for x in xs)  # noqa: E731
    print(f"sync save (stall = whole write): {sync_s * 1e3:8.1f} ms  (runs: {show(sync)})")
    print(f"background: stall (host copy)    {snapshot_s * 1e3:8.1f} ms  (runs: {show(snapshot)}); "
          f"its write takes {write_s * 1e3:.0f} ms off the training thread")
    print(f"ratio: background stall = {snapshot_s / sync_s:.3f} x sync stall; a compute loop runs at "
          f"{ratio:.2f} x its speed while a write is in flight")
    for interval in (1000, 100):
        budget = interval * args.step_ms / 1e3
        # a write longer than the interval makes the next save wait for it
        background_s = snapshot_s + max(0.0, write_s - budget)
        print(f"checkpoint_interval={interval} at {args.step_ms:g} ms/update ({budget:.1f} s apart): "
              f"sync {sync_s / budget:.2%} of the run, background {background_s / budget:.2%}")
    return 0


def _tensors(value):
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _tensors(v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _tensors(v)


if __name__ == "__main__":
    sys.exit(main())
