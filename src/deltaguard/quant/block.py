"""One decoder block under calibration: learnable weight clipping and equivalent transforms (OmniQuant).

``BlockQuantizer`` wraps a Llama-family decoder block (q/k/v/o projections, a gated MLP, two RMSNorms)
without changing its weights. Its forward runs the block with *effective* weights computed from the
frozen originals and the learnable parameters:

- **Learnable weight clipping (LWC).** Per output row (or group) two logits ``γ``, ``β`` (initialised at
  ``clip_init`` = 4.0, so ``sigmoid`` ≈ 0.98) shrink the row's max and min before the grid is drawn.
- **Learnable equivalent transforms (LET).** Per-channel smoothing scales ``s`` move activation outliers
  into the weights without changing the float function: a norm's weight is divided by ``s`` and the
  columns of the linears it feeds are multiplied by it. Pairs: input norm → q/k/v, post-attention norm →
  gate/up, v → o (per key/value head, repeated over the query heads that share it), up → down. ``s`` is
  initialised SmoothQuant-style, ``absmax(x)^α / absmax(w)^(1-α)`` with ``α`` = 0.5.

Activations entering every linear are fake-quantized per token when the scheme quantizes them (forward
pre-hooks). ``fold_`` writes the learned transforms into the block for good (the block then computes the
same float function with smoothed weights) and returns what ``QuantLinear`` needs to store each weight.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator

import torch
from torch import Tensor, nn
from torch.func import functional_call

from deltaguard.errors import ConfigError
from deltaguard.quant.fake import QuantScheme, fake_quant_tokens, fake_quant_weight, grouped

ATTENTION = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj")
MLP = ("mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")
LINEARS = ATTENTION + MLP
# smoothing pair → (what produces the activation, the linears that consume it)
SMOOTH_PAIRS: dict[str, tuple[str, tuple[str, ...]]] = {
    "qkv": ("input_layernorm", ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")),
    "gate_up": ("post_attention_layernorm", ("mlp.gate_proj", "mlp.up_proj")),
    "vo": ("self_attn.v_proj", ("self_attn.o_proj",)),
    "up_down": ("mlp.up_proj", ("mlp.down_proj",)),
}
# which linear's input each pair's activation statistics are read at
STAT_SITES = {"qkv": "self_attn.q_proj", "gate_up": "mlp.gate_proj", "vo": "self_attn.o_proj", "up_down": "mlp.down_proj"}


def check_block(layer: nn.Module) -> None:
    """Raise a one-line ConfigError unless ``layer`` has the Llama-family block layout this module handles."""
    names = dict(layer.named_modules())
    missing = [n for n in (*LINEARS, "input_layernorm", "post_attention_layernorm") if n not in names]
    if missing:
        raise ConfigError(f"block-wise quantization supports Llama-family decoder blocks; this "
                          f"{type(layer).__name__} lacks {', '.join(missing)}")


@dataclass
class FoldedLinear:
    """What a quantized linear stores: its (smoothed) float weight, bias and the learned clip factors."""

    weight: Tensor
    bias: Tensor | None
    upper: Tensor | None
    lower: Tensor | None


def _head_layout(layer: nn.Module) -> tuple[int, int, int]:
    """(query heads, key/value heads, head dim) of the block's attention."""
    attn = layer.self_attn
    config = getattr(attn, "config", None)
    head_dim = int(getattr(attn, "head_dim", 0) or getattr(config, "head_dim", 0))
    n_heads = attn.o_proj.in_features // head_dim
    n_kv = attn.v_proj.out_features // head_dim
    return n_heads, n_kv, head_dim


class BlockQuantizer(nn.Module):
    """Learnable clipping and smoothing around one frozen decoder block (see the module docstring)."""

    def __init__(self, layer: nn.Module, scheme: QuantScheme, *, act_absmax: dict[str, Tensor] | None = None,
                 smooth: bool = True, clip: bool = True, clip_init: float = 4.0, alpha: float = 0.5) -> None:
        super().__init__()
        check_block(layer)
        self.layer = layer.requires_grad_(False)
        self.scheme = scheme
        self.n_heads, self.n_kv, self.head_dim = _head_layout(layer)
        modules = dict(layer.named_modules())
        self.clip_upper = nn.ParameterDict()
        self.clip_lower = nn.ParameterDict()
        if clip:
            for name in LINEARS:
                weight = modules[name].weight
                n_groups = grouped(weight, scheme.group_size).shape[1]
                shape = (weight.shape[0], n_groups, 1)
                self.clip_upper[_key(name)] = nn.Parameter(torch.full(shape, clip_init, device=weight.device))
                self.clip_lower[_key(name)] = nn.Parameter(torch.full(shape, clip_init, device=weight.device))
        self.smooth = nn.ParameterDict()
        if smooth:
            if act_absmax is None:
                raise ConfigError("smoothing needs the activations' per-channel absmax (act_absmax)")
            for pair, (_, consumers) in SMOOTH_PAIRS.items():
                x_max = act_absmax[pair].float().clamp(min=1e-5)
                w_max = torch.cat([modules[n].weight.detach().abs() for n in consumers], dim=0).amax(dim=0).float()
                if pair == "vo":   # o's input columns come in groups per query head; v has one per kv head
                    x_max = kv_reduce(x_max, self.n_heads, self.n_kv, self.head_dim)
                    w_max = kv_reduce(w_max, self.n_heads, self.n_kv, self.head_dim)
                scale = (x_max.pow(alpha) / w_max.clamp(min=1e-5).pow(1 - alpha)).clamp(min=1e-5)
                self.smooth[pair] = nn.Parameter(scale.to(layer.input_layernorm.weight.device))
        self._hooks: list[Any] = []

    # --- the effective weights -------------------------------------------------------------------
    def _scales(self) -> dict[str, Tensor]:
        return {pair: s.clamp(min=1e-5) for pair, s in self.smooth.items()}

    def _expand_vo(self, s: Tensor) -> Tensor:
        """v's per-channel scale as o's per-column scale (each query head reads its key/value head)."""
        per_kv = s.reshape(self.n_kv, 1, self.head_dim)
        return per_kv.expand(self.n_kv, self.n_heads // self.n_kv, self.head_dim).reshape(-1)

    def smoothed(self) -> dict[str, Tensor]:
        """Float parameters of the block with the equivalent transforms applied (no quantization)."""
        modules = dict(self.layer.named_modules())
        params: dict[str, Tensor] = {f"{n}.weight": modules[n].weight for n in LINEARS}
        params.update({f"{n}.bias": modules[n].bias for n in LINEARS if modules[n].bias is not None})
        scales = self._scales()
        for pair, s in scales.items():
            producer, consumers = SMOOTH_PAIRS[pair]
            column = self._expand_vo(s) if pair == "vo" else s
            for name in consumers:
                params[f"{name}.weight"] = params[f"{name}.weight"] * column[None, :]
            if producer.endswith("layernorm"):
                params[f"{producer}.weight"] = modules[producer].weight / s
            else:   # a linear producer: divide its output rows (and bias)
                params[f"{producer}.weight"] = params[f"{producer}.weight"] / s[:, None]
                if f"{producer}.bias" in params:
                    params[f"{producer}.bias"] = params[f"{producer}.bias"] / s
        return params

    def clip_factors(self, name: str) -> tuple[Tensor | None, Tensor | None]:
        key = _key(name)
        if key not in self.clip_upper:
            return None, None
        return torch.sigmoid(self.clip_upper[key]), torch.sigmoid(self.clip_lower[key])

    def effective(self) -> dict[str, Tensor]:
        """The smoothed parameters with every linear weight fake-quantized (straight-through)."""
        params = self.smoothed()
        for name in LINEARS:
            upper, lower = self.clip_factors(name)
            params[f"{name}.weight"] = fake_quant_weight(params[f"{name}.weight"], self.scheme.w_bits,
                                                         self.scheme.group_size, upper=upper, lower=lower)
        return params

    # --- running ---------------------------------------------------------------------------------
    def quantize_activations(self, enabled: bool = True) -> None:
        """Fake-quantize every linear's input per token (when the scheme quantizes activations)."""
        for hook in self._hooks:
            hook.remove()
        self._hooks = []
        if enabled and self.scheme.quantizes_activations:
            modules = dict(self.layer.named_modules())
            bits = self.scheme.a_bits
            for name in LINEARS:
                self._hooks.append(modules[name].register_forward_pre_hook(
                    lambda _module, args, _bits=bits: (fake_quant_tokens(args[0], _bits), *args[1:])))

    def forward(self, hidden: Tensor, **kwargs: Any) -> Tensor:
        return self.run(self.effective(), hidden, **kwargs)

    def run(self, params: dict[str, Tensor], hidden: Tensor, **kwargs: Any) -> Tensor:
        """The block on ``hidden`` with the given parameters (``effective()``'s, computed once and reused when
        several batches see the same scales: AWQ's grid search quantized every weight again per batch)."""
        out = functional_call(self.layer, params, (hidden,), kwargs, strict=False)
        return out[0] if isinstance(out, tuple) else out

    def trainable(self) -> dict[str, list[nn.Parameter]]:
        """The parameter groups (``clip``, ``smooth``) for the optimizer's two learning rates."""
        return {"clip": [*self.clip_upper.values(), *self.clip_lower.values()], "smooth": list(self.smooth.values())}

    @torch.no_grad()
    def fold_(self) -> dict[str, FoldedLinear]:
        """Write the smoothing into the block (norms and weights, float, unquantized) and return each linear's
        folded weight with its clip factors; the block then computes its float function unchanged."""
        params = self.smoothed()
        modules = dict(self.layer.named_modules())
        for name, value in params.items():
            module_name, attr = name.rsplit(".", 1)
            getattr(modules[module_name], attr).copy_(value)
        folded: dict[str, FoldedLinear] = {}
        for name in LINEARS:
            upper, lower = self.clip_factors(name)
            linear = modules[name]
            folded[name] = FoldedLinear(
                weight=linear.weight.detach().clone(),
                bias=None if linear.bias is None else linear.bias.detach().clone(),
                upper=None if upper is None else upper.detach().clone(),
                lower=None if lower is None else lower.detach().clone())
        self.quantize_activations(False)
        return folded


def _key(name: str) -> str:
    return name.replace(".", "__")   # ParameterDict keys cannot hold dots


def kv_reduce(per_column: Tensor, n_heads: int, n_kv: int, head_dim: int) -> Tensor:
    """o's per-column statistic (n_heads × head_dim) as one per v channel (n_kv × head_dim): the max over
    the query heads that share each key/value head."""
    return per_column.reshape(n_kv, n_heads // n_kv, head_dim).amax(dim=1).reshape(-1)


@torch.no_grad()
def activation_absmax(layer: nn.Module, batches: Iterator[tuple[Tensor, dict[str, Any]]]) -> dict[str, Tensor]:
    """Per-channel max |x| of the activation each smoothing pair scales, over calibration batches."""
    modules = dict(layer.named_modules())
    found: dict[str, Tensor] = {}
    hooks = []
    for pair, site in STAT_SITES.items():
        def record(_module: nn.Module, args: tuple[Any, ...], _pair: str = pair) -> None:
            value = args[0].detach().abs().reshape(-1, args[0].shape[-1]).amax(dim=0).float()
            found[_pair] = value if _pair not in found else torch.maximum(found[_pair], value)
        hooks.append(modules[site].register_forward_pre_hook(record))
    try:
        for hidden, kwargs in batches:
            layer(hidden, **kwargs)
    finally:
        for hook in hooks:
            hook.remove()
    return found


__all__ = ["ATTENTION", "BlockQuantizer", "FoldedLinear", "LINEARS", "MLP", "SMOOTH_PAIRS", "activation_absmax",
           "check_block"]
