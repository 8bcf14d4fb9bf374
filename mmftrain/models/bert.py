"""A BERT encoder with HF/MMF parameter names (`embeddings.*`, `encoder.layer.N.*`), attention through SDPA.

Only what M4C needs: embeddings for the text encoder, a stack of post-LN transformer layers taking an additive
attention mask, and BERT's initialisation. Names match HF's `BertModel`, so MMF checkpoints and a
`bert-base-uncased` state dict load without renaming.
"""
from __future__ import annotations

from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class BertConfig:
    """The BertConfig fields M4C uses (HF defaults = bert-base-uncased)."""

    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-12

    @classmethod
    def from_dict(cls, d: dict) -> "BertConfig":
        """Build from a config node; unknown keys are an error naming the allowed ones."""
        names = {f.name for f in fields(cls)}
        bad = sorted(set(d) - names)
        if bad:
            raise ValueError(f"unknown BERT config key(s) {bad}; allowed: {', '.join(sorted(names))}")
        return cls(**d)


class BertEmbeddings(nn.Module):
    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(cfg.vocab_size, cfg.hidden_size, padding_idx=0)
        self.position_embeddings = nn.Embedding(cfg.max_position_embeddings, cfg.hidden_size)
        self.token_type_embeddings = nn.Embedding(cfg.type_vocab_size, cfg.hidden_size)
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.dropout = nn.Dropout(cfg.hidden_dropout_prob)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        pos = torch.arange(input_ids.size(1), device=input_ids.device)
        x = self.word_embeddings(input_ids) + self.position_embeddings(pos)[None]
        x = x + self.token_type_embeddings.weight[0]  # token_type_ids are all 0 for M4C
        return self.dropout(self.LayerNorm(x))


class _Linear(nn.Module):
    """`dense` + optional LayerNorm/dropout, named as HF's BertSelfOutput / BertOutput / BertIntermediate."""

    def __init__(self, d_in: int, d_out: int, cfg: BertConfig | None):
        super().__init__()
        self.dense = nn.Linear(d_in, d_out)
        if cfg is not None:
            self.LayerNorm = nn.LayerNorm(d_out, eps=cfg.layer_norm_eps)
            self.dropout = nn.Dropout(cfg.hidden_dropout_prob)


class _SelfAttention(nn.Module):
    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.query = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.key = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.value = nn.Linear(cfg.hidden_size, cfg.hidden_size)


class _Attention(nn.Module):
    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.self = _SelfAttention(cfg)
        self.output = _Linear(cfg.hidden_size, cfg.hidden_size, cfg)


class BertLayer(nn.Module):
    def __init__(self, cfg: BertConfig):
        super().__init__()
        if cfg.hidden_size % cfg.num_attention_heads:
            raise ValueError(f"hidden_size {cfg.hidden_size} is not divisible by num_attention_heads "
                             f"{cfg.num_attention_heads}")
        self.heads = cfg.num_attention_heads
        self.attn_dropout = cfg.attention_probs_dropout_prob
        self.attention = _Attention(cfg)
        self.intermediate = _Linear(cfg.hidden_size, cfg.intermediate_size, None)
        self.output = _Linear(cfg.intermediate_size, cfg.hidden_size, cfg)

    def _heads(self, lin: nn.Linear, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        return lin(x).view(b, n, self.heads, d // self.heads).transpose(1, 2)

    def _rest(self, ctx: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Attention context [B, heads, n, dh] -> the layer's output: projection, residual, LN, FFN, LN."""
        b, n, d = x.shape
        ctx = ctx.transpose(1, 2).reshape(b, n, d)
        ao = self.attention.output
        x = ao.LayerNorm(ao.dropout(ao.dense(ctx)) + x)
        h = F.gelu(self.intermediate.dense(x))
        o = self.output
        return o.LayerNorm(o.dropout(o.dense(h)) + x)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, rows: slice = slice(None)) -> torch.Tensor:
        """The layer's output rows `rows` (every row's keys/values take part): a row's output depends on the
        other rows only through them, so the rows nobody reads need no query, FFN or LayerNorm."""
        return self._attend(x, mask, rows)[0]

    def _attend(self, x: torch.Tensor, mask: torch.Tensor, rows: slice):
        """(output rows `rows`, keys, values [B, heads, N, dh] of every row)."""
        sa = self.attention.self
        k, v = (self._heads(lin, x) for lin in (sa.key, sa.value))
        q = self._heads(sa.query, x[:, rows])
        if mask.size(-2) > 1:  # a per-row mask (prefix LM): the kept rows' own
            mask = mask[..., rows, :]
        p = self.attn_dropout if self.training else 0.0
        ctx = F.scaled_dot_product_attention(q, k, v, attn_mask=mask.to(q.dtype), dropout_p=p)
        return self._rest(ctx, x[:, rows]), k, v

    def prefill(self, x: torch.Tensor, mask: torch.Tensor, extra: int,
                rows: slice = slice(None)) -> tuple[torch.Tensor, "KVCache"]:
        """`forward` over a prefix, keeping its keys/values in a cache with room for `extra` later positions.

        Only the output `rows` are computed (every row's keys/values are cached): the last layer's outputs are
        needed for the OCR positions alone.
        """
        out, k, v = self._attend(x, mask, rows)
        # zeros, not empty: the positions not yet written are attended to (behind the mask), and masking only
        # works on finite keys/values
        cache = KVCache(k.new_zeros(k.shape[:2] + (k.size(2) + extra, k.size(3))), v.new_zeros(
            v.shape[:2] + (v.size(2) + extra, v.size(3))), k.size(2))
        cache.k[:, :, :cache.length], cache.v[:, :, :cache.length] = k, v
        return out, cache

    def extend(self, x: torch.Tensor, cache: "KVCache", mask: torch.Tensor) -> torch.Tensor:
        """Output of new positions `x` [B, n, d] attending to the cached positions and to themselves.

        The new keys/values are appended to `cache`, and attention runs over the cache's whole capacity:
        `mask` is additive over all of it, broadcastable to [B, heads, n, capacity], and must block the
        positions not yet written. Every step thus has the same shapes (one kernel plan, one CUDA graph, no
        strided copies of a growing prefix). Equals `forward` on the whole sequence for rows no earlier row sees.
        """
        sa = self.attention.self
        q, k, v = (self._heads(lin, x) for lin in (sa.query, sa.key, sa.value))
        end = cache.length + x.size(1)
        cache.k[:, :, cache.length:end], cache.v[:, :, cache.length:end] = k, v
        cache.length = end
        ctx = F.scaled_dot_product_attention(q, cache.k, cache.v, attn_mask=mask.to(q.dtype))
        return self._rest(ctx, x)


@dataclass
class KVCache:
    """One layer's keys and values [B, heads, capacity, dh]; the first `length` positions are filled."""

    k: torch.Tensor
    v: torch.Tensor
    length: int


class BertEncoder(nn.Module):
    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.layer = nn.ModuleList(BertLayer(cfg) for _ in range(cfg.num_hidden_layers))

    def forward(self, x: torch.Tensor, mask: torch.Tensor, rows: slice = slice(None)) -> torch.Tensor:
        """`mask` is additive, broadcastable to [B, heads, N, N] (0 = attend, -10000 = blocked, as BERT); only
        the output `rows` of the last layer are computed."""
        last = len(self.layer) - 1
        for i, layer in enumerate(self.layer):
            x = layer(x, mask, rows if i == last else slice(None))
        return x

    def prefill(self, x: torch.Tensor, mask: torch.Tensor, extra: int,
                rows: slice = slice(None)) -> tuple[torch.Tensor, list[KVCache]]:
        """`forward` over a prefix that later positions extend (incremental decoding): the output `rows` of the
        last layer + per-layer caches."""
        caches = []
        for i, layer in enumerate(self.layer):
            x, cache = layer.prefill(x, mask, extra, rows if i == len(self.layer) - 1 else slice(None))
            caches.append(cache)
        return x, caches

    def extend(self, x: torch.Tensor, caches: list[KVCache], mask: torch.Tensor) -> torch.Tensor:
        """Outputs of new positions after the cached ones (see `BertLayer.extend`)."""
        for layer, cache in zip(self.layer, caches, strict=True):
            x = layer.extend(x, cache, mask)
        return x


class TextBert(nn.Module):
    """MMF's `TextBert`: BERT embeddings + the first `num_hidden_layers` BERT layers, no pooler."""

    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.config = cfg
        self.embeddings = BertEmbeddings(cfg)
        self.encoder = BertEncoder(cfg)

    def forward(self, txt_inds: torch.Tensor, txt_mask: torch.Tensor) -> torch.Tensor:
        mask = (1.0 - txt_mask[:, None, None, :].float()) * -10000.0
        return self.encoder(self.embeddings(txt_inds), mask)


def init_bert_weights(module: nn.Module, std: float = 0.02) -> None:
    """BERT initialisation: normal(0, std) for linear/embedding weights, zero biases, unit LayerNorm."""
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, 0.0, std)
            if isinstance(m, nn.Linear) and m.bias is not None:
                nn.init.zeros_(m.bias)
            if isinstance(m, nn.Embedding) and m.padding_idx is not None:
                nn.init.zeros_(m.weight[m.padding_idx])
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def bert_base_state_for_text_bert(state: dict, num_layers: int) -> dict:
    """Map a bert-base-uncased state dict (HF or original naming) onto TextBert's names, keeping `num_layers`.

    Accepts `bert.`-prefixed keys and old `gamma`/`beta` LayerNorm names; drops pooler, heads and deeper layers.
    """
    out = {}
    for k, v in state.items():
        k = k[5:] if k.startswith("bert.") else k
        k = k.replace("LayerNorm.gamma", "LayerNorm.weight").replace("LayerNorm.beta", "LayerNorm.bias")
        if k.startswith("embeddings.") and not k.endswith("position_ids"):
            out[k] = v
        elif k.startswith("encoder.layer."):
            if int(k.split(".")[2]) < num_layers:
                out[k] = v
    return out
