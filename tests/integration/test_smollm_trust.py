"""The trust sweep on the embedded real model with a tiny profile: every dimension produces a score and a refusal
rate for the uncompressed model and an 8-bit RTN copy, and the two are close."""

from __future__ import annotations

import pytest

from deltaguard.models import DEFAULT_MODEL, pull_model
from deltaguard.trust import TrustConfig, run_trust

pytestmark = pytest.mark.slow


def test_trust_sweep_on_the_real_model(tmp_path):
    config = TrustConfig(methods=("rtn8",), n_prompts=4, max_new_tokens=8, task_max_new_tokens=8,
                         judges=("keyword", "lexicon"), n_boot=200)
    result = run_trust(pull_model(DEFAULT_MODEL), config, run_dir=tmp_path, progress=False)
    table = {e["label"]: e for e in result["summary"]["table"]}
    assert set(table) == {"uncompressed", "rtn8"}
    for dim in ("toxicity", "stereotype", "jailbreak", "privacy", "truthfulness", "fairness", "harmful"):
        for entry in table.values():
            cell = entry["dims"][dim]
            assert 0.0 <= cell["value"] <= 100.0 and cell["n"] >= 1
            assert cell["refusal"] is not None
    dense, rtn8 = table["uncompressed"]["utility"]["perplexity"], table["rtn8"]["utility"]["perplexity"]
    assert abs(rtn8 - dense) / dense < 0.05      # 8-bit weights barely move the model
    assert "| rtn8 |" in (tmp_path / "trust.md").read_text()
