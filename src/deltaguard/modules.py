"""Find and replace a model's submodules by name rules: the one place modules are swapped.

Delta application (``DeltaLinear``), scale distillation (trainable sign linears), multi-tenant serving
(wrappers) and whole-model quantization or pruning all replace some ``nn.Linear`` modules of a Hugging
Face model by others. They select them the same way — glob rules over module names, as PEFT's
``target_modules`` — and swap them the same way, here.
"""

from __future__ import annotations

import fnmatch
from typing import Iterator, Sequence

from torch import nn

from deltaguard.errors import ConfigError


def matches(name: str, targets: Sequence[str], exclude: Sequence[str] = ()) -> bool:
    """Whether module ``name`` matches a ``targets`` glob and no ``exclude`` glob (case-sensitive)."""
    if any(fnmatch.fnmatchcase(name, pattern) for pattern in exclude):
        return False
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in targets)


def iter_targets(model: nn.Module, targets: Sequence[str], exclude: Sequence[str] = (), *,
                 kind: type[nn.Module] | tuple[type[nn.Module], ...] = nn.Linear) -> Iterator[tuple[str, nn.Module]]:
    """``(name, module)`` of every submodule of type ``kind`` selected by the rules, in model order.

    The list is taken before anything is yielded, so callers may replace modules while iterating.
    """
    chosen = [(name, module) for name, module in model.named_modules()
              if name and isinstance(module, kind) and matches(name, targets, exclude)]
    yield from chosen


def get_module(model: nn.Module, name: str) -> nn.Module:
    """The submodule ``name`` (``""``: the model itself); an unknown name raises ConfigError."""
    try:
        return model.get_submodule(name) if name else model
    except AttributeError:
        raise ConfigError(f"the model has no module {name!r}") from None


def replace_module(model: nn.Module, name: str, new: nn.Module) -> nn.Module:
    """Put ``new`` where module ``name`` is and return the module it replaced."""
    parent_name, _, child = name.rpartition(".")
    parent = get_module(model, parent_name)
    if not hasattr(parent, child):
        raise ConfigError(f"the model has no module {name!r}")
    old = getattr(parent, child)
    setattr(parent, child, new)
    return old


__all__ = ["get_module", "iter_targets", "matches", "replace_module"]
