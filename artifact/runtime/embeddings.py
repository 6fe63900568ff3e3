"""Extra input embeddings of the GPT (ModelConfig switches; none exist in the baseline).

- `HashEmbedding` (BigramHash, optionally TrigramHash): the pair (token, previous token) — and
  with `trigram` also the triple (token, previous, the one before) — hashed into `buckets` rows
  of one shared table of width `dim`, projected to the model width and added to the token
  embedding. Parameters: `bigram.embed.weight` (buckets, dim), `bigram.proj.weight` (D, dim).
- `SmearGate`: blends each position with the previous token's (normed) embedding through a
  learned gate — per channel (`smear.gate`, shape (D,)), or, with a window k, a scalar gate read
  from the first k dims of the current token (`smear.gate_weight` (1, k), `smear.scale` (1,)).
- `ValueEmbedding`: a second token embedding projected to the KV width, added to V in the chosen
  layers. Parameters: `ve.embed.weight` (V, dim), `ve.proj.weight` (Hkv*hd, dim).

Documents: a BOS token starts a document. A context token from an earlier document is never
used — the hash uses a reserved bucket for "no such token", and SmearGate does not blend a BOS
position (or position 0) with anything — so with `doc_mask` a document's logits depend on that
document alone.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .layers import CastedLinear, zero_init

# Odd multipliers mixing each context position into the hash differently.
_HASH_MULTIPLIERS = (36313, 27191, 51497)


def document_starts(input_ids: Tensor, bos_id: int) -> Tensor:
    """(B, T) position of each token's document start: the last BOS at or before it, else 0."""
    pos = torch.arange(input_ids.size(1), device=input_ids.device).expand_as(input_ids)
    return torch.where(input_ids == bos_id, pos, torch.zeros_like(pos)).cummax(dim=1).values


def context_available(input_ids: Tensor, bos_id: int, back: int) -> Tensor:
    """(B, T) bool: the token `back` positions earlier exists and is in the same document."""
    pos = torch.arange(input_ids.size(1), device=input_ids.device)
    return (pos - back) >= document_starts(input_ids, bos_id)


def shift_right(x: Tensor, back: int) -> Tensor:
    """x moved `back` positions later along dim 1, zeros in front."""
    pad = torch.zeros_like(x[:, :back])
    return torch.cat((pad, x[:, : x.size(1) - back]), dim=1)


class HashEmbedding(nn.Module):
    """BigramHash (+ TrigramHash into the same table), projected to the model width."""

    def __init__(self, buckets: int, dim: int, model_dim: int, trigram: bool, bos_id: int):
        super().__init__()
        self.buckets, self.trigram, self.bos_id = buckets, trigram, bos_id
        self.embed = nn.Embedding(buckets, dim)
        self.proj = zero_init(CastedLinear(dim, model_dim, bias=False))
        nn.init.normal_(self.embed.weight, std=0.02)

    def bucket_ids(self, input_ids: Tensor, order: int) -> Tensor:
        """(B, T) table row of each n-gram ending at each position (order 2 or 3); the last row
        stands for "the context reaches before the document (or the sequence)"."""
        ids = input_ids.long()
        h = ids * _HASH_MULTIPLIERS[0]
        for back in range(1, order):
            h = torch.bitwise_xor(h, shift_right(ids, back) * _HASH_MULTIPLIERS[back])
        h = h + (order - 2) * 7919  # bigram and trigram of equal hashes land apart
        rows = torch.remainder(h, self.buckets - 1)
        available = context_available(input_ids, self.bos_id, order - 1)
        return torch.where(available, rows, torch.full_like(rows, self.buckets - 1))

    def forward(self, input_ids: Tensor) -> Tensor:
        h = self.embed(self.bucket_ids(input_ids, 2))
        if self.trigram:
            h = h + self.embed(self.bucket_ids(input_ids, 3))
        return self.proj(h)


class SmearGate(nn.Module):
    """Blend each position with the previous position's vector, never across a document start."""

    def __init__(self, dim: int, window: int, bos_id: int):
        super().__init__()
        self.window, self.bos_id = window, bos_id
        if window == 0:
            self.gate = nn.Parameter(torch.zeros(dim))  # sigmoid(0) = an even blend at init
        else:
            self.gate_weight = nn.Parameter(torch.zeros(1, window))
            self.scale = nn.Parameter(torch.zeros(1))  # starts as the identity

    def forward(self, x: Tensor, input_ids: Tensor) -> Tensor:
        prev = shift_right(x, 1)
        keep = context_available(input_ids, self.bos_id, 1).unsqueeze(-1).to(x.dtype)
        if self.window == 0:
            g = keep * torch.sigmoid(self.gate.to(x.dtype))
            return x + g * (prev - x)  # (1 - g) x + g prev
        g = keep * self.scale.to(x.dtype) * torch.sigmoid(F.linear(x[..., : self.window], self.gate_weight.to(x.dtype)))
        return x + g * prev


class ValueEmbedding(nn.Module):
    """Token → (B, T, kv_dim) vector that the chosen layers add to their V."""

    def __init__(self, vocab_size: int, dim: int, kv_dim: int):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, dim)
        self.proj = zero_init(CastedLinear(dim, kv_dim, bias=False))
        nn.init.normal_(self.embed.weight, std=0.02)

    def forward(self, input_ids: Tensor) -> Tensor:
        return self.proj(self.embed(input_ids))
