"""Block-wise calibration (OmniQuant) with an optional safety term (Q-realign).

The model is quantized one decoder block at a time, in place:

1. The calibration prompts run through the embedding once; the first block's inputs are kept per batch,
   with the attention mask and rotary embeddings the model passed it.
2. For each block: its full-precision output on full-precision inputs is the target; a ``BlockQuantizer``
   learns clipping and smoothing on the *quantized* inputs (the previous blocks' quantized outputs
   propagate, as in OmniQuant) with AdamW; then the smoothing is folded, every linear becomes a
   ``QuantLinear`` and the quantized block's outputs become the next block's inputs.

The loss per batch (Q-realign's dual loss): benign prompts → mean squared error to the target over their
real tokens; harmful prompts → ``safety_weight`` × mean ``softplus(−probe logit)`` of the block's output at
the last token, where the probe was fitted on the *aligned* model at this block. With no probes (the
OmniQuant ablation, or ``safety_weight`` 0) every prompt gets the MSE term.
"""

from __future__ import annotations

import dataclasses
import hashlib
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from deltaguard.config import Config, check_choice, check_range
from deltaguard.errors import ConfigError
from deltaguard.modules import replace_module
from deltaguard.progress import progress_bar
from deltaguard.quant.block import LINEARS, BlockQuantizer, activation_absmax, check_block
from deltaguard.quant.calibset import CalibrationPrompts
from deltaguard.quant.fake import SCHEMES, QuantScheme, grouped, scheme
from deltaguard.quant.linear import QuantLinear
from deltaguard.quant.probes import SafetyProbes, decoder_layers, encode_right_padded


@dataclass(frozen=True, kw_only=True)
class BlockwiseConfig(Config):
    """Block-wise calibration settings.

    Args:
        scheme: bit widths (``w8a8``, ``w4a16``, ``w4a8``, ``w4a4`` — the last experimental).
        group_size: input columns per weight grid; -1 keeps the scheme's (0: one grid per output row).
        epochs_first: passes over the calibration batches for each block in the first half of the model.
        epochs_second: the same for the second half (Q-realign: 5 and 15).
        clip_lr: AdamW learning rate of the clipping logits (OmniQuant / Q-realign: 1e-2).
        smooth_lr: learning rate of the smoothing scales (1e-3).
        batch_size: prompts per optimizer step.
        max_tokens: a prompt longer than this keeps its last tokens (the generation prompt stays in).
        safety_weight: weight of the probe term for harmful prompts (0: plain OmniQuant on every prompt).
        smooth: learn equivalent transforms; clip: learn weight clipping (both off: round-to-nearest).
        seed: batch composition and order.
    """

    name: ClassVar[str] = "blockwise"
    version: ClassVar[int] = 1
    scheme: str = "w8a8"
    group_size: int = -1
    epochs_first: int = 5
    epochs_second: int = 15
    clip_lr: float = 1e-2
    smooth_lr: float = 1e-3
    batch_size: int = 8
    max_tokens: int = 128
    safety_weight: float = 1.0
    smooth: bool = True
    clip: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        check_choice("blockwise.scheme", self.scheme, tuple(SCHEMES))
        check_range("blockwise.group_size", self.group_size, -1, 1 << 16)

    def plan(self) -> QuantScheme:
        """The scheme with this config's group size."""
        preset = scheme(self.scheme)
        return preset if self.group_size < 0 else dataclasses.replace(preset, group_size=self.group_size)
        check_range("blockwise.epochs_first", self.epochs_first, 0, 1000)
        check_range("blockwise.epochs_second", self.epochs_second, 0, 1000)
        check_range("blockwise.clip_lr", self.clip_lr, 0.0, 1.0)
        check_range("blockwise.smooth_lr", self.smooth_lr, 0.0, 1.0)
        check_range("blockwise.batch_size", self.batch_size, 1, 4096)
        check_range("blockwise.max_tokens", self.max_tokens, 4, 8192)
        check_range("blockwise.safety_weight", self.safety_weight, 0.0, 1e6)

    @property
    def learns(self) -> bool:
        return (self.smooth or self.clip) and (self.epochs_first > 0 or self.epochs_second > 0)


@dataclass
class CalibrationBatch:
    hidden: Tensor            # the block's input [b, t, d]
    kwargs: dict[str, Any]    # attention mask, rotary embeddings, positions
    real: Tensor              # [b, t] 1 for real tokens
    last: Tensor              # [b] index of the last real token
    harmful: Tensor           # [b] bool


class _Stop(Exception):
    """Raised by the capture hook once the first block's inputs are recorded."""


def capture_block_inputs(model: Any, tokenizer: Any, prompts: CalibrationPrompts, config: BlockwiseConfig) -> list[CalibrationBatch]:
    """Run the prompts up to the first block and keep its inputs, batch by batch (fixed composition)."""
    from deltaguard.models import chat_prompt, model_device

    items = [(p.text, True) for p in prompts.harmful] + [(p.text, False) for p in prompts.benign]
    if not items:
        raise ConfigError("block-wise calibration needs at least one calibration prompt")
    random.Random(config.seed).shuffle(items)
    device = model_device(model)
    first = decoder_layers(model)[0]
    seen: dict[str, Any] = {}

    def catch(_module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        seen["hidden"] = (args[0] if args else kwargs.pop("hidden_states")).detach()
        seen["kwargs"] = {k: v for k, v in kwargs.items() if k not in ("hidden_states", "cache", "past_key_values",
                                                                       "past_key_value", "use_cache")}
        raise _Stop

    handle = first.register_forward_pre_hook(catch, with_kwargs=True)
    batches: list[CalibrationBatch] = []
    try:
        for start in range(0, len(items), config.batch_size):
            chunk = items[start:start + config.batch_size]
            ids, mask = encode_right_padded(tokenizer, [chat_prompt(tokenizer, text) for text, _ in chunk],
                                            config.max_tokens)
            try:
                with torch.no_grad():
                    model(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False)
            except _Stop:
                pass
            batches.append(CalibrationBatch(seen["hidden"].float(), seen["kwargs"], mask.to(device),
                                  (mask.sum(dim=1) - 1).to(device),
                                  torch.tensor([h for _, h in chunk], dtype=torch.bool, device=device)))
    finally:
        handle.remove()
    return batches


def run_block(block: nn.Module, batch: CalibrationBatch, hidden: Tensor) -> Tensor:
    out = block(hidden, **batch.kwargs)
    return out[0] if isinstance(out, tuple) else out


@torch.no_grad()
def observe_inputs(layer: nn.Module, batches: list[CalibrationBatch], inputs: list[Tensor],
                   observers: dict[str, Any]) -> None:
    """Run ``layer`` over the batches, calling ``observers[name](x, real_mask)`` with the input of each named
    submodule (GPTQ's Hessians, AWQ's activation means)."""
    modules = dict(layer.named_modules())
    current: dict[str, Tensor] = {}
    hooks = [modules[name].register_forward_pre_hook(
        lambda _m, args, _observe=observe: _observe(args[0], current["mask"])) for name, observe in observers.items()]
    try:
        for batch, hidden in zip(batches, inputs):
            current["mask"] = batch.real
            run_block(layer, batch, hidden)
    finally:
        for hook in hooks:
            hook.remove()


def _loss(out: Tensor, target: Tensor, batch: CalibrationBatch, layer: int, probes: SafetyProbes | None,
          safety_weight: float) -> tuple[Tensor, float, float]:
    """(total, mse part, safety part) for one batch (see the module docstring)."""
    use_safety = probes is not None and safety_weight > 0
    mse_rows = ~batch.harmful if use_safety else torch.ones_like(batch.harmful)
    total = out.new_zeros(())
    mse_value = safety_value = 0.0
    if mse_rows.any():
        weight = batch.real[mse_rows].unsqueeze(-1).float()
        squared = (out[mse_rows].float() - target[mse_rows].float()).pow(2) * weight
        mse = squared.sum() / (weight.sum() * out.shape[-1])
        total = total + mse
        mse_value = float(mse.detach())
    if use_safety and batch.harmful.any():
        rows = torch.nonzero(batch.harmful).squeeze(-1)
        last = out[rows, batch.last[rows]]
        safety = F.softplus(-probes.logits(layer, last)).mean()   # type: ignore[union-attr]
        total = total + safety_weight * safety
        safety_value = float(safety.detach())
    return total, mse_value, safety_value


@torch.no_grad()
def _probe_hits(states: list[Tensor], batches: list[CalibrationBatch], layer: int, probes: SafetyProbes | None) -> float | None:
    """Share of harmful prompts whose last-token state sits on the probe's harmful side."""
    if probes is None:
        return None
    logits = [probes.logits(layer, s[b.harmful][torch.arange(int(b.harmful.sum())), b.last[b.harmful]])
              for s, b in zip(states, batches) if b.harmful.any()]
    if not logits:
        return None
    return float((torch.cat(logits) > 0).float().mean())


def quantize_blockwise(model: Any, tokenizer: Any, prompts: CalibrationPrompts, config: BlockwiseConfig, *,
                       probes: SafetyProbes | None = None, progress: bool = True, label: str = "quantize",
                       checkpoint: Path | None = None) -> dict[str, Any]:
    """Quantize every decoder block of ``model`` in place; returns a per-block record (losses, probe hits).

    With ``checkpoint`` (a directory) each finished block is saved there with the next block's inputs, and
    a rerun of the same calibration (same model weights, prompts, settings and probes) resumes after the
    last finished block. The caller removes the directory when the result is safely stored.
    """
    plan = config.plan()
    layers = decoder_layers(model)
    for layer in layers:
        check_block(layer)
        for name, module in layer.named_modules():
            if name in LINEARS:
                grouped(module.weight, plan.group_size)   # a group size that does not divide: fail before any work
    if probes is not None and probes.n_layers != len(layers):
        raise ConfigError(f"the probes cover {probes.n_layers} blocks; the model has {len(layers)}")
    model.eval()
    started = time.perf_counter()
    needs_data = config.learns or config.smooth or probes is not None   # smoothing's init reads activations
    batches = capture_block_inputs(model, tokenizer, prompts, config) if needs_data else []
    if not batches:   # plain round-to-nearest: no data needed
        for layer in layers:
            replace_linears(layer, {name: (module.weight, module.bias, None, None) for name, module in
                                     layer.named_modules() if name in LINEARS}, plan)
        return {"scheme": plan.name, "blocks": [], "seconds": round(time.perf_counter() - started, 1)}
    fp_inputs = [b.hidden for b in batches]
    q_inputs = [b.hidden.clone() for b in batches]
    rng = random.Random(config.seed)
    blocks: list[dict[str, Any]] = []
    resume = _Checkpoint(checkpoint, _run_key(model, prompts, config, probes), plan) if checkpoint else None
    start = 0
    if resume is not None and (restored := resume.restore(layers)) is not None:
        start, blocks, fp_inputs, q_inputs, rng_state = restored
        rng.setstate(rng_state)
    with progress_bar(label, len(layers), enabled=progress) as bar:
        bar.advance(start)
        for index, layer in enumerate(layers):
            if index < start:
                continue
            layer.requires_grad_(False)
            with torch.no_grad():
                targets = [run_block(layer, b, h) for b, h in zip(batches, fp_inputs)]
            absmax = activation_absmax(layer, ((h, b.kwargs) for b, h in zip(batches, fp_inputs))) if config.smooth else None
            quantizer = BlockQuantizer(layer, plan, act_absmax=absmax, smooth=config.smooth, clip=config.clip)
            quantizer.quantize_activations(True)
            epochs = config.epochs_first if index < len(layers) / 2 else config.epochs_second
            record: dict[str, Any] = {"block": index, "epochs": epochs,
                                      "probe_hits_target": _probe_hits(targets, batches, index, probes)}
            groups = quantizer.trainable()
            params = [{"params": groups["clip"], "lr": config.clip_lr}, {"params": groups["smooth"], "lr": config.smooth_lr}]
            params = [g for g in params if g["params"]]
            losses: list[tuple[float, float]] = []
            if epochs and params:
                optimizer = torch.optim.AdamW(params, weight_decay=0.0)
                for _ in range(epochs):
                    order = list(range(len(batches)))
                    rng.shuffle(order)
                    for i in order:
                        out = quantizer(q_inputs[i], **batches[i].kwargs)
                        loss, mse, safety = _loss(out, targets[i], batches[i], index, probes, config.safety_weight)
                        if not torch.isfinite(loss):
                            raise ConfigError(f"block {index}: the calibration loss became {float(loss)}; lower the lrs")
                        optimizer.zero_grad(set_to_none=True)
                        loss.backward()
                        optimizer.step()
                        losses.append((mse, safety))
            with torch.no_grad():
                folded = quantizer.fold_()
                replace_linears(layer, {n: (f.weight, f.bias, f.upper, f.lower) for n, f in folded.items()}, plan)
                q_inputs = [run_block(layer, b, h) for b, h in zip(batches, q_inputs)]
            fp_inputs = targets
            per_epoch = max(len(batches), 1)
            record.update({
                "mse_first": _mean([m for m, _ in losses[:per_epoch]]), "mse_last": _mean([m for m, _ in losses[-per_epoch:]]),
                "safety_first": _mean([s for _, s in losses[:per_epoch]]),
                "safety_last": _mean([s for _, s in losses[-per_epoch:]]),
                "probe_hits_quantized": _probe_hits(q_inputs, batches, index, probes)})
            blocks.append(record)
            if resume is not None:
                resume.save(index, layer, blocks, fp_inputs, q_inputs, rng.getstate())
            bar.advance(loss=record["mse_last"] if record["mse_last"] is not None else 0.0)
    return {"scheme": plan.name, "config": config.to_dict(), "blocks": blocks, "n_batches": len(batches),
            "seconds": round(time.perf_counter() - started, 1)}


def _run_key(model: Any, prompts: CalibrationPrompts, config: BlockwiseConfig, probes: SafetyProbes | None) -> str:
    """What a checkpoint must match to be resumed: the weights it started from, the prompts, the settings."""
    from deltaguard.delta.fingerprint import fingerprint_model
    from deltaguard.io import content_key

    probe_part = None if probes is None else hashlib.sha256(
        probes.weight.float().numpy().tobytes() + probes.bias.float().numpy().tobytes()).hexdigest()
    return content_key("blockwise", {"model": fingerprint_model(model), "prompts": prompts.describe(),
                                     "config": config.to_dict(), "probes": probe_part})


class _Checkpoint:
    """Finished blocks (``block-<i>.safetensors``), the next block's inputs (``inputs.safetensors``) and the
    per-block records (``progress.json``) of one block-wise calibration run."""

    def __init__(self, directory: Path, key: str, plan: QuantScheme) -> None:
        self.directory, self.key, self.plan = Path(directory), key, plan

    def save(self, index: int, layer: nn.Module, blocks: list[dict[str, Any]], fp_inputs: list[Tensor],
             q_inputs: list[Tensor], rng_state: Any) -> None:
        from deltaguard.io import atomic_write, write_json

        self.directory.mkdir(parents=True, exist_ok=True)
        for name, tensors in ((f"block-{index}.safetensors", {k: v.contiguous() for k, v in layer.state_dict().items()}),
                              ("inputs.safetensors", {**{f"fp.{i}": t.contiguous() for i, t in enumerate(fp_inputs)},
                                                      **{f"q.{i}": t.contiguous() for i, t in enumerate(q_inputs)}})):
            with atomic_write(self.directory / name, "wb", encoding=None) as handle:
                handle.write(_safetensors_bytes(tensors))
        write_json(self.directory / "progress.json", {"key": self.key, "done": index, "blocks": blocks,
                                                      "rng": _jsonable(rng_state)})

    def restore(self, layers: Any) -> tuple[int, list[dict[str, Any]], list[Tensor], list[Tensor], Any] | None:
        """(next block, records, fp inputs, quantized inputs, rng state), or None when nothing matches."""
        from safetensors.torch import load_file

        from deltaguard.io import read_json

        path = self.directory / "progress.json"
        if not path.is_file():
            return None
        progress = read_json(path, what="calibration checkpoint")
        if not isinstance(progress, dict) or progress.get("key") != self.key:
            return None   # another run's state: start over (it is overwritten block by block)
        done = int(progress["done"])
        for index in range(done + 1):
            tensors = load_file(str(self.directory / f"block-{index}.safetensors"))
            layer = layers[index]
            for name in LINEARS:
                linear = dict(layer.named_modules())[name]
                replace_module(layer, name, QuantLinear(
                    tensors[f"{name}.codes"], tensors[f"{name}.step"], tensors[f"{name}.zero"], tensors.get(f"{name}.bias"),
                    in_features=linear.in_features, w_bits=self.plan.w_bits, a_bits=self.plan.a_bits,
                    group_size=self.plan.group_size).to(linear.weight.device))
            layer.load_state_dict(tensors, strict=True)
        inputs = load_file(str(self.directory / "inputs.safetensors"))
        n = sum(1 for k in inputs if k.startswith("fp."))
        return (done + 1, list(progress["blocks"]), [inputs[f"fp.{i}"] for i in range(n)],
                [inputs[f"q.{i}"] for i in range(n)], _from_jsonable(progress["rng"]))


def _safetensors_bytes(tensors: dict[str, Tensor]) -> bytes:
    from safetensors.torch import save

    return save(tensors)


def _jsonable(state: Any) -> Any:
    return [_jsonable(x) for x in state] if isinstance(state, (tuple, list)) else state


def _from_jsonable(state: Any) -> Any:
    return tuple(_from_jsonable(x) for x in state) if isinstance(state, list) else state


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def replace_linears(layer: nn.Module, weights: dict[str, tuple[Tensor, Tensor | None, Tensor | None, Tensor | None]],
                     plan: Any) -> None:
    for name, (weight, bias, upper, lower) in weights.items():
        replace_module(layer, name, QuantLinear.quantize(weight, bias, w_bits=plan.w_bits, a_bits=plan.a_bits,
                                                         group_size=plan.group_size, upper=upper, lower=lower
                                                         ).to(weight.device))


__all__ = ["BlockwiseConfig", "capture_block_inputs", "observe_inputs", "quantize_blockwise", "replace_linears", "run_block"]
