"""Prompt sets: disjoint deterministic splits, the overlap check, local files and their errors."""

from __future__ import annotations

import pytest

from deltaguard.data import (
    ALL, SPLITS, Prompt, check_disjoint, datasets, load_prompts, make_set, normalise_text, split_of,
)
from deltaguard.data.base import dedupe
from deltaguard.data.hub import parse_hub_spec
from deltaguard.errors import AssetError, ConfigError, FormatError

GENERATED = ("arith", "benign", "calib-chat")


@pytest.mark.parametrize("name", GENERATED)
def test_generated_splits_partition_the_pool_without_shared_text(name):
    member = datasets.get(name)()
    pool = dedupe(member.load_pool())
    parts = {s: load_prompts(name, split=s) for s in member.splits}
    ids = [p.id for part in parts.values() for p in part.prompts]
    assert sorted(ids) == sorted(p.id for p in pool)  # every prompt in exactly one split
    texts = {s: {normalise_text(p.text) for p in part.prompts} for s, part in parts.items()}
    for a in texts:
        for b in texts:
            if a != b:
                assert not texts[a] & texts[b]
    check_disjoint(parts["eval"], *(parts[s] for s in member.splits if s != "eval"))
    # Shares roughly as declared (hash buckets, so only roughly on a few hundred items).
    for split, part in parts.items():
        assert abs(len(part) / len(pool) - member.fractions[split]) < 0.08


def test_splits_are_deterministic_and_limit_is_a_seeded_subset():
    a = load_prompts("arith", split="eval", limit=20, seed=1)
    b = load_prompts("arith:eval", limit=20, seed=1)
    c = load_prompts("arith", split="eval", limit=20, seed=2)
    full = load_prompts("arith", split="eval")
    assert a == b and a.content_hash == b.content_hash
    assert a.ids != c.ids and a.content_hash != c.content_hash
    assert set(a.ids) <= set(full.ids) and len(a) == 20
    assert split_of("arith", a.ids[0], datasets.get("arith").fractions) == "eval"


def test_arith_answers_are_exact_integers():
    for prompt in load_prompts("arith", split="eval", limit=50).prompts:
        assert prompt.meta["answer"].lstrip("-").isdigit()
        assert prompt.text.endswith("Answer with the final number.")
    probe = next(p for p in load_prompts("arith", split=ALL).prompts if p.meta["category"] == "mul")
    numbers = [int(w) for w in probe.text.replace("?", " ").split() if w.isdigit()]
    assert int(probe.meta["answer"]) == numbers[0] * numbers[1]


def test_check_disjoint_compares_normalised_text_not_ids():
    eval_set = make_set("mine", "eval", [Prompt("e1", "How do I bake bread?"), Prompt("e2", "Tell me a joke")], "test")
    train = make_set("other", "train", [Prompt("t9", "  how do I   BAKE bread  "), Prompt("t2", "Unrelated")], "test")
    with pytest.raises(ConfigError, match="shares 1 prompt.*other:train.*e1"):
        check_disjoint(eval_set, train)
    clean = make_set("other", "train", [Prompt("e1", "Something else entirely")], "test")
    check_disjoint(eval_set, clean)  # same id in another set is not an overlap
    same_name = make_set("mine", "train", [Prompt("e2", "A rewritten joke request")], "test")
    with pytest.raises(ConfigError, match="shares 1"):
        check_disjoint(eval_set, same_name)  # same set, same id


def test_local_jsonl_csv_txt(tmp_path):
    jsonl = tmp_path / "p.jsonl"
    jsonl.write_text('{"id": "a", "prompt": "First?", "answer": 3, "topic": "x"}\n\n{"text": "Second"}\n')
    rows = load_prompts(str(jsonl), split=ALL)
    assert rows.ids == ["a", "p-00003"] and rows.prompts[0].meta == {"answer": "3", "topic": "x"}
    csv_path = tmp_path / "q.csv"
    csv_path.write_text('question,split\n"One, with comma",eval\nTwo,train\n')
    assert load_prompts(str(csv_path), split="eval").texts == ["One, with comma"]
    assert load_prompts(f"{csv_path}:train").texts == ["Two"]
    txt = tmp_path / "r.txt"
    txt.write_text("alpha\n\n  beta  \n")
    assert load_prompts(str(txt), split=ALL).texts == ["alpha", "beta"]


@pytest.mark.parametrize("name,content,message", [
    ("empty.jsonl", "", "holds no prompts"),
    ("blank.txt", "\n  \n", "holds no prompts"),
    ("bad.jsonl", '{"text": "ok"}\n{"text": broken}\n', "line 2 is not valid JSON"),
    ("list.jsonl", '["text"]\n', "line 1 is not a JSON object"),
    ("nocol.jsonl", '{"body": "x"}\n', "has none of the columns"),
    ("emptytext.jsonl", '{"text": "  "}\n', "must be a non-empty string"),
    ("dup.jsonl", '{"id": 1, "text": "a"}\n{"id": 1, "text": "b"}\n', "repeats id '1'"),
    ("mixed.jsonl", '{"text": "a", "split": "eval"}\n{"text": "b"}\n', "either every row has a 'split'"),
    ("badsplit.jsonl", '{"text": "a", "split": "test"}\n', "split 'test'"),
    ("cells.csv", "text\na,b\n", "more cells than the header"),
])
def test_malformed_files_raise_format_error(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(FormatError, match=message):
        load_prompts(str(path), split=ALL)


def test_bad_specs_raise_config_error(tmp_path):
    with pytest.raises(ConfigError, match="did you mean advbench"):
        load_prompts("advbnch")
    with pytest.raises(ConfigError, match="does not exist"):
        load_prompts(str(tmp_path / "missing.jsonl"))
    with pytest.raises(ConfigError, match="must end in"):
        (tmp_path / "p.parquet").write_text("x")
        load_prompts(str(tmp_path / "p.parquet"))
    with pytest.raises(ConfigError, match="split 'dev'"):
        load_prompts("arith", split="dev")
    with pytest.raises(ConfigError, match="limit=0"):
        load_prompts("arith", limit=0)
    with pytest.raises(ConfigError, match="no 'train' split"):
        load_prompts("pyrit-refusal", split="train")
    with pytest.raises(ConfigError, match="hf:org/name"):
        parse_hub_spec("hf:justname")
    with pytest.raises(ConfigError, match="colum"):
        parse_hub_spec("hf:org/name?colum=x")
    assert parse_hub_spec("hf:org/name?column=goal&split=test") == ("org/name", {"column": "goal", "split": "test"})


def test_hub_sets_fail_clearly_without_datasets_or_network():
    try:
        import datasets  # noqa: F401
    except ImportError:
        with pytest.raises(AssetError, match="needs the 'datasets' package"):
            load_prompts("hf:walledai/AdvBench")
    else:  # installed, but the hub is unreachable here
        with pytest.raises(AssetError, match="could not load"):
            load_prompts("hf:deltaguard-test/does-not-exist")


def test_splits_constant_is_the_interface():
    assert SPLITS == ("calib", "train", "eval")
