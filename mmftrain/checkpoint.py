"""Checkpoints: atomic, verified, written off the training thread; full resume state; MMF-compatible keys.

Files under env.save_dir: `current.ckpt` (latest), `best.ckpt` (best by early_stop.criteria),
`models/model_<update>.ckpt` (periodic, pruned to checkpoint.max_to_keep), `<model>_final.pth` (plain state dict
of the best model, written at the end), `config.yaml`; `superseded-<time>/` holds later checkpoints a resume
from an earlier update set aside (`ahead_of`, `set_aside`) rather than let the new trajectory overwrite them.

Integrity: torch.save writes a zip archive whose members carry CRC-32s; `verify` reads every member and checks
them (torch.load does not), so a flipped byte or a truncated file is found before anything is unpickled.
Writing: `Checkpointer.save` copies the state to host memory (the only part on the training thread) and a
background thread serialises it to a temp file, fsyncs and renames it into place (a crash mid-write leaves the
previous file), current.ckpt first, then copies under the other names; periodic files current.ckpt no longer lists
are pruned once it is in place. At most one write is in flight; the trainer checks it after every update (a
failed write stops the run there), and the next save and the end of the run wait for it.
"""
from __future__ import annotations

import io
import os
import pickle
import random
import shutil
import threading
import time
import zipfile
from pathlib import Path

import numpy as np
import torch

from mmftrain.errors import CheckpointError
from mmftrain.logs import log
from zoo.fsutil import atomic_write_bytes  # noqa: F401 - the one definition; run/evaluate/logs use it from here
from zoo.fsutil import existing_ancestor, human

CURRENT, BEST, PERIODIC_DIR = "current.ckpt", "best.ckpt", "models"


class DamagedCheckpoint(CheckpointError):
    """A checkpoint file fails its integrity check (bad CRC, truncated, not an archive)."""


def save(path: Path, state: dict) -> None:
    """torch.save `state` atomically: a crash mid-write leaves the previous file intact."""
    def write(f):
        tap = _ErrorTap(f)
        try:
            torch.save(state, tap)
        except RuntimeError:
            if tap.error is not None:  # torch's writer reports a failed write as "unexpected pos ..."
                raise tap.error from None
            raise

    _publish(Path(path), write)


class _ErrorTap:
    """A file wrapper that keeps the OSError of a failed write (torch.save replaces it by a RuntimeError)."""

    def __init__(self, f):
        self.f, self.error = f, None

    def write(self, data) -> int:
        try:
            return self.f.write(data)
        except OSError as e:
            self.error = e
            raise

    def flush(self) -> None:
        self.f.flush()


def copy_published(src: Path, paths: list[Path]) -> None:
    """Publish copies of the checkpoint `src` atomically under `paths`. Copies, not hard links: each file must
    survive damage to another (a damaged current.ckpt falls back to models/model_<N>.ckpt).

    Raises:
        CheckpointError: naming the file whose write failed (the copies before it are published, the rest not).
    """
    for other in map(Path, paths):
        with open(src, "rb") as f:
            _publish(other, lambda dst: shutil.copyfileobj(f, dst, 1 << 24))


def _publish(path: Path, write) -> None:
    try:
        atomic_write_bytes(path, write)
    except OSError as e:
        raise write_failed(path, e.strerror or str(e)) from None


def write_failed(path: Path, why: str) -> CheckpointError:
    return CheckpointError(f"writing checkpoint {path} failed ({why}); the previous checkpoint is intact; free "
                           "disk space or fix permissions and resume with checkpoint.resume=true")


def verify(path: Path) -> str | None:
    """None when `path` is an intact torch zip checkpoint, else what is wrong with it (reads the whole file)."""
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()  # CRC-32 of every member, and each local header against the directory
    except zipfile.BadZipFile as e:
        return f"not a complete checkpoint archive ({e}): truncated or overwritten"
    except (OSError, EOFError, ValueError, RuntimeError) as e:  # zipfile raises these for damaged headers
        return f"unreadable archive ({type(e).__name__}: {e})"
    if bad is not None:
        return f"member {bad} fails its CRC check: the file is damaged"
    return None


def load(path: Path, trusted: bool = False) -> dict:
    """Verify, then load a checkpoint with `weights_only=True`; full unpickling only when `trusted` (an MMF zoo
    checkpoint from a verified install, or the user's explicit training.trust_pickle).

    Raises:
        DamagedCheckpoint: the file fails its integrity check (never fixed by trusting pickles).
        CheckpointError: missing, or holds objects other than tensors and plain types.
    """
    path = Path(path)
    if not path.is_file():
        what = "is a folder, not a checkpoint file" if path.is_dir() else "does not exist"
        raise CheckpointError(f"checkpoint {path} {what}; check checkpoint.resume_file")
    if zipfile.is_zipfile(path):
        problem = verify(path)
        if problem:
            raise DamagedCheckpoint(f"checkpoint {path} is damaged: {problem}")
    elif not trusted and path.suffix == ".ckpt":  # every .ckpt this trainer writes is a zip archive
        raise DamagedCheckpoint(f"checkpoint {path} is damaged: not a complete checkpoint archive (truncated?)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises many types
        if not _is_pickle_refusal(e):
            raise DamagedCheckpoint(f"checkpoint {path} is unreadable ({_first_line(e)}); it may be damaged or "
                                    "truncated: use another checkpoint of the run") from None
        if not trusted:
            raise CheckpointError(f"checkpoint {path} holds pickled objects besides tensors ({_first_line(e)}); "
                                  "if you trust who wrote it, set training.trust_pickle=true") from None
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # noqa: BLE001
        raise DamagedCheckpoint(f"checkpoint {path} is unreadable ({_first_line(e)}); it may be truncated") \
            from None


def _is_pickle_refusal(error: Exception) -> bool:
    import pickle

    return isinstance(error, pickle.UnpicklingError) and "weights only" in str(error).lower()


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0][:200] if text else type(error).__name__


def resume_candidates(save_dir: Path, prefer_best: bool) -> list[Path]:
    """This run's checkpoints in the order to try: current.ckpt (the newest by construction: it is written first
    at every checkpoint), then best.ckpt and the periodic copies by update, newest first, so a damaged current
    falls back to the newest intact file and never to one older than an intact alternative. With `prefer_best`
    (checkpoint.resume_best, the user's choice) best.ckpt comes first, then the same order."""
    save_dir = Path(save_dir)
    current, best = save_dir / CURRENT, save_dir / BEST
    updates = {p: _update_of(p) for p in (save_dir / PERIODIC_DIR).glob("model_*.ckpt")}
    if best.is_file():
        updates[best] = stored_update(best)
    # stable sort, best.ckpt listed first: at the same update it is an identical copy of models/model_<N>.ckpt
    ranked = sorted(sorted(updates, key=lambda p: p != best),
                    key=lambda p: -1 if updates[p] is None else updates[p], reverse=True)
    if prefer_best and best.is_file():
        ranked.remove(best)
        return [best] + ([current] if current.is_file() else []) + ranked
    return ([current] if current.is_file() else []) + ranked


def _update_of(path: Path) -> int:
    try:
        return int(path.stem.split("_", 1)[1])
    except (IndexError, ValueError):
        return -1


_HEADER_LIMIT = 64 << 20  # a checkpoint's data.pkl holds the nesting and plain values, not tensor bytes (~100 KB)


def stored_update(path: Path) -> int | None:
    """The `num_updates` a checkpoint of this trainer holds, read without loading it: only the zip's small
    `data.pkl` member is read (its CRC checked) and walked by an unpickler that imports and calls nothing (every
    class or function it names is an inert stand-in, tensors are never read). None when unreadable."""
    try:
        with zipfile.ZipFile(path) as archive:
            member = next((i for i in archive.infolist() if i.filename.count("/") == 1
                           and i.filename.endswith("/data.pkl")), None)
            if member is None or member.file_size > _HEADER_LIMIT:
                return None
            with archive.open(member) as f:
                data = f.read(_HEADER_LIMIT + 1)  # the CRC is checked when the member is read to its end
        obj = _InertUnpickler(io.BytesIO(data)).load()
    except Exception:  # noqa: BLE001 - a damaged or foreign file has no update to tell
        return None
    update = obj.get("num_updates") if isinstance(obj, dict) else None
    return update if type(update) is int and update >= 0 else None


class _Inert:
    """Stands in for every global a pickle names: accepts any construction, call or state, and does nothing."""

    def __init__(self, *args, **kwargs):
        pass

    def __call__(self, *args, **kwargs):
        return _Inert()

    def __setitem__(self, key, value):
        pass

    def __setstate__(self, state):
        pass

    def append(self, item):
        pass

    def extend(self, items):
        pass

    def add(self, item):
        pass


class _InertUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        return _Inert

    def persistent_load(self, pid):
        return None


def load_newest_intact(candidates: list[Path]) -> tuple[Path, dict, list[tuple[Path, str]]]:
    """The first of `candidates` that verifies and loads: (path, contents, [(damaged path, why), ...]).

    Raises:
        DamagedCheckpoint: every candidate is damaged.
    """
    damaged: list[tuple[Path, str]] = []
    for path in candidates:
        try:
            return path, load(path), damaged
        except DamagedCheckpoint as e:
            damaged.append((path, str(e)))
    names = ", ".join(str(p) for p, _ in damaged)
    raise DamagedCheckpoint(f"no intact checkpoint to resume from: {names} are all damaged; start a new run in "
                            "another env.save_dir (the damaged files are left as they are)")


def ahead_of(save_dir: Path, start_update: int, same_trajectory: bool) -> list[tuple[Path, int | None]]:
    """The run's checkpoint files holding a later update than `start_update`, which a run continuing from there
    would overwrite with another trajectory: [(path, its update or None when unreadable)], current and best
    first, then the periodic files, newest first. The periodic files always; current.ckpt and best.ckpt too
    unless `same_trajectory` (resuming current.ckpt with its counts: the run replays the updates after it
    exactly, so a best.ckpt of a later evaluation is rewritten with the same state)."""
    save_dir = Path(save_dir)
    found: list[tuple[Path, int | None]] = []
    if not same_trajectory:
        for path in (save_dir / CURRENT, save_dir / BEST):
            if path.is_file():  # (the start file too when the counts restart: the run would overwrite it)
                update = stored_update(path)
                if update is None or update > start_update:
                    found.append((path, update))
    found += sorted(((p, _update_of(p)) for p in (save_dir / PERIODIC_DIR).glob("model_*.ckpt")
                     if _update_of(p) > start_update), key=lambda item: item[1], reverse=True)
    return found


def set_aside(save_dir: Path, paths: list[Path]) -> Path:
    """Move `paths` (files under `save_dir`) into a new `<save_dir>/superseded-<time>/`, keeping their relative
    paths: out of reach of the run's saves, pruning and resume fallback. Returns the folder."""
    save_dir = Path(save_dir)
    stamp = time.strftime("%Y%m%dT%H%M%S")
    folder, n = save_dir / f"superseded-{stamp}", 1
    while folder.exists():
        n += 1
        folder = save_dir / f"superseded-{stamp}-{n}"
    for path in paths:
        target = folder / Path(path).relative_to(save_dir)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(path, target)
    return folder


def keep_as_evidence(path: Path) -> Path:
    """Rename a damaged checkpoint aside (`<name>.damaged-<time>`) so no later save overwrites it."""
    aside = path.with_name(f"{path.name}.damaged-{time.strftime('%Y%m%dT%H%M%S')}")
    os.replace(path, aside)
    return aside


def git_details() -> tuple[str, str] | None:
    """(commit, branch) of the project's git checkout (MMF's checkpoint.save_git_details), None outside git."""
    import subprocess

    from zoo.project import checkout

    root = checkout()
    if root is None:  # a wheel install: site-packages may sit inside some other git repository
        return None
    try:
        commit, branch = (subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10,
                                         check=True).stdout.strip()
                          for args in (["rev-parse", "HEAD"], ["rev-parse", "--abbrev-ref", "HEAD"]))
    except (OSError, subprocess.SubprocessError):
        return None
    return commit, branch


def rng_state() -> dict:
    """This process's Python, numpy, torch (and CUDA) RNG states, as tensors and plain types (weights_only-safe)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    py = random.getstate()
    state = {"python": [py[0], list(py[1]), py[2]],
             "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                       "has_gauss": int(has_gauss), "gauss": float(gauss)},
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def model_state_from(obj: dict) -> dict:
    """The model state dict inside an own or MMF checkpoint (`{'model': ...}`) or a bare state dict."""
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        return obj["model"]
    if isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return obj
    raise CheckpointError("checkpoint holds neither a 'model' entry nor a state dict")


def warn_if_disk_short(save_dir: Path, file_bytes: int, periodic_left: int, max_to_keep: int) -> bool:
    """Warn (once, at the start) when the run's checkpoints will not fit on the save dir's disk: `periodic_left`
    more periodic files (pruned to `max_to_keep`, -1 = all) plus current and best, `file_bytes` each. A full disk
    later stops the run at a checkpoint; this says so while it is cheap to fix. Returns whether it warned."""
    kept = periodic_left if max_to_keep < 0 else min(periodic_left, max_to_keep)
    need = (kept + 2) * file_bytes
    try:
        free = shutil.disk_usage(existing_ancestor(save_dir)).free
    except OSError:
        return False
    if need <= free:
        return False
    fit = max(1, free // max(1, file_bytes) - 2)
    log.warning("checkpoints: this run will write %d more periodic checkpoints of %s (checkpoint.max_to_keep=%d "
                "keeps %d), %s with current/best, but %s has %s free: set checkpoint.max_to_keep=%d or raise "
                "training.checkpoint_interval, or free space (a full disk stops the run at a checkpoint)",
                periodic_left, human(file_bytes), max_to_keep, kept, human(need), save_dir, human(free), fit)
    return True


class HostSnapshot:
    """Copies a state tree to host memory, reusing its buffers (pinned for CUDA) from one save to the next."""

    def __init__(self):
        self.buffers: dict[tuple, torch.Tensor] = {}

    def take(self, state):
        copied = self._copy(state, ())
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            torch.cuda.synchronize()  # the non_blocking device->host copies must land before the writer reads
        return copied

    def _copy(self, value, where: tuple):
        if isinstance(value, torch.Tensor):
            return self._tensor(value, where)
        if isinstance(value, dict):
            return {k: self._copy(v, (*where, k)) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            items = [self._copy(v, (*where, i)) for i, v in enumerate(value)]
            return items if isinstance(value, list) else tuple(items)
        return value  # ints, floats, strings, None: immutable

    def _tensor(self, tensor: torch.Tensor, where: tuple) -> torch.Tensor:
        tensor = tensor.detach()
        buf = self.buffers.get(where)
        if buf is None or buf.shape != tensor.shape or buf.dtype != tensor.dtype:
            buf = torch.empty(tensor.shape, dtype=tensor.dtype, device="cpu", pin_memory=tensor.is_cuda)
            self.buffers[where] = buf
        buf.copy_(tensor, non_blocking=tensor.is_cuda)
        return buf


class Checkpointer:
    """Saves a run's checkpoints in the background and prunes only the periodic files this run wrote."""

    def __init__(self, save_dir: Path, max_to_keep: int, periodic: list[str] | None = None,
                 background: bool = True):
        self.save_dir = Path(save_dir)
        self.max_to_keep = max_to_keep
        self.periodic = list(periodic or [])  # `models/model_<N>.ckpt` names of this run, oldest first
        self.background = background
        self.snapshot = HostSnapshot()
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self.stall_s = 0.0  # time the training thread spent in save() and waiting for a write to finish
        self._warned_busy = False

    def save(self, names: list[str], state: dict) -> None:
        """Write `state` under each of `names` (relative to save_dir); returns once the state is copied."""
        self.wait(due=names[0])  # (its time counts in stall_s)
        start = time.perf_counter()
        before = list(self.periodic)
        for name in names:
            if name.startswith(PERIODIC_DIR + "/") and name not in self.periodic:
                self.periodic.append(name)
        doomed = []  # pruned once the new files are on disk
        if self.max_to_keep is not None and self.max_to_keep >= 0:
            while len(self.periodic) > self.max_to_keep:
                doomed.append(self.periodic.pop(0))
        state = {**state, "periodic_checkpoints": list(self.periodic)}
        snap = self.snapshot.take(state)
        # current.ckpt first: it is what a resume starts from, and its list of periodic files is the truth once
        # it is on disk (a kill or a full disk during the copies after it loses no update)
        paths = [self.save_dir / n for n in sorted(names, key=lambda n: n != CURRENT)]
        if self.background:
            self._thread = threading.Thread(target=self._write, args=(paths, snap, doomed, before),
                                            name="checkpoint-writer", daemon=False)
            self._thread.start()
        else:
            self._write(paths, snap, doomed, before)
            self._raise_error()
        self.stall_s += time.perf_counter() - start

    def _write(self, paths: list[Path], state: dict, doomed: list[str], before: list[str]) -> None:
        first_done = False
        try:
            save(paths[0], state)
            first_done = True
            copy_published(paths[0], paths[1:])
        except BaseException as e:  # noqa: BLE001 - surfaced on the training thread by failed()/wait()
            self._error = e if isinstance(e, CheckpointError) else write_failed(paths[0], f"{type(e).__name__}: {e}")
        if not first_done:
            self.periodic = before  # nothing was published: the files on disk are the ones listed before
            return
        for name in doomed:  # the published file no longer lists them (even if a later copy failed)
            try:
                (self.save_dir / name).unlink(missing_ok=True)
            except OSError:
                pass  # left behind, never read; the next save's pruning does not list it either

    def failed(self, block: bool = False, due: str | None = None) -> bool:
        """Whether the write in flight has failed; without `block`, a write still running counts as not failed.
        `due`: the checkpoint about to be saved (a write still running then is worth a warning)."""
        if self._thread is None or not (block or not self._thread.is_alive()):
            return self._error is not None
        busy, start = self._thread.is_alive(), time.perf_counter()
        self._thread.join()
        waited = time.perf_counter() - start
        self.stall_s += waited  # the training thread waits here
        self._thread = None
        if busy and due and not self._warned_busy:
            self._warned_busy = True
            log.warning("checkpoint: the previous write was still running when %s was due (training waited %.2f s);"
                        " the disk is slower than training.checkpoint_interval allows: raise it, or use a faster "
                        "env.save_dir", due, waited)
        return self._error is not None

    def wait(self, due: str | None = None) -> None:
        """Block until the write in flight is on disk; raise its error if it failed."""
        self.failed(block=True, due=due)
        self._raise_error()

    def _raise_error(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            raise error
