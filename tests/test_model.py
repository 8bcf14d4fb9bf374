"""M4C: MMF parameter count and names, prefix-LM mask, pointer masking, greedy decoding, loss, optimizer groups."""
import pytest
import torch

from mmftrain.errors import CheckpointError
from mmftrain.loss import m4c_decoding_bce_with_mask
from mmftrain.models import build_m4c, load_mmf_state_dict
from mmftrain.models.bert import bert_base_state_for_text_bert, init_bert_weights
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


def varied_batch(b=8, seed=3):
    """Random inputs with every length varying per question (text, objects, OCR tokens), some at the extremes."""
    g = torch.Generator().manual_seed(seed)
    batch = fake_batch(3, seed)
    r = lambda *s: torch.rand(*s, generator=g)  # noqa: E731
    batch.update({"text": torch.randint(1, 100, (b, 20), generator=g),
                  "text_len": torch.randint(1, 21, (b,), generator=g),
                  "obj_feat": r(b, 100, 2048).half(), "obj_bbox": r(b, 100, 4),
                  "obj_num": torch.randint(0, 101, (b,), generator=g),
                  "ocr_feat": r(b, 50, 2048).half(), "ocr_fasttext": r(b, 50, 300).half(),
                  "ocr_phoc": r(b, 50, 604).half(), "ocr_bbox": r(b, 50, 4),
                  "ocr_num": torch.randint(1, 51, (b,), generator=g),
                  "train_prev_inds": torch.zeros(b, 12, dtype=torch.long)})
    batch["obj_num"][0], batch["ocr_num"][1], batch["text_len"][2] = 0, 50, 20
    return batch


def test_last_layer_computes_only_the_rows_read_and_changes_nothing():
    """decode() skips the last MMT layer's text and object rows (nobody reads them): its scores and every
    parameter's gradient equal those of the whole last layer (MMF's computation), to float rounding."""
    model = small_model()
    init_bert_weights(model, 0.2)
    batch = varied_batch(seed=5)
    batch["train_prev_inds"] = torch.randint(0, V + 50, (8, 12), generator=torch.Generator().manual_seed(1))
    results = []
    for trim in (True, False):  # False: every row of the last layer, as MMF computes it
        model.trim_last_layer = trim
        model.zero_grad(set_to_none=True)
        scores = model(batch)
        (scores.clamp(min=-100) * torch.linspace(-1, 1, scores.numel()).view_as(scores)).sum().backward()
        results.append((scores.detach(), {n: p.grad.clone() for n, p in model.named_parameters()
                                          if p.grad is not None}))
    (trimmed, g_trimmed), (full, g_full) = results
    assert torch.allclose(trimmed, full, rtol=1e-5, atol=1e-3)
    assert g_trimmed.keys() == g_full.keys() and len(g_full) > 50
    scale = max(float(g.abs().max()) for g in g_full.values())  # rounding is relative to the largest gradients
    for name in g_full:
        assert float((g_trimmed[name] - g_full[name]).abs().max()) <= 1e-5 * scale, name


def test_incremental_decoding_equals_full_recompute_on_random_inputs():
    seen = []
    for seed in range(3):
        torch.manual_seed(seed)
        model = build_m4c(V, **SMALL).eval()
        # BERT's 0.02 init makes every step repeat BOS; wider weights give varied predictions (vocab and OCR),
        # so each step's argmax depends on what was fed back
        init_bert_weights(model, 0.2)
        batch = varied_batch(seed=seed + 10)
        full = model.greedy_decode(batch, bos_idx=1, incremental=False)
        inc = model.greedy_decode(batch, bos_idx=1, incremental=True)
        assert full.shape == inc.shape == (8, 12, V + 50)
        assert torch.equal(inc.argmax(-1), full.argmax(-1)), seed  # the same prediction at every step
        real = full > -5000  # padded OCR slots sit near -10000, where float32 rounding is ~1e-3
        assert torch.allclose(inc[real], full[real], rtol=1e-4, atol=1e-4), seed
        assert (inc[~real] < -5000).all()
        seen.append(full.argmax(-1))
    ids = torch.cat(seen)
    assert len(set(ids.flatten().tolist())) > 10, "degenerate predictions would not test the fed-back input"
    assert (ids >= V).any() and (ids < V).any()  # both the vocab head and the OCR pointer get predicted
    assert (ids[:, 1:] != ids[:, :-1]).any()  # predictions change along the steps


def test_incremental_decoding_sees_the_fed_back_prediction():
    """A cache that ignored the decoder positions would not change step 1 when step 0's prediction changes."""
    model, batch = small_model(), varied_batch(b=4)
    enc = model.encode(batch)
    steps = list(model._incremental_steps(enc, 12, 1))
    teacher = torch.zeros(4, 12, dtype=torch.long)
    teacher[:, 0] = 1
    teacher[:, 1:] = torch.stack([s for _, s in steps], 1).argmax(-1)[:, :-1]
    forced = model.decode(enc, teacher)
    assert torch.allclose(torch.stack([s for _, s in steps], 1)[forced > -5000], forced[forced > -5000],
                          atol=1e-4)
    bumped = teacher.clone()
    bumped[:, 1] = (bumped[:, 1] + 7) % (V + 50)
    assert not torch.allclose(model.decode(enc, bumped)[:, 1], forced[:, 1], atol=1e-4)


def test_incremental_early_exit_keeps_answers_and_the_loss_steps():
    model, batch = small_model(), varied_batch()
    full = model.greedy_decode(batch, bos_idx=1, incremental=False)
    ids = full.argmax(-1)
    eos = int(ids[0, 0])
    mask = torch.zeros(8, 12)
    mask[:, :2] = 1
    mask[3, :5] = 1  # one question's val loss reads steps 0..4
    for incremental in (True, False):
        early = model.greedy_decode(dict(batch, train_loss_mask=mask), bos_idx=1, eos_idx=eos,
                                    incremental=incremental)
        done = torch.zeros(8, dtype=torch.bool)
        for step in range(12):
            if step >= 5 and bool(done.all()):
                assert (early[:, step:] == 0).all()  # stopped: never computed
                break
            assert torch.allclose(early[:, step], full[:, step], atol=1e-3), (incremental, step)
            done |= ids[:, step] == eos
        for b in range(8):
            ends = (ids[b] == eos).nonzero()
            stop = int(ends[0]) + 1 if len(ends) else 12
            assert torch.equal(early[b, :stop].argmax(-1), ids[b, :stop])
        loss_full = m4c_decoding_bce_with_mask(full, torch.zeros_like(full), mask)
        loss_early = m4c_decoding_bce_with_mask(early, torch.zeros_like(early), mask)
        assert loss_early.item() == pytest.approx(loss_full.item(), rel=1e-5)


def test_incremental_decoding_under_bf16_autocast_matches_its_full_recompute():
    model, batch = small_model(), varied_batch(b=4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        full = model.greedy_decode(batch, bos_idx=1, incremental=False)
        inc = model.greedy_decode(batch, bos_idx=1, incremental=True)
    assert inc.dtype == full.dtype == torch.bfloat16
    # bf16 rounding differs between a 182-key and a 171-key attention; the step-0 argmax must still agree
    assert torch.equal(inc[:, 0].argmax(-1), full[:, 0].argmax(-1))
    real = full > -5000
    assert (inc.float()[real] - full.float()[real]).abs().max() < 0.1


def test_incremental_decoding_is_the_configured_default():
    from mmftrain.models import default_m4c_config

    assert default_m4c_config()["incremental_decoding"] is True
    model, batch = small_model(), varied_batch(b=3)
    calls, full_steps = [], model._full_steps
    model._full_steps = lambda *a: calls.append("full") or full_steps(*a)  # a spy around the real method
    model.greedy_decode(batch, bos_idx=1)
    assert calls == []
    model.config = dict(model.config, incremental_decoding=False)
    model.greedy_decode(batch, bos_idx=1)
    assert calls == ["full"]
