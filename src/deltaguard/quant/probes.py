"""Per-layer safety probes: where an aligned model's hidden states separate harmful from benign prompts.

For every decoder block, an L1-regularised logistic regression reads the block's output at the prompt's
last token (the position the reply starts from) and says harmful (1) or benign (0). Q-realign fits the
probes on the *aligned* model and, while quantizing a fine-tune, pushes the fine-tune's harmful-prompt
states back to the harmful side of each block's probe. The probes are also a diagnostic: per-layer
held-out accuracy and Fisher separability (‖μ₁ − μ₀‖² over the mean within-class spread) show where the
aligned model encodes "this is harmful" and how much of that a fine-tune erased.

Why hand-written: scikit-learn is not a dependency, and the probe is a small convex problem (a few
hundred states × 576 features) that proximal gradient descent (FISTA) solves in a few lines of torch.
Features are standardised for the fit and the standardisation is folded back into ``w``, ``b``, so a
probe applies to raw hidden states: ``logit = h · w + b``.

On disk (``save``/``load``): ``probes.safetensors`` (``weight`` [layers, d], ``bias`` [layers]) and
``probes.json`` (per-layer accuracy and separability, the prompt hashes, the model identity).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import Tensor

from deltaguard.errors import ConfigError, FormatError
from deltaguard.io import atomic_dir, read_json, write_json
from deltaguard.progress import progress_bar

PROBE_FORMAT = "deltaguard-probes"
PROBE_VERSION = 1


def decoder_layers(model: Any) -> Any:
    from deltaguard.training.losses import causal_lm_parts

    return causal_lm_parts(model)[0].layers


@torch.no_grad()
def last_token_states(model: Any, tokenizer: Any, prompts: Sequence[str], *, batch_size: int = 16,
                      max_tokens: int = 128, progress: bool = False, label: str = "hidden states") -> Tensor:
    """``[blocks, n, d]`` float32: every block's output at each chat-formatted prompt's last token."""
    from deltaguard.models import chat_prompt, model_device

    layers = decoder_layers(model)
    device = model_device(model)
    captured: list[Tensor] = [torch.empty(0)] * len(layers)
    where: dict[str, Tensor] = {}

    def hook(index: int) -> Any:
        def record(_module: Any, _args: Any, output: Any) -> None:
            hidden = output[0] if isinstance(output, tuple) else output
            captured[index] = hidden[torch.arange(hidden.shape[0], device=hidden.device), where["last"]].float().cpu()
        return record

    handles = [layer.register_forward_hook(hook(i)) for i, layer in enumerate(layers)]
    out: list[Tensor] = []
    try:
        with progress_bar(label, math.ceil(len(prompts) / batch_size), enabled=progress, transient=True) as bar:
            for start in range(0, len(prompts), batch_size):
                texts = [chat_prompt(tokenizer, p) for p in prompts[start:start + batch_size]]
                ids, mask = encode_right_padded(tokenizer, texts, max_tokens)
                where["last"] = (mask.sum(dim=1) - 1).to(device)
                model(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False)
                out.append(torch.stack(captured))
                bar.advance()
    finally:
        for handle in handles:
            handle.remove()
    return torch.cat(out, dim=1)


def encode_right_padded(tokenizer: Any, texts: Sequence[str], max_tokens: int) -> tuple[Tensor, Tensor]:
    """(ids, mask) right-padded; a text longer than ``max_tokens`` keeps its *last* tokens, so the position
    the reply would start from (the generation prompt) is always in."""
    rows = [tokenizer(t, add_special_tokens=False)["input_ids"][-max_tokens:] for t in texts]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), int(pad), dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, :len(row)] = torch.tensor(row)
        mask[i, :len(row)] = 1
    return ids, mask


def fit_l1_logistic(x: Tensor, y: Tensor, *, l1: float = 1e-3, steps: int = 500) -> tuple[Tensor, Tensor]:
    """(w, b) minimising mean logistic loss + ``l1``·‖w‖₁ by FISTA, on standardised features, folded back
    so that ``x @ w + b`` is the logit on raw features."""
    if x.ndim != 2 or y.shape != (x.shape[0],):
        raise ConfigError(f"probe data must be [n, d] with n labels; got {tuple(x.shape)} and {tuple(y.shape)}")
    if len(set(y.tolist())) != 2:
        raise ConfigError("a probe needs both harmful and benign examples")
    x, y = x.double(), y.double()
    mean, std = x.mean(dim=0), x.std(dim=0).clamp(min=1e-6)
    z = torch.cat([(x - mean) / std, torch.ones(x.shape[0], 1, dtype=x.dtype)], dim=1)   # last column: bias
    lipschitz = 0.25 * torch.linalg.matrix_norm(z, ord=2) ** 2 / z.shape[0]
    rate = 1.0 / float(lipschitz)
    theta = torch.zeros(z.shape[1], dtype=x.dtype)
    momentum, previous, t = theta.clone(), theta.clone(), 1.0
    for _ in range(steps):
        grad = z.T @ (torch.sigmoid(z @ momentum) - y) / z.shape[0]
        theta = momentum - rate * grad
        theta[:-1] = torch.sign(theta[:-1]) * (theta[:-1].abs() - rate * l1).clamp(min=0)   # no penalty on the bias
        t_next = (1 + math.sqrt(1 + 4 * t * t)) / 2
        momentum = theta + ((t - 1) / t_next) * (theta - previous)
        previous, t = theta, t_next
    w = theta[:-1] / std
    b = theta[-1] - (w * mean).sum()
    return w.float(), b.float()


def fisher_ratio(x: Tensor, y: Tensor) -> float:
    """‖μ₁ − μ₀‖² / mean within-class squared distance to the class mean (averaged over the two classes)."""
    ones, zeros = x[y == 1].double(), x[y == 0].double()
    between = float(((ones.mean(0) - zeros.mean(0)) ** 2).sum())
    within = 0.5 * (float(((ones - ones.mean(0)) ** 2).sum(1).mean()) + float(((zeros - zeros.mean(0)) ** 2).sum(1).mean()))
    return between / within if within > 0 else math.inf


@dataclass
class SafetyProbes:
    """One probe per block (``weight`` [blocks, d], ``bias`` [blocks]) and how well each separates."""

    weight: Tensor
    bias: Tensor
    accuracy: list[float]
    separability: list[float]
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def n_layers(self) -> int:
        return int(self.weight.shape[0])

    def logits(self, layer: int, hidden: Tensor) -> Tensor:
        """Probe logits (harmful > 0) for hidden states ``[..., d]`` at block ``layer``."""
        return hidden.float() @ self.weight[layer].to(hidden.device) + self.bias[layer].to(hidden.device)

    def evaluate(self, states: Tensor, labels: Tensor) -> dict[str, list[float]]:
        """Per-layer accuracy and Fisher separability of other states ``[blocks, n, d]`` under these probes
        (e.g. the fine-tune's or the realigned model's) — the diagnostic the report plots."""
        accuracy = [float(((self.logits(i, states[i]) > 0).long() == labels).float().mean())
                    for i in range(self.n_layers)]
        return {"accuracy": accuracy, "separability": [fisher_ratio(states[i], labels) for i in range(self.n_layers)]}

    def write(self, directory: Path) -> None:
        """Write ``probes.safetensors`` and ``probes.json`` into an existing directory (one being built)."""
        from safetensors.torch import save_file

        save_file({"weight": self.weight.contiguous(), "bias": self.bias.contiguous()},
                  str(Path(directory) / "probes.safetensors"))
        write_json(Path(directory) / "probes.json", {"format": PROBE_FORMAT, "version": PROBE_VERSION,
                                                     "accuracy": self.accuracy, "separability": self.separability,
                                                     **self.meta})

    def save(self, out_dir: str | Path, *, overwrite: bool = True) -> Path:
        with atomic_dir(out_dir, overwrite=overwrite) as tmp:
            self.write(tmp)
        return Path(out_dir)

    @classmethod
    def load(cls, path: str | Path) -> "SafetyProbes":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        path = Path(path)
        info = read_json(path / "probes.json", what="probe record") if (path / "probes.json").is_file() else None
        if not isinstance(info, dict) or info.get("format") != PROBE_FORMAT or info.get("version") != PROBE_VERSION:
            raise FormatError(f"{path} is not a deltaguard probe directory (version {PROBE_VERSION})")
        try:
            tensors = load_file(str(path / "probes.safetensors"))
        except (OSError, SafetensorError) as exc:
            raise FormatError(f"{path}/probes.safetensors could not be read ({str(exc).splitlines()[0]})") from None
        weight, bias = tensors.get("weight"), tensors.get("bias")
        if weight is None or bias is None or weight.ndim != 2 or bias.shape != (weight.shape[0],) \
                or len(info.get("accuracy", [])) != weight.shape[0] or not torch.isfinite(weight).all():
            raise FormatError(f"{path}: the probe tensors are missing, misshapen or not finite")
        meta = {k: v for k, v in info.items() if k not in ("format", "version", "accuracy", "separability")}
        return cls(weight, bias, list(info["accuracy"]), list(info.get("separability", [])), meta)


def fit_probes(states: Tensor, labels: Tensor, *, holdout: float = 0.2, l1: float = 1e-3, steps: int = 500,
               seed: int = 0, meta: dict[str, Any] | None = None) -> SafetyProbes:
    """A probe per block from ``states`` [blocks, n, d] (harmful = 1): fitted on a stratified (1 - holdout)
    share, accuracy measured on the rest, then refitted on all of it (the probes Q-realign uses)."""
    if not 0 < holdout < 1:
        raise ConfigError(f"probe holdout {holdout} must be in (0, 1)")
    rng = random.Random(seed)
    held: list[int] = []
    for value in (0, 1):
        members = [i for i, label in enumerate(labels.tolist()) if label == value]
        rng.shuffle(members)
        held += members[:max(1, round(holdout * len(members)))]
    test = torch.zeros(len(labels), dtype=torch.bool)
    test[held] = True
    weights, biases, accuracy, separability = [], [], [], []
    for layer in range(states.shape[0]):
        x = states[layer]
        w, b = fit_l1_logistic(x[~test], labels[~test], l1=l1, steps=steps)
        accuracy.append(float((((x[test] @ w + b) > 0).long() == labels[test]).float().mean()))
        separability.append(fisher_ratio(x, labels))
        w, b = fit_l1_logistic(x, labels, l1=l1, steps=steps)
        weights.append(w)
        biases.append(b)
    record = {"n": int(len(labels)), "n_harmful": int(labels.sum()), "holdout": holdout, "l1": l1, "steps": steps,
              "seed": seed, **(meta or {})}
    return SafetyProbes(torch.stack(weights), torch.stack(biases), accuracy, separability, record)


__all__ = ["PROBE_FORMAT", "SafetyProbes", "decoder_layers", "encode_right_padded", "fisher_ratio", "fit_l1_logistic",
           "fit_probes", "last_token_states"]
