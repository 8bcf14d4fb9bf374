"""What a dataset needs before anything is built, checked in the order a user fixes it: the data files (imdb,
feature stores, answer vocab), then the BERT vocab, then the fastText vectors (those two in `processors.py`).

A missing data dir used to surface as "no BERT vocab.txt"; now every missing data file of the requested splits is
listed in one error that names the zoo keys that install them.
"""
from __future__ import annotations

import os

from .errors import DataFileError, fetch_advice


def check_data_files(name: str, data_dir: str, files: dict[str, list[str]]) -> None:
    """Raise one `DataFileError` naming every missing file of `files` ({config option: [paths]})."""
    missing = {opt: [p for p in paths if not os.path.exists(p)] for opt, paths in files.items()}
    missing = {opt: paths for opt, paths in missing.items() if paths}
    if not missing:
        return
    flat = list(dict.fromkeys(p for paths in missing.values() for p in paths))  # a store shared by splits once
    state = "is a file, not a folder" if os.path.exists(data_dir) else "does not exist"
    where = "" if os.path.isdir(data_dir) else f" (the data dir {data_dir} {state}: set MMF_DATA_DIR or " \
                                                 "env.data_dir / --data-dir)"
    shown = ", ".join(flat[:4]) + (f" and {len(flat) - 4} more" if len(flat) > 4 else "")
    options = " / ".join(f"dataset_config.{name}.{opt}" for opt in missing)
    raise DataFileError(f"{name}: {len(flat)} data file(s) missing{where}: {shown}; {fetch_advice(flat, options)}")
