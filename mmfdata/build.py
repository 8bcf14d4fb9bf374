"""`build_dataset`: MMF's dataset_config -> a dataset object (packed when fresh, else LMDB)."""
from __future__ import annotations

import logging
import os
import shlex

from .concat import ConcatDataset
from .errors import DataConfigError
from .lmdb_dataset import LmdbDataset
from .pack import check_fresh, pack_dir_for
from .packed import PackedDataset
from .prerequisites import check_data_files
from .processors import answer_vocab_path, build_processors, check_options, datasets_root

log = logging.getLogger("mmfdata")


def split_entries(name: str, dataset_config: dict, split: str, root: str) -> list[tuple[str, list[str]]]:
    """[(imdb path, [feature store paths])] of a split; feature entry i goes with annotation entry i (MMF)."""
    anns = (dataset_config.get("annotations") or {}).get(split)
    feats = (dataset_config.get("features") or {}).get(split)
    if not anns:
        raise DataConfigError(f"dataset_config.{name}.annotations.{split} is empty or missing")
    if isinstance(anns, str):
        anns = [anns]
    if isinstance(feats, str):
        feats = [feats]
    if not feats or len(feats) != len(anns):
        raise DataConfigError(f"dataset_config.{name}: {len(anns)} annotation entries for {split} but "
                              f"{len(feats or [])} feature entries; MMF pairs them one to one")
    absolute = lambda p: p if os.path.isabs(p) else os.path.join(root, p)  # noqa: E731
    return [(absolute(a), [absolute(p.strip()) for p in f.split(",")]) for a, f in zip(anns, feats)]


def check_splits(name: str, dataset_config: dict, splits, data_dir: str) -> dict[str, list]:
    """{split: split_entries} once the options are supported and every data file of `splits` exists (else one
    error naming all missing ones)."""
    check_options(name, dataset_config)
    root = datasets_root(dataset_config, data_dir)
    entries = {split: split_entries(name, dataset_config, split, root) for split in splits}
    files: dict[str, list[str]] = {}
    for split, pairs in entries.items():
        files[f"annotations.{split}"] = [annotation for annotation, _ in pairs]
        files[f"features.{split}"] = [store for _, stores in pairs for store in stores]
    files["processors.answer_processor.params.vocab_file"] = [answer_vocab_path(name, dataset_config, data_dir)]
    check_data_files(name, data_dir, files)
    return entries


def pack_command(name: str, split: str, data_dir: str, pack_args=None) -> str:
    """The `mmf data pack` command that builds the store `build_dataset` looks for; `pack_args` are the
    `--config FILE key=value ...` that reproduce the caller's dataset_config (None: the project config of `name`)."""
    return "mmf data pack " + shlex.join([name, "--splits", split, "--data-dir", data_dir, *(pack_args or [])])


def build_dataset(name: str, dataset_config: dict, split: str, data_dir: str, *, trust_pickle: bool = False,
                  prefer_packed: bool = True, seed: int = 0, pack_args=None):
    """The dataset of `split` for MMF's `dataset_config.<name>` node, reading files under `data_dir`.

    Each annotation entry uses its packed store when present and fresh (and `prefer_packed`), else the LMDB path
    (logged, with the reason and `pack_command(..., pack_args)`, the command that builds it). Several entries
    (joint TextVQA + ST-VQA training) are concatenated. `seed` fixes the teacher-forcing sequence drawn per
    question and epoch (`ds.set_epoch(e)`).
    """
    data_dir = os.path.abspath(os.path.expanduser(data_dir))
    root = datasets_root(dataset_config, data_dir)
    entries = check_splits(name, dataset_config, [split], data_dir)[split]
    procs = build_processors(name, dataset_config, data_dir)
    parts = []
    for stream, (annotation, stores) in enumerate(entries):
        pack_dir = pack_dir_for(data_dir, root, annotation)
        why = check_fresh(pack_dir, annotation, stores, procs, split) if prefer_packed else "prefer_packed=False"
        if why is None:
            log.info("%s/%s: using packed store %s", name, split, pack_dir)
            parts.append(PackedDataset(pack_dir, seed=seed, stream=stream, name=name))
        else:
            if prefer_packed:
                log.warning("%s/%s: packed store not used (%s); falling back to the LMDB path, which is much "
                            "slower. Build it with `%s`", name, split, why,
                            pack_command(name, split, data_dir, pack_args))
            log.info("%s/%s: LMDB path: imdb %s, features %s", name, split, annotation, ", ".join(stores))
            parts.append(LmdbDataset(name, split, annotation, stores, procs, trust_pickle=trust_pickle,
                                     seed=seed, stream=stream))
    return parts[0] if len(parts) == 1 else ConcatDataset(parts, name=name)


def pack_dataset(name: str, dataset_config: dict, data_dir: str, splits=("train", "val", "test"), *,
                 trust_pickle: bool = False, force: bool = False) -> list[str]:
    """Build (or resume, or confirm) the packed store of every annotation entry of `splits`; returns the folders."""
    from .pack import pack_entry

    data_dir = os.path.abspath(os.path.expanduser(data_dir))
    root = datasets_root(dataset_config, data_dir)
    entries = check_splits(name, dataset_config, splits, data_dir)
    procs = build_processors(name, dataset_config, data_dir)
    out = []
    for split in splits:
        for annotation, stores in entries[split]:
            out.append(pack_entry(name, split, annotation, stores, procs, data_dir, root,
                                  trust_pickle=trust_pickle, force=force))
    return out
