"""Process-group setup for the launchers `mmf train` runs under, and small collectives.

Launchers (`detect_launch`, a pure function of the environment; this module owns the rules):
- torchrun (also torch.distributed.launch): RANK / WORLD_SIZE / LOCAL_RANK, rendezvous env://. Its variables win
  when SLURM's are present too (`srun torchrun ...`, or torchrun in a batch script).
- srun without torchrun: one task per process; SLURM_PROCID / SLURM_STEP_NUM_TASKS (else SLURM_NTASKS) /
  SLURM_LOCALID, as MMF's infer_init_method and Lightning's SLURMEnvironment read them. The rendezvous is the
  first host of the step's node list (SLURM_STEP_NODELIST, SLURM_NODELIST, SLURM_JOB_NODELIST, in the compressed
  `node[01-03,07]` form, expanded here) unless MASTER_ADDR is set, on MASTER_PORT, else 15000 + the last 4
  digits of the job id (Lightning's rule: the tasks of one job agree on it without talking). One task: one process.
- otherwise a single process (LOCAL_RANK, from `--local_rank`, picks the GPU).
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass, field
from typing import Iterator, Mapping

import torch
import torch.distributed as dist

from mmftrain.errors import TrainError

SLURM_NODELISTS = ("SLURM_STEP_NODELIST", "SLURM_NODELIST", "SLURM_JOB_NODELIST")  # the step's own list first
SLURM_NTASKS = ("SLURM_STEP_NUM_TASKS", "SLURM_NTASKS", "SLURM_NPROCS")
SLURM_PORT_BASE = 15000  # + the job id's last 4 digits (Lightning's SLURMEnvironment.main_port)
DEFAULT_PORT = 29500  # torchrun's, for a SLURM launch without a job id


class LaunchError(TrainError):
    """The launcher's environment variables do not describe a usable process group."""


@dataclass(frozen=True)
class Launch:
    """How this process was started: which launcher, its place in the group, where the group meets."""
    launcher: str = "single"         # torchrun | slurm | single
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    master_addr: str | None = None   # slurm: the rendezvous (torchrun's env:// reads its own variables)
    master_port: int | None = None
    job_id: str | None = None        # SLURM_JOB_ID under any launcher inside a SLURM job
    restarts: int = 0                # how often this same command was started again (torchrun, SLURM requeue)

    @property
    def init_method(self) -> str:
        if self.launcher != "slurm":
            return "env://"
        host = f"[{self.master_addr}]" if ":" in str(self.master_addr) else self.master_addr
        return f"tcp://{host}:{self.master_port}"


def detect_launch(env: Mapping[str, str]) -> Launch:
    """The launch `env` describes (see the module's docstring for the rules).

    Raises:
        LaunchError: a variable that is not a number, a rank outside the group, a node list that cannot be read.
    """
    job = env.get("SLURM_JOB_ID") or env.get("SLURM_JOBID") or None
    restarts = _count(env, "TORCHELASTIC_RESTART_COUNT", 0) + _count(env, "SLURM_RESTART_COUNT", 0)
    if "WORLD_SIZE" in env or "RANK" in env:
        launch = Launch("torchrun", _count(env, "RANK", 0), _count(env, "WORLD_SIZE", 1),
                        _count(env, "LOCAL_RANK", 0), job_id=job, restarts=restarts)
    else:
        ntasks = next((_count(env, name, 1) for name in SLURM_NTASKS if env.get(name)), 1)
        if "SLURM_PROCID" in env and ntasks > 1:
            launch = Launch("slurm", _count(env, "SLURM_PROCID", 0), ntasks, _count(env, "SLURM_LOCALID", 0),
                            env.get("MASTER_ADDR") or _slurm_master(env), _slurm_port(env, job), job, restarts)
        else:
            launch = Launch("single", 0, 1, _count(env, "LOCAL_RANK", 0), job_id=job, restarts=restarts)
    if launch.world < 1 or not 0 <= launch.rank < launch.world:
        names = "RANK/WORLD_SIZE" if launch.launcher == "torchrun" else "SLURM_PROCID/SLURM_NTASKS"
        raise LaunchError(f"{names} say rank {launch.rank} of {launch.world} processes: not a process of the group; "
                          "launch with torchrun or srun, which set them")
    return launch


def _count(env: Mapping[str, str], name: str, default: int) -> int:
    text = env.get(name)
    if text is None or text == "":
        return default
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise LaunchError(f"{name}={text!r} is not a count; unset it or launch with torchrun or srun, which set it")
    return value


def _slurm_master(env: Mapping[str, str]) -> str:
    name = next((n for n in SLURM_NODELISTS if env.get(n)), None)
    if name is None:
        raise LaunchError(f"srun launch without a node list ({', '.join(SLURM_NODELISTS)} unset): set MASTER_ADDR "
                          "to the host of task 0")
    try:
        return next(expand_hostlist(env[name]))
    except (ValueError, StopIteration) as e:
        raise LaunchError(f"{name}={env[name]!r} is not a SLURM host list ({e}); set MASTER_ADDR to the host of "
                          "task 0") from None


def _slurm_port(env: Mapping[str, str], job: str | None) -> int:
    if env.get("MASTER_PORT"):
        port = _count(env, "MASTER_PORT", DEFAULT_PORT)
    else:
        digits = re.sub(r"\D", "", job or "")
        port = SLURM_PORT_BASE + int(digits[-4:]) if digits else DEFAULT_PORT
    if not 0 < port < 65536:
        raise LaunchError(f"MASTER_PORT={port} is not a TCP port; set MASTER_PORT to a free port in 1..65535")
    return port


def expand_hostlist(text: str) -> Iterator[str]:
    """The hosts of a SLURM host list, in order: `a[01-03,07],b` -> a01, a02, a03, a07, b (the width of a range's
    first number pads them all; several bracket groups in one name multiply). Lazy: a node list of a
    thousand nodes costs nothing when only its first host is read.

    Raises:
        ValueError: unbalanced brackets, a range that is not `N` or `N-M` with N <= M, an empty name.
    """
    for entry in _top_level_entries(text.strip()):
        yield from _expand_entry(entry)


def _top_level_entries(text: str) -> list[str]:
    entries, depth, start = [], 0, 0
    for i, char in enumerate(text):
        depth += {"[": 1, "]": -1}.get(char, 0)
        if depth not in (0, 1):
            raise ValueError("unbalanced brackets")
        if char == "," and depth == 0:
            entries.append(text[start:i])
            start = i + 1
    if depth:
        raise ValueError("unbalanced brackets")
    entries.append(text[start:])
    if not all(entries):
        raise ValueError("an empty host name")
    return entries


def _expand_entry(entry: str) -> Iterator[str]:
    open_at = entry.find("[")
    if open_at < 0:
        yield entry
        return
    close_at = entry.index("]", open_at)
    prefix, body, rest = entry[:open_at], entry[open_at + 1:close_at], entry[close_at + 1:]
    for item in body.split(","):
        low, _, high = item.partition("-")
        if not low.isdigit() or not (high or low).isdigit() or int(high or low) < int(low):
            raise ValueError(f"range {item!r}")
        for number in range(int(low), int(high or low) + 1):
            for tail in _expand_entry(rest):
                yield f"{prefix}{number:0{len(low)}d}{tail}"


def requeue_slurm_job(job_id: str) -> str | None:
    """`scontrol requeue JOB` (what Lightning's auto-requeue calls): SLURM ends this job's processes and starts the
    same batch script again. None once scontrol accepted it, else why not (one line)."""
    try:
        done = subprocess.run(["scontrol", "requeue", job_id], capture_output=True, text=True, timeout=120)
    except FileNotFoundError:
        return "scontrol is not on PATH"
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"scontrol requeue {job_id} failed: {e}"
    if done.returncode:
        said = (done.stderr.strip() or done.stdout.strip()).splitlines()
        return f"scontrol requeue {job_id} exited with {done.returncode}" + (f": {said[-1]}" if said else "")
    return None


@dataclass
class DistInfo:
    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")
    launch: Launch = field(default_factory=Launch)

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup(device_pref: str = "cuda", backend: str = "nccl", launch: Launch | None = None) -> DistInfo:
    """Initialise the process group when launched as several processes (`detect_launch`) and pick this rank's
    device. CUDA is used when asked for and available (falls back to CPU as MMF does); on CPU the backend is gloo."""
    launch = launch or detect_launch(os.environ)
    use_cuda = str(device_pref).startswith("cuda") and torch.cuda.is_available()
    device = torch.device("cuda", launch.local_rank) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    if launch.world > 1 and not dist.is_initialized():
        if launch.launcher == "slurm" and launch.rank == 0:
            # one line before a wait that, with a task missing, lasts until the rendezvous times out
            print(f"srun task 0 of {launch.world} (SLURM_PROCID, SLURM_NTASKS): meeting the other tasks at "
                  f"{launch.master_addr}:{launch.master_port}", file=sys.stderr, flush=True)
        store = _store_of_restarted_group(launch, os.environ)
        where = {"store": store} if store is not None else {"init_method": launch.init_method}
        dist.init_process_group(backend=backend if use_cuda else "gloo", world_size=launch.world,
                                rank=launch.rank, **where)
    return DistInfo(launch.rank, launch.world, device, launch)


def _store_of_restarted_group(launch: Launch, env: Mapping[str, str]):
    """torchrun keeps one TCPStore for every restart of a group (TORCHELASTIC_USE_AGENT_STORE), with the failed
    workers' keys in it: a restarted worker may read a dead peer's address (gloo: "connectFullMesh failed ...
    Connection refused", or a hang; pytorch/pytorch#135712). On one node every worker has the same restart count,
    so the group's keys go under a prefix of its own. Several nodes' agents count restarts apart (one that did not
    fail restarts without counting): there only torchrun can help, with TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1."""
    if launch.launcher != "torchrun" or not launch.restarts or env.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        return None
    if env.get("LOCAL_WORLD_SIZE") != str(launch.world):
        if launch.rank == 0:
            print("torchrun restarted this group on several nodes with its shared TCPStore, which may hand the new "
                  "workers the failed ones' addresses (pytorch/pytorch#135712); if they fail to connect, launch "
                  "torchrun with TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1", file=sys.stderr, flush=True)
        return None
    store, _, _ = next(dist.rendezvous("env://", launch.rank, launch.world))
    return dist.PrefixStore(f"mmftrain/restart-{launch.restarts}/", store)


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
    return bool(max_int(1 if flag else 0, device))


def max_int(value: int, device: torch.device) -> int:
    """The largest of every rank's `value`, on every rank."""
    if not active():
        return value
    values = torch.tensor([value], device=device)
    dist.all_reduce(values, op=dist.ReduceOp.MAX)
    return int(values.item())


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
