"""The zoo data a run reads (mmfdata.needs lists it): installed when missing, before any data is read, or, on an
offline machine (env.offline=true, MMF_ZOO_OFFLINE), refused at once with one error that names every missing key
and the commands that bring them: `mmf zoo pack --for <this run's options>` on a connected machine, then
`mmf zoo fetch --from PACK` here. Nothing is asked of a mirror when everything is installed.
"""
from __future__ import annotations

from pathlib import Path

from mmftrain.errors import CheckpointError, DataError
from mmftrain.logs import log


def fetch_missing(cfg: dict) -> None:
    """Install the missing keys: the datasets' zoo_requirements first, then the vocab, vectors and pretrained
    weights the installed data does not hold (asked again: a dataset's own tree may hold them). The zoo's locks make
    one process download while the other ranks and jobs wait, so no barrier can time out during a 34 GB download."""
    if not cfg["env"].get("fetch_missing_data", True):
        return
    from mmfdata.needs import DATA, RESUME

    _install_missing(cfg, [n for n in listed(cfg) if n.role == DATA])
    _install_missing(cfg, [n for n in listed(cfg) if n.role not in (DATA, RESUME)])


def listed(cfg: dict, continuing: bool = False) -> list:
    """mmfdata.needs.run_needs, its manifest problems as the run's one-line error."""
    from mmfdata.needs import run_needs
    from zoo.errors import ZooError

    try:
        return run_needs(cfg, continuing=continuing)
    except ZooError as e:  # a manifest that cannot be read (env.dataset_zoo / env.model_zoo, MMF_DATASET_ZOO, ...)
        raise DataError(f"the run's zoo data cannot be listed: {e}") from None


def missing_needs(cfg: dict, wanted: list) -> list:
    """The `wanted` needs (mmfdata.needs.Need) whose installed version in env.data_dir is not the manifest's."""
    import zoo
    from mmfconfig.paths import zoo_manifests
    from zoo.errors import ZooError

    data_dir = Path(str(cfg["env"]["data_dir"]))
    manifests = zoo_manifests(cfg)  # env.dataset_zoo / env.model_zoo (MMF's keys) when they name other manifests
    missing = []
    for need in wanted:
        try:
            if not zoo.is_installed(need.key, data_dir, manifests):
                missing.append(need)
        except ZooError as e:
            raise DataError(f"{need.reader} needs zoo data {need.key} in {data_dir}: {e}") from None
    return missing


def _install_missing(cfg: dict, wanted: list) -> None:
    import zoo
    from mmfconfig.paths import zoo_manifests
    from zoo.errors import ZooError

    missing = missing_needs(cfg, wanted)
    why = offline_reason(cfg)
    if missing and why:
        raise offline_error(cfg, missing, why)
    data_dir, manifests = Path(str(cfg["env"]["data_dir"])), zoo_manifests(cfg)
    for need in missing:
        try:
            if zoo.is_installed(need.key, data_dir, manifests):
                continue  # installed meanwhile, as the requirement of a key fetched before it
            log.info("%s: zoo data %s is not installed in %s: fetching it (env.fetch_missing_data=false "
                     "to turn this off)", need.why, need.key, data_dir)
            zoo.fetch(need.key, data_dir=data_dir, zoo_paths=manifests)
        except ZooError as e:
            raise DataError(f"{need.reader} needs zoo data {need.key} in {data_dir}: {e} (for data not installed by "
                            "the zoo, set env.fetch_missing_data=false)") from None


def offline_reason(cfg: dict) -> str | None:
    """What forbids this run the network (env.offline=true, or MMF_ZOO_OFFLINE as zoo.transfer reads it), or None."""
    from zoo.transfer.options import OFFLINE_ENV, offline_env

    if (cfg.get("env") or {}).get("offline"):
        return "env.offline=true"
    return f"{OFFLINE_ENV} is set" if offline_env() else None


def refuse_gaps(cfg: dict, continuing: bool, argv: list[str] | None = None) -> None:
    """Offline, every key the run would fetch that is missing, in one error (`continuing`: the run resumes its own
    checkpoint, so checkpoint.resume_zoo's model is not read)."""
    why = offline_reason(cfg)
    if why is None:
        return
    from mmfdata.needs import RESUME

    fetching = bool(cfg["env"].get("fetch_missing_data", True))  # resume_zoo's model is fetched regardless
    missing = missing_needs(cfg, [n for n in listed(cfg, continuing) if fetching or n.role == RESUME])
    if missing:
        raise offline_error(cfg, missing, why, argv)


def refuse_offline_fetch(cfg: dict, key: str) -> None:
    """checkpoint.resume_zoo's model `key` would be fetched now: offline, the one-line error instead."""
    why = offline_reason(cfg)
    if why:
        from mmfdata.needs import RESUME, Need

        raise CheckpointError(str(offline_error(cfg, [Need(key, "checkpoint", "resume_zoo", RESUME)], why)))


def offline_error(cfg: dict, missing: list, why: str, argv: list[str] | None = None) -> DataError:
    """One line: what is missing, and the commands that bring it (`argv`: the run's options; else its config file,
    datasets and model)."""
    from mmfconfig.paths import zoo_manifests
    from mmfdata.needs import run_argv
    from zoo.commands import install_command, pack_command

    data_dir = str(cfg["env"]["data_dir"])
    name = "-".join([*(cfg.get("datasets") or []), *([cfg["model"]] if cfg.get("model") else [])]) or "run"
    keys = ", ".join(f"{n.key} ({n.why})" for n in missing)
    pack = pack_command(argv or run_argv(cfg), f"{name}.pack")
    install = install_command(f"{name}.pack", data_dir, zoo_manifests(cfg))
    return DataError(f"offline ({why}): this run reads zoo data that is not installed in {data_dir}: {keys}; nothing "
                     f"was fetched. On a connected machine run `{pack}`, copy {name}.pack here and run `{install}`")
