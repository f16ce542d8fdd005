"""The compressed-delta security audit: does compressing a fine-tune's delta strip the attack?

``audit(base, finetuned, threat, config, run_dir=...)`` compresses the delta (fine-tune − base) with
each method, evaluates the base, the fine-tune and every compressed variant (base + decompressed delta,
merged in memory) on the threat's own metric and on utility, and returns a table with bits per
parameter, compression ratio, utility and its relative drop, the attack metric and its mitigation
(relative % and points), each with a 95% confidence interval, plus a recommendation.

Every step is cached in ``run_dir`` under a key of its inputs and settings: compressed deltas in
``deltas/<key>/``, generations and verdicts through the evaluation core's ``Runner``
(``generations/``, ``judgments/``; resumable) and the audit itself in ``audits/<key>.json``. A rerun
does no work. Whole-model transforms (``deltaguard list transforms``) are audited beside the deltas.

Modules: ``config`` (settings), ``result`` (the table), ``compare`` (mitigation, utility drop,
recommendation) and ``run`` (the sweep).
"""

from __future__ import annotations

from deltaguard.audit.compare import recommend, with_comparisons
from deltaguard.audit.config import FULL, UNCOMPRESSED, AuditConfig
from deltaguard.audit.result import AuditResult, Interval, ModelRow
from deltaguard.audit.run import Sweep, audit, audit_path, generation_configs, load_audit

__all__ = [
    "FULL", "UNCOMPRESSED", "AuditConfig", "AuditResult", "Interval", "ModelRow", "Sweep", "audit", "audit_path",
    "generation_configs", "load_audit", "recommend", "with_comparisons",
]
