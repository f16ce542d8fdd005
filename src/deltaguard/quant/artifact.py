"""A quantized model on disk and its loader (no pickle).

A quantized model directory holds:

- ``model.safetensors`` — for every ``QuantLinear``: ``<name>.codes`` (uint8 in ``quant.linear.code_layout``:
  two a byte at 4 bits, one at 8, bit planes at other widths), ``<name>.step`` (float32) and ``<name>.zero`` (uint8) per row or group, the bias if any; every other
  tensor (embedding, norms with their folded smoothing, an untied head) in float;
- ``config.json`` and the tokenizer files, so ``load_model`` builds the architecture;
- ``probes.safetensors`` + ``probes.json`` when Q-realign made it (``quant.probes``);
- ``quantized.json`` — format, version, the scheme (bits, group size), the names of the quantized linears,
  the sha256 of every other file and the method's record (calibration, probes, timings).

``models.load_model`` recognises the directory and calls ``load_quantized``, so every verb that takes a
model (``eval``, ``serve``, ``lens``, ``audit``) runs a quantized model as it is.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from deltaguard.errors import FormatError
from deltaguard.io import atomic_dir, read_json, sha256_file, write_json

FORMAT = "deltaguard-quantized"
FORMAT_VERSION = 2          # 2: codes of 2, 3, 5, 6 and 7 bits are bit planes (version 1 stored them as
READABLE_VERSIONS = (1, 2)  # nibbles or bytes; a version-1 directory is read and converted on load)
MANIFEST = "quantized.json"
WEIGHTS = "model.safetensors"


def is_quantized_dir(path: str | Path) -> bool:
    return (Path(path) / MANIFEST).is_file()


def _tensors(model: nn.Module) -> dict[str, Any]:
    """The state dict without a tied head (it is the embedding) and without shared storage."""
    tied = getattr(getattr(model, "config", None), "tie_word_embeddings", False)
    out = {}
    for name, tensor in model.state_dict().items():
        if tied and name == "lm_head.weight":
            continue
        out[name] = tensor.detach().contiguous().clone()
    return out


def save_quantized(model: nn.Module, tokenizer: Any, out_dir: str | Path, *, record: dict[str, Any],
                   overwrite: bool = False, extra: Callable[[Path], None] | None = None) -> Path:
    """Write a model whose linears are ``QuantLinear`` atomically (the directory appears when complete);
    ``extra(dir)`` adds files of its own (Q-realign's probes), which the manifest's checksums then cover."""
    from safetensors.torch import save_file

    from deltaguard.quant.linear import QuantLinear

    quantized = {name: m for name, m in model.named_modules() if isinstance(m, QuantLinear)}
    if not quantized:
        raise FormatError("the model has no quantized linear layers to save")
    first = next(iter(quantized.values()))
    with atomic_dir(out_dir, overwrite=overwrite) as tmp:
        model.config.save_pretrained(tmp)
        save_file(_tensors(model), str(tmp / WEIGHTS), metadata={"format": FORMAT})
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        if extra is not None:
            extra(tmp)
        files = {p.name: sha256_file(p) for p in sorted(tmp.iterdir()) if p.is_file()}
        write_json(tmp / MANIFEST, {
            "format": FORMAT, "format_version": FORMAT_VERSION,
            "scheme": {"w_bits": first.w_bits, "a_bits": first.a_bits, "group_size": first.group_size},
            "quantized": sorted(quantized), "files": files, "record": record})
    return Path(out_dir)


def read_manifest(path: str | Path) -> dict[str, Any]:
    """The verified manifest: every listed file present and unedited; one-line FormatError otherwise."""
    path = Path(path)
    manifest = read_json(path / MANIFEST, what="quantized-model manifest")
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise FormatError(f"{path / MANIFEST} is not a {FORMAT} manifest")
    if manifest.get("format_version") not in READABLE_VERSIONS:
        raise FormatError(f"{path}: quantized format version {manifest.get('format_version')!r} is not supported "
                          f"(this deltaguard reads {', '.join(map(str, READABLE_VERSIONS))})")
    files, scheme = manifest.get("files"), manifest.get("scheme")
    if not isinstance(files, dict) or WEIGHTS not in files or not isinstance(scheme, dict) \
            or not isinstance(manifest.get("quantized"), list):
        raise FormatError(f"{path / MANIFEST} lacks its file list, scheme or quantized layers")
    for name, digest in files.items():
        if not (path / name).is_file():
            raise FormatError(f"{path} is missing {name}")
        if sha256_file(path / name) != digest:
            raise FormatError(f"{path / name} does not match its checksum (edited or damaged)")
    return manifest


def load_quantized(path: str | Path, *, device: torch.device | str = "cpu",
                   dtype: torch.dtype = torch.float32) -> nn.Module:
    """Rebuild a model saved by ``save_quantized`` (eval mode, on ``device``; float tensors in ``dtype``).

    Users reach it through ``models.load_model``, which resolves the device and dtype names first."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForCausalLM

    from deltaguard.modules import get_module, replace_module
    from deltaguard.quant.linear import QuantLinear, code_layout, pack_weight_codes, unpack_nibbles

    path = Path(path)
    manifest = read_manifest(path)
    scheme = manifest["scheme"]
    try:
        config = AutoConfig.from_pretrained(path)
        model = AutoModelForCausalLM.from_config(config)   # random init, overwritten below (a second at 135M)
        tensors = load_file(str(path / WEIGHTS))
    except (OSError, ValueError, SafetensorError) as exc:
        raise FormatError(f"{path} could not be read ({str(exc).splitlines()[0]})") from None
    for name in manifest["quantized"]:
        try:
            linear = get_module(model, name)
            codes, step, zero = tensors[f"{name}.codes"], tensors[f"{name}.step"], tensors[f"{name}.zero"]
        except (KeyError, AttributeError, ValueError):
            raise FormatError(f"{path}: quantized layer {name} is not in the model or its tensors are missing") from None
        w_bits = int(scheme["w_bits"])
        if manifest["format_version"] == 1 and code_layout(w_bits) == "planes":  # stored before bit planes
            codes = pack_weight_codes(unpack_nibbles(codes, linear.in_features) if w_bits < 4 else codes, w_bits)
            tensors[f"{name}.codes"] = codes   # the state dict loaded below must carry the new layout too
        replace_module(model, name, QuantLinear(codes, step, zero, tensors.get(f"{name}.bias"),
                                                in_features=linear.in_features, w_bits=w_bits,
                                                a_bits=int(scheme["a_bits"]), group_size=int(scheme["group_size"])))
    try:
        missing, unexpected = model.load_state_dict(tensors, strict=False)
    except RuntimeError as error:
        raise FormatError(f"{path}: the tensors do not fit the model ({str(error).splitlines()[-1].strip()})") from None
    tied = getattr(config, "tie_word_embeddings", False)
    missing = [m for m in missing if not (tied and m == "lm_head.weight")]
    if missing or unexpected:
        raise FormatError(f"{path}: the tensors do not fit the model: missing {sorted(missing)[:3]}, "
                          f"unexpected {sorted(unexpected)[:3]}")
    if tied:
        model.tie_weights()
    for param in model.parameters():
        param.data = param.data.to(dtype)
    return model.to(device).eval()


def stored_bits(model: nn.Module) -> dict[str, float]:
    """Bits per parameter of the quantized model as stored: all tensors (float ones at 16 bits, as a deployed
    model keeps them) and the quantized linears alone (codes plus their grids)."""
    from deltaguard.quant.linear import QuantLinear

    linear_bits = linear_params = other_params = 0
    quantized_names = set()
    for name, module in model.named_modules():
        if isinstance(module, QuantLinear):
            linear_bits += module.stored_bits()
            linear_params += module.in_features * module.out_features
            quantized_names.update(f"{name}.{b}" for b, _ in module.named_buffers())
    seen = set()
    for name, tensor in model.state_dict().items():
        if name in quantized_names or tensor.untyped_storage().data_ptr() in seen:
            continue
        seen.add(tensor.untyped_storage().data_ptr())
        other_params += tensor.numel()
    total = linear_params + other_params
    return {"bits_per_param": (linear_bits + 16 * other_params) / total,
            "linear_bits_per_param": linear_bits / linear_params if linear_params else float("nan")}


__all__ = ["FORMAT", "FORMAT_VERSION", "MANIFEST", "READABLE_VERSIONS", "is_quantized_dir", "load_quantized",
           "read_manifest", "save_quantized", "stored_bits"]
