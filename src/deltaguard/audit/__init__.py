"""The compressed-delta security audit: does compressing a fine-tune's delta strip the attack?

``audit(base, finetuned, threat, config, run_dir=...)`` compresses the delta (fine-tune − base) with
each method, evaluates the base, the fine-tune and every compressed variant (base + decompressed delta,
merged in memory) on the threat's own metric and on utility, and returns a table with bits per
parameter, compression ratio, utility and its relative drop, the attack metric and its mitigation
(relative % and points), each with a 95% confidence interval, plus a recommendation.

Every step is cached in ``run_dir`` under a key of its inputs and settings: compressed deltas in
``deltas/<key>/``, generations in ``generations/<key>.jsonl`` (resumable), verdicts in
``judgments/<key>.jsonl`` and the audit itself in ``audits/<key>.json``. A rerun does no work.

Modules: ``config`` (settings), ``result`` (the table), ``cache`` (replies and verdicts),
``compare`` (mitigation, utility drop, recommendation) and ``run`` (the audit itself).
"""

from __future__ import annotations

from deltaguard.audit.cache import CachedJudge, generate_cached, generation_configs, generation_path
from deltaguard.audit.compare import recommend, with_comparisons
from deltaguard.audit.config import DEFAULT_METHODS, FIDELITY_SWEEP, FULL, UNCOMPRESSED, AuditConfig
from deltaguard.audit.result import AuditResult, Interval, ModelRow
from deltaguard.audit.run import audit, audit_path, calibration_texts, load_audit

__all__ = [
    "DEFAULT_METHODS", "FIDELITY_SWEEP", "FULL", "UNCOMPRESSED", "AuditConfig", "AuditResult", "CachedJudge", "Interval", "ModelRow",
    "audit", "audit_path", "calibration_texts", "generate_cached", "generation_configs", "generation_path",
    "load_audit", "recommend", "with_comparisons",
]
