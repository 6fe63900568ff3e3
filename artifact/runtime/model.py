"""The baseline GPT of the challenge (artifact/docs/baseline.md), configurable down to CPU size, plus every
model technique of the seed submissions as a `ModelConfig` switch (all off by default).

Weight-compatible with the challenge's `train_gpt.py`: under `ModelConfig()` the parameter
names and shapes are the baseline's, so a `final_model.pt` saved by that script loads here with
`strict=True` and gives the same loss on the same tokens. Structure, in the order data flows:
token embedding (+ hash n-gram embedding) → RMSNorm (→ SmearGate) = x0 → encoder blocks (keep
skips) → decoder blocks (add skips with learned, optionally gated, weights) → final RMSNorm →
tied (or separate) output projection → logit soft-cap. Each block mixes its input with x0
(`resid_mix`), then attention and a ReLU² MLP, each scaled per channel (`attn_scale`,
`mlp_scale`); see train/layers.py for the block switches and train/embeddings.py for the
extra embeddings. Depth recurrence re-runs a contiguous run of blocks; it can switch on during
training through `GPT.on_train_progress`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import build_dataclass
from .errors import ConfigError
from .embeddings import HashEmbedding, SmearGate, ValueEmbedding
from .layers import Block, CastedLinear, LayerContext, document_mask, zero_init

MLP_ACTIVATIONS = ("relu2", "leaky_relu2")
ATTENTION_GATES = ("none", "full", "sparse")
INITS = ("default", "orthogonal")
_TUPLE_FIELDS = ("ve_layers", "recur_layers")


@dataclass
class ModelConfig:
    """Shape, fixed hyper-parameters and switches of the GPT. Defaults = the challenge baseline."""

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
    # ---- switches (seed submissions); the defaults leave the baseline untouched
    bos_id: int = 1  # the token that starts each document (sp1024: 1)
    rope_dims: int = 0  # head dims that get RoPE (even); 0 = all
    smear: bool = False  # SmearGate on x0
    smear_window: int = 0  # 0 = per-channel gate; k > 0 = gate read from the first k dims
    bigram_buckets: int = 0  # BigramHash table rows (0 = off; the last row = "no context")
    bigram_dim: int = 128  # BigramHash table width (projected to model_dim)
    trigram: bool = False  # also hash (t, t-1, t-2) into the bigram table
    skip_gates: bool = False  # sigmoid-gated U-Net skips
    mlp_act: str = "relu2"  # "relu2" | "leaky_relu2"
    mlp_leaky_slope: float = 0.5
    ln_scale: bool = False  # block norms damped by 1/sqrt(layer + 1)
    xsa_last: int = 0  # exclusive self-attention in the last N layers (-1 = all, 0 = off)
    value_residual: bool = False  # layer-0 V mixed into later layers' V
    attn_gate: str = "none"  # "none" | "full" (from the block input) | "sparse" (first window dims)
    attn_gate_window: int = 12
    ve_layers: tuple = field(default_factory=tuple)  # layers whose V gets a value embedding
    ve_dim: int = 128
    recur_layers: tuple = field(default_factory=tuple)  # contiguous layers run again
    recur_loops: int = 1  # extra passes over recur_layers
    recur_start_step: int = 0  # recurrence active from this training step ...
    recur_start_frac: float = 0.0  # ... and this fraction of training
    parallel_from: int = -1  # attention and MLP as parallel lanes from this layer (-1 = off)
    init: str = "default"  # "default" | "orthogonal"
    mup_proj_scale: bool = False  # output projections: orthogonal / sqrt(2 * num_layers), not zero
    doc_mask: bool = False  # attention never crosses a BOS

    def __post_init__(self) -> None:
        for name in _TUPLE_FIELDS:
            value = getattr(self, name)
            if isinstance(value, list):
                setattr(self, name, tuple(value))
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
        self._validate_switches(need)

    def _validate_switches(self, need) -> None:
        layers, hd = self.num_layers, self.head_dim
        need(0 <= self.bos_id < self.vocab_size, f"bos_id {self.bos_id} must be a token id below vocab_size {self.vocab_size}")
        need(self.rope_dims == 0 or (self.rope_dims > 0 and self.rope_dims % 2 == 0 and self.rope_dims <= hd),
             f"rope_dims {self.rope_dims} must be 0 (all) or even and <= the head dim {hd}")
        need(0 <= self.smear_window <= self.model_dim, f"smear_window {self.smear_window} must be in 0..model_dim")
        need(self.smear or self.smear_window == 0, f"smear_window {self.smear_window} is set but smear is off")
        need(self.bigram_buckets == 0 or self.bigram_buckets >= 2, f"bigram_buckets {self.bigram_buckets} must be 0 (off) or >= 2")
        need(self.bigram_dim >= 1, "bigram_dim must be >= 1")
        need(not self.trigram or self.bigram_buckets > 0, "trigram needs the bigram table (bigram_buckets > 0)")
        need(self.mlp_act in MLP_ACTIVATIONS, f"mlp_act {self.mlp_act!r} must be one of {MLP_ACTIVATIONS}")
        need(0.0 <= self.mlp_leaky_slope < 1.0, f"mlp_leaky_slope {self.mlp_leaky_slope} must be in [0, 1)")
        need(-1 <= self.xsa_last <= layers, f"xsa_last {self.xsa_last} must be -1 (all), 0 (off) or <= num_layers {layers}")
        need(not self.value_residual or layers >= 2, "value_residual needs num_layers >= 2")
        need(self.attn_gate in ATTENTION_GATES, f"attn_gate {self.attn_gate!r} must be one of {ATTENTION_GATES}")
        need(self.attn_gate != "sparse" or 1 <= self.attn_gate_window <= self.model_dim,
             f"attn_gate_window {self.attn_gate_window} must be in 1..model_dim {self.model_dim}")
        self._validate_layer_list("ve_layers", self.ve_layers, need)
        need(len(set(self.ve_layers)) == len(self.ve_layers), f"ve_layers {list(self.ve_layers)} has repeats")
        need(self.ve_dim >= 1, "ve_dim must be >= 1")
        self._validate_layer_list("recur_layers", self.recur_layers, need)
        rec = list(self.recur_layers)
        need(rec == list(range(rec[0], rec[0] + len(rec))) if rec else True,
             f"recur_layers {rec} must be contiguous and ascending")
        need(self.recur_loops >= 1, f"recur_loops {self.recur_loops} must be >= 1")
        need(self.recur_start_step >= 0, "recur_start_step must be >= 0")
        need(0.0 <= self.recur_start_frac <= 1.0, f"recur_start_frac {self.recur_start_frac} must be in [0, 1]")
        need(bool(rec) or (self.recur_start_step == 0 and self.recur_start_frac == 0.0),
             "recur_start_step / recur_start_frac are set but recur_layers is empty")
        need(-1 <= self.parallel_from < layers, f"parallel_from {self.parallel_from} must be -1 (off) or a layer below {layers}")
        need(self.init in INITS, f"init {self.init!r} must be one of {INITS}")
        need(not self.mup_proj_scale or self.init == "orthogonal", "mup_proj_scale needs init = 'orthogonal'")

    def _validate_layer_list(self, name: str, value, need) -> None:
        need(isinstance(value, tuple) and all(isinstance(i, int) and not isinstance(i, bool) for i in value),
             f"{name} must be a list of layer indices, got {value!r}")
        bad = [i for i in value if not 0 <= i < self.num_layers]
        need(not bad, f"{name} {list(value)}: layers {bad} do not exist (num_layers {self.num_layers})")

    @property
    def head_dim(self) -> int:
        return self.model_dim // self.num_heads

    def xsa_layer(self, layer: int) -> bool:
        """Whether exclusive self-attention is on in `layer`."""
        return self.xsa_last == -1 or layer >= self.num_layers - self.xsa_last

    def layer_schedule(self, recurrence: bool = True) -> list[int]:
        """The blocks one forward pass runs, in order (with recurrence: the recur_layers run
        1 + recur_loops times back to back)."""
        order = list(range(self.num_layers))
        if not (recurrence and self.recur_layers):
            return order
        last = self.recur_layers[-1]
        return order[: last + 1] + list(self.recur_layers) * self.recur_loops + order[last + 1:]

    def to_dict(self) -> dict:
        data = asdict(self)
        for name in _TUPLE_FIELDS:
            data[name] = list(data[name])
        return data

    @classmethod
    def from_dict(cls, data: dict, source: str = "model config") -> "ModelConfig":
        return build_dataclass(cls, data, source)


class GPT(nn.Module):
    """The GPT, under golf's model contract (artifact/runtime/contract.py): `forward(ids, targets)`
    is the mean cross-entropy in nats (computed in float32), `reduction="none"` the per-token
    losses; `forward(ids)` alone returns the soft-capped logits (training, sampling)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.config = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.model_dim)
        self.num_encoder_layers = cfg.num_layers // 2
        self.num_decoder_layers = cfg.num_layers - self.num_encoder_layers
        num_skips = min(self.num_encoder_layers, self.num_decoder_layers)
        self.skip_weights = nn.Parameter(torch.ones(num_skips, cfg.model_dim, dtype=torch.float32))
        self.blocks = nn.ModuleList(Block(cfg, i) for i in range(cfg.num_layers))
        # parameterless, as the baseline's: its output is the output projection's input
        self.final_norm = nn.RMSNorm(cfg.model_dim, elementwise_affine=False)
        self.lm_head = None if cfg.tie_embeddings else zero_init(CastedLinear(cfg.model_dim, cfg.vocab_size, bias=False))
        # Switch modules come after the baseline ones: a baseline config draws the same init.
        self.skip_gates = nn.Parameter(torch.zeros(num_skips, cfg.model_dim)) if cfg.skip_gates else None
        self.bigram = (HashEmbedding(cfg.bigram_buckets, cfg.bigram_dim, cfg.model_dim, cfg.trigram, cfg.bos_id)
                       if cfg.bigram_buckets else None)
        self.smear = SmearGate(cfg.model_dim, cfg.smear_window, cfg.bos_id) if cfg.smear else None
        self.ve = (ValueEmbedding(cfg.vocab_size, cfg.ve_dim, cfg.num_kv_heads * cfg.head_dim)
                   if cfg.ve_layers else None)
        # Recurrence starts in its final (evaluation) state; training sets it per step.
        self.recurrence_active = True
        self._init_weights()

    def _init_weights(self) -> None:
        cfg = self.config
        if cfg.tie_embeddings:
            nn.init.normal_(self.tok_emb.weight, mean=0.0, std=cfg.tied_embed_init_std)
        mup = 1.0 / math.sqrt(2 * cfg.num_layers) if cfg.mup_proj_scale else None
        for module in self.modules():
            if not isinstance(module, nn.Linear):
                continue
            if getattr(module, "_zero_init", False):
                if mup is not None and getattr(module, "_output_projection", False):
                    with torch.no_grad():
                        nn.init.orthogonal_(module.weight).mul_(mup)
                else:
                    nn.init.zeros_(module.weight)
            elif cfg.init == "orthogonal":
                nn.init.orthogonal_(module.weight)

    # ------------------------------------------------------------------------------ training
    def on_train_progress(self, step: int, fraction: float) -> None:
        """Called by the training loop before each optimiser step (fraction of training done in
        [0, 1]); `(0, 1.0)` is the final state that evaluation and packing see."""
        cfg = self.config
        if cfg.recur_layers:
            self.recurrence_active = fraction >= 1.0 or (step >= cfg.recur_start_step and fraction >= cfg.recur_start_frac)

    def layer_schedule(self) -> list[int]:
        return self.config.layer_schedule(self.recurrence_active)

    # ------------------------------------------------------------------------------- forward
    def embed(self, input_ids: Tensor) -> Tensor:
        """x0 (B, T, D): token (+ hash) embedding, RMS-normed, then SmearGate."""
        x = self.tok_emb(input_ids)
        if self.bigram is not None:
            x = x + self.bigram(input_ids)
        x = F.rms_norm(x, (x.size(-1),))
        if self.smear is not None:
            x = self.smear(x, input_ids)
        return x

    def _context(self, input_ids: Tensor) -> LayerContext:
        cfg = self.config
        ctx = LayerContext(mask=document_mask(input_ids, cfg.bos_id) if cfg.doc_mask else None)
        if self.ve is not None:
            b, t = input_ids.shape
            ctx.ve = self.ve(input_ids).view(b, t, cfg.num_kv_heads, cfg.head_dim).transpose(1, 2)
        return ctx

    def _add_skip(self, j: int, x: Tensor, skip: Tensor) -> Tensor:
        scaled = self.skip_weights[j].to(x.dtype) * skip
        if self.skip_gates is None:
            return x + scaled
        return torch.lerp(scaled, x, torch.sigmoid(self.skip_gates[j].to(x.dtype)))

    def hidden(self, input_ids: Tensor) -> Tensor:
        """Final-normed hidden states (B, T, D): the input of the output projection.

        U-Net: decoder layer n_enc + j adds encoder layer n_enc - 1 - j's latest output on its
        first run (with no recurrence this is the baseline's push/pop stack)."""
        x = x0 = self.embed(input_ids)
        ctx = self._context(input_ids)
        n_enc, n_skips = self.num_encoder_layers, self.skip_weights.size(0)
        encoder_out: dict[int, Tensor] = {}
        decoded: set[int] = set()
        for i in self.layer_schedule():
            j = i - n_enc
            if 0 <= j < n_skips and i not in decoded:
                decoded.add(i)
                x = self._add_skip(j, x, encoder_out[n_enc - 1 - j])
            x = self.blocks[i](x, x0, ctx)
            if i < n_enc:
                encoder_out[i] = x
        return self.final_norm(x)

    def output_weight(self) -> Tensor:
        return self.tok_emb.weight if self.lm_head is None else self.lm_head.weight

    def golf_hessian_inputs(self) -> dict[str, nn.Module]:
        """The contract's optional map: a tied embedding is the output layer, read (through
        F.linear) from the final norm's output."""
        return {"tok_emb.weight": self.final_norm} if self.lm_head is None else {}

    def forward(self, input_ids: Tensor, target_ids: Tensor | None = None, reduction: str = "mean") -> Tensor:
        h = self.hidden(input_ids)
        logits = F.linear(h, self.output_weight().to(h.dtype))
        cap = self.config.logit_softcap
        logits = cap * torch.tanh(logits / cap)
        if target_ids is None:
            return logits
        losses = F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), target_ids.reshape(-1), reduction=reduction)
        return losses if reduction != "none" else losses.view_as(target_ids)

    def loss(self, input_ids: Tensor, target_ids: Tensor, reduction: str = "mean") -> Tensor:
        return self.forward(input_ids, target_ids, reduction)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def baseline_state_dict_shapes(cfg: ModelConfig | None = None) -> dict[str, tuple[int, ...]]:
    """The names and shapes `train_gpt.py` saves for `cfg`'s shape (default: the baseline),
    derived from the published layout rather than from this module, so tests can hold us to it.
    Switch parameters are not included: see `state_dict_shapes`."""
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


def switch_state_dict_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """The tensors `cfg`'s switches add to the baseline layout (empty for a baseline config)."""
    d, kv = cfg.model_dim, cfg.num_kv_heads * cfg.head_dim
    shapes: dict[str, tuple[int, ...]] = {}
    if cfg.skip_gates:
        shapes["skip_gates"] = (min(cfg.num_layers // 2, cfg.num_layers - cfg.num_layers // 2), d)
    if cfg.bigram_buckets:
        shapes["bigram.embed.weight"] = (cfg.bigram_buckets, cfg.bigram_dim)
        shapes["bigram.proj.weight"] = (d, cfg.bigram_dim)
    if cfg.smear and cfg.smear_window:
        shapes["smear.gate_weight"] = (1, cfg.smear_window)
        shapes["smear.scale"] = (1,)
    elif cfg.smear:
        shapes["smear.gate"] = (d,)
    if cfg.ve_layers:
        shapes["ve.embed.weight"] = (cfg.vocab_size, cfg.ve_dim)
        shapes["ve.proj.weight"] = (kv, cfg.ve_dim)
    gate_in = {"none": 0, "full": d, "sparse": cfg.attn_gate_window}[cfg.attn_gate]
    for i in range(cfg.num_layers):
        p = f"blocks.{i}.attn."
        if cfg.value_residual and i > 0:
            shapes[p + "v_lambda"] = (2,)
        if i in cfg.ve_layers:
            shapes[p + "ve_lambda"] = (1,)
        if gate_in:
            shapes[p + "gate_weight"] = (cfg.num_heads, gate_in)
    return shapes


def state_dict_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Every tensor name and shape of `GPT(cfg).state_dict()`."""
    return {**baseline_state_dict_shapes(cfg), **switch_state_dict_shapes(cfg)}
