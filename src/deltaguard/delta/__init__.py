"""The delta domain: extract, compress (and calibrate), store, load and apply fine-tune deltas."""

from deltaguard.delta.apply import DeltaLinear, apply_delta, apply_delta_, attach_delta_, detach_delta_, merge
from deltaguard.delta.compress import compress, method_from_spec
from deltaguard.delta.extract import Delta, DeltaEntry, extract_delta
from deltaguard.delta.methods import (
    BitDeltaConfig, ComPeftConfig, CompressorConfig, DareConfig, KBitConfig, LowRankConfig, MixedConfig, compressors,
)
from deltaguard.delta.report import CompressionReport, TensorStats
from deltaguard.delta.store import CompressedDelta, PackedTensor, check_base, load_delta


def calibrate(packed: CompressedDelta, *, base=None, finetuned=None, calib: list[str], progress: bool = True) -> CompressedDelta:
    """Rerun a method's calibration step (BitDelta scale distillation) on a compressed delta."""
    from deltaguard.delta.distill import distill_scales
    from deltaguard.errors import ConfigError

    if packed.config.name != "bitdelta":
        raise ConfigError(f"{packed.config.name} has no calibration step")
    return distill_scales(packed, calib, base=base, finetuned=finetuned, progress=progress)


__all__ = [
    "BitDeltaConfig", "ComPeftConfig", "CompressedDelta", "CompressionReport", "CompressorConfig", "DareConfig", "Delta",
    "DeltaEntry", "DeltaLinear", "KBitConfig", "LowRankConfig", "MixedConfig", "PackedTensor", "TensorStats",
    "apply_delta", "apply_delta_", "attach_delta_", "calibrate", "check_base", "compress", "compressors",
    "detach_delta_", "extract_delta", "load_delta", "merge", "method_from_spec",
]
