"""M4C (Hu et al., CVPR 2020) with MMF's parameter names, so MMF zoo checkpoints (m4c.textvqa.*) load.

Inputs follow the batch contract in `mmfdata/batch.py`. The model is split in `encode` (text BERT, object and OCR
encoders: everything that does not depend on previous predictions) and `decode` (the multimodal transformer over
[text | objects | OCR | decoder] with the prefix-LM mask, then the classifier and the OCR pointer network).
Greedy decoding is incremental by default: the text/object/OCR positions never attend to the decoder, so their
MMT states are computed once and each step runs only the new decoder position against cached keys/values;
`incremental_decoding: false` re-runs the whole MMT every step (MMF's computation, the baseline), with the same
predictions.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from mmftrain.models.bert import BertConfig, BertEncoder, TextBert, init_bert_weights

MASK_VALUE = -10000.0  # BERT/MMF additive mask value
FASTTEXT_DIM, PHOC_DIM = 300, 604
BOS_IDX = 1  # MMF sets the answer processor's BOS index to 1 (`<s>`)


def _mask(nums: torch.Tensor, max_num: int) -> torch.Tensor:
    return (torch.arange(max_num, device=nums.device)[None] < nums[:, None]).float()


class FinetuneFasterRcnnFpnFc7(nn.Module):
    """Detectron's fc7 layer (fine-tuned at lr x0.1), followed by ReLU as in MMF."""

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.lc = nn.Linear(in_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.lc(x))


class ClassifierLayer(nn.Module):
    """MMF's `ClassifierLayer(type=linear)`: the weight doubles as the answer-word embedding for the decoder."""

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.module = nn.Linear(in_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x)


class PrevPredEmbeddings(nn.Module):
    """Decoder inputs: embedding of the previous prediction (answer word or OCR token) + position + type."""

    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.position_embeddings = nn.Embedding(100, cfg.hidden_size)  # MMF: MAX_DEC_LENGTH
        self.token_type_embeddings = nn.Embedding(5, cfg.hidden_size)  # MMF: MAX_TYPE_NUM
        self.ans_layer_norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.ocr_layer_norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.emb_layer_norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.emb_dropout = nn.Dropout(cfg.hidden_dropout_prob)

    def tables(self, ans_emb: torch.Tensor, ocr_emb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The normalised lookup tables: answer words [V, d] and this batch's OCR tokens [B, 50, d]."""
        return self.ans_layer_norm(ans_emb), self.ocr_layer_norm(ocr_emb)

    def embed(self, tables: tuple, prev_inds: torch.Tensor, start: int = 0) -> torch.Tensor:
        """Inputs of decoding steps `start ..` for `prev_inds` [B, n] (indices into [answers ; OCR])."""
        ans_emb, ocr_emb = tables
        num_ans = ans_emb.size(0)
        # MMF concatenates [answers ; OCR] per sample and gathers; gathering from each side separately gives the
        # same rows without materialising a [B, V+50, d] tensor (2 GB at batch 128).
        is_ocr = prev_inds >= num_ans
        from_ans = F.embedding(prev_inds.clamp(max=num_ans - 1), ans_emb)
        ocr_idx = (prev_inds - num_ans).clamp(min=0)
        from_ocr = torch.gather(ocr_emb, 1, ocr_idx[..., None].expand(-1, -1, ocr_emb.size(-1)))
        raw = torch.where(is_ocr[..., None], from_ocr.to(from_ans.dtype), from_ans)
        pos = self.position_embeddings.weight[start:start + prev_inds.size(1)][None]
        emb = self.emb_dropout(self.emb_layer_norm(pos + self.token_type_embeddings(is_ocr.long())))
        return raw + emb

    def forward(self, ans_emb: torch.Tensor, ocr_emb: torch.Tensor, prev_inds: torch.Tensor) -> torch.Tensor:
        return self.embed(self.tables(ans_emb, ocr_emb), prev_inds)


class MMT(nn.Module):
    """The multimodal transformer (randomly initialised BERT layers) plus the decoder input embeddings."""

    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.config = cfg
        self.prev_pred_embeddings = PrevPredEmbeddings(cfg)
        self.encoder = BertEncoder(cfg)


class OcrPtrNet(nn.Module):
    """Pointer scores over OCR tokens: (Wq dec)(Wk ocr)^T / sqrt(d), blocked on padded OCR slots."""

    def __init__(self, hidden_size: int, query_key_size: int | None = None):
        super().__init__()
        self.query_key_size = query_key_size or hidden_size
        self.query = nn.Linear(hidden_size, self.query_key_size)
        self.key = nn.Linear(hidden_size, self.query_key_size)

    def forward(self, query_inputs, key_inputs, attention_mask):
        return self.scores(query_inputs, self.key(key_inputs), attention_mask)

    def scores(self, query_inputs, keys, attention_mask):
        """Pointer scores against already projected OCR `keys` (computed once per batch when decoding)."""
        scores = self.query(query_inputs) @ keys.transpose(-1, -2)
        scores = scores / math.sqrt(self.query_key_size)
        return scores + ((1.0 - attention_mask) * MASK_VALUE)[:, None, :]


class M4C(nn.Module):
    """M4C: text BERT + object/OCR encoders + 4-layer MMT + classifier + OCR pointer net, greedy decoding."""

    def __init__(self, config: dict, answer_vocab_size: int):
        super().__init__()
        self.config = config
        self.answer_vocab_size = answer_vocab_size
        # model_config.m4c.trim_last_layer: the last MMT layer computes only the rows read after it
        # ([OCR | decoder]); false = every row, as MMF (the same scores and gradients)
        self.trim_last_layer = bool(config.get("trim_last_layer", True))
        self.ocr_max_num = int(config["classifier"]["ocr_max_num"])
        fc7_dim = int(config.get("fc7_out_dim", 2048))
        self.text_bert_config = BertConfig.from_dict(dict(config.get("text_bert") or {}))
        self.mmt_config = BertConfig.from_dict(dict(config.get("mmt") or {}))
        hidden = self.mmt_config.hidden_size
        obj_in, ocr_in = int(config["obj"]["mmt_in_dim"]), int(config["ocr"]["mmt_in_dim"])
        if obj_in != fc7_dim:
            raise ValueError(f"model_config.m4c.obj.mmt_in_dim={obj_in} must equal fc7_out_dim={fc7_dim}")
        want = FASTTEXT_DIM + PHOC_DIM + fc7_dim + self.ocr_max_num
        if ocr_in != want:
            raise ValueError(f"model_config.m4c.ocr.mmt_in_dim={ocr_in} must be 300 + 604 + fc7_out_dim "
                             f"({fc7_dim}) + ocr_max_num ({self.ocr_max_num}) = {want}")

        self.text_bert = TextBert(self.text_bert_config)
        init_bert_weights(self.text_bert, self.text_bert_config.initializer_range)
        if self.text_bert_config.hidden_size != hidden:
            self.text_bert_out_linear = nn.Linear(self.text_bert_config.hidden_size, hidden)
        else:
            self.text_bert_out_linear = nn.Identity()

        self.obj_faster_rcnn_fc7 = FinetuneFasterRcnnFpnFc7(2048, fc7_dim)
        self.linear_obj_feat_to_mmt_in = nn.Linear(obj_in, hidden)
        self.linear_obj_bbox_to_mmt_in = nn.Linear(4, hidden)
        self.obj_feat_layer_norm = nn.LayerNorm(hidden)
        self.obj_bbox_layer_norm = nn.LayerNorm(hidden)
        self.obj_drop = nn.Dropout(config["obj"]["dropout_prob"])

        self.ocr_faster_rcnn_fc7 = FinetuneFasterRcnnFpnFc7(2048, fc7_dim)
        self.linear_ocr_feat_to_mmt_in = nn.Linear(ocr_in, hidden)
        self.linear_ocr_bbox_to_mmt_in = nn.Linear(4, hidden)
        self.ocr_feat_layer_norm = nn.LayerNorm(hidden)
        self.ocr_bbox_layer_norm = nn.LayerNorm(hidden)
        self.ocr_drop = nn.Dropout(config["ocr"]["dropout_prob"])

        self.mmt = MMT(self.mmt_config)
        init_bert_weights(self.mmt, self.mmt_config.initializer_range)

        ptr = config["classifier"]["ocr_ptr_net"]
        self.ocr_ptr_net = OcrPtrNet(int(ptr["hidden_size"]), int(ptr.get("query_key_size") or ptr["hidden_size"]))
        self.classifier = ClassifierLayer(hidden, answer_vocab_size)

    # ---- parameter groups (MMF `get_optimizer_parameters`)
    def optimizer_groups(self, base_lr: float) -> list[dict]:
        """[remaining params at base lr, text_bert (if init from BERT), obj fc7, OCR fc7, MMT] with lr scales."""
        c = self.config
        finetune = []
        if c.get("text_bert_init_from_bert_base", True):
            finetune.append((self.text_bert, c.get("lr_scale_text_bert", 0.1)))
        finetune += [(self.obj_faster_rcnn_fc7, c.get("lr_scale_frcn", 0.1)),
                     (self.ocr_faster_rcnn_fc7, c.get("lr_scale_frcn", 0.1)),
                     (self.mmt, c.get("lr_scale_mmt", 1.0))]
        taken = {id(p) for m, _ in finetune for p in m.parameters()}
        groups = [{"params": [p for p in self.parameters() if id(p) not in taken], "lr": base_lr}]
        groups += [{"params": list(m.parameters()), "lr": base_lr * float(s)} for m, s in finetune]
        return groups

    # ---- forward
    def encode(self, batch: dict) -> dict:
        """Embeddings of text, objects and OCR tokens plus the MMT attention mask (independent of predictions)."""
        text = batch["text"]
        txt_mask = _mask(batch["text_len"], text.size(1))
        txt_emb = self.text_bert_out_linear(self.text_bert(text, txt_mask))

        obj_fc7 = F.normalize(self.obj_faster_rcnn_fc7(batch["obj_feat"].float()), dim=-1)
        obj_emb = self.obj_feat_layer_norm(self.linear_obj_feat_to_mmt_in(obj_fc7)) + \
            self.obj_bbox_layer_norm(self.linear_obj_bbox_to_mmt_in(batch["obj_bbox"].float()))
        obj_emb = self.obj_drop(obj_emb)
        obj_mask = _mask(batch["obj_num"], obj_emb.size(1))

        n_ocr = batch["ocr_fasttext"].size(1)
        fasttext = F.normalize(batch["ocr_fasttext"].float(), dim=-1)
        phoc = F.normalize(batch["ocr_phoc"].float(), dim=-1)
        ocr_fc7 = F.normalize(self.ocr_faster_rcnn_fc7(batch["ocr_feat"][:, :n_ocr].float()), dim=-1)
        # MMF appends the legacy LoRRA "order vectors", always zeroed; kept so 3002-wide checkpoints load
        order = fasttext.new_zeros(fasttext.size(0), n_ocr, self.ocr_max_num)
        ocr_feat = torch.cat([fasttext, phoc, ocr_fc7.to(fasttext.dtype), order], dim=-1)
        ocr_emb = self.ocr_feat_layer_norm(self.linear_ocr_feat_to_mmt_in(ocr_feat)) + \
            self.ocr_bbox_layer_norm(self.linear_ocr_bbox_to_mmt_in(batch["ocr_bbox"].float()))
        ocr_emb = self.ocr_drop(ocr_emb)
        ocr_mask = _mask(batch["ocr_num"], n_ocr)

        enc_mask = torch.cat([txt_mask, obj_mask, ocr_mask], dim=1)
        return {"txt_emb": txt_emb, "obj_emb": obj_emb, "ocr_emb": ocr_emb, "ocr_mask": ocr_mask,
                "enc_mask": enc_mask, "ocr_begin": text.size(1) + obj_emb.size(1)}

    @staticmethod
    def prefix_lm_mask(enc_mask: torch.Tensor, steps: int) -> torch.Tensor:
        """Additive [B, 1, N + steps, N + steps] mask: every row sees the valid encoder positions; decoder rows
        also see earlier decoder steps; encoder rows never see the decoder (which is what makes decoding
        incremental)."""
        full = torch.cat([enc_mask, enc_mask.new_zeros(enc_mask.size(0), steps)], dim=1)
        allowed = full[:, None, None, :].repeat(1, 1, full.size(1), 1)
        allowed[:, :, -steps:, -steps:] = torch.tril(full.new_ones(steps, steps))
        return (1.0 - allowed) * MASK_VALUE

    def _encoder_input(self, enc: dict, dtype: torch.dtype) -> torch.Tensor:
        return torch.cat([enc[k].to(dtype) for k in ("txt_emb", "obj_emb", "ocr_emb")], dim=1)

    def _outputs(self, dec_out: torch.Tensor, ocr_keys: torch.Tensor, ocr_mask: torch.Tensor) -> torch.Tensor:
        """[answer-word scores ; OCR pointer scores] of decoder outputs."""
        fixed = self.classifier(dec_out)
        pointer = self.ocr_ptr_net.scores(dec_out, ocr_keys, ocr_mask)
        return torch.cat([fixed, pointer.to(fixed.dtype)], dim=-1)

    def decode(self, enc: dict, prev_inds: torch.Tensor) -> torch.Tensor:
        """Scores [B, steps, V + 50] for the given previous-prediction indices (teacher forcing or greedy):
        one pass of the MMT over [text | objects | OCR | decoder] (MMF's computation, less the last layer's text
        and object rows, which nobody reads: ~11% of a training step's FLOPs)."""
        dec_emb = self.mmt.prev_pred_embeddings(self.classifier.module.weight, enc["ocr_emb"], prev_inds)
        x = torch.cat([self._encoder_input(enc, dec_emb.dtype), dec_emb], dim=1)
        steps = prev_inds.size(1)
        b0, n_ocr = enc["ocr_begin"], enc["ocr_emb"].size(1)
        first = b0 if self.trim_last_layer else 0
        out = self.mmt.encoder(x, self.prefix_lm_mask(enc["enc_mask"], steps), rows=slice(first, None))
        ocr_keys = self.ocr_ptr_net.key(out[:, b0 - first:b0 - first + n_ocr])
        return self._outputs(out[:, -steps:], ocr_keys, enc["ocr_mask"])

    def forward(self, batch: dict) -> torch.Tensor:
        """Training forward with teacher forcing on `train_prev_inds`: scores [B, 12, V + 50]."""
        return self.decode(self.encode(batch), batch["train_prev_inds"])

    @torch.no_grad()
    def greedy_decode(self, batch: dict, bos_idx: int = BOS_IDX, eos_idx: int | None = None,
                      incremental: bool | None = None) -> torch.Tensor:
        """MMF's inference: start from BOS, feed back the argmax of each step for the next one.

        Returns scores [B, 12, V + 50] whose argmax is the predicted index sequence. `incremental` (default:
        `model_config.m4c.incremental_decoding`) runs the MMT over the encoder positions once and then only the
        new decoder position per step against cached keys/values (the encoder positions never see the decoder, so
        this is the same computation); otherwise each step re-runs the whole MMT, as MMF does (the baseline).
        With `eos_idx`, decoding stops once every answer has emitted EOS and the steps covered by the batch's
        `train_loss_mask` (the val loss) are done: the decoder is causal, so answers and the val loss equal
        those of all 12 steps; the scores of later steps are left at 0.
        """
        if incremental is None:
            incremental = bool(self.config.get("incremental_decoding", True))
        enc = self.encode(batch)
        steps = batch["train_prev_inds"].size(1)
        run = self._incremental_steps if incremental else self._full_steps
        need = _loss_steps(batch.get("train_loss_mask"))
        scores, ended = None, None
        for step, step_scores in run(enc, steps, bos_idx):
            if scores is None:
                scores = step_scores.new_zeros(step_scores.size(0), steps, step_scores.size(-1))
            scores[:, step] = step_scores
            if eos_idx is not None:
                hit = step_scores.argmax(-1) == eos_idx
                ended = hit if ended is None else ended | hit
                if step + 1 >= need and bool(ended.all()):
                    break
        return scores

    def _full_steps(self, enc: dict, steps: int, bos_idx: int):
        """(step, scores [B, V + 50]) per step, each from a full MMT pass over all 12 decoder inputs (MMF)."""
        prev = torch.zeros(enc["enc_mask"].size(0), steps, dtype=torch.long, device=enc["enc_mask"].device)
        prev[:, 0] = bos_idx
        for step in range(steps):
            scores = self.decode(enc, prev)
            if step + 1 < steps:
                prev[:, 1:] = scores.argmax(-1)[:, :-1]
            yield step, scores[:, step]

    def _incremental_steps(self, enc: dict, steps: int, bos_idx: int):
        """(step, scores [B, V + 50]) per step: the encoder positions once, then one decoder position per step."""
        ppe = self.mmt.prev_pred_embeddings
        tables = ppe.tables(self.classifier.module.weight, enc["ocr_emb"])
        b = enc["enc_mask"].size(0)
        prev = torch.full((b, 1), bos_idx, dtype=torch.long, device=enc["enc_mask"].device)
        x = ppe.embed(tables, prev)
        enc_add = ((1.0 - enc["enc_mask"]) * MASK_VALUE)[:, None, None, :]
        b0, n_ocr = enc["ocr_begin"], enc["ocr_emb"].size(1)
        ocr_out, caches = self.mmt.encoder.prefill(self._encoder_input(enc, x.dtype), enc_add, steps,
                                                   rows=slice(b0, b0 + n_ocr))
        ocr_keys = self.ocr_ptr_net.key(ocr_out)
        # keys: [encoder | decoder steps]; decoder position `step` sees the valid encoder ones and steps <= step
        # (the later ones are not written yet): row `step` of a causal block over the decoder slots
        later = torch.triu(enc_add.new_full((steps, steps), MASK_VALUE), diagonal=1)
        step_masks = torch.cat([enc_add.expand(b, steps, 1, -1), later[None, :, None, :].expand(b, -1, -1, -1)],
                               dim=-1)  # [B, steps, 1, N + steps]: the mask of step s is step_masks[:, s, None]
        for step in range(steps):
            h = self.mmt.encoder.extend(x, caches, step_masks[:, step, None])
            scores = self._outputs(h, ocr_keys, enc["ocr_mask"])[:, 0]
            if step + 1 < steps:
                x = ppe.embed(tables, scores.argmax(-1)[:, None], start=step + 1)
            yield step, scores


def _loss_steps(mask: torch.Tensor | None) -> int:
    """How many leading decoding steps a loss over `mask` [B, steps] reads (0 without a mask)."""
    if mask is None:
        return 0
    used = (mask > 0).any(0).nonzero()
    return int(used.max()) + 1 if used.numel() else 0
