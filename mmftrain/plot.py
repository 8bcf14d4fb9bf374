"""`mmf plot SAVE_DIR`: a PNG of training loss and val metrics over updates, read from metrics.jsonl."""
from __future__ import annotations

from pathlib import Path

from mmftrain.errors import TrainError


def plot_run(save_dir: str | Path, out: str | Path | None = None) -> Path:
    """Draw loss (left) and val metrics (right) against updates; returns the PNG path.

    Raises TrainError when there is no metrics.jsonl or matplotlib is not installed.
    """
    from mmftrain.logs import read_metrics

    save_dir = Path(save_dir)
    if not (save_dir / "metrics.jsonl").is_file():
        raise TrainError(f"{save_dir / 'metrics.jsonl'} not found; pass the env.save_dir of a training run")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise TrainError("mmf plot needs matplotlib; pip install matplotlib (or pip install -e '.[plot]')") from None
    fig = draw(read_metrics(save_dir), plt)
    out = Path(out) if out else save_dir / "training_curves.png"
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def draw(recs: list[dict], plt):
    """The figure of `recs` (metrics.jsonl records). Both y-axes start at 0, and a metric that lives in [0, 1]
    (accuracy, ANLS) is drawn on [0, 1]: a zoomed axis makes a 0.93 -> 0.95 wiggle look like learning."""
    train = [r for r in recs if "train/total_loss" in r]
    val = [r for r in recs if any(k.startswith("val/") for k in r)]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    if train:
        ax1.plot([r["num_updates"] for r in train], [r["train/total_loss"] for r in train], label="train loss")
    if any("val/total_loss" in r for r in val):
        pts = [(r["num_updates"], r["val/total_loss"]) for r in val if "val/total_loss" in r]
        ax1.plot(*zip(*pts), "o-", label="val loss")
    ax1.set_xlabel("updates")
    ax1.set_ylabel("m4c_decoding_bce_with_mask")
    ax1.set_ylim(bottom=0)
    ax1.legend()
    keys = sorted({k for r in val for k in r if k.startswith("val/") and k.count("/") == 2
                   and not k.endswith(("questions", "bce_with_mask"))})
    values = []
    for k in keys:
        pts = [(r["num_updates"], r[k]) for r in val if k in r]
        values += [v for _, v in pts]
        ax2.plot(*zip(*pts), "o-", label=k)
    ax2.set_xlabel("updates")
    ax2.set_ylabel("val metric")
    if values and all(0 <= v <= 1 for v in values):
        ax2.set_ylim(0, 1)
    else:
        ax2.set_ylim(bottom=0)
    if keys:
        ax2.legend()
    fig.tight_layout()
    return fig
