"""A language model golf does not define, written the way another competitor might: Llama-style
names (`layers.N.attention.wq`, `layers.N.feed_forward.w1`), RMSNorm modules with weights,
SwiGLU, rotary embeddings, a bfloat16 token embedding tied to the output through F.linear, and
golf's model contract: `model(ids, targets)` is the mean cross-entropy, `reduction="none"` the
per-token losses, `golf_hessian_inputs()` names the tied head's input.

Self-contained (torch only): a submission ships this file alone and builds the model from it.
`MeanOnlyLM` is the same model with the challenge's bare contract (the mean loss only).
"""

import torch
import torch.nn.functional as F
from torch import nn


class RMSNorm(nn.Module):
    def __init__(self, dim, eps=1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        return F.rms_norm(x.float(), (x.size(-1),), self.weight, self.eps)


def rotate(x, cos, sin):
    a, b = x.chunk(2, dim=-1)
    return torch.cat((a * cos - b * sin, b * cos + a * sin), dim=-1)


class Attention(nn.Module):
    def __init__(self, dim, n_heads):
        super().__init__()
        self.n_heads = n_heads
        self.wq = nn.Linear(dim, dim, bias=False)
        self.wk = nn.Linear(dim, dim, bias=False)
        self.wv = nn.Linear(dim, dim, bias=False)
        self.wo = nn.Linear(dim, dim, bias=False)

    def forward(self, x, cos, sin):
        b, t, d = x.shape
        q, k, v = (w(x).view(b, t, self.n_heads, -1).transpose(1, 2) for w in (self.wq, self.wk, self.wv))
        y = F.scaled_dot_product_attention(rotate(q, cos, sin), rotate(k, cos, sin), v, is_causal=True)
        return self.wo(y.transpose(1, 2).reshape(b, t, d))


class FeedForward(nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        self.w1 = nn.Linear(dim, hidden, bias=False)
        self.w3 = nn.Linear(dim, hidden, bias=False)
        self.w2 = nn.Linear(hidden, dim, bias=False)

    def forward(self, x):
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class TransformerBlock(nn.Module):
    def __init__(self, dim, n_heads, hidden):
        super().__init__()
        self.attention_norm = RMSNorm(dim)
        self.attention = Attention(dim, n_heads)
        self.ffn_norm = RMSNorm(dim)
        self.feed_forward = FeedForward(dim, hidden)

    def forward(self, x, cos, sin):
        x = x + self.attention(self.attention_norm(x), cos, sin)
        return x + self.feed_forward(self.ffn_norm(x))


class TinyLM(nn.Module):
    def __init__(self, vocab_size=1024, dim=64, n_layers=2, n_heads=4, hidden=192, rope_theta=10000.0):
        super().__init__()
        self.vocab_size = vocab_size
        self.tok_embeddings = nn.Embedding(vocab_size, dim, dtype=torch.bfloat16)
        nn.init.normal_(self.tok_embeddings.weight, std=0.05)
        self.layers = nn.ModuleList(TransformerBlock(dim, n_heads, hidden) for _ in range(n_layers))
        self.norm = RMSNorm(dim)
        half = dim // n_heads // 2
        self.register_buffer("freqs", rope_theta ** (-torch.arange(half) / half), persistent=False)

    def golf_hessian_inputs(self):
        return {"tok_embeddings.weight": self.norm}  # the tied head reads the final norm's output

    def forward(self, input_ids, target_ids, reduction="mean"):
        angle = torch.arange(input_ids.size(1), device=input_ids.device)[:, None] * self.freqs
        cos, sin = angle.cos(), angle.sin()
        h = self.tok_embeddings(input_ids).float()
        for layer in self.layers:
            h = layer(h, cos, sin)
        logits = F.linear(self.norm(h), self.tok_embeddings.weight.float())
        loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), target_ids.reshape(-1), reduction=reduction)
        return loss.view_as(target_ids) if reduction == "none" else loss


class MeanOnlyLM(TinyLM):
    def forward(self, input_ids, target_ids):
        return super().forward(input_ids, target_ids)


def make_tiny(checkpoint=None, **config):
    """A factory (not a class) that takes golf's `checkpoint` argument."""
    return TinyLM(**config)
