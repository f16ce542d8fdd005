"""The evaluation core: variants, one cached runner, registered suites, and ``evaluate``.

``audit``, ``eval``, the study's alignment check (and later the trust sweep) all run on it:

* ``Variant`` — what is evaluated (base + compressed delta, a directory, a transform of a model);
* ``Runner`` — the one cache of generations and judgments (one key scheme, resumable);
* ``suites`` — safety, over-refusal, utility (``deltaguard list suites``);
* ``evaluate(model, EvalConfig(...), out_dir=...)`` — suites on one model → ``EvalResult``.
"""

from deltaguard.eval.config import EvalConfig
from deltaguard.eval.evaluate import evaluate, load_sets
from deltaguard.eval.result import EvalResult, MetricRecord, summary_markdown
from deltaguard.eval.runner import CachedJudge, Runner
from deltaguard.eval.suites import Suite, SuiteContext, suites
from deltaguard.eval.variants import BasePlusDelta, Endpoint, InMemory, ModelDir, ModelSource, Transformed, Variant

__all__ = [
    "BasePlusDelta", "CachedJudge", "Endpoint", "EvalConfig", "EvalResult", "InMemory", "MetricRecord", "ModelDir", "ModelSource",
    "Runner", "Suite", "SuiteContext", "Transformed", "Variant", "evaluate", "load_sets", "suites", "summary_markdown",
]
