"""A run resumed on another number of processes continues the global sample order (real torchrun, gloo on CPU).

Every rank records the questions it trained on at each update (MMF_TRAIN_SAMPLE_TRACE, mmftrain.trace). For every
update after the resume, the questions of all ranks, in rank order, must be those of the same update of an
uninterrupted one-process run, batch position for batch position; within an epoch no question may repeat and only
the tail that does not fill a global batch may be left out. Cases: 2 -> 1 processes from a periodic checkpoint,
1 -> 2 from the checkpoint a SIGTERM stop writes, each crossing an epoch boundary inside an update (96 questions,
global batch 10, 2 micro-batches per update: update 5 ends epoch 0 and starts epoch 1); a global batch that
changes on resume (training.batch_size_per_device on another world size) continues at the same question; a global
batch the new world size does not divide is refused before the save dir is touched.

Dropout is off in these runs, so the resumed 2 -> 1 run also reproduces the reference's losses: optimizer, LR
schedule, scaler and weights carried over. With dropout the per-process random streams would make them differ.
"""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import pytest

from mmftrain.logs import read_metrics
from mmftrain.trace import ENV as TRACE_ENV
from tests.zoo_helpers import ROOT

N, G, UF = 96, 10, 2  # questions, global batch, micro-batches per update: 9 global batches per epoch, 6 dropped
TINY = ROOT / "configs/projects/m4c/configs/textvqa/tiny.yaml"
OPTIONS = ["model_config.m4c.mmt.num_hidden_layers=1", f"training.batch_size={G}", f"training.update_frequency={UF}",
           "training.evaluation_interval=1000", "evaluation.batch_size=40", "training.warmup_iterations=5",
           "training.lr_steps=[]", "training.log_interval=1", "env.fetch_missing_data=false"]


# ---- the sampler alone

def take(sampler, epoch, position, count):
    return [(e, p, list(idx)) for (e, p, idx), _ in zip(sampler.iterate(epoch, position), range(count))]


@pytest.mark.parametrize("world", [2, 5, 10])
def test_every_world_size_cuts_the_same_global_batches(world):
    from mmftrain.data import TrainSampler

    one = take(TrainSampler(N, G, seed=4), 0, 0, 30)
    ranks = [take(TrainSampler(N, G, rank, world, seed=4), 0, 0, 30) for rank in range(world)]
    for i, (epoch, position, indices) in enumerate(one):
        assert all(r[i][:2] == (epoch, position) for r in ranks)
        assert sum((r[i][2] for r in ranks), []) == indices


def test_a_sampler_resumed_with_another_global_batch_continues_at_the_same_sample():
    from mmftrain.data import TrainSampler

    before, after = TrainSampler(N, G, seed=4), TrainSampler(N, 4, rank=1, world=2, seed=4)
    epoch, position = 0, 0
    for _ in range(6):  # 6 batches of 10
        epoch, position = before.after(epoch, position)
    assert (epoch, position) == (0, 60)
    seen = [i for _, _, idx in take(before, 0, 0, 6) for i in idx]
    for e, p, _ in take(after, epoch, position, 9):  # 9 batches of 4 to the epoch's end (60 + 36 = 96)
        seen += [i for rank in range(2) for i in take(TrainSampler(N, 4, rank, 2, seed=4), e, p, 1)[0][2]]
    assert sorted(seen) == list(range(N))  # each sample once: this epoch drops nothing
    assert take(after, epoch, position, 10)[-1][:2] == (1, 0) and after.after(0, 92) == (1, 0)


def test_an_older_checkpoint_counted_global_batches():
    from mmftrain.data import resume_position, sampler_state

    assert resume_position({"epoch": 2, "index": 3, "seed": 1}, saved_global_batch=8) == (2, 24)
    assert resume_position(sampler_state(2, 30, 10, 1), saved_global_batch=8) == (2, 30)


def test_a_global_batch_the_processes_do_not_share_evenly_is_named_with_both_numbers():
    from mmftrain.data import TrainSampler, check_global_batch
    from mmftrain.errors import ConfigError

    check_global_batch(12, 4)
    with pytest.raises(ConfigError, match=r"training.batch_size=10 .* not divisible by the 4 processes"):
        TrainSampler(N, 10, rank=0, world=4)


# ---- real runs

@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    from mmfdata.build import pack_dataset
    from mmfdata.configs import default_dataset_config
    from mmfdata.synth import write_synthetic

    out = tmp_path_factory.mktemp("synth")
    write_synthetic(str(out), questions=N, seed=3, val_questions=37, test_questions=21)
    pack_dataset("textvqa", default_dataset_config("textvqa"), str(out))
    return out


@pytest.fixture(scope="module")
def config(tmp_path_factory):
    """tiny.yaml without dropout (not settable from the command line: BertConfig keys come from files)."""
    path = tmp_path_factory.mktemp("config") / "nodropout.yaml"
    path.write_text(f"includes:\n- {TINY}\nmodel_config:\n  m4c:\n"
                    "    text_bert: {hidden_dropout_prob: 0.0}\n    mmt: {hidden_dropout_prob: 0.0}\n"
                    "    obj: {dropout_prob: 0.0}\n    ocr: {dropout_prob: 0.0}\n")
    return path


def command(nproc, config, data_dir, save_dir, *extra):
    launcher = [sys.executable, "-m", "mmftrain.cli"] if nproc == 1 else \
        [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", "-m",
         "mmftrain.cli"]
    return launcher + [f"config={config}", "datasets=textvqa", "model=m4c", "run_type=train",
                       f"env.data_dir={data_dir}", f"env.save_dir={save_dir}", *OPTIONS, *extra]


def environment(trace_dir):
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", TRACE_ENV: str(trace_dir)}


def train(nproc, config, data_dir, save_dir, trace_dir, *extra):
    r = subprocess.run(command(nproc, config, data_dir, save_dir, *extra), capture_output=True, text=True,
                       timeout=300, env=environment(trace_dir))
    assert r.returncode == 0, r.stderr[-3000:]
    return r


def read_trace(folder) -> dict:
    """{update: [(epoch, position, question ids of all ranks in rank order), one per micro-batch]}."""
    records = defaultdict(dict)
    for path in Path(folder).glob("rank*.jsonl"):
        for line in path.read_text().splitlines():
            r = json.loads(line)
            assert r["rank"] not in records[r["update"]], f"update {r['update']} traced twice by rank {r['rank']}"
            records[r["update"]][r["rank"]] = r
    out = {}
    for update, ranks in records.items():
        world = next(iter(ranks.values()))["world"]
        assert sorted(ranks) == list(range(world)), f"update {update}: traced by ranks {sorted(ranks)} of {world}"
        micro = []
        for i, (epoch, position) in enumerate(ranks[0]["batches"]):
            qids = []
            for rank in range(world):
                assert ranks[rank]["batches"][i] == [epoch, position], f"update {update}: ranks disagree"
                per_rank = len(ranks[rank]["qids"]) // len(ranks[rank]["batches"])
                qids += ranks[rank]["qids"][i * per_rank:(i + 1) * per_rank]
            micro.append((epoch, position, qids))
        out[update] = micro
    return out


def assert_each_question_once_per_epoch(trace: dict) -> None:
    """Within each epoch the batches follow each other without gap or overlap, no question repeats, and an epoch
    that ended left out fewer questions than one global batch (the dropped tail)."""
    epochs = defaultdict(list)
    for update in sorted(trace):
        for epoch, position, qids in trace[update]:
            epochs[epoch].append((position, qids))
    assert sorted(epochs) == list(range(len(epochs)))
    for epoch, batches in epochs.items():
        end = 0
        for position, qids in batches:
            assert position == end, f"epoch {epoch}: a batch at sample {position}, expected {end}"
            end += len(qids)
        seen = [q for _, qids in batches for q in qids]
        assert len(seen) == len(set(seen)), f"epoch {epoch}: questions repeated"
        if epoch < max(epochs):
            assert N - len(seen) < len(batches[-1][1]), f"epoch {epoch}: {N - len(seen)} questions skipped"


def assert_same_updates(got: dict, ref: dict, updates) -> None:
    """The same global batches at the same positions in each of `updates`: the same questions in each (which rank
    took which of them is free)."""
    for update in updates:
        assert [(e, p, sorted(q)) for e, p, q in got[update]] == [(e, p, sorted(q)) for e, p, q in ref[update]], \
            f"update {update}: other questions than the uninterrupted run"


class Reference:
    """The uninterrupted one-process run, as long as a test needs it (one run unless a test needs more)."""

    def __init__(self, folder, config, data_dir):
        self.folder, self.config, self.data_dir, self.updates = folder, config, data_dir, 0

    def upto(self, updates: int) -> tuple[dict, dict]:
        if self.updates < updates:
            self.updates = max(updates, 12)
            run = self.folder / f"upto{self.updates}"
            train(1, self.config, self.data_dir, run / "save", run / "trace", f"training.max_updates={self.updates}")
            self.trace = read_trace(run / "trace")
            self.metrics = train_records(run / "save")
            assert sorted(self.trace) == list(range(1, self.updates + 1))
            assert_each_question_once_per_epoch(self.trace)
        return self.trace, self.metrics


@pytest.fixture(scope="module")
def reference(tmp_path_factory, config, data_dir):
    return Reference(tmp_path_factory.mktemp("reference"), config, data_dir)


@pytest.fixture(scope="module")
def two_process_start(tmp_path_factory, config, data_dir):
    """3 updates on 2 processes (60 of epoch 0's 90 questions) and the periodic checkpoint at update 3."""
    folder = tmp_path_factory.mktemp("two")
    train(2, config, data_dir, folder / "save", folder / "trace", "training.max_updates=3",
          "training.checkpoint_interval=3")
    return folder / "save", read_trace(folder / "trace")


def train_records(save_dir) -> dict:
    return {r["num_updates"]: r for r in read_metrics(save_dir) if "train/total_loss" in r}


def continue_copy(start, tmp_path) -> Path:
    """A copy of a run's save dir, so that each test resumes the same checkpoint."""
    save_dir = tmp_path / "save"
    shutil.copytree(start, save_dir)
    return save_dir


def test_two_processes_resumed_on_one_continue_the_global_order(two_process_start, reference, config, data_dir,
                                                                tmp_path):
    start, before = two_process_start
    save_dir = continue_copy(start, tmp_path)
    r = train(1, config, data_dir, save_dir, tmp_path / "trace", "training.max_updates=10", "checkpoint.resume=true")
    assert "checkpoint saved at world size 2, resuming at world size 1" in r.stderr  # the world size really changed
    after = read_trace(tmp_path / "trace")
    assert sorted(before) == [1, 2, 3] and sorted(after) == list(range(4, 11))
    ref, ref_metrics = reference.upto(10)
    assert_same_updates({**before, **after}, ref, range(1, 11))
    assert "at update 3 (epoch 0, sample 60)" in r.stderr
    assert after[5][0][0] == 0 and after[5][1][:2] == (1, 0)  # the resumed run crossed the epoch boundary
    assert_each_question_once_per_epoch({**before, **after})
    got = train_records(save_dir)
    for update in range(4, 11):  # one process again: the logged loss is the whole global batch's
        assert got[update]["lr"] == pytest.approx(ref_metrics[update]["lr"], rel=1e-12)
        assert got[update]["train/total_loss"] == pytest.approx(ref_metrics[update]["train/total_loss"], rel=1e-5)


def test_one_process_stopped_by_sigterm_resumed_on_two_continues_the_global_order(reference, config, data_dir,
                                                                                 tmp_path):
    save_dir, first, second = tmp_path / "save", tmp_path / "trace1", tmp_path / "trace2"
    proc = subprocess.Popen(command(1, config, data_dir, save_dir, "training.max_updates=500",
                                    "training.checkpoint_interval=1000"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=environment(first))
    deadline = time.time() + 240
    while not ((first / "rank0.jsonl").exists() and len((first / "rank0.jsonl").read_text().splitlines()) >= 3):
        assert proc.poll() is None, proc.stderr.read()[-3000:]
        assert time.time() < deadline, "no third update"
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=120)
    before = read_trace(first)
    stopped = max(before)
    import torch

    assert torch.load(save_dir / "current.ckpt", weights_only=True)["num_updates"] == stopped < 500  # the stop's
    r = train(2, config, data_dir, save_dir, second, f"training.max_updates={stopped + 4}", "checkpoint.resume=true")
    assert f"at update {stopped} " in r.stderr
    assert "checkpoint saved at world size 1, resuming at world size 2" in r.stderr
    after = read_trace(second)
    assert sorted(after) == list(range(stopped + 1, stopped + 5))
    ref, ref_metrics = reference.upto(stopped + 4)
    assert_same_updates({**before, **after}, ref, range(1, stopped + 5))
    assert_each_question_once_per_epoch({**before, **after})
    got = train_records(save_dir)
    for update in after:
        assert got[update]["lr"] == pytest.approx(ref_metrics[update]["lr"], rel=1e-12)


def test_a_global_batch_changed_on_resume_continues_at_the_same_question(two_process_start, reference, config,
                                                                         data_dir, tmp_path):
    """training.batch_size_per_device=5: 10 questions per batch on 2 processes, 5 on 1. Resumed at question 60 of
    epoch 0 (not at batch 6 of 5 questions, which would repeat 30)."""
    start, before = two_process_start
    save_dir = continue_copy(start, tmp_path)
    r = train(1, config, data_dir, save_dir, tmp_path / "trace", "training.batch_size_per_device=5",
              "training.max_updates=8", "checkpoint.resume=true")
    assert "training.batch_size (the global batch) is 5, the checkpoint's was 10" in r.stderr
    after = read_trace(tmp_path / "trace")
    assert [(e, p) for u in sorted(after) for e, p, _ in after[u]] == \
        [(0, 60), (0, 65), (0, 70), (0, 75), (0, 80), (0, 85), (0, 90), (1, 0), (1, 5), (1, 10)]
    trace = {**before, **after}
    assert_each_question_once_per_epoch(trace)
    ref, _ = reference.upto(10)
    questions = lambda trace, epoch, lo, hi: {q for u in trace for e, p, qids in trace[u] if e == epoch  # noqa: E731
                                              and lo <= p < hi for q in qids}
    for lo in (60, 70, 80):  # the same order, in batches of 5
        assert questions(after, 0, lo, lo + 10) == questions(ref, 0, lo, lo + 10), f"epoch 0, questions {lo}.."
    assert len(questions(trace, 0, 90, N)) == 5  # the tail that does not fill a batch is now 1 question
    assert questions(after, 1, 0, 10) == questions(ref, 1, 0, 10)  # epoch 1 in the same order too


def files_of(folder) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(Path(folder).rglob("*")) if p.is_file()}


def test_a_global_batch_the_new_world_size_does_not_divide_is_refused_before_anything_is_written(
        two_process_start, config, data_dir, tmp_path):
    start, _ = two_process_start
    save_dir = continue_copy(start, tmp_path)
    before = files_of(save_dir)
    r = subprocess.run(command(2, config, data_dir, save_dir, "training.batch_size=9", "training.max_updates=6",
                               "checkpoint.resume=true"), capture_output=True, text=True, timeout=300,
                       env=environment(tmp_path / "trace"))
    assert r.returncode != 0
    lines = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert lines and all(line == lines[0] for line in lines), r.stderr[-3000:]
    assert "training.batch_size=9" in lines[0] and "2 processes" in lines[0]
    assert files_of(save_dir) == before  # config.yaml, train.log, the lock's holder note: all untouched
    assert not (tmp_path / "trace").exists()
