"""Compressed trust: does compressing a whole model (or only its delta) cost trustworthiness?

``run_trust(model, config, run_dir=...)`` compresses one model with every configured method (RTN, GPTQ,
AWQ at 3/4/8 bits; magnitude, Wanda, SparseGPT pruning; with a base, delta compressors too), evaluates
each variant on the offline trust dimensions (``eval.suites.trust``) plus plain harmful requests and
utility, and writes a method × dimension table with refusal rates, drops from the uncompressed model
with intervals, flags, the paper's claims checked (arXiv 2403.15447) and a heatmap.

Modules: ``config`` (settings and profiles), ``run`` (the sweep), ``summary`` (table, flags, claims, plot).
"""

from deltaguard.trust.config import DELTA_DEFAULTS, PROFILES, TrustConfig, trust_profile
from deltaguard.trust.run import REFERENCE, TrustRow, run_trust
from deltaguard.trust.summary import markdown, summarise

__all__ = ["DELTA_DEFAULTS", "PROFILES", "REFERENCE", "TrustConfig", "TrustRow", "markdown", "run_trust", "summarise",
           "trust_profile"]
