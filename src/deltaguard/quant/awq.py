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


def _mean_abs_inputs(layer: Any, batches: list[Any], inputs: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    """Mean |x| per channel of the activation each smoothing pair scales, over the real tokens."""
    from deltaguard.quant.block import STAT_SITES
    from deltaguard.quant.calibrate import observe_inputs

    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}

    def observer(pair: str) -> Any:
        def record(x: torch.Tensor, mask: torch.Tensor) -> None:
            rows = x.reshape(-1, x.shape[-1])[mask.reshape(-1).bool()].abs().float()
            sums[pair] = sums.get(pair, 0) + rows.sum(0)
            counts[pair] = counts.get(pair, 0) + rows.shape[0]
        return record

    observe_inputs(layer, batches, inputs, {site: observer(pair) for pair, site in STAT_SITES.items()})
    return {pair: sums[pair] / max(counts[pair], 1) for pair in sums}


def quantize_awq(model: Any, tokenizer: Any, prompts: Any, *, plan: QuantScheme, grid: int = 20,
                 search_batches: int = 4, batch_size: int = 8, max_tokens: int = 128, seed: int = 0,
                 progress: bool = True, label: str = "awq") -> dict[str, Any]:
    """AWQ every decoder block of ``model`` in place; returns the chosen ``α`` per block and pair."""
    from deltaguard.quant.block import kv_reduce
    from deltaguard.quant.calibrate import BlockwiseConfig, capture_block_inputs, replace_linears, run_block
    from deltaguard.quant.probes import decoder_layers

    started = time.perf_counter()
    layers = decoder_layers(model)
    for layer in layers:
        check_block(layer)
        for name, module in layer.named_modules():
            if name in ("self_attn.q_proj", "self_attn.o_proj", "mlp.gate_proj", "mlp.down_proj"):
                grouped(module.weight, plan.group_size)
    batches = capture_block_inputs(model, tokenizer, prompts, BlockwiseConfig(batch_size=batch_size, max_tokens=max_tokens,
                                                                         seed=seed))
    inputs = [b.hidden for b in batches]
    alphas = [i / grid for i in range(grid)]
    chosen: list[dict[str, float]] = []
    with progress_bar(label, len(layers), enabled=progress) as bar, torch.no_grad():
        for layer in layers:
            targets = [run_block(layer, b, h) for b, h in zip(batches[:search_batches], inputs[:search_batches])]
            means = _mean_abs_inputs(layer, batches, inputs)
            quantizer = BlockQuantizer(layer, plan, act_absmax={p: torch.ones_like(v) for p, v in means.items()},
                                       smooth=True, clip=False)
            for scale in quantizer.smooth.values():
                scale.fill_(1.0)
            picks: dict[str, float] = {}
            for pair in SMOOTH_PAIRS:
                mean = means[pair]
                if pair == "vo":
                    mean = kv_reduce(mean, quantizer.n_heads, quantizer.n_kv, quantizer.head_dim)
                best = (float("inf"), 0.0)
                for alpha in alphas:
                    s = mean.clamp(min=1e-4).pow(alpha)
                    s = s / (s.max() * s.min()).sqrt()
                    quantizer.smooth[pair].copy_(s)
                    params = quantizer.effective()   # once per candidate, shared by the search batches
                    error = sum(float((quantizer.run(params, h, **b.kwargs) - t).pow(2).mean())
                                for b, h, t in zip(batches, inputs, targets))
                    best = min(best, (error, alpha))
                s = mean.clamp(min=1e-4).pow(best[1])
                quantizer.smooth[pair].copy_(s / (s.max() * s.min()).sqrt())
                picks[pair] = best[1]
            folded = quantizer.fold_()
            replace_linears(layer, {n: (f.weight, f.bias, None, None) for n, f in folded.items()}, plan)
            inputs = [run_block(layer, b, h) for b, h in zip(batches, inputs)]
            chosen.append(picks)
            bar.advance()
    return {"scheme": plan.name, "alphas": chosen, "grid": grid, "search_batches": search_batches, "blocks": [],
            "n_prompts": sum(int(b.real.shape[0]) for b in batches), "seconds": round(time.perf_counter() - started, 1)}


__all__ = ["quantize_awq"]
