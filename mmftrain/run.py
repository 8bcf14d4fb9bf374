"""One run from a resolved config: set up ranks, data, model; load a checkpoint; train / evaluate / predict.

run_type as MMF: "train" in it -> train (with periodic val); "val" -> a final val pass; "test" / "inference" /
"predict" -> a test pass. Every final pass writes an EvalAI prediction file under `<save_dir>/reports/`.
Artifacts (all under env.save_dir): config.yaml, train.log, metrics.jsonl, current.ckpt, best.ckpt,
models/model_<N>.ckpt, m4c_final.pth, reports/*.json, summary.json.
"""
from __future__ import annotations

import json
import random
import time
from pathlib import Path

from mmftrain import checkpoint as C
from mmftrain import distributed as D
from mmftrain.config import dump_yaml
from mmftrain.errors import CheckpointError, DataError, TrainError
from mmftrain.logs import log, setup_logging


def _zoo_checkpoint(key: str, data_dir: Path, dist: D.DistInfo) -> Path:
    """The checkpoint file of zoo model `key` under `<data_dir>/models/<key>/`, fetched by rank 0 if missing."""
    folder = data_dir / "models" / key
    if dist.is_main and not (folder / ".built.json").is_file():
        try:
            from zoo import fetch
        except ImportError:
            raise CheckpointError(f"zoo model {key} is not installed in {folder}; run `mmf zoo fetch {key}`") \
                from None
        log.info("fetching zoo model %s into %s", key, data_dir)
        try:
            fetch(key, data_dir=str(data_dir))
        except TypeError:
            fetch(key)
    D.barrier()  # other ranks wait for rank 0's fetch (the zoo lock also serialises separate processes)
    files = sorted(folder.glob("*.pth")) + sorted(folder.glob("*.ckpt"))
    if not files:
        raise CheckpointError(f"no .pth/.ckpt file in {folder} for zoo model {key}; re-fetch it "
                              f"(`mmf zoo fetch {key} --force`)")
    return files[0]


def _fetch_requirements(cfg: dict) -> None:
    """Install the datasets' missing zoo_requirements (MMF's builder does this); the zoo's locks make one process
    download while the other ranks and jobs wait, so no barrier can time out during a 34 GB download."""
    if not cfg["env"].get("fetch_missing_data", True):
        return
    import zoo
    from zoo.errors import ZooError

    from zoo.manifest import CONFIG_DIR, default_manifest_paths

    data_dir = Path(str(cfg["env"]["data_dir"])).expanduser()
    shipped = {p.resolve() for _, p in default_manifest_paths()}  # already loaded (MMF_DATASET_ZOO honoured)
    shipped |= {(CONFIG_DIR / n).resolve() for n in ("datasets.yaml", "models.yaml")}  # the config's defaults
    manifests = []  # env.dataset_zoo / env.model_zoo (MMF's keys) when they name other manifests
    for key in ("dataset_zoo", "model_zoo"):
        path = Path(str(cfg["env"].get(key) or "")).expanduser()
        path = path if path.is_absolute() else Path(__file__).resolve().parent.parent / path
        if path.is_file() and path.resolve() not in shipped:
            manifests.append(path)
    for name in cfg["datasets"]:
        for key in cfg["dataset_config"].get(name, {}).get("zoo_requirements") or []:
            try:
                if zoo.is_installed(key, data_dir, manifests):
                    continue
                log.info("%s: zoo data %s is not installed in %s: fetching it (env.fetch_missing_data=false "
                         "to turn this off)", name, key, data_dir)
                zoo.fetch(key, data_dir=data_dir, zoo_paths=manifests)
            except ZooError as e:
                raise DataError(f"{name} needs zoo data {key} in {data_dir}: {e} (for data not installed by the "
                                "zoo, set env.fetch_missing_data=false)") from None


def _resume_source(cfg: dict, save_dir: Path, dist: D.DistInfo):
    """(path, trusted, model_only) of the checkpoint to start from, MMF's priority order; None for a fresh run."""
    ck = cfg["checkpoint"]
    own = save_dir / ("best.ckpt" if ck["resume_best"] else "current.ckpt")
    other = save_dir / ("current.ckpt" if ck["resume_best"] else "best.ckpt")
    if ck["resume"] and (own.is_file() or other.is_file()):
        return (own if own.is_file() else other), False, False
    if ck["resume_file"]:
        return Path(str(ck["resume_file"])).expanduser(), False, False
    if ck["resume_zoo"]:
        data_dir = Path(str(cfg["env"]["data_dir"])).expanduser()
        path = _zoo_checkpoint(str(ck["resume_zoo"]), data_dir, dist)
        from zoo.trust import untrusted_reason  # full unpickling only for bytes the zoo verified

        return path, untrusted_reason(path) is None, True
    return None


def run(cfg: dict) -> dict:
    """Execute `cfg` (from `mmftrain.config.build_config`) on this process; returns the run summary."""
    dist = D.setup(cfg["training"]["device"], cfg["distributed"]["backend"])
    try:
        return _run(cfg, dist)
    finally:
        D.cleanup()


def _run(cfg: dict, dist: D.DistInfo) -> dict:
    from mmftrain.data import build_datasets, concat
    from mmftrain.evaluate import evaluate, write_predictions
    from mmftrain.trainer import Trainer

    save_dir = Path(str(cfg["env"]["save_dir"])).expanduser()
    setup_logging(save_dir, dist.is_main, dist.rank)
    rt = cfg["run_type"]
    do_train = "train" in rt
    do_val = "val" in rt
    do_test = any(x in rt for x in ("test", "inference", "predict"))
    seed = int(cfg["training"]["seed"])
    if seed == -1:
        seed = D.broadcast_object(random.randrange(2**31))
    source = _resume_source(cfg, save_dir, dist)
    ckpt = None
    if source is not None:
        ckpt = C.load(source[0], trusted=source[1] or bool(cfg["training"]["trust_pickle"]))
        reset = cfg["checkpoint"]["reset"]
        if not source[2] and not reset["all"] and not reset["counts"] and "seed" in ckpt:
            seed = int(ckpt["seed"])  # sampling order and teacher-forcing draws continue as before
    elif cfg["checkpoint"]["resume"]:
        log.info("checkpoint.resume=true but no checkpoint in %s yet: starting fresh", save_dir)
    cfg["training"]["seed"] = seed
    if dist.is_main:
        text = dump_yaml(cfg).encode()
        C.atomic_write_bytes(save_dir / "config.yaml", lambda f: f.write(text))
    log.info("run_type=%s datasets=%s model=%s seed=%d world=%d device=%s save_dir=%s", rt,
             ",".join(cfg["datasets"]), cfg["model"], seed, dist.world, dist.device, save_dir)

    _fetch_requirements(cfg)
    train_ds = None
    if do_train:
        train_ds = concat(build_datasets(cfg, "train", seed))
    val_sets = {}
    if do_val or do_train:
        try:
            val_sets = build_datasets(cfg, "val", seed)
        except DataError as e:
            if do_val:
                raise
            log.warning("no val split (%s): training without periodic evaluation", e)
    test_sets = build_datasets(cfg, "test", seed) if do_test else {}
    first = train_ds if train_ds is not None else next(iter({**val_sets, **test_sets}.values()), None)
    if first is None:
        raise TrainError(f"run_type={rt} needs at least one split to read")
    vocab_size = len(first.answer_vocab)

    trainer = Trainer(cfg, dist, vocab_size, seed)
    if source is not None:
        trainer.load(source[0], model_only=source[2], obj=ckpt)
        del ckpt
    trainer.wrap()

    summary: dict = {"run_type": rt, "save_dir": str(save_dir), "seed": trainer.seed, "world_size": dist.world,
                     "answer_vocab_size": vocab_size, "reports": {}, "metrics": {}}
    if do_train:
        res = trainer.train(train_ds, val_sets)
        summary["train"] = {k: v for k, v in res.items() if k != "last_eval"}
        if res["stopped"] not in (None, "early_stop"):
            summary["interrupted"] = res["stopped"]
            _finish(summary, save_dir, dist)
            return summary
        best = save_dir / "best.ckpt"
        if best.is_file():  # as MMF: final passes use the best model
            trainer.load(best, model_only=True)
        if dist.is_main:
            C.save(save_dir / f"{cfg['model']}_final.pth", trainer.model.state_dict())

    bs = int(cfg["evaluation"]["batch_size"] or cfg["training"]["batch_size"])
    per_rank = max(1, bs // dist.world)
    passes = ([("val", val_sets)] if do_val else []) + ([("test", test_sets)] if do_test else [])
    for split, sets in passes:
        for name, ds in sets.items():
            out, records = evaluate(trainer.model, ds, dataset_name=name, split=split, batch_size=per_rank,
                                    device=trainer.device, dist=dist, amp=trainer.amp(),
                                    metrics=list(cfg["evaluation"]["metrics"]), pin=trainer.cuda,
                                    early_exit=bool(cfg["evaluation"]["early_exit_decoding"]))
            summary["metrics"].update(out)
            if dist.is_main:
                path = write_predictions(records, save_dir / "reports", name,
                                         cfg["training"]["experiment_name"], split,
                                         cfg["evaluation"]["predict_file_format"])
                summary["reports"][f"{split}/{name}"] = str(path)
                log.info("%s/%s: %d predictions written to %s", split, name, len(records), path)
    _finish(summary, save_dir, dist)
    return summary


def _finish(summary: dict, save_dir: Path, dist: D.DistInfo) -> None:
    if not dist.is_main:
        return
    summary["finished_at"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    data = json.dumps(summary, indent=2, default=str).encode()
    C.atomic_write_bytes(save_dir / "summary.json", lambda f: f.write(data))
    lines = ["---- run summary ----"]
    if "train" in summary:
        tr = summary["train"]
        lines.append(f"updates: {tr['num_updates']} in {tr['train_time']:.1f}s"
                     + (f" (stopped: {tr['stopped']})" if tr["stopped"] else ""))
        if tr["best_metric"] is not None:
            lines.append(f"best {tr['criteria']}: {tr['best_metric']:.4f} at update {tr['best_update']}")
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
