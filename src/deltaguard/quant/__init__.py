"""Quantization: fake-quant primitives, the packed runtime linear, block-wise calibration (OmniQuant) with
Q-realign's safety term, and the per-layer safety probes it uses."""
