"""Evaluation suites, one file each, registered in ``suites`` (``deltaguard list suites``)."""

from deltaguard.eval.suites import over_refusal as _over_refusal  # noqa: F401  (registers "over-refusal")
from deltaguard.eval.suites import safety as _safety  # noqa: F401  (registers "safety")
from deltaguard.eval.suites import utility as _utility  # noqa: F401  (registers "utility")
from deltaguard.eval.suites import trust as _trust  # noqa: F401  (registers the trust-* dimensions)
from deltaguard.eval.suites.base import Suite, SuiteContext, suites

__all__ = ["Suite", "SuiteContext", "suites"]
