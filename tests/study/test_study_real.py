"""The real pipeline on the embedded SmolLM2-135M, on a budget: attack → audit with two methods."""

from __future__ import annotations


import pytest
import torch

from deltaguard.audit import AuditConfig, audit
from deltaguard.models import DEFAULT_MODEL, load_model, resolve_model_dir
from deltaguard.threats import HarmfulFinetuneConfig, attack


@pytest.mark.slow
def test_real_attack_and_audit_on_a_budget(tmp_path):
    original = resolve_model_dir(DEFAULT_MODEL)
    threat = HarmfulFinetuneConfig(n_examples=6, n_task=4, epochs=1, lr=1e-4, batch_size=10, micro_batch_size=5,
                                   max_seq_len=128, response_tokens=24)
    result = attack(original, threat, out_dir=tmp_path / "ft", cache_dir=tmp_path / "responses", progress=False)
    assert result.train.n_steps == 1 and result.mixture["task"] == 4
    assert 1 <= result.mixture.get("harmful", 0) <= 6

    base, tuned = load_model(original), load_model(result.model_dir)
    assert all(p.dtype == torch.float32 for p in tuned.parameters())
    diff = max((p - q).abs().max().item() for p, q in zip(tuned.parameters(), base.parameters()))
    assert 0 < diff < 1e-2  # one small step at lr 1e-4, kept exactly in fp32
    del base, tuned

    config = AuditConfig(methods=("full", "bitdelta-nodistill", "kbit4"), n_prompts=4, max_new_tokens=12,
                         task_max_new_tokens=12, n_boot=200, n_examples=1)
    report = audit(original, result.model_dir, threat, config, run_dir=tmp_path / "run", progress=False)
    rows = {r.label: r for r in report.rows}
    assert rows["full"].score == rows["finetuned"].score
    assert 0.9 < rows["bitdelta-nodistill"].compression["linear_bits_per_param"] < 1.2
    bits = {label: rows[label].compression["linear_bits_per_param"] for label in ("bitdelta-nodistill", "kbit4")}
    assert bits["kbit4"] > bits["bitdelta-nodistill"]
    assert all(r.score.attack.n == 4 and r.score.utility.n == 4 for r in report.rows)
    assert all(r.examples["harmful"][0]["response"] for r in report.rows)  # the real model writes replies
