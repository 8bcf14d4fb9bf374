"""TensorBoard gets what a researcher reads (losses, lr, val metrics, throughput), not bookkeeping counters."""
import pytest

from tests.test_train_e2e import data_dir, run, train_cmd  # noqa: F401 (data_dir is a fixture)

DEBUG = {"batch_qid_sum", "batch_first_qid", "max_updates", "eta_s", "num_updates"}


def test_tensorboard_scalars_are_the_researchers_not_debug_counters(data_dir, tmp_path):  # noqa: F811
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    save = tmp_path / "save"
    r = run(train_cmd(data_dir, save, "training.max_updates=2", "training.checkpoint_interval=2",
                      "training.tensorboard=true", run_type="train_val"))
    assert r.returncode == 0, r.stderr[-3000:]
    events = EventAccumulator(str(save / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train/total_loss", "train/total_loss/avg", "lr", "ups", "samples_per_s"} <= tags, tags
    assert "val/textvqa/textvqa_accuracy" in tags and "val/total_loss" in tags, tags
    assert not tags & DEBUG, tags & DEBUG
    # metrics.jsonl keeps every field (the batch fingerprint checks a resume)
    assert '"batch_qid_sum"' in (save / "metrics.jsonl").read_text()
