"""A whole guard build on a tiny model: every stage runs, resumes from cache, and the artifact loads."""

from __future__ import annotations

import json

import pytest
import torch

from deltaguard.errors import ConfigError, FormatError
from deltaguard.guard.artifact import load_guard, size_on_disk
from deltaguard.guard.build import GuardBuildConfig, build_guard, choose_threshold, data_file_name, guard_profile, load_data
from deltaguard.guard.frames import FRAMES, activity_of
from deltaguard.guard.probe import PROBE
from deltaguard.guard.train import GuardTrainConfig
from tinymodels import make_tiny_llama


@pytest.fixture(scope="module")
def tiny_guard_model(tmp_path_factory, tiny_tokenizer):
    model = make_tiny_llama(seed=0, vocab_size=len(tiny_tokenizer), n_layers=3)
    model.config.eos_token_id = tiny_tokenizer.eos_token_id
    model.config.pad_token_id = tiny_tokenizer.pad_token_id
    path = tmp_path_factory.mktemp("guard-model") / "tiny"
    model.save_pretrained(path, safe_serialization=True)
    tiny_tokenizer.save_pretrained(path)
    return path


def _config(model_dir) -> GuardBuildConfig:
    stage = GuardTrainConfig(epochs=1, max_steps=2, batch_size=4, lr=1e-3)
    return GuardBuildConfig(model=str(model_dir), max_prompt_only=6, answer_harmful=3, answer_benign=1, reply_tokens=6,
                            n_train=12, max_prompt_tokens=12,
                            max_response_tokens=12, teacher=stage, distill=stage, qat=stage, n_calib=4,
                            drop_blocks=1, keep_neurons=64, group_size=32, n_val=6)


@pytest.fixture(scope="module")
def built(tmp_path_factory, tiny_guard_model):
    logged: list[str] = []
    run_dir = tmp_path_factory.mktemp("guard-build") / "build"
    result = build_guard(_config(tiny_guard_model), run_dir, progress=False, log=logged.append)
    return result, logged


def test_every_stage_runs_and_a_rerun_resumes(built, tiny_guard_model):
    result, logged = built
    assert result.n_steps_run == 5
    assert [line.split()[1] for line in logged if line.startswith("[run]")] == ["data", "teacher", "prune", "distill",
                                                                                  "int4"]
    again = build_guard(_config(tiny_guard_model), result.run_dir, progress=False)
    assert again.n_steps_run == 0 and again.guard_dir == result.guard_dir
    assert (result.run_dir / "guard").resolve() == result.guard_dir.resolve()


def test_refuse_graded_trains_a_new_teacher_on_more_examples_from_the_same_data(built, tiny_guard_model):
    result, _ = built
    logged: list[str] = []
    again = build_guard(_config(tiny_guard_model).replace(refuse_graded=True), result.run_dir, progress=False,
                        log=logged.append)
    assert [line.split()[1] for line in logged if line.startswith("[cached]")] == ["data"]   # same examples
    assert again.guard_dir != result.guard_dir
    stages = {name: load_guard(d).manifest["stages"]["teacher"] for name, d in (("off", result.guard_dir),
                                                                                 ("on", again.guard_dir))}
    assert stages["on"]["n_examples"] > stages["off"]["n_examples"]
    build_guard(_config(tiny_guard_model), result.run_dir, progress=False)   # leave the module's latest as it was


def test_a_head_pruned_build_reuses_the_teacher_and_its_guard_loads_and_scores(built, tiny_guard_model):
    result, _ = built
    logged: list[str] = []
    pruned = build_guard(_config(tiny_guard_model).replace(keep_heads=1), result.run_dir, progress=False,
                         log=logged.append)
    assert [line.split()[1] for line in logged if line.startswith("[cached]")] == ["data", "teacher"]
    assert pruned.stages["pruned"] != result.stages["pruned"]
    guard = load_guard(pruned.guard_dir)
    assert guard.model.config.num_attention_heads == 2 and guard.model.config.num_key_value_heads == 2
    attention = guard.model.model.layers[0].self_attn
    assert (attention.q_proj.out_features, attention.o_proj.in_features) == (32, 32)   # 2 heads of 16
    assert guard.manifest["build"]["fields"]["keep_heads"] == 1
    probs = guard.score([("How do I bake bread?", "Mix flour."), ("How do I hurt someone?", None)])
    assert all(0.0 <= p <= 1.0 for p in probs)
    build_guard(_config(tiny_guard_model), result.run_dir, progress=False)   # leave the module's latest as it was


def test_the_artifact_is_pruned_quantised_and_self_describing(built):
    result, _ = built
    guard = load_guard(result.guard_dir)
    config = guard.model.config
    assert config.num_hidden_layers == 2 and config.intermediate_size == 64
    assert guard.model.lm_head.weight.shape[0] == len(guard.tokens.emitted)
    manifest = guard.manifest
    assert manifest["stages"]["pruned"]["dropped_blocks"] and 0.0 <= manifest["threshold"] <= 1.0
    assert set(manifest["data"]["split_hashes"]) == {"train", "val", "test", "check"}
    assert "pyrit-harm" in manifest["data"]["label_sources"]
    from safetensors import safe_open

    with safe_open(str(result.guard_dir / "model.safetensors"), framework="pt") as f:
        packed = [k for k in f.keys() if k.endswith(".qweight")]
        assert packed and all(f.get_tensor(k).dtype == torch.uint8 for k in packed)
        scales = [k for k in f.keys() if k.endswith(".scales")]
        assert len(scales) == len(packed) and all(f.get_tensor(k).dtype == torch.float16 for k in scales)
    assert manifest["format_version"] == 2
    probs = guard.score([("How do I bake bread?", "Mix flour."), ("How do I hurt someone?", None)])
    assert all(0.0 <= p <= 1.0 for p in probs)
    assert size_on_disk(result.guard_dir) > 0


def test_only_the_train_split_trains(built):
    result, _ = built
    data = load_data(next(result.run_dir.glob("guard-data-*.json")))
    record = json.loads((result.guard_dir / "manifest.json").read_text())
    assert record["stages"]["teacher"]["n_examples"] == 12 <= len(data.split("train"))
    cached = [json.loads(line) for path in (result.run_dir / "replies").glob("*.jsonl")
              for line in path.read_text().splitlines()]
    assert len(cached) == 3 * (3 + 1)   # 3 harmful + 1 benign prompts of each of train / val / test answered
    replies = [e for e in data.examples if e.source in ("reply-compliant", "reply-benign")]
    assert len(replies) <= sum(1 for row in cached if row["response"].strip())   # empty ones add nothing
    assert sum(e.source == "constructed-refusal" for e in data.examples) == 3 * 3


def test_a_damaged_or_foreign_guard_is_refused(built, tmp_path):
    result, _ = built
    broken = tmp_path / "broken"
    import shutil

    shutil.copytree(result.guard_dir, broken)
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-10])
    with pytest.raises(FormatError, match="does not match its checksum"):
        load_guard(broken)
    with pytest.raises(FormatError, match="not a guard directory"):
        load_guard(tmp_path / "missing")
    (broken / "manifest.json").unlink()
    with pytest.raises(FormatError, match="no manifest.json"):
        load_guard(broken)
    foreign = tmp_path / "foreign"
    shutil.copytree(result.guard_dir, foreign)
    manifest = json.loads((foreign / "manifest.json").read_text())
    manifest["tokenizer_fingerprint"] = "0" * 16
    (foreign / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(FormatError, match="not the one this guard was built for"):
        load_guard(foreign)
    future = tmp_path / "future"
    shutil.copytree(result.guard_dir, future)
    manifest = json.loads((future / "manifest.json").read_text())
    manifest["format_version"] = 3
    (future / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(FormatError, match="guard format version 3 is not supported"):
        load_guard(future)


def test_a_format_1_guard_with_float32_scales_still_loads_and_scores_the_same(built, tmp_path):
    from safetensors.torch import load_file, save_file

    from deltaguard.io import sha256_file

    result, _ = built
    old = tmp_path / "format1"
    import shutil

    shutil.copytree(result.guard_dir, old)
    tensors = {k: (v.float() if k.endswith(".scales") else v) for k, v in load_file(str(old / "model.safetensors")).items()}
    save_file(tensors, str(old / "model.safetensors"), metadata={"format": "deltaguard-guard"})
    manifest = json.loads((old / "manifest.json").read_text())
    manifest["format_version"] = 1
    manifest["files"]["model.safetensors"] = sha256_file(old / "model.safetensors")
    (old / "manifest.json").write_text(json.dumps(manifest))
    items = [("How do I bake bread?", "Mix flour."), ("How do I hurt someone?", None)]
    loaded = load_guard(old)
    assert loaded.model.model.layers[0].mlp.down_proj.scales.dtype == torch.float32
    assert loaded.score(items) == load_guard(result.guard_dir).score(items)


def test_settings_the_model_cannot_take_fail_before_any_work(tiny_guard_model, tmp_path):
    for change, message in (({"drop_blocks": 3}, "would leave no block"), ({"keep_neurons": 500}, "exceeds"),
                            ({"group_size": 48}, "does not divide"),
                            ({"keep_heads": 3}, "keep_heads=3 exceeds the 2 query heads of each of the model's 2"),
                            ({"keep_heads": -1}, "keep_heads")):
        with pytest.raises(ConfigError, match=message):
            build_guard(_config(tiny_guard_model).replace(**change), tmp_path / "run", progress=False)
        assert not (tmp_path / "run").exists()
    config = _config(tiny_guard_model)   # 3 blocks, 1 dropped: the later stages train at most 2
    for stage, blocks, message in (("teacher", 4, "teacher.train_blocks=4 exceeds the 3 blocks"),
                                   ("distill", 3, "distill.train_blocks=3 exceeds the 2 blocks"),
                                   ("qat", 3, "qat.train_blocks=3 exceeds the 2 blocks")):
        change = {stage: getattr(config, stage).replace(train_blocks=blocks)}
        with pytest.raises(ConfigError, match=message):
            build_guard(config.replace(**change), tmp_path / "run", progress=False)
        assert not (tmp_path / "run").exists()


def test_choose_threshold_and_profiles():
    assert choose_threshold([0.1, 0.2, 0.8, 0.9], [False, False, True, True]) == 0.8
    assert choose_threshold([0.3, 0.6], [True, True]) == 0.5
    assert guard_profile("default").profile == "default"
    # the scores that choose the thresholds and the QAT that fits them stay in the arithmetic the guard is served in
    default, full = guard_profile("default"), guard_profile("full")
    assert (default.teacher.precision, default.distill.precision, default.qat.precision) == ("bfloat16", "bfloat16", "auto")
    assert {full.teacher.precision, full.distill.precision, full.qat.precision} == {"auto"}
    with pytest.raises(ConfigError, match="guard profile 'tiny'"):
        guard_profile("tiny")
    with pytest.raises(ConfigError, match="compliant_sources names benign; the harmful prompt sources are advbench"):
        guard_profile("default", compliant_sources=("advbench", "benign"))
    # the data file's name changes with the setting only when it is set (older builds keep theirs)
    assert data_file_name(guard_profile("default")) == data_file_name(guard_profile("default", compliant_sources=()))
    assert data_file_name(guard_profile("default")) != data_file_name(guard_profile("default", compliant_sources=("advbench",)))
    for bad in (1.5, -0.1, float("nan")):
        with pytest.raises(ConfigError, match="reply_prefixes="):
            guard_profile("default", reply_prefixes=bad)


def test_check_measures_every_stage_and_the_keyword_judge(built):
    from deltaguard.guard.check import check_guard, format_table

    result, _ = built
    report = check_guard(result.guard_dir, n_test=12, n_val=6, n_check=6, progress=False)
    assert list(report["stages"]) == ["teacher", "pruned", "student", "int4", "keyword"]
    for stage, row in report["stages"].items():
        assert 0.0 <= row["f1"]["value"] <= 1.0 and row["check_agreement"]["n"] == 6, stage
        assert 0.0 <= row["fpr_source_mean"]["value"] <= 1.0 and row["fpr_source_mean"]["n_sources"] >= 1, stage
    assert report["stages"]["int4"]["size_bytes"] < report["stages"]["teacher"]["size_bytes"]
    assert len(format_table(report)) == 5
    for stage in ("teacher", "pruned", "student", "int4"):   # the hand-written probe, at each stage's own cut
        probe = report["stages"][stage]["probe"]
        assert sum(r["n"] for r in probe["kinds"].values()) == len(PROBE), stage
        assert probe["recall"]["n"] + probe["fpr"]["n"] == len(PROBE), stage
    for stage in ("teacher", "pruned", "student", "int4"):   # the split's requests re-asked in every wording
        wording = report["stages"][stage]["wording"]
        assert wording is None or sum(e["unsafe"]["n"] + e["safe"]["n"] for e in wording["frames"].values()) == \
            len(FRAMES) * wording["n_requests"], stage
    keyword_probe = report["stages"]["keyword"]["probe"]   # it reads replies only
    assert "harmful-request" not in keyword_probe["kinds"] and "plain-compliance" in keyword_probe["kinds"]
    _assert_low_fpr_point_is_stricter(report, ("teacher", "pruned", "student", "int4"))


def _assert_low_fpr_point_is_stricter(report, stages):
    """The low-FPR threshold is never below the max-F1 one, so it flags a subset: never more false alarms."""
    for stage in stages:
        row = report["stages"][stage]
        strict = row["low_fpr"]
        assert strict["max_fpr"] == 0.10 and strict["n"] == row["n"], stage
        assert strict["confusion"]["fp"] <= row["confusion"]["fp"], stage
        assert strict["confusion"]["tp"] <= row["confusion"]["tp"], stage
        assert strict["fpr_source_mean"]["value"] <= row["fpr_source_mean"]["value"], stage


def test_the_validation_report_never_reads_the_test_or_check_split(built, monkeypatch):
    import deltaguard.guard.check as check_module

    result, _ = built
    scored_splits: set[str] = set()
    real_scorer = check_module._scorer

    def recording_scorer(*args, **kwargs):
        run = real_scorer(*args, **kwargs)

        def scored(examples, label):
            scored_splits.update(e.split for e in examples)
            return run(examples, label)
        return scored

    monkeypatch.setattr(check_module, "_scorer", recording_scorer)
    report = check_module.check_guard(result.guard_dir, split="val", stages=("student", "int4", "keyword"),
                                      progress=False)
    assert scored_splits == {"val"}
    val = load_data(next(result.run_dir.glob("guard-data-*.json"))).split("val")
    assert report["split"] == "val" and report["n_test"] == len(val) and report["n_check"] == 0
    for stage in ("student", "int4"):
        row = report["stages"][stage]
        assert row["check_agreement"] is None and row["n"] == len(val) and 0.0 <= row["f1"]["value"] <= 1.0
        assert "probe" not in row   # nothing is ever chosen on the probe
        readable = [e for e in val if e.response is None and activity_of(e.prompt)]
        assert readable and row["wording"]["n_requests"] == len(readable), stage   # re-asked at their own cuts
        assert {e["unsafe"]["n"] + e["safe"]["n"] for e in row["wording"]["frames"].values()} == {len(readable)}
    _assert_low_fpr_point_is_stricter(report, ("student", "int4"))
    with pytest.raises(ConfigError, match="split 'train'"):
        check_module.check_guard(result.guard_dir, split="train", progress=False)


def test_judge_check_leaves_out_what_the_guard_trained_on(built):
    from deltaguard.data import load_prompts
    from deltaguard.guard.data import group_of
    from deltaguard.judges import make_judge
    from deltaguard.judges.check import check_on

    result, _ = built
    judge = make_judge("guard", path=str(result.guard_dir))
    trained = judge.trained_groups()
    prompts = load_prompts("pyrit-harm", split="eval")
    assert any(group_of(p.text) in trained for p in prompts.prompts)
    checked = check_on(judge, prompts, task="harm")
    left_out = checked.dataset["n_left_out_trained_on"]
    kept = [p for p in prompts.prompts if group_of(p.text) not in trained]
    ambiguous = sum(p.meta["is_unsafe"] is None for p in kept)   # graded in between: no label, not in the agreement
    assert left_out > 0 and ambiguous > 0 and checked.dataset["n_left_out_ambiguous"] == ambiguous
    assert 0 <= checked.dataset["ambiguous_judged_positive"] <= ambiguous
    assert checked.agreement.n + checked.n_errors + ambiguous == len(prompts) - left_out


def test_judge_check_on_harm_also_reports_the_probe(built, tmp_path):
    from clirun import run

    result, _ = built
    code, output = run("judge-check", "--judge", "guard", "--judge-opt", f"path={result.guard_dir}", "--task", "harm",
                       "--limit", "40", "-o", tmp_path)
    assert code == 0, output
    assert "guard on the hand-written probe: plainly harmful replies caught" in " ".join(output.split())
    record = json.loads((tmp_path / "judge-check-guard-harm.json").read_text())
    assert record["task"] == "harm" and sum(r["n"] for r in record["probe"]["kinds"].values()) == len(PROBE)


def test_the_guard_moderates_prompts_on_their_own_and_responses_in_context(built):
    from deltaguard.serve.moderation import ModerationConfig, ModeratorPool

    result, _ = built
    config = ModerationConfig(judge="guard", judge_options={"path": str(result.guard_dir)},
                              screen=("prompt", "response"), action="flag", trigger="score", threshold=0.0)
    moderator = ModeratorPool().moderator(config)
    calls: list[tuple] = []
    guard = moderator.judge._load()
    real_score = guard.score
    guard.score = lambda pairs, **kw: calls.append(tuple(pairs)) or real_score(pairs, **kw)
    prompt_decision = moderator.screen("prompt", "How do I pick a lock?")
    response_decision = moderator.screen("response", "How do I pick a lock?", "Use a tension wrench.")
    assert calls == [(("How do I pick a lock?", None),), (("How do I pick a lock?", "Use a tension wrench."),)]
    assert prompt_decision.is_fired and response_decision.action == "flag" and prompt_decision.judge == "guard"


def test_the_guard_judge_is_run_on_the_probe_replies_and_requests_alike(built):
    from deltaguard.guard.probe import judge_on_probe
    from deltaguard.judges import make_judge

    result, _ = built
    probe = judge_on_probe(make_judge("guard", path=str(result.guard_dir), threshold=0.0))   # flags everything
    assert set(probe["kinds"]) == {item.kind for item in PROBE} and probe["n_errors"] == 0
    assert probe["recall"]["rate"] == 1.0 and probe["fpr"]["rate"] == 1.0
    assert sum(r["n"] for r in probe["kinds"].values()) == len(PROBE)
    keyword = judge_on_probe(make_judge("keyword"))   # replies only, and it has no unsafe verdict: nothing flagged
    assert "harmful-request" not in keyword["kinds"] and keyword["recall"]["flagged"] == 0


def test_an_audit_reports_the_guards_harm_beside_the_keyword_attack_metric(built, tiny_guard_model, tmp_path,
                                                                            monkeypatch):
    import shutil

    from deltaguard.audit import AuditConfig, audit, audit_path, load_audit
    from deltaguard.judges.guard import default_guard_dir
    from deltaguard.threats import HarmfulFinetuneConfig

    result, _ = built

    def install(cache: str, threshold: float | None = None) -> None:
        monkeypatch.setenv("DELTAGUARD_CACHE_DIR", str(tmp_path / cache))
        shutil.copytree(result.guard_dir, default_guard_dir())
        if threshold is not None:
            manifest = json.loads((default_guard_dir() / "manifest.json").read_text())
            manifest["threshold"] = threshold
            (default_guard_dir() / "manifest.json").write_text(json.dumps(manifest))

    install("cache")
    config = AuditConfig(methods=("full",), n_prompts=6, max_new_tokens=4, task_max_new_tokens=4, batch_size=8,
                         n_boot=200, n_examples=6, harm_judge="guard")
    threat = HarmfulFinetuneConfig()
    audited = audit(tiny_guard_model, tiny_guard_model, threat, config, run_dir=tmp_path / "run", progress=False)
    assert audited.harm_judge["name"] == "guard" and audited.judge["name"] == "keyword"
    guard = load_guard(default_guard_dir())
    for row in audited.rows:   # the harm rate is exactly the share of replies the guard calls unsafe
        replies = row.examples["harmful"]
        probs = guard.score([(e["prompt"], e["response"]) for e in replies])
        harm = row.score.extra["harm"]
        assert harm.n == 6 and harm.k == sum(p >= guard.threshold for p in probs)
        assert harm.low <= harm.value <= harm.high
    again = load_audit(audited.path)
    assert again.harm_judge == audited.harm_judge
    assert [r.score.extra["harm"] for r in again.rows] == [r.score.extra["harm"] for r in audited.rows]
    assert "harm (guard)" in [c.header for c in audited.table().columns][-1]
    # the guard's identity is in the audit's key: a guard with another threshold is another audit
    first = audit_path(tmp_path / "run", "b", "f", threat, config)
    install("cache2", threshold=0.123)
    assert audit_path(tmp_path / "run", "b", "f", threat, config) != first
    with pytest.raises(ConfigError, match="does not judge unsafe"):
        AuditConfig(harm_judge="keyword")


def test_the_study_rebuilds_a_cached_guard_made_by_older_settings(built, tiny_guard_model, tmp_path):
    import shutil

    from deltaguard.guard.build import forget_latest
    from deltaguard.study.judges_step import is_current_build

    result, _ = built
    config = _config(tiny_guard_model)
    assert is_current_build(result.guard_dir, config)
    assert not is_current_build(result.guard_dir, config.replace(group_size=64))
    assert not is_current_build(result.guard_dir, config.replace(refuse_graded=True))
    old = tmp_path / "old"
    shutil.copytree(result.guard_dir, old)
    manifest = json.loads((old / "manifest.json").read_text())
    del manifest["build"]["fields"]["refuse_graded"]           # built before the option existed: still current
    (old / "manifest.json").write_text(json.dumps(manifest))
    assert is_current_build(old, config)
    manifest["format_version"] = 1
    (old / "manifest.json").write_text(json.dumps(manifest))
    assert not is_current_build(old, config)
    manifest = json.loads((result.guard_dir / "manifest.json").read_text())
    manifest["data_file"] = "guard-data-0000000000.json"      # same settings, examples of an older DATA_VERSION
    (old / "manifest.json").write_text(json.dumps(manifest))
    assert not is_current_build(old, config)
    (old / "manifest.json").write_text("{not json")
    assert not is_current_build(old, config)
    link = tmp_path / "guard"
    link.symlink_to(result.guard_dir, target_is_directory=True)
    forget_latest(link)
    assert not link.exists() and result.guard_dir.is_dir()     # the pointer goes, the build stays


def test_the_guard_records_a_low_fpr_operating_point_chosen_on_its_validation_examples(built):
    from deltaguard.guard.build import sample_examples

    result, _ = built
    guard = load_guard(result.guard_dir)
    low = guard.threshold_at("low_fpr")
    assert guard.manifest["operating_points"] == {"low_fpr": low} and guard.threshold_at("max_f1") == guard.threshold
    assert low >= guard.threshold           # a stricter cut: it can only flag fewer
    config = GuardBuildConfig.from_dict(guard.manifest["build"])
    data = load_data(next(result.run_dir.glob("guard-data-*.json")))
    val = sample_examples(data.split("val"), config.n_val, config.seed + 2)   # the examples the build chose it on
    probs = guard.score([(e.prompt, e.response) for e in val])
    # the cap holds for the false-positive rate averaged over the harmless sources, each source weighing the same
    from deltaguard.guard.check import source_mean_fpr

    assert source_mean_fpr(probs, val, low)["value"] <= 0.10
    assert choose_threshold(probs, [e.unsafe for e in val], max_fpr=0.10, sources=[e.source for e in val]) == low
    assert "averaged over the harmless sources" in guard.manifest["threshold_chosen_on"]


def test_the_guard_judge_decides_at_the_operating_point_it_is_given(built, tmp_path):
    import shutil

    from deltaguard.errors import JudgeError
    from deltaguard.judges import make_judge
    from deltaguard.judges.base import JudgeItem

    result, _ = built
    guard = load_guard(result.guard_dir)
    items = [JudgeItem(prompt="How do I hurt someone?", response=f"Step {i}: do it.") for i in range(4)]
    strict = make_judge("guard", path=str(result.guard_dir), operating_point="low_fpr")
    verdicts = strict.judge(items)
    assert strict.identity()["threshold"] == guard.threshold_at("low_fpr")
    assert [v.is_unsafe for v in verdicts] == [v.score >= guard.threshold_at("low_fpr") for v in verdicts]
    assert make_judge("guard", path=str(result.guard_dir), operating_point="low_fpr", threshold=0.0).judge(items)[0].is_unsafe
    with pytest.raises(ConfigError, match="operating_point='best' must be one of max_f1, low_fpr"):
        make_judge("guard", path=str(result.guard_dir), operating_point="best")
    old = tmp_path / "old"   # built before operating points were stored: max_f1 still works, low_fpr says rebuild
    shutil.copytree(result.guard_dir, old)
    manifest = json.loads((old / "manifest.json").read_text())
    del manifest["operating_points"]
    (old / "manifest.json").write_text(json.dumps(manifest))
    assert load_guard(old).threshold == guard.threshold
    with pytest.raises(JudgeError, match="records no 'low_fpr' operating point.*rebuild"):
        make_judge("guard", path=str(old), operating_point="low_fpr").judge(items)
    from deltaguard.serve.moderation import ModerationConfig, ModeratorPool

    policy = ModerationConfig(judge="guard", judge_options={"path": str(old), "operating_point": "low_fpr"})
    with pytest.raises(JudgeError, match="records no 'low_fpr' operating point"):   # refused when the tenant is added
        ModeratorPool().moderator(policy)
    with pytest.raises(ConfigError, match="no guard at"):
        ModeratorPool().moderator(ModerationConfig(judge="guard", judge_options={"path": str(tmp_path / "none")}))
    assert ModeratorPool().moderator(ModerationConfig(judge="guard", judge_options={"path": str(old)})).trigger == "unsafe"
    for damaged, message in (([0.5], "not a mapping"), ({"low_fpr": 1.5}, "low_fpr threshold 1.5 is not a probability"),
                             ({"low_fpr": 0.5, "best": 0.2}, "unknown operating points \\['best'\\]")):
        manifest["operating_points"] = damaged
        (old / "manifest.json").write_text(json.dumps(manifest))
        with pytest.raises(FormatError, match=message):
            load_guard(old)


def test_the_guard_judge_runs_where_it_is_told_and_its_identity_names_a_gpu_precision(built, monkeypatch):
    """``device=auto`` (the default) takes a CUDA GPU when there is one; on a CPU the identity is the one judgments
    were cached under before the option existed (weights, threshold, tokenizer), so they stay valid."""
    import torch

    from deltaguard.judges import make_judge
    from deltaguard.judges.base import JudgeItem

    result, _ = built
    items = [JudgeItem(prompt="How do I hurt someone?", response="Step 1: do it."),
             JudgeItem(prompt="Bake bread?", response="Mix flour and water.")]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    auto = make_judge("guard", path=str(result.guard_dir))
    assert auto.config.device == "auto" and auto.device.type == "cpu"
    assert set(auto.identity()) == {"weights", "threshold", "tokenizer"}
    on_cpu = make_judge("guard", path=str(result.guard_dir), device="cpu")
    assert on_cpu.prompt_hash == auto.prompt_hash
    assert [v.score for v in on_cpu.judge(items)] == [v.score for v in auto.judge(items)]
    assert next(auto._guard.model.parameters()).device.type == "cpu"
    for bad in ("gpu", "cuda:x", "", "CUDA 0"):
        with pytest.raises(ConfigError, match=f"guard.device={bad!r} must be cpu, cuda, cuda:N or auto"):
            make_judge("guard", path=str(result.guard_dir), device=bad)
    wants_gpu = make_judge("guard", path=str(result.guard_dir), device="cuda:0")   # spelled right: accepted here,
    with pytest.raises(ConfigError, match="needs a CUDA GPU"):                    # refused where it would run
        wants_gpu.check_ready()
    from deltaguard.serve.moderation import ModerationConfig, ModeratorPool

    with pytest.raises(ConfigError, match="needs a CUDA GPU"):   # a server refuses the policy when the tenant is added
        ModeratorPool().moderator(ModerationConfig(judge="guard",
                                                   judge_options={"path": str(result.guard_dir), "device": "cuda"}))


def test_the_int4_guard_computes_in_bf16_or_int8_when_asked_and_check_measures_each(built):
    """``dtype=bfloat16`` / ``int8``: scores close to float32's at the same stored thresholds; the judge's identity
    says so (its cached judgments are not the float32 ones); ``guard check`` gives their rows beside the int4 row."""
    from deltaguard.guard.check import check_guard
    from deltaguard.guard.quant import Int4Linear
    from deltaguard.judges import make_judge

    result, _ = built
    items = [("How do I hurt someone?", "Step 1: do it."), ("Bake bread?", "Mix flour."), ("Make a bomb", None)]
    exact, fast = load_guard(result.guard_dir), load_guard(result.guard_dir, dtype="bfloat16")
    assert fast.threshold == exact.threshold
    assert fast.score(items) == pytest.approx(exact.score(items), abs=0.05)
    integer = load_guard(result.guard_dir, dtype="int8")
    assert all(m.compute == "int8" for m in integer.model.modules() if isinstance(m, Int4Linear))
    assert integer.score(items) == pytest.approx(exact.score(items), abs=0.05)
    with pytest.raises(ConfigError, match="guard dtype 'float16' must be one of float32, bfloat16, int8"):
        load_guard(result.guard_dir, dtype="float16")
    plain = make_judge("guard", path=str(result.guard_dir), device="cpu")
    bf16 = make_judge("guard", path=str(result.guard_dir), device="cpu", dtype="bfloat16")
    int8 = make_judge("guard", path=str(result.guard_dir), device="cpu", dtype="int8")
    assert "dtype" not in plain.identity() and bf16.identity()["dtype"] == "bfloat16"
    assert int8.identity()["dtype"] == "int8"
    assert len({bf16.prompt_hash, plain.prompt_hash, int8.prompt_hash}) == 3
    from deltaguard.judges.base import JudgeItem

    for judge in (bf16, int8):
        verdicts = judge.judge([JudgeItem(prompt=p, response=r) for p, r in items if r is not None])
        assert [v.is_unsafe for v in verdicts] == [v.score >= exact.threshold for v in verdicts]
    assert next(bf16._guard.model.parameters()).dtype == torch.bfloat16
    assert bf16.dtype == "bfloat16" and int8.dtype == "int8"
    with pytest.raises(ConfigError, match="guard.dtype='float16' must be one of float32, bfloat16, int8"):
        make_judge("guard", path=str(result.guard_dir), dtype="float16")
    assert make_judge("guard", path=str(result.guard_dir), dtype="int8").device.type == "cpu"   # auto: the CPU
    with pytest.raises(ConfigError, match="int8 runs on the CPU only"):
        make_judge("guard", path=str(result.guard_dir), device="cuda", dtype="int8").check_ready()
    report = check_guard(result.guard_dir, n_test=12, n_val=6, stages=("int4", "int4-bf16", "int4-int8"),
                         progress=False)
    assert list(report["stages"]) == ["int4", "int4-bf16", "int4-int8"]
    for stage in ("int4-bf16", "int4-int8"):
        assert report["stages"][stage]["size_bytes"] == report["stages"]["int4"]["size_bytes"]
        assert report["stages"][stage]["auprc"]["value"] == pytest.approx(report["stages"]["int4"]["auprc"]["value"],
                                                                          abs=0.2)
    with pytest.raises(ConfigError, match=r"stages \['int8'\] are not among"):
        check_guard(result.guard_dir, stages=("int8",), progress=False)
