"""Which zoo keys a run reads: the one list that `mmf train`'s automatic fetch installs, that env.offline=true
checks, and that `mmf zoo pack --for` packs.

For a resolved config (`mmfconfig.resolve.build_config`), in the order a run needs them:
  data    each dataset's `zoo_requirements` (MMF's builder fetches them);
  file    the files the run reads from outside a dataset's tree, where the zoo would install them: the processors'
          BERT vocab and fastText vectors (searched as `mmfdata.lookup` lists them, only for the processors the
          dataset_config has) and the model's pretrained pieces (`mmfconfig.paths.model_files`: the text BERT's
          weights, detectron's fc7). Such a file needs the key that holds it where the search finds it (an
          installed zoo key; a file of the user's own needs none), else, when the search finds nothing, the key
          whose install the search would find (bert-base-uncased, fasttext.wiki_en, ...). A dataset's own tree may
          hold the file (synthetic data ships its vocab): the list is asked again once the data is installed;
  resume  checkpoint.resume_zoo's model, unless checkpoint.resume_file wins or the run continues its own checkpoint;
and every key's own zoo_requirements after it (a model's detectron.vmb_weights). Imports nothing heavy.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mmfdata.lookup import first_existing, processor_files

DATA, FILE, RESUME = "data", "file", "resume"


@dataclass(frozen=True)
class Need:
    key: str     # as the run asks for it (a model installs under the key as typed: MMF's rule)
    reader: str  # who reads it: a dataset's name, the model's, "checkpoint", or the key that requires it
    what: str    # what of it, e.g. "zoo_requirements", "BERT vocab (text_processor)"
    role: str    # DATA | FILE | RESUME

    @property
    def why(self) -> str:
        return f"{self.reader}: {self.what}"


def run_needs(cfg: dict, *, continuing: bool = False, manifests: list | None = None) -> list[Need]:
    """The zoo keys the run of `cfg` reads, each once (its first reason), in the order above. `continuing`: the run
    resumes its own checkpoint (checkpoint.resume=true and one is there), so checkpoint.resume_zoo is not read.
    `manifests`: the zoo's manifests besides the default ones (default: those env.dataset_zoo / env.model_zoo
    name, as the run reads them)."""
    from mmfconfig.paths import model_files, zoo_manifests
    from zoo.manifest import load_zoo

    zoo = load_zoo(zoo_manifests(cfg) if manifests is None else manifests)
    data_dir = str(cfg["env"]["data_dir"])
    found: dict[str, Need] = {}

    def add(key, reader: str, what: str, role: str) -> None:
        if isinstance(key, str) and key.strip() and key not in found:
            for req in _requirements(zoo, key):  # first, as `mmf zoo fetch KEY` installs them
                add(req, key, "zoo_requirements", role)
            found.setdefault(key, Need(key, reader, what, role))

    for name in cfg.get("datasets") or []:
        for key in _dataset_config(cfg, name).get("zoo_requirements") or []:
            add(key, name, "zoo_requirements", DATA)
    for name in cfg.get("datasets") or []:
        for what, (candidates, key) in processor_files(name, _dataset_config(cfg, name), data_dir).items():
            add(file_key(zoo, candidates, key, data_dir), name, what, FILE)
    for option, path in model_files(cfg).items():
        add(file_key(zoo, [str(path)], None, data_dir), cfg["model"], f"model_config.{cfg['model']}.{option}", FILE)
    checkpoint = cfg.get("checkpoint") or {}
    if checkpoint.get("resume_zoo") and not checkpoint.get("resume_file") and not continuing:
        add(str(checkpoint["resume_zoo"]), "checkpoint", "resume_zoo", RESUME)
    return list(found.values())


def _dataset_config(cfg: dict, name: str) -> dict:
    return (cfg.get("dataset_config") or {}).get(name) or {}


def _requirements(zoo, key: str) -> list[str]:
    """`key`'s own zoo_requirements, recursively (as `mmf zoo fetch KEY` installs them); none for a key the
    manifests lack (the fetch or the pack names that problem)."""
    from zoo.errors import ZooError

    try:
        entry = zoo.resolve(key)
        return [e.key for e in zoo.with_requirements([key]) if e.key != entry.key]
    except ZooError:
        return []


def file_key(zoo, candidates: list[str], designated: str | None, data_dir: str) -> str | None:
    """The zoo key a file searched along `candidates` comes from: the installed key holding the first candidate
    that exists (None for a file that is not the zoo's), else `designated` (or, without one, the key holding the
    first candidate) when its install would put the file on the search list."""
    hit = first_existing(candidates)
    if hit is not None:
        key = holder(zoo, hit, data_dir)
        return key if key and _installed(zoo, key, data_dir) else None
    key = designated or (holder(zoo, candidates[0], data_dir) if candidates else None)
    return key if key and any(_provides(zoo, key, c, data_dir) for c in candidates) else None


def holder(zoo, path: str, data_dir: str) -> str | None:
    """The zoo key whose install folder in `data_dir` holds `path` (the zoo's layout answers), or None."""
    from zoo.errors import ZooError
    from zoo.fsutil import is_inside
    from zoo.layout import key_of_path, target_for

    key = key_of_path(path)
    try:
        return key if key and is_inside(Path(path), target_for(zoo, key).root(Path(data_dir))) else None
    except ZooError:
        return None


def _provides(zoo, key: str, path: str, data_dir: str) -> bool:
    """Whether installing `key` may put `path` there: a plain file at its install path, or anything inside the
    folder an archive is extracted into."""
    from zoo.errors import ZooError
    from zoo.fsutil import is_inside
    from zoo.layout import target_for

    try:
        target = target_for(zoo, key)
        folders = [(target.folder(Path(data_dir), r), r) for r in target.entry.resources]
    except ZooError:
        return False
    path = Path(path)
    return any(path == folder / r.file_name if not r.compressed else is_inside(path, folder) for folder, r in folders)


def _installed(zoo, key: str, data_dir: str) -> bool:
    from zoo.errors import ZooError
    from zoo.layout import place_of

    try:
        return place_of(zoo, key, Path(data_dir)).current
    except ZooError:
        return False


def run_argv(cfg: dict) -> list[str]:
    """The options that resolve to `cfg`'s needs when the run's own command line is not at hand (a library call):
    its config file, datasets and model."""
    words = [f"config={cfg['config']}"] if cfg.get("config") else []
    words += [f"datasets={','.join(cfg['datasets'])}"] if cfg.get("datasets") else []
    return words + ([f"model={cfg['model']}"] if cfg.get("model") else [])


def keys_for_run(argv: list[str], zoo_paths, data_dir: Path | None):
    """What `mmf zoo pack --for ARGV` packs: (zoo, data dir, keys, the run's extra manifests, {key: why}), the run
    resolved as `mmf train` resolves ARGV; --data-dir (`data_dir`) stands for env.data_dir, --zoo files
    (`zoo_paths`) win over the run's manifests as on every other zoo command."""
    from mmfconfig.errors import ConfigError
    from mmfconfig.paths import zoo_manifests
    from mmfconfig.resolve import build_config
    from zoo.errors import UsageError
    from zoo.manifest import load_zoo

    if data_dir is not None:
        argv = [*argv, f"env.data_dir={Path(data_dir).expanduser().absolute()}"]
    try:
        cfg = build_config(argv, say=lambda _: None)
    except ConfigError as exc:
        raise UsageError(f"--for: {'; '.join(line.strip() for line in str(exc).splitlines())}") from None
    manifests = [*zoo_manifests(cfg), *(zoo_paths or [])]
    needs = run_needs(cfg, manifests=manifests)
    return (load_zoo(manifests), Path(str(cfg["env"]["data_dir"])), [n.key for n in needs], manifests,
            {n.key: n.why for n in needs})
