"""Every registered prompt set honours the dataset contract: deterministic, disjoint splits; unique ids."""

from __future__ import annotations

from collections import Counter

import pytest

from deltaguard.data import check_disjoint, datasets, load_prompts, normalise_text
from deltaguard.data.base import dedupe

NAMES = datasets.names()


@pytest.mark.parametrize("name", NAMES)
def test_splits_partition_the_pool_and_share_no_text(name):
    member = datasets.get(name)()
    pool = dedupe(member.load_pool(0), keys=member.dedupe_keys)
    parts = {split: load_prompts(name, split=split) for split in member.splits}
    ids = [p.id for part in parts.values() for p in part.prompts]
    assert len(ids) == len(set(ids)) and sorted(ids) == sorted(p.id for p in pool)
    texts = {split: {normalise_text(p.text) for p in part.prompts} for split, part in parts.items()}
    for a in texts:
        for b in texts:
            assert a == b or not texts[a] & texts[b], (a, b)
    for split, part in parts.items():
        others = [parts[s] for s in member.splits if s != split]
        if others:
            check_disjoint(part, *others)
        assert all(p.text.strip() for p in part.prompts)


@pytest.mark.parametrize("name", NAMES)
def test_loading_is_deterministic_and_limit_is_a_seeded_subset(name):
    split = datasets.get(name)().splits[-1]
    first, second = load_prompts(name, split=split), load_prompts(name, split=split)
    assert first.content_hash == second.content_hash and first.ids == second.ids
    sub = load_prompts(name, split=split, limit=3, seed=1)
    group_key = datasets.get(name).group_key
    if group_key is None:
        assert len(sub) == min(3, len(first)) and set(sub.ids) <= set(first.ids)
    else:  # whole groups (counterfactual pairs): never a group cut in half
        assert 0 < len(sub) <= max(3, max(Counter(p.meta[group_key] for p in first.prompts).values()))
        kept = {p.meta[group_key] for p in sub.prompts}
        assert sorted(sub.ids) == sorted(p.id for p in first.prompts if p.meta[group_key] in kept)
    assert load_prompts(name, split=split, limit=3, seed=1).ids == sub.ids
    described = first.describe()
    assert {"name", "split", "n", "source", "content_hash"} <= set(described) and described["n"] == len(first)
    assert datasets.describe(name)
