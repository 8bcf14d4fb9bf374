"""Where the processors look for the files MMF fetches from outside its dataset zoo (the BERT vocab, the fastText
vectors): the search lists `processors.build_processors` reads in order, first hit wins.

Imports nothing heavy (no numpy): `mmf zoo pack --for` asks the same lists which zoo keys a run reads
(`mmfdata.needs`). Where the zoo installs a key, and MMF's cache dir, are asked of `zoo`, never re-derived here.
"""
from __future__ import annotations

import os

BERT_ZOO_KEY = "bert-base-uncased"  # configs/zoo/models.yaml: vocab.txt (+ the text BERT's weights)
FASTTEXT_ZOO_KEY = "fasttext.wiki_en"  # configs/zoo/models.yaml: MMF's wiki.en.bin
FASTTEXT_DEFAULT = "wiki.en.bin"  # context_processor.params.model_file when unset (MMF's)


def datasets_root(dataset_config: dict, data_dir: str) -> str:
    """`dataset_config.data_dir` when set and absolute, else `<data_dir>/datasets` (MMF's default)."""
    root = dataset_config.get("data_dir")
    if root and os.path.isabs(str(root)) and "${" not in str(root):
        return str(root)
    return os.path.join(data_dir, "datasets")


def params(dataset_config: dict, proc: str) -> dict:
    """`processors.<proc>.params` of a dataset_config ({} when absent)."""
    node = (dataset_config.get("processors") or {}).get(proc) or {}
    return dict(node.get("params") or {})


def first_existing(candidates: list[str]) -> str | None:
    return next((c for c in candidates if os.path.isfile(c)), None)


def _option_candidates(option: str, root: str) -> list[str]:
    """A file option: absolute as written, else the working directory first, then the datasets root (MMF)."""
    option = os.path.expanduser(option)
    return [option] if os.path.isabs(option) else [os.path.abspath(option), os.path.join(root, option)]


def zoo_folders(data_dir: str, keys: tuple[str, ...]) -> list[str]:
    """Where `mmf zoo fetch KEY` installs each of `keys` in `data_dir` (the zoo's layout answers: `fasttext` lands
    in models/fasttext.defaults); a key the active manifests lack has no place."""
    from pathlib import Path

    from zoo.errors import ZooError
    from zoo.layout import target_for
    from zoo.manifest import load_zoo

    try:
        zoo = load_zoo()
    except ZooError:
        return []  # a broken MMF_MODEL_ZOO: the search goes on without the zoo's folders (fetch names the problem)
    found = []
    for key in keys:
        try:
            found.append(str(target_for(zoo, key).root(Path(data_dir))))
        except ZooError:
            continue
    return found


def bert_vocab_candidates(option: str | None, root: str, data_dir: str, name: str) -> list[str]:
    if option:
        return _option_candidates(option, root)
    return [
        *(os.path.join(folder, "vocab.txt") for folder in zoo_folders(data_dir, (BERT_ZOO_KEY,))),
        os.path.join(root, name, "defaults", "extras", "vocabs", "bert-base-uncased-vocab.txt"),
    ]


def fasttext_candidates(option: str, root: str, data_dir: str, name: str) -> list[str]:
    option = os.path.expanduser(option)
    if os.path.isabs(option):
        folders, base = [os.path.dirname(option)], os.path.basename(option)
    else:
        from zoo.datadir import default_cache_dir

        zoo = zoo_folders(data_dir, ("fasttext", FASTTEXT_ZOO_KEY))
        folders = [os.getcwd(), root, data_dir, str(default_cache_dir()), *zoo,
                   os.path.join(root, name, "defaults", "extras", "fasttext")]
        base = option
    stem = base[:-4] if base.endswith((".bin", ".vec", ".npy")) else base
    names = [base] + [stem + ext for ext in (".bin", ".vec", ".npy") if stem + ext != base]
    return [os.path.join(f, n) for f in folders for n in names]


def processor_files(name: str, dataset_config: dict, data_dir: str) -> dict[str, tuple[list[str], str]]:
    """{role: (search list, the zoo key MMF would fetch it as)} of the files dataset `name`'s processors read from
    outside the dataset's own tree, for each processor its config has (a dataset_config without `processors` reads
    none)."""
    root = datasets_root(dataset_config, data_dir)
    procs = dataset_config.get("processors") or {}
    out = {}
    if "text_processor" in procs:
        out["BERT vocab (text_processor)"] = (
            bert_vocab_candidates(params(dataset_config, "text_processor").get("vocab_file"), root, data_dir, name),
            BERT_ZOO_KEY)
    if "context_processor" in procs:
        option = str(params(dataset_config, "context_processor").get("model_file", FASTTEXT_DEFAULT))
        out["fastText vectors (context_processor)"] = (fasttext_candidates(option, root, data_dir, name),
                                                        FASTTEXT_ZOO_KEY)
    return out
