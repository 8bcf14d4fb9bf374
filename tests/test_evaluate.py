"""The val/test pass: a short last batch is padded to the batch size (one shape for every batch), and the padding
never reaches the answers, the metrics or the val loss."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from mmftrain.distributed import DistInfo
from mmftrain.evaluate import evaluate, padded_chunks

TINY = "projects/m4c/configs/textvqa/tiny.yaml"


def test_padded_chunks_repeat_the_last_index_and_count_the_real_rows():
    chunks, real = padded_chunks(np.arange(10, 21), 4)  # 11 questions: 4 + 4 + 3
    assert [s for s, _ in chunks] == [0, 4, 8]
    assert all(len(c) == 4 for _, c in chunks)
    assert chunks[2][1].tolist() == [18, 19, 20, 20]
    assert real == {0: 4, 4: 4, 8: 3}
    assert padded_chunks(np.arange(0), 4) == ([], {})


@pytest.fixture(scope="module")
def val_and_model(tmp_path_factory):
    from mmfdata.build import pack_dataset
    from mmfdata.configs import default_dataset_config
    from mmfdata.synth import write_synthetic
    from mmftrain.config import build_config
    from mmftrain.data import build_datasets
    from mmftrain.models.bert import init_bert_weights
    from mmftrain.models.m4c import M4C

    out = tmp_path_factory.mktemp("synth")
    write_synthetic(str(out), questions=16, seed=3, val_questions=23, test_questions=4)
    pack_dataset("textvqa", default_dataset_config("textvqa"), str(out), ["val"])
    cfg = build_config([f"config={TINY}", "datasets=textvqa", "model=m4c", f"env.data_dir={out}",
                        "env.fetch_missing_data=false", "run_type=val"])
    val = build_datasets(cfg, "val", 1)["textvqa"]
    torch.manual_seed(0)
    model = M4C(cfg["model_config"]["m4c"], len(val.answer_vocab))
    init_bert_weights(model.mmt, 0.2)  # varied predictions, so that a padding row leaking in would show
    return val, model.eval()


def _pass(val, model, batch_size: int, pad: bool | None = True):
    return evaluate(model, val, dataset_name="textvqa", split="val", batch_size=batch_size,
                    device=torch.device("cpu"), dist=DistInfo(),
                    metrics=["textvqa_accuracy"], early_exit=True, pad=pad)


def test_a_padded_last_batch_gives_the_answers_metrics_and_loss_of_unpadded_batches(val_and_model, monkeypatch):
    val, model = val_and_model
    assert len(val) == 23
    seen = []
    decode = model.greedy_decode
    monkeypatch.setattr(model, "greedy_decode", lambda batch, *a, **k: seen.append(
        batch["question_id"].shape[0]) or decode(batch, *a, **k))  # a spy around the real method
    padded, recs = _pass(val, model, 10)  # 10 + 10 + 3 real rows, the last batch padded to 10
    assert seen == [10, 10, 10]
    seen.clear()
    unpadded, unpadded_recs = _pass(val, model, 10, pad=None)  # the default on a CPU: no padding
    assert seen == [10, 10, 3]
    assert [r["answer"] for r in unpadded_recs] == [r["answer"] for r in recs]
    assert unpadded["val/textvqa/m4c_decoding_bce_with_mask"] == pytest.approx(
        padded["val/textvqa/m4c_decoding_bce_with_mask"], rel=1e-5)
    seen.clear()
    whole, whole_recs = _pass(val, model, 23)  # one batch, no padding
    assert seen == [23]
    assert [r["question_id"] for r in recs] == [r["question_id"] for r in whole_recs] == list(val.get_batch(
        np.arange(23))["question_id"])
    assert [r["answer"] for r in recs] == [r["answer"] for r in whole_recs]
    assert len({r["answer"] for r in recs}) > 1
    assert padded["val/textvqa/num_questions"] == whole["val/textvqa/num_questions"] == 23
    assert padded["val/textvqa/textvqa_accuracy"] == whole["val/textvqa/textvqa_accuracy"]
    # the val loss is the mean over batches of each batch's loss; recompute it from the unpadded batches
    per_batch = []
    for lo, hi in ((0, 10), (10, 20), (20, 23)):
        part, _ = _pass(_Slice(val, lo, hi), model, hi - lo)  # one unpadded batch each
        per_batch.append(part["val/textvqa/m4c_decoding_bce_with_mask"])
    assert padded["val/textvqa/m4c_decoding_bce_with_mask"] == pytest.approx(np.mean(per_batch), rel=1e-5)


class _Slice:
    """Questions lo..hi of a dataset, as a dataset."""

    def __init__(self, ds, lo: int, hi: int):
        self.ds, self.lo, self.hi = ds, lo, hi
        self.answer_vocab, self.name, self.split = ds.answer_vocab, ds.name, ds.split

    def __len__(self) -> int:
        return self.hi - self.lo

    def get_batch(self, indices) -> dict:
        return self.ds.get_batch(np.asarray(indices, dtype=np.int64) + self.lo)
