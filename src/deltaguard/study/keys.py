"""The cache keys of the study's model-building steps, shared by every pipeline that builds the same models.

The study, the mitigation map and anything else that aligns a base or attacks it name the result by these
keys, so two pipelines pointed at one run directory build each model once and reuse it.
"""

from __future__ import annotations

from typing import Any

from deltaguard.io import content_key
from deltaguard.threats import AlignConfig, ThreatConfig


def precision_of(dtype: str) -> dict[str, Any]:
    """The evaluation precision as it enters a key: fp32 keys stay as they were before dtypes existed."""
    return {"dtype": dtype} if dtype != "float32" else {}


def align_key(original_key: str, config: AlignConfig, *, dtype: str = "float32",
              responder_key: str | None = None) -> str:
    """The aligned base's key: the original model, the recipe, the precision and (only when another model
    writes the benign answers, as for a base model that cannot answer chat prompts itself) that responder."""
    responder = {"responder": responder_key} if responder_key else {}
    return content_key("align", {"model": original_key, "config": config.to_dict(), **precision_of(dtype),
                                 **responder})


def attack_key(base_key: str, threat: ThreatConfig, *, dtype: str = "float32") -> str:
    """A fine-tune's key: the aligned base it starts from, the threat's recipe and the precision."""
    return content_key("attack", {"base": base_key, "threat": threat.to_dict(), **precision_of(dtype)})


__all__ = ["align_key", "attack_key", "precision_of"]
