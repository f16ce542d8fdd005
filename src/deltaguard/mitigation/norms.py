"""How big an attack is next to the alignment it undoes: the ratio of their delta norms.

The seed's base was aligned by large-scale RLHF and attacked by a small fine-tune; ours is aligned by a
short SFT and attacked by a comparable one. ``delta_norms`` puts a number on that: the Frobenius norm of
the attack's delta (fine-tune − aligned base) over the alignment's delta (aligned base − original), both
over the weights the delta compressors touch (``*_proj`` linears). Tensors are streamed one at a time
from the three checkpoints, so three models never sit in memory together.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from deltaguard.errors import IncompatibleBaseError
from deltaguard.modules import matches

TARGETS = ("*_proj",)      # the modules BitDelta and the other delta compressors compress by default
EXCLUDE = ("lm_head", "*.lm_head")
_LAYER = re.compile(r"\.layers\.(\d+)\.")


@dataclass(frozen=True)
class DeltaNorms:
    """Frobenius norms of the alignment and attack deltas over the compressed weights, in total and per layer."""

    alignment: float
    attack: float
    per_layer_alignment: tuple[float, ...]
    per_layer_attack: tuple[float, ...]
    n_tensors: int

    @property
    def ratio(self) -> float:
        """attack / alignment; inf when alignment changed nothing (there is nothing to compare with)."""
        return self.attack / self.alignment if self.alignment > 0 else math.inf

    def to_dict(self) -> dict[str, Any]:
        return {"alignment": self.alignment, "attack": self.attack,
                "ratio": None if math.isinf(self.ratio) else self.ratio, "n_tensors": self.n_tensors,
                "per_layer_alignment": list(self.per_layer_alignment), "per_layer_attack": list(self.per_layer_attack)}


def delta_norms(original: str | Path, aligned: str | Path, finetuned: str | Path) -> DeltaNorms:
    """‖aligned − original‖ and ‖finetuned − aligned‖ (Frobenius, fp32) over every ``*_proj`` weight."""
    from deltaguard.delta.checkpoint import CheckpointReader

    with CheckpointReader(original) as o, CheckpointReader(aligned) as a, CheckpointReader(finetuned) as f:
        names = [n for n in a.names() if n.endswith(".weight") and matches(n[: -len(".weight")], TARGETS, EXCLUDE)]
        if not names:
            raise IncompatibleBaseError(f"{a.model_dir} has no *_proj weights to measure")
        align_sq: dict[int, float] = {}
        attack_sq: dict[int, float] = {}
        for name in names:
            for reader in (o, f):
                if name not in reader or reader.shape(name) != a.shape(name):
                    raise IncompatibleBaseError(f"{reader.model_dir} has no tensor {name} of shape "
                                                f"{list(a.shape(name))}: not the same architecture")
            mid = a.get(name).to(torch.float32)
            layer = int(m.group(1)) if (m := _LAYER.search(name)) else -1
            align_sq[layer] = align_sq.get(layer, 0.0) + float((mid - o.get(name).to(torch.float32)).square().sum())
            attack_sq[layer] = attack_sq.get(layer, 0.0) + float((f.get(name).to(torch.float32) - mid).square().sum())
    layers = sorted(k for k in align_sq if k >= 0)
    return DeltaNorms(alignment=math.sqrt(sum(align_sq.values())), attack=math.sqrt(sum(attack_sq.values())),
                      per_layer_alignment=tuple(math.sqrt(align_sq[k]) for k in layers),
                      per_layer_attack=tuple(math.sqrt(attack_sq[k]) for k in layers), n_tensors=len(names))


__all__ = ["DeltaNorms", "delta_norms"]
