"""The training-curve plot's axes are honest: both start at 0, and accuracy is drawn on [0, 1] (a run between
0.90 and 1.00 must not fill the whole height)."""
import json

import pytest

from mmftrain.plot import draw, plot_run

plt = pytest.importorskip("matplotlib.pyplot")


def test_accuracy_axis_is_zero_to_one_and_loss_starts_at_zero(tmp_path):
    records = [{"num_updates": u, "train/total_loss": 5.0 - u / 100} for u in range(10, 110, 10)]
    records += [{"num_updates": u, "val/textvqa/textvqa_accuracy": acc, "val/total_loss": 3.0}
                for u, acc in ((50, 0.91), (100, 0.97))]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    png = plot_run(tmp_path)
    assert png.read_bytes()[:4] == b"\x89PNG"
    fig = draw(records, plt)
    loss_axis, metric_axis = fig.axes
    assert loss_axis.get_ylim()[0] == 0
    assert metric_axis.get_ylim() == (0, 1)
