"""M4C: MMF parameter count and names, prefix-LM mask, pointer masking, greedy decoding, loss, optimizer groups."""
import pytest
import torch

from mmftrain.errors import CheckpointError
from mmftrain.loss import m4c_decoding_bce_with_mask
from mmftrain.models import build_m4c, load_mmf_state_dict
from mmftrain.models.bert import bert_base_state_for_text_bert
from mmftrain.optim import WarmupStepLambda

SMALL = dict(fc7_out_dim=32, obj={"mmt_in_dim": 32, "dropout_prob": 0.1},
             ocr={"mmt_in_dim": 300 + 604 + 32 + 50, "dropout_prob": 0.1},
             text_bert={"num_hidden_layers": 1, "hidden_size": 32, "num_attention_heads": 2,
                        "intermediate_size": 64, "vocab_size": 100},
             mmt={"hidden_size": 48, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 64},
             classifier={"type": "linear", "ocr_max_num": 50,
                         "ocr_ptr_net": {"hidden_size": 48, "query_key_size": 48}})
V = 30


def small_model():
    torch.manual_seed(0)
    return build_m4c(V, **SMALL).eval()


def fake_batch(b=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.rand(*s, generator=g)  # noqa: E731
    prev = torch.randint(0, V + 50, (b, 12), generator=g)
    return {"text": torch.randint(1, 100, (b, 20), generator=g), "text_len": torch.tensor([20, 5, 9][:b]),
            "obj_feat": r(b, 100, 2048).half(), "obj_bbox": r(b, 100, 4), "obj_num": torch.tensor([100, 10, 3][:b]),
            "ocr_feat": r(b, 50, 2048).half(), "ocr_fasttext": r(b, 50, 300).half(), "ocr_phoc": r(b, 50, 604).half(),
            "ocr_bbox": r(b, 50, 4), "ocr_num": torch.tensor([50, 4, 1][:b]), "train_prev_inds": prev}


def test_full_size_parameter_count_and_mmf_names():
    model = build_m4c()
    assert sum(p.numel() for p in model.parameters()) == 90_850_184  # MMF logs "Total Parameters: 90850184"
    names = set(model.state_dict())
    for key in ["text_bert.embeddings.word_embeddings.weight", "text_bert.encoder.layer.2.output.LayerNorm.bias",
                "obj_faster_rcnn_fc7.lc.weight", "ocr_faster_rcnn_fc7.lc.bias", "linear_obj_feat_to_mmt_in.weight",
                "linear_ocr_feat_to_mmt_in.weight", "ocr_bbox_layer_norm.weight",
                "mmt.prev_pred_embeddings.token_type_embeddings.weight",
                "mmt.encoder.layer.3.attention.self.query.weight", "ocr_ptr_net.key.bias",
                "classifier.module.weight"]:
        assert key in names, key
    assert model.linear_ocr_feat_to_mmt_in.in_features == 3002
    assert "text_bert.encoder.layer.3.output.dense.weight" not in names


def test_prefix_lm_mask_decoder_is_causal_and_encoder_blind_to_it():
    model, batch = small_model(), fake_batch()
    enc = model.encode(batch)
    base = model.decode(enc, batch["train_prev_inds"])
    changed = batch["train_prev_inds"].clone()
    changed[:, 7] = (changed[:, 7] + 1) % (V + 50)
    out = model.decode(enc, changed)
    assert torch.allclose(out[:, :7], base[:, :7], atol=1e-5)  # earlier steps cannot see step 7's input
    assert not torch.allclose(out[:, 7:], base[:, 7:], atol=1e-5)


def test_padding_is_ignored_and_pointer_masks_padded_ocr():
    model, batch = small_model(), fake_batch()
    base = model(batch)
    noisy = dict(batch)
    noisy["obj_feat"] = batch["obj_feat"].clone()
    noisy["obj_feat"][1, 10:] = 7.0  # beyond obj_num of sample 1
    noisy["ocr_fasttext"] = batch["ocr_fasttext"].clone()
    noisy["ocr_fasttext"][1, 4:] = -3.0  # beyond ocr_num of sample 1
    noisy["text"] = batch["text"].clone()
    noisy["text"][1, 5:] = 42
    out = model(noisy)
    # sample 1's previous predictions may point at padded OCR slots; keep them on vocab words for this check
    assert torch.allclose(out[0], base[0], atol=1e-5)
    prev = batch["train_prev_inds"].clone()
    prev[1] = torch.arange(12) % V
    batch2, noisy2 = dict(batch, train_prev_inds=prev), dict(noisy, train_prev_inds=prev)
    # padded OCR slots hold -10000 + (noise-dependent) scores; the real outputs must not change
    assert torch.allclose(model(batch2)[1, :, :V + 4], model(noisy2)[1, :, :V + 4], atol=1e-4)
    assert (base[2, :, V + 1:] < -5000).all()  # sample 2 has one OCR token: the other 49 pointer slots blocked


def test_greedy_decode_feeds_back_argmax():
    model, batch = small_model(), fake_batch()
    scores = model.greedy_decode(batch, bos_idx=1)
    ids = scores.argmax(-1)
    prev = torch.zeros_like(batch["train_prev_inds"])
    prev[:, 0] = 1
    prev[:, 1:] = ids[:, :-1]
    # a teacher-forced pass on [BOS, predictions...] reproduces the same predictions
    assert torch.equal(model(dict(batch, train_prev_inds=prev)).argmax(-1), ids)


def test_early_exit_decoding_gives_the_same_answers():
    model, batch = small_model(), fake_batch()
    full = model.greedy_decode(batch, bos_idx=1).argmax(-1)
    eos = int(full[0, 0])  # pretend the first prediction is EOS so that sample 0 ends at once
    early = model.greedy_decode(batch, bos_idx=1, eos_idx=eos).argmax(-1)
    for b in range(full.size(0)):
        ends = (full[b] == eos).nonzero()
        stop = int(ends[0]) + 1 if len(ends) else 12
        assert torch.equal(early[b, :stop], full[b, :stop])


def test_loss_is_sum_over_classes_per_valid_step():
    scores = torch.zeros(2, 12, 5)
    targets = torch.zeros(2, 12, 5)
    mask = torch.zeros(2, 12)
    mask[0, :3] = 1
    loss = m4c_decoding_bce_with_mask(scores, targets, mask)
    assert loss.item() == pytest.approx(5 * torch.log(torch.tensor(2.0)).item(), rel=1e-6)
    assert m4c_decoding_bce_with_mask(scores, targets, torch.zeros(2, 12)).item() == 0.0


def test_optimizer_groups_and_lr_schedule():
    model = small_model()
    groups = model.optimizer_groups(1e-4)
    assert [g["lr"] for g in groups] == pytest.approx([1e-4, 1e-5, 1e-5, 1e-5, 1e-4])
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
    f = WarmupStepLambda({"lr_scheduler": True, "use_warmup": True, "warmup_iterations": 1000, "warmup_factor": 0.2,
                          "lr_steps": [14000, 19000], "lr_ratio": 0.1})
    assert [f(0), f(500), f(1000), f(13999), f(14000), f(19000)] == pytest.approx([0.2, 0.6, 1.0, 1.0, 0.1, 0.01])


def test_state_dict_loading_maps_mmf_names_and_rejects_mismatch():
    src, dst = small_model(), build_m4c(V, **SMALL)
    state = {("module." + k).replace("obj_faster_rcnn_fc7.lc.", "obj_faster_rcnn_fc7.module.lc."): v
             for k, v in src.state_dict().items()}
    state["module.text_bert.embeddings.position_ids"] = torch.arange(512)
    load_mmf_state_dict(dst, state)
    assert torch.equal(dst.obj_faster_rcnn_fc7.lc.weight, src.obj_faster_rcnn_fc7.lc.weight)
    del state["module.classifier.module.bias"]
    with pytest.raises(CheckpointError, match="missing"):
        load_mmf_state_dict(dst, state)
    wrong = build_m4c(V + 1, **SMALL).state_dict()
    with pytest.raises(CheckpointError, match="classifier.module"):
        load_mmf_state_dict(dst, wrong)


def test_bert_base_state_maps_to_text_bert():
    model = small_model()
    own = model.text_bert.state_dict()
    hf = {"bert." + k.replace("LayerNorm.weight", "LayerNorm.gamma"): torch.full_like(v, 0.5) for k, v in own.items()}
    hf["bert.encoder.layer.5.output.dense.weight"] = torch.zeros(1)  # deeper layers are dropped
    hf["cls.predictions.bias"] = torch.zeros(1)
    mapped = bert_base_state_for_text_bert(hf, num_layers=1)
    assert set(mapped) == set(own)
    model.text_bert.load_state_dict(mapped)
    assert (model.text_bert.embeddings.LayerNorm.weight == 0.5).all()
