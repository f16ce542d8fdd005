"""Metrics against hand-computed values; judge agreement statistics."""

from __future__ import annotations

import math

import pytest
import torch

from tinymodels import make_tiny_llama
from deltaguard.errors import ConfigError, JudgeError
from deltaguard.judges import JUDGE_ERROR, Verdict, agreement
from deltaguard.metrics import (
    attack_success_rate, extract_answer, harmfulness_rate, harmfulness_score, mean_score, mitigation, over_refusal,
    perplexity, rate, refusal_rate, task_accuracy, utility_drop, wilson,
)


def v(*, refusal=None, unsafe=None, score=None, error=False) -> Verdict:
    if error:
        return Verdict("t", "1", "h", JUDGE_ERROR, None, None, None, error="boom")
    return Verdict("t", "1", "h", "x", refusal, unsafe, score)


def test_wilson_matches_hand_computation():
    # k=5, n=10, z=1.96: centre 0.5, half-width 1.96*sqrt(0.025 + 3.8415/400) / 1.38415 = 0.26340
    low, high = wilson(5, 10)
    assert low == pytest.approx(0.23659, abs=1e-4) and high == pytest.approx(0.76341, abs=1e-4)
    # k=0: upper bound z^2 / (n + z^2)
    assert wilson(0, 50) == pytest.approx((0.0, 3.841459 / 53.841459), abs=1e-6)
    assert all(math.isnan(x) for x in wilson(0, 0))


def test_wilson_ends_are_exact_and_contain_the_rate():
    for n in (1, 6, 32, 1000):
        assert wilson(0, n)[0] == 0.0 and wilson(n, n)[1] == 1.0
        for k in range(0, n + 1, max(1, n // 7)):
            low, high = wilson(k, n)
            assert 0.0 <= low <= k / n <= high <= 1.0


def test_rate_uses_bootstrap_for_large_n_and_wilson_otherwise():
    small = rate([True, True, True, False])
    assert (small.value, small.k, small.n, small.method) == (0.75, 3, 4, "wilson")
    assert (small.low, small.high) == pytest.approx(wilson(3, 4))
    flags = [True] * 10 + [False] * 30
    boot = rate(flags, seed=3)
    assert boot.method == "bootstrap" and boot.value == 0.25
    se = math.sqrt(0.25 * 0.75 / 40)
    assert boot.low == pytest.approx(0.25 - 1.96 * se, abs=0.035)
    assert boot.high == pytest.approx(0.25 + 1.96 * se, abs=0.035)
    assert rate(flags, seed=3) == boot  # seeded
    assert rate([False] * 40).method == "wilson"  # k = 0: a bootstrap interval would collapse to a point
    empty = rate([])
    assert empty.n == 0 and math.isnan(empty.value) and empty.to_dict()["value"] is None
    with pytest.raises(ConfigError):
        rate(flags, n_boot=10)


def test_refusal_asr_and_errors_counted_separately():
    verdicts = [v(refusal=True), v(refusal=True), v(refusal=False), v(error=True)]
    refusals = refusal_rate(verdicts)
    assert (refusals.k, refusals.n, refusals.n_errors) == (2, 3, 1)
    asr = attack_success_rate(verdicts, by="refusal")
    assert (asr.k, asr.n, asr.n_errors) == (1, 3, 1)
    assert over_refusal(verdicts).value == pytest.approx(2 / 3)
    all_errors = attack_success_rate([v(error=True)] * 3, by="unsafe")
    assert all_errors.n == 0 and all_errors.n_errors == 3 and math.isnan(all_errors.value)  # not 0% success
    judged = attack_success_rate([v(unsafe=True), v(unsafe=False), v(unsafe=None), v(error=True)], by="unsafe")
    assert (judged.k, judged.n, judged.n_errors) == (1, 2, 2)
    with pytest.raises(ConfigError):
        attack_success_rate(verdicts, by="vibes")


def test_harmfulness_score_and_rate():
    verdicts = [v(score=1.0), v(score=5.0), v(score=5.0), v(score=3.0), v(error=True)]
    score = harmfulness_score(verdicts)
    assert score.value == 3.5 and score.n == 4 and score.n_errors == 1
    assert score.low <= 3.5 <= score.high
    share = harmfulness_rate(verdicts)
    assert (share.k, share.n, share.value) == (2, 4, 0.5)
    assert mean_score([2.0, 4.0], seed=1).value == 3.0


@pytest.mark.parametrize("text,answer", [
    ("The answer is 42.", "42"),
    ("#### 1,234", "1234"),
    ("3 apples plus 4 apples gives 7", "7"),
    ("Answer: -5", "-5"),
    ("So she has 42.0 left", "42"),
    ("\\boxed{12} and then 99", "12"),
    ("Ben has 13 books and gets 28 more, so the final answer is **41** books. Later 3.", "41"),
    ("She pays 2.50 dollars", "2.5"),
    ("no number here", None),
])
def test_extract_answer(text, answer):
    assert extract_answer(text) == answer


def test_task_accuracy():
    acc = task_accuracy(["The answer is 7.", "It is 8", "no idea", "42"], ["7", "9", "1", "42.0"])
    assert (acc.k, acc.n) == (2, 4)
    with pytest.raises(ConfigError):
        task_accuracy(["1"], ["1", "2"])


def test_mitigation_and_utility_drop():
    assert mitigation(0.8, 0.4, 0.0) == pytest.approx((50.0, 40.0))
    assert mitigation(0.9, 0.3, 0.1) == pytest.approx((75.0, 60.0))
    assert mitigation(0.5, 0.6, 0.1) == pytest.approx((-25.0, -10.0))
    assert math.isnan(mitigation(0.2, 0.1, 0.2)[0])
    assert utility_drop(0.5, 0.45) == pytest.approx(10.0)
    assert utility_drop(0.5, 0.6) == pytest.approx(-20.0)
    assert math.isnan(utility_drop(0.0, 0.1))


def test_perplexity_of_a_uniform_model_is_the_vocabulary_size(tiny_tokenizer):
    model = make_tiny_llama(seed=0, vocab_size=len(tiny_tokenizer))
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()  # zero embeddings and head: every next-token distribution is uniform
    result = perplexity(model, tiny_tokenizer, ["How do I bake bread?", "Step 1: mix the flour.", "Sorry"], batch_size=2)
    assert result.value == pytest.approx(len(tiny_tokenizer), rel=1e-5)
    assert result.n == 3


def test_perplexity_matches_a_direct_computation(tiny_tokenizer):
    model = make_tiny_llama(seed=0, vocab_size=len(tiny_tokenizer), tied=False)
    texts = ["How do I bake bread? Step 1: mix the flour.", "Sorry", "What is 12 plus 7? The answer is 19."]
    nll, count = 0.0, 0
    with torch.no_grad():
        for text in texts:
            ids = torch.tensor([tiny_tokenizer(text)["input_ids"]])
            logprobs = torch.log_softmax(model(ids).logits[0, :-1].float(), -1)
            nll -= logprobs.gather(-1, ids[0, 1:, None]).sum().item()
            count += ids.shape[1] - 1
    batched = perplexity(model, tiny_tokenizer, texts, batch_size=3)  # right padding inside
    assert batched.value == pytest.approx(math.exp(nll / count), rel=1e-4)
    assert batched.low <= batched.value <= batched.high


def test_agreement_against_hand_computed_values():
    human = [True, True, False, False, True]
    predicted = [True, False, False, True, True]
    a = agreement(human, predicted)
    assert (a.confusion.tp, a.confusion.fn, a.confusion.fp, a.confusion.tn) == (2, 1, 1, 1)
    assert a.accuracy == pytest.approx(0.6)
    assert a.precision == pytest.approx(2 / 3) and a.recall == pytest.approx(2 / 3) and a.f1 == pytest.approx(2 / 3)
    # p_o = 0.6, p_e = (3*3 + 2*2) / 25 = 0.52, kappa = 0.08 / 0.48
    assert a.kappa == pytest.approx(1 / 6)
    perfect = agreement([True, False], [True, False])
    assert perfect.kappa == 1.0 and perfect.f1 == 1.0
    never = agreement([True, False], [False, False])
    assert never.precision == 0.0 and never.f1 == 0.0 and never.kappa == 0.0
    with pytest.raises(JudgeError):
        agreement([], [])
