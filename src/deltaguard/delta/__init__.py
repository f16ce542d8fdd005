"""The delta domain: extract, compress (and calibrate), store, load and apply fine-tune deltas."""

from deltaguard.delta.apply import DeltaLinear, apply_delta, apply_delta_, attach_delta_, detach_delta_, merge
from deltaguard.delta.compress import calibrate, compress, default_methods, is_method_spec, method_from_spec
from deltaguard.delta.extract import Delta, DeltaEntry, extract_delta
from deltaguard.delta.methods import (
    BitDeltaConfig, Calibration, ComPeftConfig, CompressorConfig, DareConfig, KBitConfig, LowRankConfig, MixedConfig,
    compressors,
)
from deltaguard.delta.report import CompressionReport, TensorStats
from deltaguard.delta.store import CompressedDelta, PackedTensor, check_base, load_delta


__all__ = [
    "BitDeltaConfig", "Calibration", "ComPeftConfig", "CompressedDelta", "CompressionReport", "CompressorConfig",
    "DareConfig", "Delta", "DeltaEntry", "DeltaLinear", "KBitConfig", "LowRankConfig", "MixedConfig", "PackedTensor",
    "TensorStats", "apply_delta", "apply_delta_", "attach_delta_", "calibrate", "check_base", "compress", "compressors",
    "default_methods", "detach_delta_", "is_method_spec", "extract_delta", "load_delta", "merge", "method_from_spec",
]
