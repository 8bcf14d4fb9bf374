"""Checkpoint files: integrity checks, fallback to the newest intact file, background writes, pruning."""
import os
import zipfile

import pytest
import torch

from mmftrain import checkpoint
from mmftrain.errors import CheckpointError


def _state(value: float = 1.0) -> dict:
    return {"model": {"w": torch.full((256, 256), value)}, "num_updates": int(value)}


def flip_inside_largest_member(path, count=64) -> int:
    """Invert `count` bytes in the middle of the largest member's data; returns the offset."""
    with zipfile.ZipFile(path) as archive:
        info = max(archive.infolist(), key=lambda i: i.file_size)
    with open(path, "r+b") as f:
        f.seek(info.header_offset + 26)
        name_len, extra_len = int.from_bytes(f.read(2), "little"), int.from_bytes(f.read(2), "little")
        offset = info.header_offset + 30 + name_len + extra_len + info.compress_size // 2
        f.seek(offset)
        data = f.read(count)
        f.seek(offset)
        f.write(bytes(b ^ 0xFF for b in data))
    return offset


def test_flipped_bytes_and_truncation_are_detected(tmp_path):
    path = tmp_path / "current.ckpt"
    checkpoint.save(path, _state())
    assert checkpoint.verify(path) is None
    assert checkpoint.load(path)["num_updates"] == 1
    flip_inside_largest_member(path)
    assert "CRC" in checkpoint.verify(path)
    with pytest.raises(checkpoint.DamagedCheckpoint, match="damaged") as err:
        checkpoint.load(path)
    assert "trust_pickle" not in str(err.value)  # never steer the user to turn off the pickle protection

    cut = tmp_path / "best.ckpt"
    checkpoint.save(cut, _state())
    os.truncate(cut, cut.stat().st_size // 2)
    with pytest.raises(checkpoint.DamagedCheckpoint) as err:
        checkpoint.load(cut)
    assert "trust_pickle" not in str(err.value)


def test_pickled_objects_still_need_trust(tmp_path):
    path = tmp_path / "other.ckpt"
    torch.save({"model": {"w": torch.zeros(2)}, "extra": zipfile.ZipInfo("x")}, path)
    with pytest.raises(CheckpointError, match="trust_pickle"):
        checkpoint.load(path)
    assert "extra" in checkpoint.load(path, trusted=True)


def test_newest_intact_checkpoint_is_used(tmp_path):
    for update in (3, 6):
        checkpoint.save(tmp_path / "models" / f"model_{update}.ckpt", _state(update))
    checkpoint.save(tmp_path / "current.ckpt", _state(6))
    checkpoint.save(tmp_path / "best.ckpt", _state(3))
    flip_inside_largest_member(tmp_path / "current.ckpt")
    flip_inside_largest_member(tmp_path / "models" / "model_6.ckpt")
    candidates = checkpoint.resume_candidates(tmp_path, prefer_best=False)
    assert [p.name for p in candidates] == ["current.ckpt", "model_6.ckpt", "best.ckpt", "model_3.ckpt"]
    path, contents, damaged = checkpoint.load_newest_intact(candidates)
    assert path.name == "best.ckpt" and contents["num_updates"] == 3  # a copy of model_3: same update
    assert [p.name for p, _ in damaged] == ["current.ckpt", "model_6.ckpt"]
    before = (tmp_path / "current.ckpt").read_bytes()
    aside = checkpoint.keep_as_evidence(tmp_path / "current.ckpt")
    assert aside.read_bytes() == before and not (tmp_path / "current.ckpt").exists()


def test_a_damaged_current_falls_back_to_the_newest_intact_file_not_to_an_older_best(tmp_path):
    """Finding: best.ckpt (update 10) was used although an intact models/model_40.ckpt existed."""
    for update in (10, 20, 40):
        checkpoint.save(tmp_path / "models" / f"model_{update}.ckpt", _state(update))
    checkpoint.save(tmp_path / "best.ckpt", _state(10))
    checkpoint.save(tmp_path / "current.ckpt", _state(40))
    flip_inside_largest_member(tmp_path / "current.ckpt")
    path, contents, damaged = checkpoint.load_newest_intact(checkpoint.resume_candidates(tmp_path, False))
    assert path.name == "model_40.ckpt" and contents["num_updates"] == 40
    assert [p.name for p, _ in damaged] == ["current.ckpt"]
    # best.ckpt newer than every periodic file (an evaluation between two checkpoints) comes before them
    checkpoint.save(tmp_path / "best.ckpt", _state(45))
    assert [p.name for p in checkpoint.resume_candidates(tmp_path, False)] == \
        ["current.ckpt", "best.ckpt", "model_40.ckpt", "model_20.ckpt", "model_10.ckpt"]
    # checkpoint.resume_best=true: the user's choice comes first, then the same order
    assert [p.name for p in checkpoint.resume_candidates(tmp_path, True)] == \
        ["best.ckpt", "current.ckpt", "model_40.ckpt", "model_20.ckpt", "model_10.ckpt"]


def test_stored_update_reads_only_the_header_and_runs_nothing(tmp_path):
    checkpoint.save(tmp_path / "best.ckpt", _state(45))
    assert checkpoint.stored_update(tmp_path / "best.ckpt") == 45
    flip_inside_largest_member(tmp_path / "best.ckpt")  # tensor bytes are not read: the header still tells
    assert checkpoint.stored_update(tmp_path / "best.ckpt") == 45

    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    import pickle

    for obj, expected in (({"num_updates": 7, "x": Payload()}, 7), (Payload(), None),
                          ({"num_updates": True}, None), ({"num_updates": "7"}, None)):
        forged = tmp_path / "forged.ckpt"
        with zipfile.ZipFile(forged, "w") as archive:
            archive.writestr("forged/data.pkl", pickle.dumps(obj, protocol=2))
        assert checkpoint.stored_update(forged) == expected
    assert not marker.exists()  # the payload was named, never called
    with zipfile.ZipFile(forged, "w") as archive:  # a damaged header: its CRC does not match
        archive.writestr("forged/data.pkl", pickle.dumps({"num_updates": 7}, protocol=2))
    data = bytearray(forged.read_bytes())
    data[data.index(b"num_updates")] ^= 1
    forged.write_bytes(bytes(data))
    assert checkpoint.stored_update(forged) is None
    (tmp_path / "garbage.ckpt").write_bytes(b"not a zip")
    assert checkpoint.stored_update(tmp_path / "garbage.ckpt") is None


def test_later_checkpoints_are_found_and_set_aside_without_loss(tmp_path):
    for update in (10, 20, 40):
        checkpoint.save(tmp_path / "models" / f"model_{update}.ckpt", _state(update))
    checkpoint.save(tmp_path / "best.ckpt", _state(10))
    checkpoint.save(tmp_path / "current.ckpt", _state(40))
    ahead = checkpoint.ahead_of(tmp_path, 10, same_trajectory=False)  # from best.ckpt (update 10)
    assert [(p.name, u) for p, u in ahead] == [("current.ckpt", 40), ("model_40.ckpt", 40), ("model_20.ckpt", 20)]
    # resuming current.ckpt with its counts: the same trajectory, nothing is ahead
    assert checkpoint.ahead_of(tmp_path, 40, same_trajectory=True) == []
    # ... with checkpoint.reset.counts=true: the run restarts at 0 and would overwrite every file, its start too
    assert [p.name for p, _ in checkpoint.ahead_of(tmp_path, 0, same_trajectory=False)] == \
        ["current.ckpt", "best.ckpt", "model_40.ckpt", "model_20.ckpt", "model_10.ckpt"]
    before = {p: p.read_bytes() for p, _ in ahead}
    folder = checkpoint.set_aside(tmp_path, [p for p, _ in ahead])
    assert folder.parent == tmp_path and folder.name.startswith("superseded-")
    for path, data in before.items():
        assert not path.exists() and (folder / path.relative_to(tmp_path)).read_bytes() == data
    assert checkpoint.set_aside(tmp_path, []) != folder  # a second one never merges into the first


def test_background_write_snapshots_state_and_prunes_only_this_run(tmp_path):
    models = tmp_path / "models"
    models.mkdir()
    for update in (50, 60):  # another run's files: never this run's to prune
        (models / f"model_{update}.ckpt").write_bytes(b"other run")
    writer = checkpoint.Checkpointer(tmp_path, max_to_keep=2)
    weights = torch.zeros(512, 512)
    for update in (5, 10, 15):
        weights.fill_(update)
        writer.save(["current.ckpt", f"models/model_{update}.ckpt"], {"model": {"w": weights}, "num_updates": update})
        weights.fill_(-1)  # training goes on while the file is written: the checkpoint holds the snapshot
    writer.wait()
    assert sorted(p.name for p in models.iterdir()) == ["model_10.ckpt", "model_15.ckpt", "model_50.ckpt",
                                                        "model_60.ckpt"]
    assert (models / "model_50.ckpt").read_bytes() == b"other run"
    saved = checkpoint.load(tmp_path / "current.ckpt")
    assert saved["num_updates"] == 15 and float(saved["model"]["w"].min()) == 15.0
    assert saved["periodic_checkpoints"] == ["models/model_10.ckpt", "models/model_15.ckpt"]
    assert checkpoint.load(models / "model_15.ckpt")["num_updates"] == 15  # an independent copy, intact
    assert not list(tmp_path.rglob(".*.tmp"))


def test_background_write_error_is_raised_on_the_training_thread(tmp_path):
    (tmp_path / "current.ckpt").mkdir()  # the rename onto it fails inside the writer thread
    writer = checkpoint.Checkpointer(tmp_path, max_to_keep=-1)
    writer.save(["current.ckpt"], _state())
    with pytest.raises(CheckpointError, match="writing checkpoint .*current.ckpt failed"):
        writer.wait()
    writer.wait()  # reported once


def test_a_failed_write_publishes_nothing_or_a_current_file_that_tells_the_truth(tmp_path):
    """current.ckpt is written first. When it cannot be (a folder stands there), nothing is published or pruned
    and the writer's list is what is on disk. When a later copy fails, current.ckpt (published) is the truth:
    the file it no longer lists is pruned, and the error names the copy that failed."""
    models = tmp_path / "models"
    writer = checkpoint.Checkpointer(tmp_path, max_to_keep=1)
    writer.save(["current.ckpt", "models/model_5.ckpt"], _state(5))
    writer.wait()
    (tmp_path / "current.ckpt").unlink()
    (tmp_path / "current.ckpt").mkdir()
    writer.save(["current.ckpt", "models/model_10.ckpt"], _state(10))
    assert writer.failed(block=True)
    with pytest.raises(CheckpointError, match=r"writing checkpoint .*current.ckpt failed"):
        writer.wait()
    assert sorted(p.name for p in models.iterdir()) == ["model_5.ckpt"]  # nothing written, nothing pruned
    assert writer.periodic == ["models/model_5.ckpt"]
    assert not writer.failed()  # reported once

    (tmp_path / "current.ckpt").rmdir()
    (models / "model_15.ckpt").mkdir()  # now the copy after current.ckpt fails
    writer.save(["models/model_15.ckpt", "current.ckpt"], _state(15))
    with pytest.raises(CheckpointError, match=r"writing checkpoint .*model_15.ckpt failed"):
        writer.wait()
    current = checkpoint.load(tmp_path / "current.ckpt")
    assert current["num_updates"] == 15 and current["periodic_checkpoints"] == ["models/model_15.ckpt"]
    assert not (models / "model_5.ckpt").exists()  # no longer listed by the published current.ckpt: pruned
    assert not list(tmp_path.rglob(".*.tmp"))


def test_a_save_due_while_the_last_write_runs_warns_once(tmp_path, caplog):
    """Checkpoints due faster than the disk writes them: one warning naming the fix (the interval), not one per
    save; a save after the write finished says nothing."""
    writer = checkpoint.Checkpointer(tmp_path, max_to_keep=-1)
    big = {"model": {"w": torch.zeros(32 << 20)}}  # 128 MB: its write outlasts the next call by far
    with caplog.at_level("WARNING", logger="mmftrain"):
        writer.save(["current.ckpt"], big)
        writer.save(["best.ckpt"], big)
        writer.save(["current.ckpt"], big)
        writer.wait()
        writer.save(["best.ckpt"], _state())
        writer.wait()
    warnings = [r.getMessage() for r in caplog.records if "still running" in r.getMessage()]
    assert len(warnings) == 1 and "best.ckpt was due" in warnings[0], warnings
    assert "training.checkpoint_interval" in warnings[0]
    assert writer.stall_s > 0


@pytest.mark.slow  # a bench smoke run
def test_checkpoint_bench_smoke(tmp_path):
    """bench/checkpoint.py --tiny runs (so the benchmark cannot rot) and reports both ways and the ratio."""
    import subprocess
    import sys

    from tests.zoo_helpers import ROOT

    r = subprocess.run([sys.executable, "bench/checkpoint.py", "--tiny", "--repeat", "1", "--dir", str(tmp_path)],
                       capture_output=True, text=True, cwd=ROOT, timeout=300,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-2000:]
    assert "sync save" in r.stdout and "background: stall" in r.stdout and "ratio: background stall" in r.stdout
    assert list(tmp_path.iterdir()) == []  # its temp folder is gone
