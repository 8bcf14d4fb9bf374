"""The batch contract between `mmfdata` (producer) and `mmftrain` (consumer).

A dataset object (packed or LMDB-backed) exposes:

    len(ds)                         number of questions
    ds.get_batch(indices)           indices: 1-D int64 numpy array -> dict below (numpy arrays, batch-first)
    ds.answer_vocab                 list[str]; index 0 is "<pad>", contains "<s>", "</s>", "<unk>"
    ds.name, ds.split               e.g. "textvqa", "val"

Keys of a batch (B = len(indices); V = len(answer_vocab); shapes fixed by the dataset config):

    question_id         int64   [B]
    image_id            object  [B]            str
    text                int64   [B, 20]        BERT WordPiece ids, [CLS] ... [SEP], 0-padded
    text_len            int64   [B]            real tokens incl. [CLS]/[SEP]
    obj_feat            float16 [B, 100, 2048] object fc6 features, 0-padded
    obj_bbox            float32 [B, 100, 4]    normalized x0,y0,x1,y1
    obj_num             int64   [B]            real object rows
    ocr_feat            float16 [B, 50, 2048]  OCR fc6 features
    ocr_fasttext        float16 [B, 50, 300]
    ocr_phoc            float16 [B, 50, 604]
    ocr_bbox            float32 [B, 50, 4]
    ocr_num             int64   [B]            real OCR tokens (<= 50)
    ocr_tokens          object  [B]            list[str] of processed OCR tokens (for decoding answers)
    gt_answers          object  [B]            list[str] raw answers (10 for TextVQA); [] on test splits
    train_prev_inds     int64   [B, 12]        [BOS, seq...] teacher-forcing inputs, 0-padded
    train_loss_mask     float32 [B, 12]
    target_first_inds   int64   [B, K]         candidate indices for step 0, -1 padded (K <= 20*... fixed per dataset)
    target_first_scores float32 [B, K]         their soft scores (0 where padded)
    target_seq          int64   [B, 12]        target index at steps >= 1 (score 1.0), -1 where none

Targets stay compact on the host; `expand_targets` builds the dense [B, 12, V + 50] tensor on the device.
"""
from __future__ import annotations

MAX_DECODE_STEPS = 12
MAX_OCR = 50


def expand_targets(batch, num_classes: int):
    """Dense M4C targets [B, 12, num_classes] from the compact fields of a batch of torch tensors.

    Step 0 takes the best soft score of every candidate first index; steps >= 1 take 1.0 at `target_seq`.
    Runs wherever the tensors live (call it after moving the batch to the training device).
    """
    import torch

    first_inds = batch["target_first_inds"]
    first_scores = batch["target_first_scores"]
    seq = batch["target_seq"]
    bsz, steps = seq.shape
    out = torch.zeros(bsz, steps, num_classes, dtype=torch.float32, device=seq.device)
    valid = first_inds >= 0
    # amax over duplicates: the same first word can start several candidate answers with different scores
    out[:, 0].scatter_reduce_(
        1, first_inds.clamp_min(0), torch.where(valid, first_scores, torch.zeros_like(first_scores)),
        reduce="amax", include_self=True,
    )
    has = seq[:, 1:] >= 0
    rest = torch.zeros(bsz, steps - 1, num_classes, dtype=torch.float32, device=seq.device)
    rest.scatter_(2, seq[:, 1:].clamp_min(0).unsqueeze(-1), has.unsqueeze(-1).float())
    out[:, 1:] = rest
    return out
