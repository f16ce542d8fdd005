"""GPTQ: weight quantization that corrects each column's rounding error in the columns not yet quantized.

For a linear layer with calibration inputs ``X`` the layer-wise objective is ``‖X Wᵀ − X Qᵀ‖²``; its
Hessian ``H = 2 Xᵀ X`` tells how an error in one input column can be compensated by the others. GPTQ
quantizes the columns one at a time (largest ``diag(H)`` first with ``act_order``), and after each moves
the remaining columns by the rounding error times the matching row of the inverse Hessian's Cholesky
factor, processing ``block_size`` columns at once (Frantar et al., 2022).

Groups are *static*: each contiguous group's grid is drawn from the original weights before any update,
so the packed layout (contiguous groups, no per-column group index) is the same as round-to-nearest's and
``QuantLinear`` stores it unchanged, even with ``act_order``.

Why hand-written: the maintained implementations (GPTQModel, llm-compressor, AutoGPTQ) need a CUDA build
or pull a large dependency tree for one ~60-line routine; the tests check the published invariant that
GPTQ's layer error on its calibration inputs is at most round-to-nearest's.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor

from deltaguard.errors import ConfigError
from deltaguard.quant.fake import QuantScheme, affine_grid, fit_group, grouped, qmax_of


class HessianAccumulator:
    """``H = 2/n Σ x xᵀ`` over every token a linear layer sees (a forward pre-hook feeds it)."""

    def __init__(self, in_features: int) -> None:
        self.h = torch.zeros(in_features, in_features, dtype=torch.float64)
        self.n = 0

    def add(self, x: Tensor, mask: Tensor | None = None) -> None:
        rows = x.detach().reshape(-1, x.shape[-1]).double()
        if mask is not None:
            rows = rows[mask.reshape(-1).bool()]
        total = self.n + rows.shape[0]
        if total == 0:
            return
        self.h.mul_(self.n / total).add_(rows.T @ rows, alpha=2.0 / total)
        self.n = total


def gptq_quantize(weight: Tensor, hessian: Tensor, *, bits: int, group_size: int = 0, act_order: bool = True,
                  damp: float = 0.01, block_size: int = 128) -> tuple[Tensor, Tensor, Tensor]:
    """(dequantized weight, step, zero) with step/zero ``[out, n_groups, 1]`` — the grids ``QuantLinear``
    stores; the dequantized weight lies on them exactly."""
    qmax = qmax_of(bits)
    if not 0 <= damp < 1:
        raise ConfigError(f"gptq damp {damp} must be in [0, 1)")
    w = weight.detach().double().clone()
    out_features, in_features = w.shape
    size = fit_group(in_features, group_size)
    groups = grouped(w, group_size)                    # static groups: grids from the original weights
    step, zero = affine_grid(groups.amin(-1, keepdim=True), groups.amax(-1, keepdim=True), bits)
    h = hessian.detach().double().clone()
    dead = torch.diag(h) == 0
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    order = torch.argsort(torch.diag(h), descending=True) if act_order else torch.arange(in_features)
    w, h = w[:, order], h[order][:, order]
    h += damp * torch.mean(torch.diag(h)) * torch.eye(in_features, dtype=h.dtype)
    try:
        upper = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)
    except RuntimeError:
        raise ConfigError("gptq: the calibration Hessian is not positive definite even after damping; "
                          "use more calibration tokens or a larger damp") from None
    column_step = step[:, order // size, 0]            # [out, in] grid of each (permuted) column
    column_zero = zero[:, order // size, 0]
    codes = torch.zeros_like(w)
    for start in range(0, in_features, block_size):
        stop = min(start + block_size, in_features)
        block = w[:, start:stop].clone()
        errors = torch.zeros_like(block)
        inverse = upper[start:stop, start:stop]
        for i in range(stop - start):
            column, s, z = block[:, i], column_step[:, start + i], column_zero[:, start + i]
            code = torch.clamp(torch.round(column / s) + z, 0, qmax)
            codes[:, start + i] = code
            error = (column - (code - z) * s) / inverse[i, i]
            block[:, i:] -= error[:, None] * inverse[i, i:][None, :]
            errors[:, i] = error
        w[:, stop:] -= errors @ upper[start:stop, stop:]
    codes = codes[:, torch.argsort(order)]
    # read the codes back in float32 exactly as QuantLinear does, so the stored layer reproduces this weight
    step32, zero32 = step.float(), zero.float()
    values = (grouped(codes.float(), group_size) - zero32) * step32
    return values.reshape(out_features, in_features).to(weight.dtype), step32, zero32


def rewrite_sequentially(model: Any, tokenizer: Any, prompts: Any,
                         rewrite: Callable[[str, Any, Tensor], Any], *, batch_size: int = 8, max_tokens: int = 128,
                         seed: int = 0, progress: bool = True, label: str = "rewrite") -> dict[str, Any]:
    """Rewrite every decoder linear block by block from its calibration Hessian (GPTQ, SparseGPT, Wanda).

    Each block's Hessians come from the outputs of the blocks already rewritten, as in the papers;
    ``rewrite(name, linear, hessian)`` returns the module that replaces the linear (or None to keep it,
    changed in place).
    """
    import time

    from deltaguard.modules import replace_module
    from deltaguard.progress import progress_bar
    from deltaguard.quant.block import LINEARS, check_block
    from deltaguard.quant.calibrate import BlockwiseConfig, capture_block_inputs, observe_inputs, run_block
    from deltaguard.quant.probes import decoder_layers

    started = time.perf_counter()
    layers = decoder_layers(model)
    for layer in layers:
        check_block(layer)
    batches = capture_block_inputs(model, tokenizer, prompts, BlockwiseConfig(batch_size=batch_size, max_tokens=max_tokens,
                                                                         seed=seed))
    inputs = [b.hidden for b in batches]
    with progress_bar(label, len(layers), enabled=progress) as bar:
        for layer in layers:
            modules = dict(layer.named_modules())
            hessians = {name: HessianAccumulator(modules[name].in_features) for name in LINEARS}
            observe_inputs(layer, batches, inputs, {name: hessians[name].add for name in LINEARS})
            for name in LINEARS:
                new = rewrite(name, modules[name], hessians[name].h)
                if new is not None:
                    replace_module(layer, name, new)
            with torch.no_grad():
                inputs = [run_block(layer, b, h) for b, h in zip(batches, inputs)]
            bar.advance()
    return {"n_prompts": sum(int(b.real.shape[0]) for b in batches),
            "n_tokens": int(sum(b.real.sum() for b in batches)), "seconds": round(time.perf_counter() - started, 1)}


def quantize_gptq(model: Any, tokenizer: Any, prompts: Any, *, plan: QuantScheme, act_order: bool = True,
                  damp: float = 0.01, batch_size: int = 8, max_tokens: int = 128, seed: int = 0,
                  progress: bool = True, label: str = "gptq") -> dict[str, Any]:
    """GPTQ every decoder linear of ``model`` in place (see ``rewrite_sequentially``)."""
    from deltaguard.quant.block import LINEARS
    from deltaguard.quant.linear import QuantLinear
    from deltaguard.quant.probes import decoder_layers

    for layer in decoder_layers(model):   # a group size that does not divide: fail before any work
        for name, module in layer.named_modules():
            if name in LINEARS:
                grouped(module.weight, plan.group_size)

    def rewrite(_name: str, linear: Any, hessian: Tensor) -> Any:
        weight, step, zero = gptq_quantize(linear.weight, hessian, bits=plan.w_bits, group_size=plan.group_size,
                                           act_order=act_order, damp=damp)
        return QuantLinear.from_grid(weight, step, zero, linear.bias, w_bits=plan.w_bits, a_bits=plan.a_bits,
                                     group_size=plan.group_size)

    record = rewrite_sequentially(model, tokenizer, prompts, rewrite, batch_size=batch_size, max_tokens=max_tokens,
                                  seed=seed, progress=progress, label=label)
    return {"scheme": plan.name, "act_order": act_order, "damp": damp, "blocks": [], **record}


__all__ = ["HessianAccumulator", "gptq_quantize", "quantize_gptq", "rewrite_sequentially"]
