"""INT4 weight / INT8 activation quantisation-aware training and the packed INT4 model it converts to.

The recipe is Llama Guard 3-1B-INT4's (arXiv 2411.17713): every linear layer and the input embedding
get INT4 *symmetric* weights in groups of ``group_size`` consecutive input columns; the inputs of the
linear layers get INT8 *asymmetric dynamic per-token* quantisation, simulated ("fake-quantised") during
training; norms, attention math and residuals stay in float.

Why this module and not torchao: torchao is not a dependency; in a 10-step QAT trial on this project's
CPU (prepare → train → convert, SmolLM2-135M) it peaked at 5–7 GB resident memory, over the project's
4 GB goal; and its converted weights are tensor subclasses that plain safetensors files cannot hold. Here the QAT wrappers add no
persistent memory (they reuse the float ``Parameter`` objects) and the converted model's state is plain
uint8 / float tensors.

Conventions, all of them relied on by the tests:

* **INT4 weights.** ``scale = max|w| / 7`` per group, rounded to float16 (kept no lower than float16's
  smallest normal, 2^-14), ``q = clamp(round(w / scale), -8, 7)`` with round-half-to-even; ``-8`` is
  storable but never produced, so the grid is symmetric and the error of every element is at most
  ``scale / 2``. An all-zero group gets codes 0 (no NaN). Scales are float16 because at groups of 32 a
  float32 scale costs a whole bit per weight (the guard's size goal is 1/5 of the teacher in bf16); the
  rounding moves a scale by at most 2^-11 of itself, and QAT trains through the same rounded scales, so
  the stored model is exactly the trained one.
* **INT8 activations.** Per token (last dim): the range ``[min(x, 0), max(x, 0)]`` is cut in 255 steps,
  ``step = (hi - lo) / 255``, with an integer zero point in ``[-128, 127]`` so 0 is exact; an all-zero
  row gets ``step = 1``. Error per element ≤ ``step / 2`` (up to float rounding).
* **Straight-through gradients.** ``_StraightThrough`` returns the fake-quantised value ``dq`` itself and
  passes the gradient to ``w`` unchanged. Unlike ``w + (dq - w).detach()``, which can land one ulp away
  from ``dq``, the forward value is exactly ``dq``, so a converted ``Int4Linear`` reproduces its
  ``QATLinear`` bit for bit; and unlike ``dq.detach() + (w - w.detach())`` it costs no extra passes over
  the tensor (in QAT the trained blocks' activations are a step's largest tensors).
* **Packing.** Two codes per byte along the last dim, the even column in the low nibble; an odd column
  count gets a zero high nibble in its last byte, which ``unpack_int4(packed, n_cols)`` drops.

Tied embeddings: ``QATEmbedding`` keeps the embedding's own ``Parameter``, so ``lm_head.weight is
embed_tokens.weight`` still holds. The head (skipped by default) reads that raw float parameter, not the
fake-quantised embedding; after ``convert_qat`` it keeps a float copy of it (Llama Guard shrinks the head
by output pruning instead). Convert after choosing the model's dtype: a later ``.to(dtype)`` would also
cast the float32 scales.
"""

from __future__ import annotations

import weakref
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from deltaguard.errors import ConfigError, FormatError
from deltaguard.modules import get_module, iter_targets, matches, replace_module
from deltaguard.quant.linear import pack_nibbles, unpack_nibbles

INT4_MIN, INT4_MAX = -8, 7
INT8_MIN, INT8_MAX = -128, 127
SCALE_DTYPE = torch.float16
_SCALE_MIN = 2.0 ** -14                        # float16's smallest normal: no subnormal, imprecise scales
_SCALE_MAX = float(torch.finfo(SCALE_DTYPE).max)


def check_group_size(group_size: int, dim: int, where: str = "") -> None:
    """Raise a one-line ConfigError unless ``group_size`` divides ``dim`` (groups never straddle rows)."""
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1:
        raise ConfigError(f"group size {group_size!r} must be a positive integer")
    if dim % group_size:
        divisors = [d for d in range(1, dim + 1) if dim % d == 0]
        nice = [d for d in divisors if d % 32 == 0] or divisors
        raise ConfigError(f"group size {group_size} does not divide the input dim {dim}{where}; "
                          f"use one of {', '.join(map(str, nice[-6:]))}")


def _int4_grid(w: Tensor, group_size: int) -> tuple[Tensor, Tensor]:
    """float32 codes ``[..., in]`` and scales ``[..., in // group_size]`` (float32 holding float16 values);
    no checks (the hot path)."""
    groups = w.float().unflatten(-1, (-1, group_size))
    scales = (groups.abs().amax(dim=-1) / INT4_MAX).clamp_(_SCALE_MIN, _SCALE_MAX).to(SCALE_DTYPE).float()
    codes = torch.round(groups / scales.unsqueeze(-1)).clamp_(INT4_MIN, INT4_MAX)
    return codes.flatten(-2), scales


def _dequant(codes: Tensor, scales: Tensor, group_size: int) -> Tensor:
    return (codes.float().unflatten(-1, (-1, group_size)) * scales.float().unsqueeze(-1)).flatten(-2)


class _StraightThrough(torch.autograd.Function):
    """``value`` forward (exactly), the identity gradient to ``source``."""

    @staticmethod
    def forward(ctx: Any, source: Tensor, value: Tensor) -> Tensor:
        return value.view_as(value)      # a new tensor object: autograd must not see an input returned as is

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        return grad, None


def quantize_int4(weight: Tensor, group_size: int) -> tuple[Tensor, Tensor]:
    """Weight ``[out, in]`` → (int8 codes in [-8, 7], scales ``[out, in // group_size]`` as float32 values
    that float16 holds exactly)."""
    if weight.dim() != 2:
        raise ConfigError(f"quantize_int4 needs a 2-D weight [out, in], got shape {tuple(weight.shape)}")
    check_group_size(group_size, weight.shape[1])
    weight = weight.detach()
    if not bool(torch.isfinite(weight).all()):
        raise FormatError("the weight holds NaN or infinite values; INT4 quantisation needs finite weights")
    if weight.numel() and float(weight.abs().max()) / INT4_MAX > _SCALE_MAX:
        raise ConfigError(f"a weight of magnitude {float(weight.abs().max()):.3g} needs an INT4 scale beyond "
                          f"float16's range ({_SCALE_MAX:.0f})")
    codes, scales = _int4_grid(weight, group_size)
    return codes.to(torch.int8), scales


def dequantize_int4(q: Tensor, scales: Tensor, group_size: int) -> Tensor:
    """Codes ``[..., in]`` and scales ``[..., in // group_size]`` → float32 values."""
    if q.shape[-1] != scales.shape[-1] * group_size:
        raise FormatError(f"{q.shape[-1]} columns do not match {scales.shape[-1]} scales of group size {group_size}")
    return _dequant(q, scales, group_size)


def pack_int4(q: Tensor) -> Tensor:
    """Integer codes in [-8, 7] ``[..., n]`` → uint8 ``[..., ceil(n / 2)]``, even column in the low nibble.

    Nibbles (not the delta formats' bit planes) because that is the layout INT4 matmul kernels read.
    """
    if q.is_floating_point() or q.is_complex() or q.dtype == torch.bool:
        raise ConfigError(f"pack_int4 needs an integer tensor, got {q.dtype}")
    if q.numel() and (int(q.min()) < INT4_MIN or int(q.max()) > INT4_MAX):
        raise ConfigError(f"pack_int4 needs values in [{INT4_MIN}, {INT4_MAX}], got [{int(q.min())}, {int(q.max())}]")
    return pack_nibbles((q.to(torch.int16) & 0xF).to(torch.uint8))   # two's-complement nibbles


def unpack_int4(packed: Tensor, n_cols: int) -> Tensor:
    """Inverse of ``pack_int4`` → int8 ``[..., n_cols]``."""
    if packed.dtype != torch.uint8 or packed.shape[-1] != (n_cols + 1) // 2:
        raise FormatError(f"packed INT4 data {packed.dtype} {tuple(packed.shape)} does not hold {n_cols} columns")
    nibbles = unpack_nibbles(packed, n_cols).to(torch.int16)
    return ((nibbles ^ 8) - 8).to(torch.int8)


def fake_quant_int4(weight: Tensor, group_size: int) -> Tensor:
    """INT4 round trip of ``weight`` along its last dim, in its dtype, with a straight-through gradient."""
    codes, scales = _int4_grid(weight.detach(), group_size)
    return _StraightThrough.apply(weight, _dequant(codes, scales, group_size).to(weight.dtype))


def int8_per_token_params(x: Tensor) -> tuple[Tensor, Tensor]:
    """(step, integer zero point) per row of ``x`` (float32, ``[..., 1]``): the asymmetric INT8 grid."""
    xf = x.detach().float()
    lo = xf.amin(dim=-1, keepdim=True).clamp(max=0)
    hi = xf.amax(dim=-1, keepdim=True).clamp(min=0)
    step = (hi - lo) / (INT8_MAX - INT8_MIN)
    step = torch.where(step > 0, step, torch.ones_like(step))
    zero = torch.round(INT8_MIN - lo / step).clamp_(INT8_MIN, INT8_MAX)
    return step, zero


def _int8_grid(x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(INT8 codes of ``x`` held as float32, step, zero point): the one place both the round trip and the integer
    matmul path quantise, so their grids cannot drift apart. ``x`` is cast to float32 once."""
    xf = x.detach().float()
    step, zero = int8_per_token_params(xf)
    return (xf / step).round_().add_(zero).clamp_(INT8_MIN, INT8_MAX), step, zero


def _int8_round_trip(x: Tensor) -> Tensor:
    """The per-token INT8 round trip of ``x`` (no autograd), in place on one float32 buffer."""
    codes, step, zero = _int8_grid(x)
    return codes.sub_(zero).mul_(step).to(x.dtype)


def fake_quant_int8_per_token(x: Tensor) -> Tensor:
    """Dynamic asymmetric INT8 round trip per token (last dim), straight-through gradient, in ``x``'s dtype.

    The round trip runs in place on one buffer (it was ~30% of a scoring pass when written out of place).
    """
    values = _int8_round_trip(x)
    return _StraightThrough.apply(x, values) if torch.is_grad_enabled() and x.requires_grad else values


_memos: dict[str, tuple[weakref.ref[Tensor], int, Any]] = {}


def _once_per_input(kind: str, x: Tensor, compute: Any) -> Any:
    """``compute(x)``, reused while the last call of this ``kind`` saw this very tensor, unchanged since.

    Why: q/k/v read the same normed hidden states, and so do gate/up; quantising each tensor once instead of
    once per layer saves 3 of 7 activation quantisations a block (~12% of a scoring pass in float). The
    one-slot memo holds a weak reference to the input and its version counter, so it can only ever return
    the result for this very tensor.
    """
    memo = _memos.get(kind)
    if memo is not None and memo[0]() is x and memo[1] == x._version:
        return memo[2]
    out = compute(x)
    _memos[kind] = (weakref.ref(x), x._version, out)
    return out


def quantized_input(x: Tensor) -> Tensor:
    """``fake_quant_int8_per_token(x)``, computed once per input tensor when scoring (training, with autograd
    on ``x``, never uses the memo)."""
    if torch.is_grad_enabled() and x.requires_grad:
        return fake_quant_int8_per_token(x)
    return _once_per_input("round_trip", x, fake_quant_int8_per_token)


# --- INT8 integer matmuls ----------------------------------------------------------------------------------------
#
# Why: the guard's linear layers take INT8 activations by construction (QAT), yet the float paths above multiply
# them in fp32 / bf16. On CPUs with int8 dot-product units (AVX512-VNNI, AMX) an int8 x int8 -> int32 matmul
# (``torch._int_mm``, oneDNN) is about twice as fast as bf16. INT4 group-32 weights cannot feed it directly: each
# group has its own scale, so a row is not an integer multiple of one scale. The weights are therefore re-rounded
# to per-output-channel symmetric INT8 once, at load (``int8_channel_weight``); that rounding is the only
# approximation of this path, at most half an INT8 step of the row's largest weight, and ``guard check --stages
# int4-int8`` measures what it does to the verdicts. torchao's W8A8 / 8da4w CPU kernels are not in its PyPI wheel
# (which ships CUDA kernels only), and torch's own ``_dyn_quant_matmul_4bit`` runs scalar reference loops on x86.

INT8_WEIGHT_MAX = 127                             # symmetric: -127..127, so negating a row stays in range


def int8_channel_weight(weight: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """A float weight ``[out, in]`` → (INT8 codes transposed ``[in, out]``, float32 scales ``[out]``, int32 code
    sums ``[out]``): ``weight ≈ codes.T * scales[:, None]``, within ``scales / 2`` per element.

    The code sums let ``int8_linear`` remove the activations' zero points with one outer product.
    """
    w = weight.detach().float()
    if w.dim() != 2:
        raise ConfigError(f"int8_channel_weight needs a 2-D weight [out, in], got shape {tuple(w.shape)}")
    if not bool(torch.isfinite(w).all()):
        raise FormatError("the weight holds NaN or infinite values; INT8 quantisation needs finite weights")
    scales = w.abs().amax(dim=1) / INT8_WEIGHT_MAX
    scales = torch.where(scales > 0, scales, torch.ones_like(scales))     # an all-zero row: codes 0, no NaN
    codes = torch.round(w / scales[:, None]).clamp_(-INT8_WEIGHT_MAX, INT8_WEIGHT_MAX).to(torch.int8)
    return codes.t().contiguous(), scales, codes.sum(dim=1, dtype=torch.int32)


def int8_activation_codes(x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``x`` ``[..., in]`` → (INT8 codes ``[rows, in]``, float32 steps ``[rows, 1]``, int32 zero points ``[rows, 1]``)
    on exactly the grid of ``fake_quant_int8_per_token``: ``(codes - zero) * step`` is its round trip."""
    codes, step, zero = _int8_grid(x)
    features = codes.shape[-1]
    return (codes.to(torch.int8).reshape(-1, features), step.reshape(-1, 1),
            zero.reshape(-1, 1).to(torch.int32))


def int8_linear(x: Tensor, codes_t: Tensor, scales: Tensor, code_sums: Tensor, bias: Tensor | None) -> Tensor:
    """``F.linear(fake_quant_int8_per_token(x), codes_t.T * scales[:, None], bias)`` with one integer matmul.

    ``Σ_k (xq - z) w = xq @ w - z * Σ_k w`` is exact in int32 (|terms| ≤ 255 * 127 * in < 2^31 for in < 66,000),
    so the result differs from the float reference only by the rounding of the int32 → float32 conversion and the
    two scalings, and by the reference's own summation error. Returns ``x``'s dtype.
    """
    if x.shape[-1] != codes_t.shape[0]:
        raise ConfigError(f"int8_linear: input has {x.shape[-1]} features, the weight expects {codes_t.shape[0]}")
    xq, step, zero = _once_per_input("codes", x, int8_activation_codes)
    if xq.shape[0] == 0:
        return x.new_zeros(*x.shape[:-1], codes_t.shape[1])
    acc = torch._int_mm(xq, codes_t)                       # [rows, out] int32
    acc.sub_(zero * code_sums)                             # remove the zero points, still exact
    out = acc.float().mul_(step).mul_(scales)
    if bias is not None:
        out.add_(bias.float())
    return out.to(x.dtype).reshape(*x.shape[:-1], codes_t.shape[1])


class QATLinear(nn.Module):
    """A linear layer trained through INT4 weights (and INT8 inputs); owns the original Parameters."""

    def __init__(self, linear: nn.Linear, group_size: int, act_int8: bool = True) -> None:
        super().__init__()
        check_group_size(group_size, linear.in_features)
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.group_size, self.act_int8 = group_size, act_int8
        self.weight = linear.weight
        self.bias = linear.bias

    def forward(self, x: Tensor) -> Tensor:
        x = fake_quant_int8_per_token(x) if self.act_int8 else x
        return F.linear(x, fake_quant_int4(self.weight, self.group_size), self.bias)

    def extra_repr(self) -> str:
        return f"{self.in_features}, {self.out_features}, group_size={self.group_size}, act_int8={self.act_int8}"


class QATEmbedding(nn.Module):
    """An embedding trained through INT4 rows (groups along the embedding dim); owns the original Parameter.

    Groups never cross rows, so only the looked-up rows are fake-quantised: same values as quantising the
    whole table, without a vocab-sized temporary every step.
    """

    def __init__(self, embedding: nn.Embedding, group_size: int) -> None:
        super().__init__()
        if embedding.max_norm is not None or embedding.sparse:
            raise ConfigError("QATEmbedding supports neither max_norm nor sparse embeddings")
        check_group_size(group_size, embedding.embedding_dim)
        self.num_embeddings, self.embedding_dim = embedding.num_embeddings, embedding.embedding_dim
        self.padding_idx, self.group_size = embedding.padding_idx, group_size
        self.weight = embedding.weight

    def forward(self, ids: Tensor) -> Tensor:
        return fake_quant_int4(F.embedding(ids, self.weight, self.padding_idx), self.group_size)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, group_size={self.group_size}"


def _input_embedding_name(model: nn.Module) -> str | None:
    getter = getattr(model, "get_input_embeddings", None)
    embedding = getter() if getter is not None else None
    return next((name for name, module in model.named_modules() if module is embedding and name), None)


def prepare_qat(model: nn.Module, *, group_size: int, quantize_embedding: bool = True, act_int8: bool = True,
                skip: tuple[str, ...] = ("lm_head",)) -> list[str]:
    """Swap every ``nn.Linear`` (but ``skip`` globs) and the input embedding for QAT wrappers, in place.

    Every group size is checked before anything is swapped, so a bad size leaves the model untouched.
    Returns the swapped module names in model order.
    """
    linears = list(iter_targets(model, ("*",), skip, kind=nn.Linear))
    for name, linear in linears:
        check_group_size(group_size, linear.in_features, f" of {name}")
    plan: list[tuple[str, nn.Module]] = [(name, QATLinear(linear, group_size, act_int8)) for name, linear in linears]
    embed_name = _input_embedding_name(model) if quantize_embedding else None
    if embed_name is not None and matches(embed_name, ("*",), skip):
        embedding = get_module(model, embed_name)
        if not isinstance(embedding, nn.Embedding):
            raise ConfigError(f"the input embedding {embed_name} is a {type(embedding).__name__}, not nn.Embedding")
        check_group_size(group_size, embedding.embedding_dim, f" of {embed_name}")
        plan.append((embed_name, QATEmbedding(embedding, group_size)))
    for name, wrapper in plan:
        replace_module(model, name, wrapper)
    order = {name: i for i, (name, _) in enumerate(model.named_modules())}
    return sorted((name for name, _ in plan), key=order.__getitem__)


def _stored_scales(scales: Tensor) -> Tensor:
    """float16 scales stay float16 (this module's own); any other float (a format-1 guard's float32) becomes
    float32, so no stored value is rounded on load."""
    if not scales.is_floating_point():
        raise FormatError(f"INT4 scales must be floating point, got {scales.dtype}")
    return scales.contiguous() if scales.dtype == SCALE_DTYPE else scales.float().contiguous()


def _check_packed(qweight: Tensor, scales: Tensor, n_cols: int, group_size: int, what: str) -> None:
    """Refuse packed codes and scales that do not describe ``[rows, n_cols]`` in groups of ``group_size``."""
    check_group_size(group_size, n_cols)
    rows = qweight.shape[0]
    expected = (rows, (n_cols + 1) // 2), (rows, n_cols // group_size)
    if (tuple(qweight.shape), tuple(scales.shape)) != expected:
        raise FormatError(f"INT4 {what} {tuple(qweight.shape)} / scales {tuple(scales.shape)} do not fit "
                          f"[{rows}, {n_cols}] in groups of {group_size}")


class Int4Linear(nn.Module):
    """Inference linear layer over packed INT4 weights; matches its ``QATLinear`` bit for bit.

    The float weight is dequantised on the first forward and cached (not saved: ``free_cache`` drops it,
    ``cache=False`` never keeps it), trading memory for per-call unpacking. With ``compute = "int8"``
    (``set_int8_matmuls``) it multiplies INT8 activation codes by a per-channel INT8 form of the weight
    instead (``int8_linear``), cached the same way.
    """

    def __init__(self, qweight: Tensor, scales: Tensor, bias: Tensor | None, *, in_features: int, group_size: int,
                 act_int8: bool = True, cache: bool = True) -> None:
        super().__init__()
        _check_packed(qweight, scales, in_features, group_size, "weight")
        out_features = qweight.shape[0]
        self.in_features, self.out_features = in_features, out_features
        self.group_size, self.act_int8, self.cache = group_size, act_int8, cache
        self.compute = "float"
        self.register_buffer("qweight", qweight.to(torch.uint8).contiguous())
        self.register_buffer("scales", _stored_scales(scales))
        self.register_buffer("bias", None if bias is None else bias.detach().clone())
        self._weight: Tensor | None = None
        self._int8: tuple[Tensor, Tensor, Tensor] | None = None

    @classmethod
    def from_linear(cls, linear: nn.Module, group_size: int, act_int8: bool = True) -> Int4Linear:
        """From an ``nn.Linear`` or ``QATLinear`` (its float weight is quantised, not kept)."""
        q, scales = quantize_int4(linear.weight, group_size)
        layer = cls(pack_int4(q), scales.to(SCALE_DTYPE), linear.bias, in_features=linear.in_features, group_size=group_size,
                    act_int8=act_int8)
        return layer.to(linear.weight.device)

    def dequantized_weight(self, dtype: torch.dtype = torch.float32) -> Tensor:
        """The float weight ``[out, in]`` the packed codes stand for."""
        return _dequant(unpack_int4(self.qweight, self.in_features), self.scales, self.group_size).to(dtype)

    def free_cache(self) -> None:
        self._weight = None
        self._int8 = None

    def _load_from_state_dict(self, *args: Any, **kwargs: Any) -> None:
        self.free_cache()
        super()._load_from_state_dict(*args, **kwargs)

    def forward(self, x: Tensor) -> Tensor:
        if self.compute == "int8":
            packed = self._int8
            if packed is None or packed[0].device != x.device:
                packed = int8_channel_weight(self.dequantized_weight())
                self._int8 = packed if self.cache else None
            return int8_linear(x, *packed, self.bias)
        weight = self._weight
        if weight is None or weight.device != x.device or weight.dtype != x.dtype:
            weight = self.dequantized_weight(x.dtype)
            self._weight = weight if self.cache else None
        x = quantized_input(x) if self.act_int8 else x
        return F.linear(x, weight, self.bias)

    def extra_repr(self) -> str:
        extra = "" if self.compute == "float" else f", compute={self.compute}"
        return f"{self.in_features}, {self.out_features}, group_size={self.group_size}, act_int8={self.act_int8}{extra}"


class Int4Embedding(nn.Module):
    """Inference embedding over packed INT4 rows: unpacks only the looked-up rows (no float table)."""

    def __init__(self, qweight: Tensor, scales: Tensor, *, embedding_dim: int, group_size: int,
                 dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        _check_packed(qweight, scales, embedding_dim, group_size, "embedding")
        self.num_embeddings, self.embedding_dim = qweight.shape[0], embedding_dim
        self.group_size, self.dtype = group_size, dtype
        self.register_buffer("qweight", qweight.to(torch.uint8).contiguous())
        self.register_buffer("scales", _stored_scales(scales))

    @classmethod
    def from_embedding(cls, embedding: nn.Module, group_size: int) -> Int4Embedding:
        """From an ``nn.Embedding`` or ``QATEmbedding``."""
        q, scales = quantize_int4(embedding.weight, group_size)
        return cls(pack_int4(q), scales.to(SCALE_DTYPE), embedding_dim=embedding.embedding_dim, group_size=group_size,
                   dtype=embedding.weight.dtype).to(embedding.weight.device)

    def forward(self, ids: Tensor) -> Tensor:
        codes = unpack_int4(self.qweight[ids], self.embedding_dim)
        return _dequant(codes, self.scales[ids], self.group_size).to(self.dtype)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, group_size={self.group_size}"


def set_compute_dtype(model: nn.Module, dtype: torch.dtype) -> nn.Module:
    """Run a converted model's arithmetic in ``dtype`` (in place): the embedding's output, the INT4 layers'
    dequantised weights and biases, and every float parameter (norms, the verdict head) follow; the packed
    codes and their float16 scales stay exactly as stored, and float32 buffers such as rotary frequencies
    stay float32 (the model casts what it derives from them).

    Why: on CPUs with fast bf16 matrix units the guard judges about twice as fast in bfloat16 as in float32.
    Its thresholds were chosen on float32 scores, so a verdict near one can flip; ``guard check --stages
    int4,int4-bf16`` measures what that costs.
    """
    if not dtype.is_floating_point:
        raise ConfigError(f"compute dtype {dtype} is not a floating-point type")
    for module in model.modules():
        if isinstance(module, Int4Embedding):
            module.dtype = dtype
        elif isinstance(module, Int4Linear):
            module.free_cache()
            if module.bias is not None:
                module.bias = module.bias.to(dtype)
    for param in model.parameters():
        if param.is_floating_point():
            param.data = param.data.to(dtype)
    return model


def set_int8_matmuls(model: nn.Module, enabled: bool = True) -> int:
    """Switch every ``Int4Linear`` of a converted model to INT8 integer matmuls (or back to float), in place;
    returns how many layers switched.

    INT8 matmuls need INT8 activations (a guard trained with ``act_int8``) and a CPU (``torch._int_mm`` on
    CUDA has shape limits the guard's layers do not meet; there the guard computes in bf16 instead).
    """
    layers = [m for m in model.modules() if isinstance(m, Int4Linear)]
    if enabled:
        if any(not m.act_int8 for m in layers):
            raise ConfigError("INT8 matmuls need INT8 activations; this model was trained without them (act_int8 off)")
        if any(m.qweight.device.type != "cpu" for m in layers):
            raise ConfigError("INT8 matmuls run on the CPU only; on a GPU use float32 or bfloat16")
    for layer in layers:
        layer.compute = "int8" if enabled else "float"
        layer.free_cache()
    return len(layers)


def arithmetic_of(model: nn.Module) -> str:
    """How a converted model computes, in ``load_guard``'s terms: ``int8`` when its linear layers run INT8 matmuls,
    else its parameters' dtype (``float32``, ``bfloat16``)."""
    if any(isinstance(m, Int4Linear) and m.compute == "int8" for m in model.modules()):
        return "int8"
    return str(next(model.parameters()).dtype).removeprefix("torch.")


def convert_qat(model: nn.Module) -> dict[str, int]:
    """Replace every QAT wrapper by its packed INT4 module, in place; returns ``{"linear": n, "embedding": m}``."""
    counts = {"linear": 0, "embedding": 0}
    for name, module in list(model.named_modules()):
        if isinstance(module, QATLinear):
            replace_module(model, name, Int4Linear.from_linear(module, module.group_size, module.act_int8))
            counts["linear"] += 1
        elif isinstance(module, QATEmbedding):
            replace_module(model, name, Int4Embedding.from_embedding(module, module.group_size))
            counts["embedding"] += 1
    return counts


def packed_state(model: nn.Module) -> dict[str, Tensor]:
    """Flat name → tensor of a converted model (``*.qweight``, ``*.scales`` and every persistent float
    tensor), contiguous and without shared storage, ready for ``safetensors.torch.save_file``."""
    tensors: dict[str, Tensor] = {}
    seen: set[int] = set()
    for name, tensor in model.state_dict().items():
        tensor = tensor.detach()
        shared = tensor.untyped_storage().data_ptr() in seen
        seen.add(tensor.untyped_storage().data_ptr())
        tensors[name] = tensor.clone() if shared or not tensor.is_contiguous() else tensor
    return tensors


def load_packed_state(model_skeleton: nn.Module, tensors: dict[str, Tensor], group_size: int,
                      act_int8: bool = True) -> nn.Module:
    """Rebuild a ``packed_state`` into a freshly built float model of the same architecture, in place.

    Every ``nn.Linear`` / ``nn.Embedding`` whose ``<name>.qweight`` is present becomes an Int4 module; the
    rest is loaded strictly (a missing or unexpected tensor is a FormatError).
    """
    for name, module in list(model_skeleton.named_modules()):
        if not name or f"{name}.qweight" not in tensors:
            continue
        qweight, scales = tensors[f"{name}.qweight"], tensors.get(f"{name}.scales")
        if scales is None:
            raise FormatError(f"the packed state has {name}.qweight but no {name}.scales")
        device = next(module.parameters()).device
        if isinstance(module, nn.Linear):
            new: nn.Module = Int4Linear(qweight, scales, tensors.get(f"{name}.bias"), in_features=module.in_features,
                                        group_size=group_size, act_int8=act_int8)
        elif isinstance(module, nn.Embedding):
            new = Int4Embedding(qweight, scales, embedding_dim=module.embedding_dim, group_size=group_size,
                                dtype=module.weight.dtype)
        else:
            raise FormatError(f"{name} is a {type(module).__name__}; packed INT4 weights fit nn.Linear or nn.Embedding")
        replace_module(model_skeleton, name, new.to(device))
    try:
        missing, unexpected = model_skeleton.load_state_dict(tensors, strict=False)
    except RuntimeError as error:  # a shape mismatch
        raise FormatError(f"the packed state does not fit the model: {str(error).splitlines()[-1].strip()}") from None
    if missing or unexpected:
        raise FormatError(f"the packed state does not fit the model: missing {sorted(missing)[:5]}, "
                          f"unexpected {sorted(unexpected)[:5]}")
    return model_skeleton


def quantized_size_bytes(model: nn.Module) -> int:
    """Bytes of the packed model in memory: packed codes, scales and the persistent float rest, a storage
    shared by several tensors (a tied head) counted once."""
    storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in model.state_dict().values()}
    return sum(storages.values())


__all__ = [
    "Int4Embedding", "Int4Linear", "QATEmbedding", "QATLinear", "SCALE_DTYPE", "arithmetic_of", "check_group_size",
    "convert_qat", "dequantize_int4", "fake_quant_int4", "fake_quant_int8_per_token", "int8_activation_codes", "int8_channel_weight",
    "int8_linear", "int8_per_token_params", "load_packed_state", "pack_int4", "packed_state", "prepare_qat",
    "quantize_int4", "quantized_input", "quantized_size_bytes", "set_compute_dtype", "set_int8_matmuls", "unpack_int4",
]
