"""BitDelta scale distillation: train only the per-matrix scales to match the fine-tune's logits.

The student is the base with every 16-bit delta merged and every targeted linear replaced by
``W_base + Σ_k s_k·sign_k`` where only ``s_k`` is trainable; the teacher is the fine-tuned model.
The loss is the mean squared error between their logits over real (non-padding) tokens.

A few calibration texts are held out. Their loss is measured with the closed-form scales and with
the distilled ones, and the distilled scales are kept only if they lower it: with few steps or a
learning rate too high for ``k`` > 1, training can end worse than where it started, and a
compressor must never return a worse delta than its closed form.
"""

from __future__ import annotations

import copy
import random
from typing import Any

import torch
from torch import Tensor, nn

from deltaguard.delta.methods.base import DENSE
from deltaguard.delta.packing import unpack_signs
from deltaguard.errors import ConfigError
from deltaguard.models import load_model, load_tokenizer, model_device, resolve_device
from deltaguard.modules import get_module, replace_module
from deltaguard.progress import progress_bar
from deltaguard.training import masked_logit_mse, scheduler


class _ScaledSignLinear(nn.Module):
    """Linear with a frozen base weight and frozen ±1 sign matrices; only the scales train."""

    def __init__(self, base: nn.Linear, signs: Tensor, scales: Tensor) -> None:
        super().__init__()
        self.register_buffer("weight_base", base.weight.detach(), persistent=False)
        self.register_buffer("signs", signs, persistent=False)           # [k, out, in] ±1
        self.scales = nn.Parameter(scales.clone().to(torch.float32))       # [k]
        self.bias = base.bias

    def forward(self, x: Tensor) -> Tensor:
        weight = self.weight_base + torch.einsum("k,koi->oi", self.scales.to(self.signs.dtype), self.signs).to(self.weight_base.dtype)
        return nn.functional.linear(x, weight, self.bias)


def _batches(token_ids: list[Tensor], batch_size: int, seed: int, pad_id: int) -> Any:
    order = list(range(len(token_ids)))
    rng = random.Random(seed)
    while True:
        rng.shuffle(order)
        for start in range(0, len(order) - len(order) % batch_size or len(order), batch_size):
            chunk = [token_ids[i] for i in order[start:start + batch_size]]
            width = max(t.numel() for t in chunk)
            ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for row, tokens in enumerate(chunk):
                ids[row, : tokens.numel()] = tokens
                mask[row, : tokens.numel()] = 1
            yield ids, mask


def distill_scales(packed: Any, calib: list[str], *, base: Any = None, finetuned: Any = None,
                   device: str = "cpu", progress: bool = True) -> Any:
    """Return a copy of a BitDelta ``packed`` (a ``CompressedDelta``) whose scales minimise the logit MSE on
    ``calib``; runs on ``device`` (models given already loaded stay where they are)."""
    config = packed.config
    texts = [t for t in calib if t and t.strip()]
    if not texts:
        raise ConfigError("scale distillation needs at least one non-empty calibration text")
    base = base if base is not None else packed.meta["base"]["source"]
    finetuned = finetuned if finetuned is not None else packed.meta["finetuned"]["source"]
    run_on = resolve_device(device)
    tokenizer = load_tokenizer(base)
    teacher = load_model(finetuned, device=run_on) if not hasattr(finetuned, "forward") else finetuned
    student = load_model(base, device=run_on) if not hasattr(base, "forward") else copy.deepcopy(base)
    teacher.eval().requires_grad_(False)
    student.eval().requires_grad_(False)
    device_type = model_device(student).type

    modules: dict[str, _ScaledSignLinear] = {}
    with torch.no_grad():
        for name, tensor in packed.tensors.items():
            param_owner = name.removesuffix(".weight")
            if tensor.encoding == DENSE:
                target = student.get_parameter(name)
                rows = tensor.base_shape[0]
                target[:rows] += tensor.parts["delta"].to(target.device, target.dtype)
                continue
            linear = get_module(student, param_owner)
            signs = torch.stack([unpack_signs(s, tensor.base_shape[-1], torch.bfloat16) for s in tensor.parts["signs"]])
            module = _ScaledSignLinear(linear, signs.to(linear.weight.device), tensor.parts["scales"].to(linear.weight.device))
            replace_module(student, param_owner, module)
            modules[name] = module

    ids = [tokenizer(t, truncation=True, max_length=config.seq_len, return_tensors="pt")["input_ids"][0] for t in texts]
    ids = [t for t in ids if t.numel() >= 2]
    if not ids:
        raise ConfigError("calibration texts tokenise to fewer than 2 tokens each")
    held_out, ids = _hold_out(ids, config.batch_size, config.seed)
    pad_id = tokenizer.pad_token_id or 0
    initial = {name: module.scales.detach().clone() for name, module in modules.items()}
    loss_before = _held_out_loss(student, teacher, held_out, pad_id, device_type)
    params = [m.scales for m in modules.values()]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=0.0)
    schedule = scheduler(optimizer, config.distill_steps, schedule="cosine")
    batches = _batches(ids, min(config.batch_size, len(ids)), config.seed, pad_id)
    losses: list[float] = []
    with progress_bar("distill scales", config.distill_steps, enabled=progress) as bar:
        for _ in range(config.distill_steps):
            input_ids, mask = (t.to(model_device(student)) for t in next(batches))
            with torch.no_grad(), torch.autocast(device_type, dtype=torch.bfloat16):
                reference = teacher(input_ids=input_ids.to(model_device(teacher)),
                                    attention_mask=mask.to(model_device(teacher))).logits.to(input_ids.device)
            with torch.autocast(device_type, dtype=torch.bfloat16):
                logits = student(input_ids=input_ids, attention_mask=mask).logits
            loss = masked_logit_mse(logits, reference, mask)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            losses.append(loss.item())
            bar.advance(loss=losses[-1])
    loss_after = _held_out_loss(student, teacher, held_out, pad_id, device_type)
    kept = loss_after < loss_before
    final = {name: module.scales.detach() if kept else initial[name] for name, module in modules.items()}
    updates = {name: {"scales": scales.to("cpu", torch.float32).clone()} for name, scales in final.items()}
    calibration = {
        "calibration": {
            "n_texts": len(ids), "n_held_out": len(held_out), "steps": config.distill_steps,
            "batch_size": config.batch_size, "seq_len": config.seq_len, "lr": config.lr,
            "loss_first": losses[0], "loss_last": losses[-1], "loss_min": min(losses),
            "held_out_loss_closed_form": loss_before, "held_out_loss_distilled": loss_after,
            "scales": "distilled" if kept else "closed-form (distillation did not lower the held-out loss)",
        }
    }
    return packed.with_parts(updates, calibration)


def _hold_out(ids: list[Tensor], batch_size: int, seed: int) -> tuple[list[Tensor], list[Tensor]]:
    """(held-out texts, training texts): a quarter of the texts, at most one batch, at least one.

    With a single text it serves both roles (the check then only guards against divergence).
    """
    if len(ids) < 2:
        return ids, ids
    order = list(range(len(ids)))
    random.Random(f"held-out:{seed}").shuffle(order)
    n_held = max(1, min(batch_size, len(ids) // 4))
    return [ids[i] for i in order[:n_held]], [ids[i] for i in order[n_held:]]


@torch.no_grad()
def _held_out_loss(student: nn.Module, teacher: nn.Module, ids: list[Tensor], pad_id: int, device_type: str) -> float:
    """The distillation loss on ``ids`` as one batch (same precision as training)."""
    input_ids, mask = (t.to(model_device(student)) for t in next(_batches(ids, len(ids), 0, pad_id)))
    with torch.autocast(device_type, dtype=torch.bfloat16):
        reference = teacher(input_ids=input_ids.to(model_device(teacher)),
                            attention_mask=mask.to(model_device(teacher))).logits.to(input_ids.device)
        logits = student(input_ids=input_ids, attention_mask=mask).logits
    return float(masked_logit_mse(logits, reference, mask))
