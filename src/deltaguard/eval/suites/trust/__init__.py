"""The trust dimensions (after Decoding Compressed Trust, arXiv 2403.15447), one suite each, offline.

``trust-toxicity``, ``trust-stereotype``, ``trust-jailbreak``, ``trust-privacy``, ``trust-truthfulness`` and
``trust-fairness`` each score one dimension 0–100 (higher is more trustworthy) with its refusal rate, on
its own evaluation split. Machine ethics is not among them: the paper uses the ETHICS benchmark, which no
pinned offline asset carries, and a hand-written substitute would measure our wording, not ethics.
"""

from deltaguard.eval.suites.trust import fairness as _fairness  # noqa: F401  (registers "trust-fairness")
from deltaguard.eval.suites.trust import jailbreak as _jailbreak  # noqa: F401  (registers "trust-jailbreak")
from deltaguard.eval.suites.trust import privacy as _privacy  # noqa: F401  (registers "trust-privacy")
from deltaguard.eval.suites.trust import stereotype as _stereotype  # noqa: F401  (registers "trust-stereotype")
from deltaguard.eval.suites.trust import toxicity as _toxicity  # noqa: F401  (registers "trust-toxicity")
from deltaguard.eval.suites.trust import truthfulness as _truthfulness  # noqa: F401  (registers "trust-truthfulness")

TRUST_SUITES = ("trust-toxicity", "trust-stereotype", "trust-jailbreak", "trust-privacy", "trust-truthfulness",
                "trust-fairness")

__all__ = ["TRUST_SUITES"]
