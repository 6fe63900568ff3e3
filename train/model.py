"""The baseline GPT of the challenge (challenge.md §5), configurable down to CPU size.

Weight-compatible with the challenge's `train_gpt.py`: the same parameter names and shapes, so
a `final_model.pt` saved by that script loads here with `strict=True` under `ModelConfig()` and
gives the same loss on the same tokens. Structure, in the order data flows:
token embedding → RMSNorm (x0) → encoder blocks (push skips) → decoder blocks (pop skips with
learned weights) → final RMSNorm → tied (or separate) output projection → logit soft-cap.
Each block mixes its input with x0 (`resid_mix`), then attention and a ReLU² MLP, each scaled
per channel (`attn_scale`, `mlp_scale`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from artifact.errors import ConfigError


@dataclass
class ModelConfig:
    """Shape and fixed hyper-parameters of the GPT. Defaults = the challenge baseline."""

    vocab_size: int = 1024
    num_layers: int = 9
    model_dim: int = 512
    num_heads: int = 8
    num_kv_heads: int = 4
    mlp_mult: int = 2
    tie_embeddings: bool = True
    tied_embed_init_std: float = 0.005
    logit_softcap: float = 30.0
    rope_base: float = 10000.0
    qk_gain_init: float = 1.5

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        def need(ok: bool, msg: str) -> None:
            if not ok:
                raise ConfigError(f"model config: {msg}")

        need(0 < self.vocab_size <= 65536, f"vocab_size {self.vocab_size} must be in 1..65536")
        need(self.num_layers >= 1, "num_layers must be >= 1")
        need(self.num_heads >= 1 and self.num_kv_heads >= 1, "head counts must be >= 1")
        need(self.model_dim % self.num_heads == 0, f"model_dim {self.model_dim} not divisible by num_heads {self.num_heads}")
        need(self.num_heads % self.num_kv_heads == 0, f"num_heads {self.num_heads} not divisible by num_kv_heads {self.num_kv_heads}")
        need((self.model_dim // self.num_heads) % 2 == 0, "head dim must be even for RoPE")
        need(self.mlp_mult >= 1, "mlp_mult must be >= 1")
        need(self.logit_softcap > 0, "logit_softcap must be positive")

    @property
    def head_dim(self) -> int:
        return self.model_dim // self.num_heads

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict, source: str = "model config") -> "ModelConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"{source}: unknown model keys {unknown}")
        return cls(**data)


class CastedLinear(nn.Linear):
    """Linear layer whose fp32 weight is cast to the activation dtype at matmul time."""

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight.to(x.dtype))


class Rotary(nn.Module):
    """RoPE cos/sin tables, cached per sequence length and device (not in the state dict)."""

    def __init__(self, dim: int, base: float):
        super().__init__()
        inv_freq = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        self._cache: tuple[int, torch.device, Tensor, Tensor] | None = None

    def forward(self, seq_len: int, device: torch.device, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        if self._cache is not None and self._cache[0] == seq_len and self._cache[1] == device:
            return self._cache[2].to(dtype), self._cache[3].to(dtype)
        t = torch.arange(seq_len, device=device, dtype=torch.float32)
        freqs = torch.outer(t, self.inv_freq.to(device))
        cos, sin = freqs.cos()[None, None], freqs.sin()[None, None]
        # Tables made under inference_mode are "inference tensors" that autograd refuses to save,
        # so they are never cached: an eval (scoring) followed by training (or TTT) must work.
        if torch.compiler.is_compiling() or not torch.is_inference_mode_enabled():
            self._cache = (seq_len, device, cos, sin)
        return cos.to(dtype), sin.to(dtype)


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    half = x.size(-1) // 2
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat((x1 * cos + x2 * sin, x2 * cos - x1 * sin), dim=-1)


class CausalSelfAttention(nn.Module):
    """GQA attention with q/k RMS-norm, RoPE and a learned per-head query gain."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.num_heads, self.num_kv_heads, self.head_dim = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        kv_dim = cfg.num_kv_heads * cfg.head_dim
        self.c_q = CastedLinear(cfg.model_dim, cfg.model_dim, bias=False)
        self.c_k = CastedLinear(cfg.model_dim, kv_dim, bias=False)
        self.c_v = CastedLinear(cfg.model_dim, kv_dim, bias=False)
        self.proj = CastedLinear(cfg.model_dim, cfg.model_dim, bias=False)
        self.proj._zero_init = True
        self.q_gain = nn.Parameter(torch.full((cfg.num_heads,), cfg.qk_gain_init, dtype=torch.float32))
        self.rotary = Rotary(cfg.head_dim, cfg.rope_base)

    def forward(self, x: Tensor) -> Tensor:
        b, t, d = x.shape
        q = self.c_q(x).reshape(b, t, self.num_heads, self.head_dim).transpose(1, 2)
        k = self.c_k(x).reshape(b, t, self.num_kv_heads, self.head_dim).transpose(1, 2)
        v = self.c_v(x).reshape(b, t, self.num_kv_heads, self.head_dim).transpose(1, 2)
        q = F.rms_norm(q, (q.size(-1),))
        k = F.rms_norm(k, (k.size(-1),))
        cos, sin = self.rotary(t, x.device, q.dtype)
        q = apply_rotary(q, cos, sin) * self.q_gain.to(q.dtype)[None, :, None, None]
        k = apply_rotary(k, cos, sin)
        y = F.scaled_dot_product_attention(
            q, k, v, is_causal=True, enable_gqa=self.num_kv_heads != self.num_heads
        )
        return self.proj(y.transpose(1, 2).reshape(b, t, d))


class MLP(nn.Module):
    """ReLU² feed-forward layer."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        hidden = cfg.mlp_mult * cfg.model_dim
        self.fc = CastedLinear(cfg.model_dim, hidden, bias=False)
        self.proj = CastedLinear(hidden, cfg.model_dim, bias=False)
        self.proj._zero_init = True

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(torch.relu(self.fc(x)).square())


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        dim = cfg.model_dim
        self.attn = CausalSelfAttention(cfg)
        self.mlp = MLP(cfg)
        self.attn_scale = nn.Parameter(torch.ones(dim, dtype=torch.float32))
        self.mlp_scale = nn.Parameter(torch.ones(dim, dtype=torch.float32))
        self.resid_mix = nn.Parameter(torch.stack((torch.ones(dim), torch.zeros(dim))).float())

    def forward(self, x: Tensor, x0: Tensor) -> Tensor:
        mix = self.resid_mix.to(x.dtype)
        x = mix[0] * x + mix[1] * x0
        x = x + self.attn_scale.to(x.dtype) * self.attn(F.rms_norm(x, (x.size(-1),)))
        x = x + self.mlp_scale.to(x.dtype) * self.mlp(F.rms_norm(x, (x.size(-1),)))
        return x


class GPT(nn.Module):
    """The baseline GPT. `forward(ids)` returns soft-capped logits; `loss(ids, targets)` the mean
    cross-entropy in nats (computed in float32)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.config = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.model_dim)
        self.num_encoder_layers = cfg.num_layers // 2
        self.num_decoder_layers = cfg.num_layers - self.num_encoder_layers
        num_skips = min(self.num_encoder_layers, self.num_decoder_layers)
        self.skip_weights = nn.Parameter(torch.ones(num_skips, cfg.model_dim, dtype=torch.float32))
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.num_layers))
        self.lm_head = None if cfg.tie_embeddings else CastedLinear(cfg.model_dim, cfg.vocab_size, bias=False)
        if self.lm_head is not None:
            self.lm_head._zero_init = True
        self._init_weights()

    def _init_weights(self) -> None:
        if self.config.tie_embeddings:
            nn.init.normal_(self.tok_emb.weight, mean=0.0, std=self.config.tied_embed_init_std)
        for module in self.modules():
            if isinstance(module, nn.Linear) and getattr(module, "_zero_init", False):
                nn.init.zeros_(module.weight)

    def hidden(self, input_ids: Tensor) -> Tensor:
        """Final-normed hidden states (B, T, D): the input of the output projection."""
        x = self.tok_emb(input_ids)
        x = x0 = F.rms_norm(x, (x.size(-1),))
        skips: list[Tensor] = []
        for i in range(self.num_encoder_layers):
            x = self.blocks[i](x, x0)
            skips.append(x)
        for i in range(self.num_decoder_layers):
            if skips:
                x = x + self.skip_weights[i].to(x.dtype) * skips.pop()
            x = self.blocks[self.num_encoder_layers + i](x, x0)
        return F.rms_norm(x, (x.size(-1),))

    def output_weight(self) -> Tensor:
        return self.tok_emb.weight if self.lm_head is None else self.lm_head.weight

    def forward(self, input_ids: Tensor) -> Tensor:
        h = self.hidden(input_ids)
        logits = F.linear(h, self.output_weight().to(h.dtype))
        cap = self.config.logit_softcap
        return cap * torch.tanh(logits / cap)

    def loss(self, input_ids: Tensor, target_ids: Tensor, reduction: str = "mean") -> Tensor:
        logits = self.forward(input_ids)
        losses = F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), target_ids.reshape(-1), reduction=reduction)
        return losses if reduction != "none" else losses.view_as(target_ids)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def baseline_state_dict_shapes(cfg: ModelConfig | None = None) -> dict[str, tuple[int, ...]]:
    """The names and shapes `train_gpt.py` saves for `cfg` (default: the baseline), derived from
    the published layout rather than from this module, so tests can hold us to it."""
    cfg = cfg or ModelConfig()
    d, kv = cfg.model_dim, cfg.num_kv_heads * cfg.head_dim
    shapes: dict[str, tuple[int, ...]] = {
        "tok_emb.weight": (cfg.vocab_size, d),
        "skip_weights": (min(cfg.num_layers // 2, cfg.num_layers - cfg.num_layers // 2), d),
    }
    for i in range(cfg.num_layers):
        p = f"blocks.{i}."
        shapes.update({
            p + "attn_scale": (d,), p + "mlp_scale": (d,), p + "resid_mix": (2, d),
            p + "attn.q_gain": (cfg.num_heads,), p + "attn.c_q.weight": (d, d),
            p + "attn.c_k.weight": (kv, d), p + "attn.c_v.weight": (kv, d),
            p + "attn.proj.weight": (d, d), p + "mlp.fc.weight": (cfg.mlp_mult * d, d),
            p + "mlp.proj.weight": (d, cfg.mlp_mult * d),
        })
    if not cfg.tie_embeddings:
        shapes["lm_head.weight"] = (cfg.vocab_size, d)
    return shapes
