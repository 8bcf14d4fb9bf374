"""One run from a resolved config, top to bottom: check the save dir, decide where to start, build the splits and
the model, accept the run (write config.yaml), train, run the final passes, write the summary.

run_type as MMF: "train" in it -> train (with periodic val); "val" -> a final val pass; "test" / "inference" /
"predict" -> a test pass. Final passes write EvalAI prediction files under env.report_dir (default
`<save_dir>/reports/`). Artifacts (under env.save_dir): config.yaml, train.log, metrics.jsonl, current.ckpt,
best.ckpt, models/model_<N>.ckpt, m4c_final.pth, reports/*.json, summary.json.

A save dir belongs to one run: a new run in a folder holding another is refused (checkpoint.resume=true continues
it; env.overwrite_save_dir=true replaces it), and nothing of the run is written there before the data and model
are built. It is also trained by one process at a time (a hidden lock file, `SAVE_DIR_LOCK`).
"""
from __future__ import annotations

import contextlib
import json
import random
import shutil
import signal
import time
from pathlib import Path
from typing import NamedTuple

from mmftrain import checkpoint, distributed
from mmftrain.config import dump_yaml, run_record
from mmftrain.errors import CheckpointError, ConfigError, DataError, TrainError
from mmftrain.evaluate import evaluate_all, write_predictions
from mmftrain.logs import close_logging, log, setup_logging
from zoo.fsutil import folder_problem

# What a run leaves in its save dir (train.log aside: a run that failed before building its data leaves only
# that, and the next attempt appends to it).
SAVE_DIR_LOCK = ".mmf-train.lock"  # (and its .holder: who holds it) never a run file, never deleted
RUN_FILES = ("config.yaml", checkpoint.CURRENT, checkpoint.BEST, "metrics.jsonl", "summary.json",
             checkpoint.PERIODIC_DIR, "reports", "tensorboard")
# What a run that failed before its first update may have left (read by run_started)
UNSTARTED_LEFTOVERS = ("config.yaml", "metrics.jsonl", "tensorboard")
# Config sections that fix the model's shape and meaning: a resume must not change them.
RESUME_MUST_MATCH = ("model", "datasets", "model_config")
# model_config keys that change how the model computes, not what it computes (the same parameters, the same
# scores): free to differ on resume, and absent from the checkpoints of versions that predate them
RESUME_MAY_DIFFER = ("model_config.m4c.incremental_decoding", "model_config.m4c.trim_last_layer")
# A restarted command (torchrun --max-restarts, a requeued SLURM job) waits this long for the save dir's lock: its
# launcher ended the previous processes first, but a lock on a network filesystem may outlive a dead node's
# process until the server's lease expires (NFSv4: 90 s by default)
RESTART_LOCK_WAIT_S = 180
# training.requeue: the signal after which the job requeues itself. SLURM's time-limit warning (sbatch
# --signal=USR1@90); never SIGTERM, which is also scancel's (a cancelled job must stay cancelled) and SLURM's own
# preemption (which requeues the job itself when its PreemptMode says so).
REQUEUE_SIGNAL = "SIGUSR1"


class StopSignal(KeyboardInterrupt):
    """SIGTERM/SIGUSR1 outside the training loop (which finishes its update and checkpoints instead): loading data,
    fetching it, the final passes. A KeyboardInterrupt, so what handles Ctrl-C (a fetch keeping its partial
    download, the locks) handles it too; nothing of the run's checkpoints changes, so the same command continues."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.name = signal.Signals(signum).name


@contextlib.contextmanager
def stop_signals_raise():
    """Turn SIGTERM/SIGUSR1 into StopSignal for the block: without it SIGUSR1 (SLURM's time-limit warning) killed a
    run still loading its data without a word, and training.requeue never requeued it. The training loop installs
    its own handlers (mmftrain.trainer) and restores these."""
    def on_signal(signum, _frame):
        raise StopSignal(signum)

    wanted = (signal.SIGTERM, signal.SIGUSR1)
    try:
        old = {s: signal.signal(s, on_signal) for s in wanted}
    except ValueError:  # not the main thread (embedded use): leave the defaults
        old = {}
    try:
        yield
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)


class Stages(NamedTuple):
    """What run_type asks for."""
    train: bool
    val: bool
    test: bool

    @classmethod
    def of(cls, run_type: str) -> "Stages":
        return cls("train" in run_type, "val" in run_type,
                   any(word in run_type for word in ("test", "inference", "predict")))


class StartPoint(NamedTuple):
    """Where the weights (and, for an own checkpoint, the counters) come from."""
    path: Path | None          # None: fresh random weights
    contents: dict | None      # the loaded checkpoint
    model_only: bool           # zoo/pretrained weights: counters, optimizer and RNG start fresh
    own_run: bool              # continuing this save dir's run (checkpoint.resume=true)
    update: int = 0            # the update training continues from
    ahead: tuple = ()          # ((path, update or None), ...): this run's later checkpoints, set aside at accept_run


class Splits(NamedTuple):
    train: object | None       # one dataset over all training datasets
    val: dict                  # {dataset name: dataset}
    test: dict
    answer_vocab_size: int


def run(cfg: dict, notes=(), pack_args: list[str] | None = None, argv: list[str] | None = None) -> dict:
    """Execute `cfg` (from `mmfconfig.resolve.build_config`) on this process; returns the run summary. `notes`: the
    config's warnings (old MMF keys, ignored ones), logged first. `pack_args`: what `mmf data pack` needs to resolve
    this run's dataset_config (mmftrain.cli.pack_args), for its hint. `argv`: the run's options, for the
    `mmf zoo pack --for` command an offline run that lacks data prints."""
    dist = distributed.setup(cfg["training"]["device"], cfg["distributed"]["backend"])
    stack = contextlib.ExitStack()
    try:
        if Stages.of(cfg["run_type"]).train:  # before the save dir is touched: a resume may be on another world size
            from mmftrain.data import check_global_batch

            check_global_batch(int(cfg["training"]["batch_size"]), dist.world)
        save_dir = Path(str(cfg["env"]["save_dir"])).expanduser()
        check_output_dirs(cfg, save_dir)
        refuse_other_run(cfg, save_dir, dist.launch)  # before anything is written there
        stack.enter_context(hold_save_dir(save_dir, dist))
        refuse_other_run(cfg, save_dir, dist.launch)  # again under the lock: a run that started beside this one
        distributed.barrier()
        log_dir = Path(cfg["env"]["log_dir"])  # mmfconfig filled in "" (= save_dir) and expanded it
        setup_logging(log_dir, dist.is_main, dist.rank, cfg["training"]["logger_level"])
        for note in notes:
            log.warning("%s", note)
        try:
            with stop_signals_raise():
                return _run(cfg, dist, save_dir, pack_args, argv)
        except StopSignal as stop:
            return stopped_outside_training(cfg, dist, save_dir, stop.name)
        except (TrainError, ConfigError) as e:  # ConfigError: mmfconfig's, raised by the resume check
            log.error("error: %s", e, exc_info=True, extra={"file_only": True})
            raise
        except KeyboardInterrupt:
            log.error("interrupted", exc_info=True, extra={"file_only": True})
            raise
        except BaseException:
            log.exception("fatal error", extra={"file_only": True})
            raise
        finally:
            close_logging()
    finally:
        stack.close()
        distributed.cleanup()


def _run(cfg: dict, dist: distributed.DistInfo, save_dir: Path, pack_args: list[str] | None = None,
         argv: list[str] | None = None) -> dict:
    from mmftrain.trainer import Trainer

    stages = Stages.of(cfg["run_type"])
    startup_checks(cfg, stages)
    refuse_offline_gaps(cfg, save_dir, argv)
    start = resolve_start(cfg, save_dir, dist, stages)
    seed = choose_seed(cfg, start)  # the run's own: the config stays as resolved (run_record records it)
    log.info("run_type=%s datasets=%s model=%s seed=%d world=%d device=%s data_dir=%s save_dir=%s",
             cfg["run_type"], ",".join(cfg["datasets"]), cfg["model"], seed, dist.world, dist.device,
             cfg["env"]["data_dir"], save_dir)
    if cfg["training"]["log_detailed_config"]:
        log.info("config:\n%s", dump_yaml(run_record(cfg, seed)))

    splits = build_splits(cfg, stages, seed, pack_args)
    trainer = Trainer(cfg, dist, splits.answer_vocab_size, seed)
    if start.path is not None:
        trainer.load(start.path, model_only=start.model_only, obj=start.contents)
    start = start._replace(contents=None)  # free the loaded copy
    trainer.wrap()
    accept_run(cfg, save_dir, dist, start, seed)

    summary: dict = {"run_type": cfg["run_type"], "save_dir": str(save_dir), "seed": trainer.seed,
                     "world_size": dist.world, "answer_vocab_size": splits.answer_vocab_size, "reports": {},
                     "metrics": {}}
    if stages.train and not train_stage(cfg, trainer, splits, save_dir, summary):
        write_summary(summary, save_dir, dist)  # interrupted by a signal: no final passes
        requeue_if_asked(cfg, dist, summary["interrupted"], trainer.num_updates)
        return summary
    final_passes(cfg, trainer, splits, stages, summary)
    write_summary(summary, save_dir, dist)
    return summary


# ---- the save dir
def previous_run_files(save_dir: Path) -> list[str]:
    """Names of another run's files in `save_dir` (the final .pth included)."""
    if not save_dir.is_dir():
        return []
    found = [name for name in RUN_FILES if (save_dir / name).exists()]
    return found + sorted(p.name for p in save_dir.glob("*_final.pth"))


def run_started(save_dir: Path) -> bool:
    """Whether `save_dir` holds a run that got anywhere: a checkpoint, a summary, reports, a logged update. A run
    that wrote its config.yaml (and an empty metrics.jsonl / TensorBoard folder) and failed before its first logged
    update did not (without a checkpoint there is nothing to continue either): the identical rerun, or a
    corrected one, may start there without env.overwrite_save_dir."""
    found = previous_run_files(save_dir)
    if set(found) - set(UNSTARTED_LEFTOVERS):
        return True
    metrics = save_dir / "metrics.jsonl"
    if not (metrics.exists() or metrics.is_symlink()):
        return False
    # a run writes its first record at its first logged update: an empty regular file is all a run that stopped
    # before it leaves (anything else, a link included, counts as a run and is left alone)
    return metrics.is_symlink() or not metrics.is_file() or metrics.stat().st_size > 0


def check_output_dirs(cfg: dict, save_dir: Path) -> None:
    """Every folder the run writes to must be able to be one: refused up front, not after hours of training."""
    env = cfg["env"]
    for key in ("save_dir", "log_dir", "report_dir", "tensorboard_logdir"):
        path = save_dir if key == "save_dir" else Path(env[key])  # mmfconfig filled in the defaults
        if key == "tensorboard_logdir" and not cfg["training"]["tensorboard"]:
            continue
        problem = folder_problem(path) if path is not None else None
        if problem:
            raise TrainError(f"env.{key}={path} {problem}; choose another env.{key}")


@contextlib.contextmanager
def hold_save_dir(save_dir: Path, dist: distributed.DistInfo):
    """One `mmf train` per save dir at a time: two (a job requeued while it still runs, a command started twice)
    would interleave their checkpoints and logs. The lock is zoo.lock's: an flock, released when its process dies
    (where flock does not work, a heartbeat lock file, taken over once its holder is gone)."""
    from zoo.errors import LockTimeoutError, ZooError
    from zoo.lock import resource_lock

    restarted = dist.launch.restarts > 0  # its launcher ended the previous processes: a lock still held is theirs
    with contextlib.ExitStack() as held:
        error = None
        if dist.is_main:
            try:
                save_dir.mkdir(parents=True, exist_ok=True)
                held.enter_context(resource_lock(save_dir / SAVE_DIR_LOCK, f"env.save_dir={save_dir}",
                                                 timeout=RESTART_LOCK_WAIT_S if restarted else 0,
                                                 say=log.warning if restarted else lambda _: None))
            except LockTimeoutError as e:
                error = e
            except (ZooError, OSError) as e:  # no lock file can be made there at all: train unprotected
                log.warning("could not lock env.save_dir=%s (%s): a second mmf train there would not be refused",
                            save_dir, e)
        if distributed.any_flag(error is not None, dist.device):
            raise TrainError(f"{error}, or choose another env.save_dir" if error else
                             "rank 0 could not lock env.save_dir (its error says why)")
        yield


def startup_checks(cfg: dict, stages: Stages) -> None:
    """What can refuse the run without reading data: asked before anything of the run is written to its save dir."""
    if stages.train and cfg["training"]["tensorboard"]:
        from mmftrain.logs import require_tensorboard

        require_tensorboard()


def refuse_other_run(cfg: dict, save_dir: Path, launch: distributed.Launch | None = None) -> None:
    """A save dir holding another run is used only to continue it or, when asked explicitly, to replace it. A
    restarted command (`launch.restarts`) is no exception: without checkpoint.resume=true it may equally be a new
    experiment pointed at an old folder, and continuing it silently would mix two runs; its error says so."""
    found = previous_run_files(save_dir)
    if not run_started(save_dir) or cfg["checkpoint"]["resume"] or cfg["env"]["overwrite_save_dir"]:
        return
    restart = ""
    if launch is not None and launch.restarts:
        restart = (f" (this command was restarted {launch.restarts} time(s) by its launcher: a command that a "
                   "cluster may requeue or restart must carry checkpoint.resume=true)")
    raise TrainError(f"env.save_dir={save_dir} holds another run ({', '.join(found[:4])}){restart}; continue it "
                     "with checkpoint.resume=true, or start this run elsewhere with env.save_dir=<new folder> "
                     "(env.overwrite_save_dir=true deletes the old run)")


def stopped_outside_training(cfg: dict, dist: distributed.DistInfo, save_dir: Path, stopped: str) -> dict:
    """A stop signal while the run loaded its data or ran its final passes: nothing new to checkpoint (the training
    loop checkpoints what it trained); exit with the signal's code and requeue as the loop would."""
    log.warning("%s received outside the training loop: stopped; the checkpoints in %s are as they were, and the "
                "same command with checkpoint.resume=true continues", stopped, save_dir)
    requeue_if_asked(cfg, dist, stopped, None)
    return {"run_type": cfg["run_type"], "save_dir": str(save_dir), "interrupted": stopped}


def requeue_if_asked(cfg: dict, dist: distributed.DistInfo, stopped: str, update: int | None) -> None:
    """training.requeue=true: after REQUEUE_SIGNAL inside a SLURM job, global rank 0 requeues the job (Lightning's
    auto-requeue); the caller has the checkpoint on disk. The requeued identical command resumes (mmfconfig refuses
    training.requeue=true without checkpoint.resume=true)."""
    if not cfg["training"]["requeue"] or stopped != REQUEUE_SIGNAL or not dist.is_main:
        return
    job = dist.launch.job_id
    if job is None:
        log.warning("training.requeue=true: %s received outside a SLURM job (SLURM_JOB_ID unset): nothing to "
                    "requeue; rerun the same command to continue from %s", stopped, _where(update))
        return
    # SLURM ends the job's processes as it requeues it: this one has nothing left to lose, and it exits with its
    # documented code rather than SIGTERM's
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    problem = distributed.requeue_slurm_job(job)
    if problem:
        log.error("training.requeue=true: could not requeue SLURM job %s: %s; submit the same command again to "
                  "continue from %s", job, problem, _where(update))
    else:
        log.info("training.requeue=true: requeued SLURM job %s (scontrol requeue); it continues from %s", job,
                 _where(update))


def _where(update: int | None) -> str:
    return "the run's last checkpoint" if update is None else f"update {update} (its checkpoint is on disk)"


def accept_run(cfg: dict, save_dir: Path, dist: distributed.DistInfo, start: StartPoint, seed: int) -> None:
    """The data and model are built and the config is accepted: only now does the run change its save dir."""
    if dist.is_main:
        if not run_started(save_dir) and previous_run_files(save_dir):
            log.info("env.save_dir=%s holds a run that stopped before its first update (%s): starting over there",
                     save_dir, ", ".join(previous_run_files(save_dir)))
            (save_dir / "metrics.jsonl").unlink(missing_ok=True)  # its own empty file; config.yaml is replaced below
        elif cfg["env"]["overwrite_save_dir"] and not start.own_run:
            for name in previous_run_files(save_dir):
                path = save_dir / name
                shutil.rmtree(path) if path.is_dir() else path.unlink()
                log.warning("env.overwrite_save_dir=true: deleted the previous run's %s", path)
        for stale in [*save_dir.glob(".*.tmp"), *(save_dir / checkpoint.PERIODIC_DIR).glob(".*.tmp")]:
            stale.unlink(missing_ok=True)  # a write cut by a kill (the files it would have replaced are intact)
        if start.ahead:
            _set_later_checkpoints_aside(save_dir, start)
        text = dump_yaml(run_record(cfg, seed)).encode()
        checkpoint.atomic_write_bytes(save_dir / "config.yaml", lambda f: f.write(text))
    distributed.barrier()


# ---- where to start
def resolve_start(cfg: dict, save_dir: Path, dist: distributed.DistInfo, stages: Stages) -> StartPoint:
    """MMF's priority: this run's own checkpoint (checkpoint.resume), resume_file, resume_zoo, else fresh."""
    options = cfg["checkpoint"]
    if options["resume"]:
        candidates = checkpoint.resume_candidates(save_dir, bool(options["resume_best"]))
        if candidates:
            path, contents, damaged = checkpoint.load_newest_intact(candidates)
            _set_damaged_aside(damaged, path, contents, dist)
            _check_resume_config(cfg, contents, path)
            return _own_start(cfg, save_dir, path, contents, stages)
        log.info("checkpoint.resume=true but no checkpoint in %s yet: starting fresh", save_dir)
    if options["resume_file"]:
        path = Path(str(options["resume_file"])).expanduser()
        contents = checkpoint.load(path, trusted=bool(cfg["training"]["trust_pickle"]))
        return StartPoint(path, contents, model_only=False, own_run=False)
    if options["resume_zoo"]:
        path = _zoo_checkpoint(str(options["resume_zoo"]), cfg, dist)
        return StartPoint(path, _load_zoo_checkpoint(path, str(options["resume_zoo"]), cfg), model_only=True,
                          own_run=False)
    if not stages.train and not options["allow_random_init"]:
        raise CheckpointError(f"run_type={cfg['run_type']} evaluates a model, but no weights were given: pass "
                              "checkpoint.resume_file=<.ckpt/.pth>, checkpoint.resume_zoo=<zoo key>, or "
                              "checkpoint.resume=true with the training run's env.save_dir "
                              "(checkpoint.allow_random_init=true evaluates random weights)")
    return StartPoint(None, None, model_only=False, own_run=False)


def _load_zoo_checkpoint(path: Path, key: str, cfg: dict) -> dict:
    """Full unpickling only for bytes this user's zoo verified (or with training.trust_pickle); a refusal says why
    the install is not trusted and what makes it so (e.g. `mmf zoo adopt KEY` for a copied data dir)."""
    from zoo.trust import untrusted_reason

    reason = None if cfg["training"]["trust_pickle"] else untrusted_reason(path)
    try:
        return checkpoint.load(path, trusted=reason is None)
    except checkpoint.DamagedCheckpoint:
        raise
    except CheckpointError as exc:
        if reason is None:
            raise
        fix = f"; {reason.fix}" if reason.fix else ""
        raise CheckpointError(f"{exc} (zoo model {key} is not a verified install here: {reason}{fix})") from None


def _set_damaged_aside(damaged: list, used: Path, contents: dict, dist: distributed.DistInfo) -> None:
    distributed.barrier()  # every rank has chosen its checkpoint before any file moves
    for path, why in damaged:
        if dist.is_main:
            aside = checkpoint.keep_as_evidence(path)
            log.warning("%s; resuming from %s (update %s), the newest intact checkpoint, instead (the damaged file "
                        "is kept as %s)", why, used, contents.get("num_updates", "?"), aside)
    distributed.barrier()


def _own_start(cfg: dict, save_dir: Path, path: Path, contents: dict, stages: Stages) -> StartPoint:
    """Continue this save dir's run from `path`. Its checkpoints of later updates (the run resumes from best.ckpt,
    or from an older file than current.ckpt, or resets its counts) would be overwritten one by one by the new
    trajectory: they are listed to be set aside once the run is accepted."""
    reset = cfg["checkpoint"]["reset"]
    fresh_counts = bool(reset["all"] or reset["counts"])
    saved = contents.get("num_updates", 0)
    update = 0 if fresh_counts or type(saved) is not int else saved
    same_trajectory = path == save_dir / checkpoint.CURRENT and not fresh_counts
    ahead = checkpoint.ahead_of(save_dir, update, same_trajectory) if stages.train else []
    return StartPoint(path, contents, model_only=False, own_run=True, update=update, ahead=tuple(ahead))


def _set_later_checkpoints_aside(save_dir: Path, start: StartPoint) -> None:
    folder = checkpoint.set_aside(save_dir, [path for path, _ in start.ahead])
    if (save_dir / "metrics.jsonl").is_file():  # the new run replaces its records after start.update
        shutil.copy2(save_dir / "metrics.jsonl", folder / "metrics.jsonl")
    names = ", ".join(f"{path.relative_to(save_dir)} ({'unreadable' if u is None else f'update {u}'})"
                      for path, u in start.ahead)
    log.warning("resuming from %s at update %d: the run's later checkpoints %s would be overwritten by the new "
                "trajectory; moved to %s (with a copy of metrics.jsonl)", start.path, start.update, names, folder)


def _check_resume_config(cfg: dict, contents: dict, path: Path) -> None:
    saved = contents.get("config")
    if not isinstance(saved, dict):
        return
    changed = [key for key in _differences(saved, cfg) if not key.endswith(("_dir", "_logdir", "_weights"))]
    fixed = [key for key in changed if key.split(".")[0] in RESUME_MUST_MATCH and key not in RESUME_MAY_DIFFER]
    if fixed:
        raise ConfigError(f"checkpoint.resume=true would continue the run of {path} with a different model or "
                          f"data ({', '.join(fixed[:5])}); resume with that run's config.yaml, or start a new run "
                          f"with env.save_dir=<new folder> checkpoint.resume_file={path}")
    changed = [key for key in changed if key not in ("training.seed", "checkpoint.resume", "run_type")]
    if changed:
        log.warning("resuming with changed settings: %s", ", ".join(changed[:10]))


def _differences(old, new, prefix: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        return [key for k in sorted(set(old) | set(new), key=str)
                for key in _differences(old.get(k), new.get(k), f"{prefix}{k}.")]
    return [] if old == new else [prefix.rstrip(".")]


def _zoo_checkpoint(key: str, cfg: dict, dist: distributed.DistInfo) -> Path:
    """The checkpoint file of zoo model `key` where `mmf zoo fetch KEY` installs it (the zoo's layout answers, with
    the manifests env.model_zoo names), fetched by rank 0 unless that version is installed."""
    import zoo
    from mmfconfig.paths import zoo_manifests
    from zoo.errors import ZooError

    data_dir, manifests = Path(str(cfg["env"]["data_dir"])), zoo_manifests(cfg)
    try:
        place = zoo.place(key, data_dir, manifests)
        if not place.current:
            from mmftrain.zoodata import refuse_offline_fetch

            refuse_offline_fetch(cfg, key)
        if dist.is_main and not place.current:
            was = f"version {place.installed} is" if place.installed else "it is not"
            log.info("zoo model %s: %s installed in %s, the manifest's is %s: fetching it", key, was, place.folder,
                     place.version)
            zoo.fetch(key, data_dir=data_dir, zoo_paths=manifests)
    except ZooError as e:  # a network, disk or manifest problem: one line, as `mmf zoo fetch` says it
        raise CheckpointError(f"checkpoint.resume_zoo={key}: {e}") from None
    distributed.barrier()  # other ranks wait for rank 0's fetch (the zoo lock also serialises separate processes)
    files = sorted(place.folder.glob("*.pth")) + sorted(place.folder.glob("*.ckpt"))
    if not files:
        raise CheckpointError(f"no .pth/.ckpt file in {place.folder} for zoo model {key}; re-fetch it "
                              f"(`mmf zoo fetch {key} --force`)")
    return files[0]


def choose_seed(cfg: dict, start: StartPoint) -> int:
    """A resumed run keeps its seed (sampling order and teacher-forcing draws continue); -1 draws one."""
    reset = cfg["checkpoint"]["reset"]
    if start.contents is not None and not start.model_only and not reset["all"] and not reset["counts"] \
            and "seed" in start.contents:
        return int(start.contents["seed"])
    seed = int(cfg["training"]["seed"])
    return distributed.broadcast_object(random.randrange(2**31)) if seed == -1 else seed


# ---- data
def build_splits(cfg: dict, stages: Stages, seed: int, pack_args: list[str] | None = None) -> Splits:
    """The datasets run_type needs (missing zoo data fetched first); val is optional when only training."""
    from mmftrain.data import build_datasets, concat

    _fetch_requirements(cfg)
    train = concat(build_datasets(cfg, "train", seed, pack_args)) if stages.train else None
    val: dict = {}
    if stages.val or stages.train:
        try:
            val = build_datasets(cfg, "val", seed, pack_args)
        except DataError as e:
            if stages.val:
                raise
            log.warning("no val split (%s): training without periodic evaluation", e)
    test = build_datasets(cfg, "test", seed, pack_args) if stages.test else {}
    first = train if train is not None else next(iter({**val, **test}.values()), None)
    if first is None:
        raise TrainError(f"run_type={cfg['run_type']} needs at least one split to read")
    return Splits(train, val, test, len(first.answer_vocab))


def _fetch_requirements(cfg: dict) -> None:
    """Install the zoo keys the run reads that are missing (mmftrain.zoodata; MMF's builder does this for the
    datasets' zoo_requirements)."""
    from mmftrain.zoodata import fetch_missing

    fetch_missing(cfg)


def refuse_offline_gaps(cfg: dict, save_dir: Path, argv: list[str] | None = None) -> None:
    """Offline (env.offline=true, MMF_ZOO_OFFLINE), a run that would fetch stops before reading anything, naming
    what is missing and the commands that bring it (mmftrain.zoodata)."""
    from mmftrain.zoodata import offline_reason, refuse_gaps

    if offline_reason(cfg) is None:
        return
    options = cfg["checkpoint"]  # a run continuing its own checkpoint does not read checkpoint.resume_zoo
    continuing = bool(options["resume"]) and bool(checkpoint.resume_candidates(save_dir, bool(options["resume_best"])))
    refuse_gaps(cfg, continuing, argv)


# ---- training and the final passes
def train_stage(cfg: dict, trainer, splits: Splits, save_dir: Path, summary: dict) -> bool:
    """Train; then load the best checkpoint (as MMF, the final passes use it) and write `<model>_final.pth`.
    False when a signal stopped training."""
    result = trainer.train(splits.train, splits.val)
    summary["train"] = {k: v for k, v in result.items() if k != "last_eval"}
    if result["stopped"] not in (None, "early_stop"):
        summary["interrupted"] = result["stopped"]
        return False
    best = save_dir / checkpoint.BEST
    if best.is_file():
        try:
            trainer.load(best, model_only=True)
        except checkpoint.DamagedCheckpoint as e:
            log.warning("%s; the final passes use the last weights instead", e)
    if trainer.dist.is_main:
        checkpoint.save(save_dir / f"{cfg['model']}_final.pth", trainer.model.state_dict())
    return True


def final_passes(cfg: dict, trainer, splits: Splits, stages: Stages, summary: dict) -> None:
    """The val and test passes run_type asks for; EvalAI prediction files under env.report_dir."""
    report_dir = Path(cfg["env"]["report_dir"])  # mmfconfig's default: <save_dir>/reports
    passes = ([("val", splits.val)] if stages.val else []) + ([("test", splits.test)] if stages.test else [])
    for split, datasets in passes:
        metrics, records = evaluate_all(trainer.model, datasets, split=split, cfg=cfg, dist=trainer.dist,
                                        device=trainer.device, amp=trainer.amp())
        summary["metrics"].update(metrics)
        if not trainer.dist.is_main or (split == "val" and not cfg["evaluation"]["predict"]):
            continue
        for name, rows in records.items():
            path = write_predictions(rows, report_dir, name, cfg["training"]["experiment_name"], split,
                                     cfg["evaluation"]["predict_file_format"])
            summary["reports"][f"{split}/{name}"] = str(path)
            log.info("%s/%s: %d predictions written to %s", split, name, len(rows), path)


def write_summary(summary: dict, save_dir: Path, dist: distributed.DistInfo) -> None:
    """summary.json and the closing lines of the log."""
    if not dist.is_main:
        return
    summary["finished_at"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    data = json.dumps(summary, indent=2, default=str).encode()
    checkpoint.atomic_write_bytes(save_dir / "summary.json", lambda f: f.write(data))
    lines = ["---- run summary ----"]
    if "train" in summary:
        trained = summary["train"]
        lines.append(f"updates: {trained['num_updates']} in {trained['train_time']:.1f}s"
                     + (f" (stopped: {trained['stopped']})" if trained["stopped"] else ""))
        if trained["best_metric"] is not None:
            lines.append(f"best {trained['criteria']}: {trained['best_metric']:.4f} at update "
                         f"{trained['best_update']}")
    for k, v in summary["metrics"].items():
        if isinstance(v, float) and not k.endswith("_time"):
            lines.append(f"{k}: {v:.4f}")
    for k, v in summary["reports"].items():
        lines.append(f"predictions {k}: {v}")
    lines.append(f"checkpoints, metrics.jsonl, train.log, config.yaml: {save_dir}")
    if summary.get("interrupted"):
        lines.append("interrupted: resume with checkpoint.resume=true and the same env.save_dir")
    for line in lines:
        log.info(line)
