"""A small language model golf does not define, written in another style (LLaMA-like names):
`tok_embeddings` (bf16, tied to the output through F.linear), `layers.N.attention.wq/wk/wv/wo`,
`layers.N.feed_forward.w1/w2/w3` (SwiGLU), RMSNorm weights. Plain torch only: the export tests
copy this file next to an exported codec and run both in a fresh process that cannot import golf.
"""

import torch
import torch.nn.functional as F
from torch import nn


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.wq, self.wk, self.wv, self.wo = (nn.Linear(dim, dim, bias=False) for _ in range(4))

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = (w(x).view(b, t, self.heads, d // self.heads).transpose(1, 2) for w in (self.wq, self.wk, self.wv))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.wo(y.transpose(1, 2).reshape(b, t, d))


class FeedForward(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.w1 = nn.Linear(dim, hidden, bias=False)
        self.w2 = nn.Linear(hidden, dim, bias=False)
        self.w3 = nn.Linear(dim, hidden, bias=False)

    def forward(self, x):
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, hidden: int):
        super().__init__()
        self.attention_norm, self.ffn_norm = RMSNorm(dim), RMSNorm(dim)
        self.attention = Attention(dim, heads)
        self.feed_forward = FeedForward(dim, hidden)

    def forward(self, x):
        x = x + self.attention(self.attention_norm(x))
        return x + self.feed_forward(self.ffn_norm(x))


class LlamaStyle(nn.Module):
    def __init__(self, vocab: int = 1024, dim: int = 128, layers: int = 2, heads: int = 4, hidden: int = 256):
        super().__init__()
        self.tok_embeddings = nn.Embedding(vocab, dim, dtype=torch.bfloat16)
        self.layers = nn.ModuleList(Block(dim, heads, hidden) for _ in range(layers))
        self.norm = RMSNorm(dim)

    def hidden(self, ids):
        """The input of the tied output projection."""
        x = self.tok_embeddings(ids).float()
        for layer in self.layers:
            x = layer(x)
        return self.norm(x)

    def forward(self, ids, targets=None):
        logits = F.linear(self.hidden(ids), self.tok_embeddings.weight.float())
        if targets is None:
            return logits
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
