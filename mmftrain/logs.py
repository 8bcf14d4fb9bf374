"""Run logging: text lines (MMF's `key: value, ...` style), `metrics.jsonl`, optional TensorBoard, progress bar."""
from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

log = logging.getLogger("mmftrain")


def setup_logging(save_dir: Path | None, is_main: bool, rank: int) -> None:
    """Log to stdout (rank 0) and to `<save_dir>/train.log` (`train.log.rank<N>` for other ranks)."""
    log.setLevel(logging.INFO)
    log.propagate = False
    for h in list(log.handlers):
        log.removeHandler(h)
        h.close()
    fmt = logging.Formatter("%(asctime)s | %(levelname)s | mmftrain : %(message)s", "%Y-%m-%dT%H:%M:%S")
    if is_main:
        sh = logging.StreamHandler(sys.stdout)
        sh.setFormatter(fmt)
        log.addHandler(sh)
    if save_dir is not None:
        Path(save_dir).mkdir(parents=True, exist_ok=True)
        name = "train.log" if is_main else f"train.log.rank{rank}"
        fh = logging.FileHandler(Path(save_dir) / name)
        fh.setFormatter(fmt)
        log.addHandler(fh)


def format_line(values: dict) -> str:
    parts = []
    for k, v in values.items():
        if isinstance(v, float):
            v = f"{v:.4f}" if abs(v) < 1000 else f"{v:.0f}"
        parts.append(f"{k}: {v}")
    return ", ".join(parts)


class MetricsWriter:
    """Append-only `metrics.jsonl` (one JSON object per log/eval event) and TensorBoard scalars when asked."""

    def __init__(self, save_dir: Path, tensorboard: bool, resume_update: int | None = None):
        self.path = Path(save_dir) / "metrics.jsonl"
        if resume_update is not None and self.path.exists():
            self._truncate_after(resume_update)
        self.file = open(self.path, "a")
        self.tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(Path(save_dir) / "tensorboard"))
            except ImportError:
                log.warning("training.tensorboard=true but tensorboard is not installed; pip install tensorboard")

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
                if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "num_updates":
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
