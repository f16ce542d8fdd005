"""AWQ: activation-aware weight quantization by per-channel scaling searched on calibration inputs.

A weight column multiplied by ``s`` (and its input divided by ``s``) computes the same function, but its
rounding error shrinks relative to the signal when ``s`` > 1. AWQ (Lin et al., 2024) scales the input
channels that carry large activations: ``s = mean|x|^α`` (normalised), with ``α`` chosen on a grid to
minimise the block's output error after quantization. The scales are the same equivalent transforms
OmniQuant learns (``quant.block``: norm → q/k/v, norm → gate/up, v → o, up → down), searched per pair
instead of trained, then folded into the norms and weights before the weights are rounded.

Differences from the reference, said here so no one mistakes them: the search is per pair over the block
output on the first ``search_batches`` calibration batches (the reference measures each pair's own
consumers); AWQ's optional clipping-range search is not run.
"""

from __future__ import annotations

import time
from typing import Any

import torch

from deltaguard.progress import progress_bar
from deltaguard.quant.block import SMOOTH_PAIRS, BlockQuantizer, check_block
from deltaguard.quant.fake import QuantScheme, grouped


@torch.no_grad()
def _mean_abs_inputs(layer: Any, batches: list[Any], inputs: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    from deltaguard.quant.block import _STAT_SITE
    from deltaguard.quant.calibrate import _run

    modules = dict(layer.named_modules())
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}
    hooks = []
    current: dict[str, torch.Tensor] = {}
    for pair, site in _STAT_SITE.items():
        def record(_module: Any, args: tuple[Any, ...], _pair: str = pair) -> None:
            rows = args[0].reshape(-1, args[0].shape[-1])[current["mask"].reshape(-1).bool()].abs().float()
            sums[_pair] = sums.get(_pair, 0) + rows.sum(0)
            counts[_pair] = counts.get(_pair, 0) + rows.shape[0]
        hooks.append(modules[site].register_forward_pre_hook(record))
    try:
        for batch, hidden in zip(batches, inputs):
            current["mask"] = batch.real
            _run(layer, batch, hidden)
    finally:
        for hook in hooks:
            hook.remove()
    return {pair: sums[pair] / max(counts[pair], 1) for pair in sums}


def quantize_awq(model: Any, tokenizer: Any, prompts: Any, *, plan: QuantScheme, grid: int = 20,
                 search_batches: int = 4, batch_size: int = 8, max_tokens: int = 128, seed: int = 0,
                 progress: bool = True, label: str = "awq") -> dict[str, Any]:
    """AWQ every decoder block of ``model`` in place; returns the chosen ``α`` per block and pair."""
    from deltaguard.quant.block import _kv_reduce
    from deltaguard.quant.calibrate import BlockwiseConfig, _capture_inputs, _replace_linears, _run
    from deltaguard.quant.probes import decoder_layers

    started = time.perf_counter()
    layers = decoder_layers(model)
    for layer in layers:
        check_block(layer)
        for name, module in layer.named_modules():
            if name in ("self_attn.q_proj", "self_attn.o_proj", "mlp.gate_proj", "mlp.down_proj"):
                grouped(module.weight, plan.group_size)
    batches = _capture_inputs(model, tokenizer, prompts, BlockwiseConfig(batch_size=batch_size, max_tokens=max_tokens,
                                                                         seed=seed))
    inputs = [b.hidden for b in batches]
    alphas = [i / grid for i in range(grid)]
    chosen: list[dict[str, float]] = []
    with progress_bar(label, len(layers), enabled=progress) as bar, torch.no_grad():
        for layer in layers:
            targets = [_run(layer, b, h) for b, h in zip(batches[:search_batches], inputs[:search_batches])]
            means = _mean_abs_inputs(layer, batches, inputs)
            quantizer = BlockQuantizer(layer, plan, act_absmax={p: torch.ones_like(v) for p, v in means.items()},
                                       smooth=True, clip=False)
            for scale in quantizer.smooth.values():
                scale.fill_(1.0)
            picks: dict[str, float] = {}
            for pair in SMOOTH_PAIRS:
                mean = means[pair]
                if pair == "vo":
                    mean = _kv_reduce(mean, quantizer.n_heads, quantizer.n_kv, quantizer.head_dim)
                best = (float("inf"), 0.0)
                for alpha in alphas:
                    s = mean.clamp(min=1e-4).pow(alpha)
                    s = s / (s.max() * s.min()).sqrt()
                    quantizer.smooth[pair].copy_(s)
                    error = sum(float((quantizer(h, **b.kwargs) - t).pow(2).mean())
                                for b, h, t in zip(batches, inputs, targets))
                    best = min(best, (error, alpha))
                s = mean.clamp(min=1e-4).pow(best[1])
                quantizer.smooth[pair].copy_(s / (s.max() * s.min()).sqrt())
                picks[pair] = best[1]
            folded = quantizer.fold_()
            _replace_linears(layer, {n: (f.weight, f.bias, None, None) for n, f in folded.items()}, plan)
            inputs = [_run(layer, b, h) for b, h in zip(batches, inputs)]
            chosen.append(picks)
            bar.advance()
    return {"scheme": plan.name, "alphas": chosen, "grid": grid, "search_batches": search_batches, "blocks": [],
            "n_prompts": sum(int(b.real.shape[0]) for b in batches), "seconds": round(time.perf_counter() - started, 1)}


__all__ = ["quantize_awq"]
