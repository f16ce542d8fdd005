"""Capture the residual stream in one forward pass and decode it through the model's own head.

The decoder layers, the final norm and the unembedding are found by the model's structure, not by
hard-coded attribute paths: the head is ``get_output_embeddings()``, the layers are the module list
of identical blocks, the final norm is the norm-like module registered after that list in the same
parent. Two checks make a wrong discovery fail loudly instead of producing plausible nonsense:

* last-layer check (always on): the lens of the last layer must reproduce the model's own logits;
* hidden-state parity (on by default): every captured residual that has a counterpart in HF's
  ``output_hidden_states`` must equal it. HF's last entry is already normalised, so it is compared
  with the final norm applied to the last layer's output.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from deltaguard.errors import DeltaguardError
from deltaguard.lens.sites import FINAL_NORM, Site

_ATTN_NAMES = ("self_attn", "attn", "attention", "self_attention")
_MLP_NAMES = ("mlp", "feed_forward", "ffn")


@dataclass(frozen=True)
class LensParts:
    """The modules the lens needs, with their dotted paths for messages."""

    layers: nn.ModuleList
    layers_path: str
    final_norm: nn.Module
    final_norm_path: str
    head: nn.Module
    head_path: str
    is_tied: bool

    @property
    def n_layers(self) -> int:
        return len(self.layers)


def _path_of(model: nn.Module, target: nn.Module) -> str:
    for name, module in model.named_modules():
        if module is target:
            return name or "<model>"
    return type(target).__name__


def _is_norm(module: nn.Module) -> bool:
    return isinstance(module, (nn.LayerNorm, nn.RMSNorm)) or "norm" in type(module).__name__.lower()


def _find_layers(model: nn.Module) -> tuple[str, nn.ModuleList]:
    expected = getattr(getattr(model, "config", None), "num_hidden_layers", None)
    candidates = []
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) > 0:
            if len({type(child) for child in module}) == 1 and not _is_norm(module[0]):
                candidates.append((name, module))
    if expected is not None:
        exact = [c for c in candidates if len(c[1]) == expected]
        candidates = exact or candidates
    if not candidates:
        raise DeltaguardError(f"logit lens: found no list of decoder layers in {type(model).__name__}")
    return max(candidates, key=lambda c: (len(c[1]), -c[0].count(".")))


def find_parts(model: nn.Module) -> LensParts:
    """Discover decoder layers, final norm and unembedding of a causal LM by structure."""
    layers_path, layers = _find_layers(model)
    parent_path, _, list_name = layers_path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    after_layers = False
    norms: list[tuple[str, nn.Module]] = []
    for name, child in parent.named_children():
        if name == list_name:
            after_layers = True
        elif after_layers and _is_norm(child):
            norms.append((name, child))
    if len(norms) != 1:
        found = ", ".join(n for n, _ in norms) or "none"
        raise DeltaguardError(
            f"logit lens: expected one final norm after {layers_path} in {type(model).__name__}, found {found}"
        )
    final_norm = norms[0][1]
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is None:
        raise DeltaguardError(f"logit lens: {type(model).__name__} has no output embedding (unembedding head)")
    embed = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    is_tied = embed is not None and getattr(embed, "weight", None) is not None and \
        head.weight.data_ptr() == embed.weight.data_ptr()
    return LensParts(layers, layers_path, final_norm, _path_of(model, final_norm), head, _path_of(model, head),
                     is_tied)


def block_parts(parts: LensParts, layer: int) -> tuple[nn.Module, nn.Module]:
    """(attention, mlp) submodules of one decoder layer, found by name or class name."""
    block = parts.layers[layer]
    attn = [m for n, m in block.named_children() if n in _ATTN_NAMES or "attention" in type(m).__name__.lower()]
    mlp = [m for n, m in block.named_children() if n in _MLP_NAMES or "mlp" in type(m).__name__.lower()]
    if len(attn) != 1 or len(mlp) != 1:
        raise DeltaguardError(
            f"logit lens: {parts.layers_path}.{layer} ({type(block).__name__}) has no single attention and MLP "
            "child; attn_out, mlp_out and resid_mid sites need one of each"
        )
    return attn[0], mlp[0]


def decode(parts: LensParts, resid: Tensor, *, is_normed: bool | Tensor = False) -> Tensor:
    """Logits of residual vectors: final norm (unless already applied), then the head, in fp32.

    resid: [..., d_model] → [..., vocab]. ``is_normed`` may be a bool tensor [...] marking rows that
    already went through the final norm (the ``final_norm`` site).
    """
    if isinstance(is_normed, bool):
        hidden = resid if is_normed else parts.final_norm(resid)
    else:
        hidden = torch.where(is_normed[..., None], resid, parts.final_norm(resid))
    return parts.head(hidden).float()


def _first(output: Any) -> Tensor:
    # transformers 5 decoder layers return a tensor; older ones and attention modules a tuple.
    return output[0] if isinstance(output, (tuple, list)) else output


def _needed(sites: tuple[Site, ...], n_layers: int) -> set[Site]:
    """Sites to hook: those asked for, what derived sites are built from, and the last layer's output."""
    need = {Site(n_layers - 1, "resid_post")}
    for site in sites:
        if site.is_component:
            assert site.layer is not None
            need |= {Site(site.layer, p) for p in ("resid_pre", "attn_out", "mlp_out", "resid_post")}
        if site.point != "resid_mid":  # derived after the pass: resid_pre + attn_out
            need.add(site)
    return need


def _tolerance(atol: float, reference: Tensor, dtype: torch.dtype) -> float:
    if dtype == torch.float32 or dtype == torch.float64:
        return atol
    # half precision: the same matmul on a different number of rows may round differently.
    return max(atol, 2e-2 * float(reference.abs().max()))


@dataclass(frozen=True)
class Capture:
    """Residuals of one batch, all positions. residuals[site]: [batch, pos, d_model]."""

    residuals: dict[Site, Tensor]
    last_layer_diff: float
    hidden_state_diff: float | None


def capture(model: nn.Module, parts: LensParts, sites: tuple[Site, ...], input_ids: Tensor, attention_mask: Tensor,
            *, atol: float = 1e-4, check_hidden_states: bool = True) -> Capture:
    """One forward pass with hooks on every needed module; hooks are removed in ``finally``.

    ``input_ids`` must be left-padded so that the last column is every row's last real token.
    Raises DeltaguardError when the last-layer check or the hidden-state parity fails.
    """
    n_layers = parts.n_layers
    need = _needed(sites, n_layers)
    store: dict[Site, Tensor] = {}
    handles = []

    def keep_output(site: Site):
        def hook(_module: nn.Module, _args: Any, output: Any) -> None:
            store[site] = _first(output)
        return hook

    def keep_input(site: Site):
        def hook(_module: nn.Module, args: tuple, kwargs: dict) -> None:
            store[site] = args[0] if args else kwargs["hidden_states"]
        return hook

    try:
        for site in sorted(need, key=lambda s: (s.layer is None, s.layer or 0, s.point)):
            if site.point == FINAL_NORM:
                handles.append(parts.final_norm.register_forward_hook(keep_output(site)))
            elif site.point == "resid_pre":
                handles.append(parts.layers[site.layer].register_forward_pre_hook(keep_input(site), with_kwargs=True))
            elif site.point == "resid_post":
                handles.append(parts.layers[site.layer].register_forward_hook(keep_output(site)))
            elif site.point in ("attn_out", "mlp_out"):
                attn, mlp = block_parts(parts, site.layer)
                module = attn if site.point == "attn_out" else mlp
                handles.append(module.register_forward_hook(keep_output(site)))
        position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        kwargs: dict[str, Any] = {"attention_mask": attention_mask, "position_ids": position_ids, "use_cache": False}
        accepted = inspect.signature(model.forward).parameters
        if "logits_to_keep" in accepted:
            kwargs["logits_to_keep"] = 1
        if check_hidden_states:
            kwargs["output_hidden_states"] = True
        with torch.inference_mode():
            output = model(input_ids, **kwargs)
    finally:
        for handle in handles:
            handle.remove()

    missing = sorted(str(s) for s in need if s not in store)
    if missing:
        raise DeltaguardError(f"logit lens: hooks did not fire for {', '.join(missing)} in {type(model).__name__}")
    with torch.inference_mode():
        for site in sites:
            if site.point == "resid_mid":
                store[site] = store[Site(site.layer, "resid_pre")] + store[Site(site.layer, "attn_out")]
        _check_blocks(parts, sites, store)
        last = Site(n_layers - 1, "resid_post")
        model_logits = output.logits[:, -1].float()  # [batch, vocab]
        lens_logits = decode(parts, store[last][:, -1])
        diff = float((lens_logits - model_logits).abs().max())
        dtype = store[last].dtype
        if not diff <= _tolerance(atol, model_logits, dtype):
            raise DeltaguardError(
                f"logit lens check failed: decoding {parts.layers_path}.{n_layers - 1} through {parts.final_norm_path} "
                f"+ {parts.head_path} differs from {type(model).__name__}'s logits by {diff:.3g} (allowed {atol:g}); "
                "the final norm or head was not found correctly for this architecture"
            )
        hidden_diff = _hidden_state_diff(parts, store, output, atol) if check_hidden_states else None
    return Capture({site: store[site] for site in sites}, diff, hidden_diff)


def _check_blocks(parts: LensParts, sites: tuple[Site, ...], store: dict[Site, Tensor]) -> None:
    """attn_out/mlp_out/resid_mid assume resid_post = resid_pre + attn_out + mlp_out; verify it."""
    for layer in sorted({s.layer for s in sites if s.is_component}):
        pre, attn, mlp, post = (store[Site(layer, p)] for p in ("resid_pre", "attn_out", "mlp_out", "resid_post"))
        diff = float((pre + attn + mlp - post).abs().max())
        relative = 1e-4 if post.dtype in (torch.float32, torch.float64) else 1e-2
        if not diff <= relative * max(1.0, float(post.abs().max())):
            raise DeltaguardError(
                f"logit lens: {parts.layers_path}.{layer} is not a plain pre-norm residual block "
                f"(resid_pre + attn_out + mlp_out differs from resid_post by {diff:.3g}); use resid_pre/resid_post sites"
            )


def _hidden_state_diff(parts: LensParts, store: dict[Site, Tensor], output: Any, atol: float) -> float | None:
    hidden = getattr(output, "hidden_states", None)
    n_layers = parts.n_layers
    if hidden is None or len(hidden) != n_layers + 1:
        return None
    pairs: list[tuple[str, Tensor, Tensor]] = []
    for site, tensor in store.items():
        if site.point == "resid_pre":
            pairs.append((str(site), tensor, hidden[site.layer]))
        elif site.point == "resid_post" and site.layer < n_layers - 1:
            pairs.append((str(site), tensor, hidden[site.layer + 1]))
    last = store[Site(n_layers - 1, "resid_post")]
    pairs.append((f"{parts.final_norm_path}(layers.{n_layers - 1}.resid_post)", parts.final_norm(last), hidden[n_layers]))
    worst = 0.0
    for name, mine, theirs in pairs:
        if mine.shape != theirs.shape:
            raise DeltaguardError(f"logit lens: captured {name} has shape {tuple(mine.shape)}, HF hidden state "
                                  f"{tuple(theirs.shape)}")
        diff = float((mine.float() - theirs.float()).abs().max())
        if not diff <= _tolerance(atol, theirs, theirs.dtype):
            raise DeltaguardError(f"logit lens: captured {name} differs from HF's hidden state by {diff:.3g} "
                                  f"(allowed {atol:g}); the layer list or final norm was not found correctly")
        worst = max(worst, diff)
    return worst
