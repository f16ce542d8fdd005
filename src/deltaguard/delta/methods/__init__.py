"""Delta compressors: one file per method, registered in ``compressors`` by importing it here."""

from deltaguard.delta.methods.base import DENSE, Calibration, Compressor, CompressorConfig, compressors
from deltaguard.delta.methods.bitdelta import BitDelta, BitDeltaConfig
from deltaguard.delta.methods.compeft import ComPeft, ComPeftConfig
from deltaguard.delta.methods.dare import Dare, DareConfig
from deltaguard.delta.methods.kbit import KBit, KBitConfig
from deltaguard.delta.methods.lowrank import LowRank, LowRankConfig
from deltaguard.delta.methods.mixed import Mixed, MixedConfig

__all__ = [
    "DENSE", "BitDelta", "BitDeltaConfig", "Calibration", "ComPeft", "ComPeftConfig", "Compressor", "CompressorConfig", "Dare", "DareConfig",
    "KBit", "KBitConfig", "LowRank", "LowRankConfig", "Mixed", "MixedConfig", "compressors",
]
