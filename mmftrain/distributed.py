"""torchrun-native distributed setup (env:// RANK / WORLD_SIZE / LOCAL_RANK) and small collectives."""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class DistInfo:
    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup(device_pref: str = "cuda", backend: str = "nccl") -> DistInfo:
    """Initialise the process group when launched by torchrun (WORLD_SIZE > 1) and pick this rank's device.

    CUDA is used when asked for and available (falls back to CPU as MMF does); on CPU the backend is gloo.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = str(device_pref).startswith("cuda") and torch.cuda.is_available()
    device = torch.device("cuda", local) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend=backend if use_cuda else "gloo", init_method="env://",
                                world_size=world, rank=rank)
    return DistInfo(rank, world, device)


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def barrier() -> None:
    if active():
        dist.barrier()


def gather_objects(obj) -> list:
    """Every rank's `obj`, in rank order (a one-element list when not distributed)."""
    if not active():
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj, src: int = 0):
    """Rank `src`'s `obj` on every rank."""
    if not active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def any_flag(flag: bool, device: torch.device) -> bool:
    """True on every rank if any rank raised `flag` (so all ranks stop at the same update)."""
    if not active():
        return flag
    flags = torch.tensor([1 if flag else 0], device=device)
    dist.all_reduce(flags, op=dist.ReduceOp.MAX)
    return bool(flags.item())


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
