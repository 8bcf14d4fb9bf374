"""Run logging: text lines (MMF's `key: value, ...` style), `metrics.jsonl`, optional TensorBoard scalars.

`train.log` receives everything the console shows (the trainer's, the data package's and the zoo's log lines,
Python warnings) plus the traceback of a fatal error, which the console shows as one line.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

from zoo.logfmt import ConsoleHandler, formatter

log = logging.getLogger("mmftrain")
# Loggers whose lines belong in a run's log: the trainer, the data package (data path, packed store), the zoo
# (fetching missing data), and Python warnings.
RUN_LOGGERS = ("mmftrain", "mmfdata", "zoo", "py.warnings")


def setup_logging(log_dir: Path | None, is_main: bool, rank: int, level: str = "info") -> Path | None:
    """Log to the console (rank 0; zoo.logfmt's format and stream) and to `<log_dir>/train.log`
    (`train.log.rank<N>` for other ranks); returns the log file's path."""
    logging.captureWarnings(True)
    handlers: list[logging.Handler] = []
    if is_main:
        console = ConsoleHandler()
        console.addFilter(lambda record: not getattr(record, "file_only", False))  # the CLI prints fatal errors
        handlers.append(console)
    path = None
    if log_dir is not None:
        Path(log_dir).mkdir(parents=True, exist_ok=True)
        path = Path(log_dir) / ("train.log" if is_main else f"train.log.rank{rank}")
        file_handler = logging.FileHandler(path)
        file_handler.setFormatter(formatter())
        handlers.append(file_handler)
    close_logging()  # a previous run in this process
    for name in RUN_LOGGERS:
        logger = logging.getLogger(name)
        _saved[name] = (logger.level, logger.propagate, list(logger.handlers))
        for old in list(logger.handlers):
            logger.removeHandler(old)
        logger.setLevel(str(level).upper())
        logger.propagate = False
        for handler in handlers:
            logger.addHandler(handler)
    return path


_saved: dict[str, tuple] = {}  # logger name -> (level, propagate, handlers) before setup_logging


def close_logging() -> None:
    """Close the run's handlers (the log file is complete afterwards) and give the loggers back their setup."""
    if not _saved:
        return
    closed = set()
    for name, (level, propagate, handlers) in _saved.items():
        logger = logging.getLogger(name)
        for handler in list(logger.handlers):
            logger.removeHandler(handler)
            if id(handler) not in closed:
                handler.close()
                closed.add(id(handler))
        logger.setLevel(level)
        logger.propagate = propagate
        for handler in handlers:
            logger.addHandler(handler)
    _saved.clear()
    logging.captureWarnings(False)


def format_number(value: float) -> str:
    """4 decimals, whole numbers past 1000, and 3 significant digits below 1e-3 (a warm-up learning rate)."""
    if value != 0 and abs(value) < 1e-3:
        return f"{value:.3e}"
    return f"{value:.4f}" if abs(value) < 1000 else f"{value:.0f}"


def format_line(values: dict) -> str:
    return ", ".join(f"{k}: {format_number(v) if isinstance(v, float) else v}" for k, v in values.items())


# metrics.jsonl keys that are bookkeeping, not curves a researcher reads: the step itself, the run's length, the
# batch fingerprint a resume is checked against, the ETA. TensorBoard gets every other number (losses, lr, val
# metrics, throughput, memory).
NOT_FOR_TENSORBOARD = frozenset({"num_updates", "max_updates", "epoch", "eta_s", "batch_qid_sum", "batch_first_qid",
                                 "best_update"})
TENSORBOARD_MISSING = ("training.tensorboard=true needs the tensorboard package: pip install -e \".[tensorboard]\" "
                       "(or set training.tensorboard=false)")


def require_tensorboard():
    """TensorBoard's SummaryWriter, or a ConfigError saying which extra to install. A start-up check: `mmf train`
    asks before it writes anything to the save dir, so a failed start never blocks the corrected rerun."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        from mmftrain.errors import ConfigError

        raise ConfigError(TENSORBOARD_MISSING) from None
    return SummaryWriter


class MetricsWriter:
    """Append-only `metrics.jsonl` (one JSON object per log/eval event) and TensorBoard scalars when asked."""

    def __init__(self, save_dir: Path, tensorboard_dir: Path | None = None, resume_update: int | None = None):
        self.path = Path(save_dir) / "metrics.jsonl"
        if resume_update is not None and self.path.exists():
            self._truncate_after(resume_update)
        self.file = open(self.path, "a")
        self.tb = None
        if tensorboard_dir is not None:
            try:
                summary_writer = require_tensorboard()
            except BaseException:
                self.file.close()
                raise
            self.tb = summary_writer(str(tensorboard_dir), purge_step=resume_update or None)
            log.info("TensorBoard scalars in %s", tensorboard_dir)

    def _truncate_after(self, update: int) -> None:
        # a killed run may have logged updates after its last checkpoint; the resumed run logs them again
        from mmftrain.checkpoint import atomic_write_bytes

        kept = []
        for line in self.path.read_text().splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue  # a line cut by the kill
            if rec.get("num_updates", 0) <= update:
                kept.append(line)
        data = ("\n".join(kept) + ("\n" if kept else "")).encode()
        atomic_write_bytes(self.path, lambda f: f.write(data))

    def write(self, record: dict) -> None:
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        if self.tb is not None:
            step = record.get("num_updates", 0)
            for k, v in record.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in NOT_FOR_TENSORBOARD:
                    self.tb.add_scalar(k, v, step)

    def close(self) -> None:
        self.file.close()
        if self.tb is not None:
            self.tb.close()


def read_metrics(save_dir: Path) -> list[dict]:
    """All records of `<save_dir>/metrics.jsonl` (a cut last line is skipped)."""
    out = []
    for line in (Path(save_dir) / "metrics.jsonl").read_text().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out
