"""``build_guard``: data → teacher → prune → distil → INT4 QAT → head pruning → the guard artifact.

Each stage is a keyed step (``deltaguard.steps``): its output path is a hash of everything it depends
on, written atomically, so a rerun skips finished stages and an interrupted build resumes. Layout of a
build directory::

    guard-data-<key>.json          the labelled examples with their splits, and the label sources
    replies/                       the base model's replies to the answered prompts (cached generations)
    models/guard-teacher-<key>/    the embedded model fine-tuned as a Llama-Guard-format classifier (fp32)
    models/guard-pruned-<key>/     the teacher after block and MLP-neuron pruning, with the importances
    models/guard-student-<key>/    the pruned model trained on the labels + the teacher's logits
    guard-int4-<key>/              the INT4 QAT model, head-pruned and packed (``artifact.load_guard``)
    guard -> guard-int4-<key>      the latest build (a symlink; copied where links are not allowed)

Only the ``train`` split trains; ``val`` picks the decision threshold; ``test`` and ``check`` are never
read here (``guard check`` measures on them).
"""

from __future__ import annotations

import gc
import math
import random
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, ClassVar

import torch

from deltaguard.config import Config, check_range
from deltaguard.errors import ConfigError
from deltaguard.guard.data import (
    DATA_VERSION, HARMFUL_PROMPT_SOURCES, GuardData, GuardExample, add_replies, balance_labels, build_examples,
    check_disjoint, graded_refusals, group_of, prompts_to_answer, reply_prefixes,
)
from deltaguard.guard.frames import FRAMES, reframe_requests
from deltaguard.guard.quant import SCALE_DTYPE
from deltaguard.guard.train import GuardEncoder, GuardTrainConfig, compute_precision, score, train_guard
from deltaguard.io import atomic_dir, content_key, read_json, write_json
from deltaguard.models import (
    DEFAULT_MODEL, load_model, load_tokenizer, model_identity, resolve_device, resolve_model_dir,
)
from deltaguard.steps import Steps, release_memory

PROFILES = ("default", "full")
QAT_REFERENCES = ("student", "teacher")


@dataclass(frozen=True, kw_only=True)
class GuardBuildConfig(Config):
    """Every setting of a guard build.

    Args:
        model: the model the guard is made from (embedded name, directory or hub id).
        seed: data selection and training order.
        max_prompt_only: prompt-only examples per label per split (the response task keeps most signal).
        answer_harmful / answer_benign: harmful and benign prompts per split that the base model answers;
            each answered harmful prompt gives a (prompt, reply) and a (prompt, refusal) example, the pairs
            that teach the guard to read the reply (``guard.data.add_replies``).
        reply_tokens: new tokens per reply (greedy).
        n_train: training examples used (seeded subset; 0 = all of the train split).
        balance_labels: within a source holding both labels (the human-graded replies), repeat the rarer
            label's training examples up to the commoner's count (``guard.data.balance_labels``). Off by
            default: on the validation split it lowered the teacher's AUPRC from 0.92 to 0.75 (the guard
            began flagging arithmetic problems and benign replies) for a small gain on the human-graded replies.
        compliant_sources: the harmful-prompt sources whose non-refused base-model replies are labelled unsafe
            (``reply-compliant``); empty: every source (``guard.data.add_replies``). Off by default:
            ``advbench`` alone raised validation F1 (0.891 against 0.875) and human-graded accuracy, but also
            the source-mean FPR (0.182 against 0.159), which the recipe rule forbids (docs/guard.md).
        refuse_graded: add, to the training examples only, every human-graded unsafe reply's prompt answered by a
            composed refusal (``guard.data.graded_refusals``); the validation and test splits are unchanged.
        reply_prefixes: the share of unsafe training replies cut to their first sentences
            (``guard.data.reply_prefixes``), so that a reply's length stops predicting its label; 0 = off. Off by
            default: at 0.7 the guard read F1 0.850 / source-mean FPR 0.145 on validation against 0.889 / 0.095,
            and caught no more of the hand-written probe's harmful replies (docs/guard.md, "Out of distribution").
        reframe_requests: each training request on its own whose activity can be read off its wording is added
            again in this many other wordings (``guard.frames.reframe_requests``), so that how a source words its
            requests stops predicting their label; 0 = off.
        reframe_safe_requests: the wordings added per *safe* request instead (0 = as many as
            ``reframe_requests``); more of them even out each wording's labels, since the readable unsafe
            training requests outnumber the safe ones two to one.
        max_prompt_tokens / max_response_tokens: each example's prompt and reply are cut to these.
        teacher / distill / qat: the three training stages.
        n_calib: training examples whose activations rank blocks and neurons.
        drop_blocks: decoder blocks removed (lowest ShortGPT importance first).
        keep_neurons: MLP neurons kept per block (0 = all).
        keep_heads: attention query heads kept per key/value group in every block (0 = all; SmolLM2-135M has 3
            groups of 3), the most important by their first-order effect on the answer loss
            (``guard.prune.head_importance``; an extra forward and backward pass over the calibration examples).
        group_size: INT4 weight group along the input dimension (must divide every input dim).
        quantize_embedding: INT4 for the input embedding too.
        act_int8: INT8 dynamic per-token activations for every quantised linear layer.
        qat_reference: the float model QAT distils from (``qat.distill_weight``): ``student``, the model being
            quantised (so QAT learns to keep its predictions), or ``teacher``, the unpruned teacher.
        n_val: validation examples scored to choose the threshold (0 = all).
    """

    name: ClassVar[str] = "guard-build"
    version: ClassVar[int] = 2
    profile: str = "custom"
    model: str = DEFAULT_MODEL
    seed: int = 0
    max_prompt_only: int = 150
    answer_harmful: int = 120
    answer_benign: int = 40
    reply_tokens: int = 48
    n_train: int = 0
    balance_labels: bool = False
    refuse_graded: bool = False
    reply_prefixes: float = 0.0
    reframe_requests: int = 0
    reframe_safe_requests: int = 0
    compliant_sources: tuple[str, ...] = ()
    max_prompt_tokens: int = 96
    max_response_tokens: int = 128
    teacher: GuardTrainConfig = field(default_factory=lambda: GuardTrainConfig(epochs=1, lr=5e-5))
    distill: GuardTrainConfig = field(default_factory=lambda: GuardTrainConfig(epochs=1, lr=5e-5))
    qat: GuardTrainConfig = field(default_factory=lambda: GuardTrainConfig(epochs=1, lr=2e-5))
    n_calib: int = 64
    drop_blocks: int = 6
    keep_neurons: int = 1280
    keep_heads: int = 0
    group_size: int = 32
    quantize_embedding: bool = True
    act_int8: bool = True
    qat_reference: str = "student"
    n_val: int = 0

    def __post_init__(self) -> None:
        check_range("guard.max_prompt_only", self.max_prompt_only, 0)
        check_range("guard.answer_harmful", self.answer_harmful, 0)
        check_range("guard.answer_benign", self.answer_benign, 0)
        check_range("guard.reply_tokens", self.reply_tokens, 1, 1024)
        check_range("guard.n_train", self.n_train, 0)
        check_range("guard.max_prompt_tokens", self.max_prompt_tokens, 1)
        check_range("guard.max_response_tokens", self.max_response_tokens, 1)
        check_range("guard.n_calib", self.n_calib, 1)
        check_range("guard.drop_blocks", self.drop_blocks, 0)
        check_range("guard.keep_neurons", self.keep_neurons, 0)
        check_range("guard.keep_heads", self.keep_heads, 0)
        check_range("guard.group_size", self.group_size, 1)
        check_range("guard.n_val", self.n_val, 0)
        check_range("guard.reply_prefixes", self.reply_prefixes, 0.0, 1.0)
        check_range("guard.reframe_requests", self.reframe_requests, 0, len(FRAMES) - 1)
        check_range("guard.reframe_safe_requests", self.reframe_safe_requests, 0, len(FRAMES) - 1)
        if self.reframe_safe_requests and not self.reframe_requests:
            raise ConfigError("guard.reframe_safe_requests needs guard.reframe_requests (0 turns re-asking off)")
        unknown = sorted(set(self.compliant_sources) - set(HARMFUL_PROMPT_SOURCES))
        if unknown:
            raise ConfigError(f"guard.compliant_sources names {', '.join(unknown)}; the harmful prompt sources are "
                              f"{', '.join(HARMFUL_PROMPT_SOURCES)}")
        if self.qat_reference not in QAT_REFERENCES:
            raise ConfigError(f"guard.qat_reference={self.qat_reference!r} is not one of {', '.join(QAT_REFERENCES)}")

    @property
    def encoder_settings(self) -> dict[str, int]:
        return {"max_prompt_tokens": self.max_prompt_tokens, "max_response_tokens": self.max_response_tokens}


def guard_profile(name: str = "default", **overrides: Any) -> GuardBuildConfig:
    """The named build settings (``default``: planned for a 2-core CPU; ``full``: every example, longer)."""
    if name == "default":
        # Sized for the 2-core CPU (12.8 minutes, 5.7 GB peak, measured in the demo): ~2.1 s a teacher step with
        # 12 of 30 blocks trained. The teacher and distillation stages compute under bf16 autocast
        # (precision="bfloat16"; master weights fp32): on this AMD EPYC they ran 1.8-2.2x faster than in fp32, and
        # over two distillation seeds the INT4 guard read F1 0.873 / source-mean FPR 0.147 / human-graded accuracy
        # 0.850 on validation against 0.876 / 0.169 / 0.818 for the fp32 recipe's three (a non-inferiority rule
        # fixed beforehand: F1 at most 0.01 lower, source-mean FPR at most 0.02 higher, human-graded accuracy at
        # most 0.02 lower; a third seed, after the decision, left the means at 0.874 / 0.161 / 0.849). QAT, pruning
        # calibration and every score stay fp32 ("auto"), so the thresholds are chosen on the arithmetic the guard
        # is served with.
        # Pruning 8 blocks and MLP 1536 -> 896 (30 -> 22 blocks) halves the teacher's linear-layer work in under 1/5
        # of its bf16 size. Distillation trains all 22 remaining blocks for one epoch (150 steps) at 2e-4 (50 steps
        # at 1e-4 on the top 14 of 20 left the student where pruning put it; 100 and 80 steps on all of them did
        # not differ on validation, for that older recipe). The epoch replaced an 80-step cap on 2026-11-30: over
        # five distillation seeds on validation the INT4 guard read F1 0.895 / source-mean FPR 0.091 / human-graded
        # accuracy 0.858 against 0.861 / 0.154 / 0.844 (docs/guard.md, "A full epoch of distillation"); it costs about 3.4
        # build minutes. QAT: groups of 32 with float16 scales (the size of groups of 64 with float32
        # ones), distilling from the student it quantises, 40 steps at 1e-4 on the top 10 blocks (all of them with
        # the fake-quant graph peaked at 7.6 GB); chosen among 8 QAT recipes on validation (docs/guard.md).
        # The structure and the example order were chosen on the validation split (`guard check --split val`,
        # cross-fitted thresholds) with several distillation seeds per recipe, under a rule fixed beforehand (mean
        # INT4 F1 no lower and mean FPR no higher than the recipe it replaces; for the structure, F1 at least 0.02
        # higher). INT4 guard, F1 / FPR / AUPRC: 20 blocks x 1024 neurons (the previous default, about the same
        # linear work) 0.807 / 0.256 / 0.900 (two seeds; 0.805 / 0.27 / 0.899 over three on another machine);
        # 22 x 896 0.834 +- 0.038 / 0.198 +- 0.099 / 0.913 (three seeds); 22 x 896 with the stratified example
        # order of guard-train v2 0.857 +- 0.011 / 0.155 +- 0.009 / 0.929 (two seeds; the third was not run for
        # time). Then refuse_graded (each human-graded unsafe reply's prompt also answered by a composed refusal, in
        # training only): 0.879 +- 0.001 / 0.093 +- 0.011 / 0.949 (two distillation seeds, teacher seed 0; a third
        # seed, run after the decision, 0.870 / 0.104 / 0.941), the human-graded harmless replies flagged 0.50-0.54
        # of the time against 0.62-0.65. Tried and not kept: balance_labels, 20 x 896, 18 x 1024, a shuffled-order
        # teacher (guard-train "v3"), 9 -> 6 attention heads (keep_heads=2: 2.2x the teacher's speed, F1 0.76 on
        # validation) (docs/guard.md).
        # The operating points are chosen on every validation example (n_val=0; 240 of the 605 until 2026-11-30:
        # they held 5 benign prompts, so one flagged prompt moved the source-mean FPR by 0.04); scoring all of them
        # costs about 35 s more.
        config = GuardBuildConfig(profile="default", max_response_tokens=96, drop_blocks=8, keep_neurons=896,
                                  refuse_graded=True, answer_harmful=100, answer_benign=60, reply_tokens=40,
                                  teacher=GuardTrainConfig(lr=1e-4, max_steps=80, train_blocks=12,
                                                           precision="bfloat16"),
                                  distill=GuardTrainConfig(lr=2e-4, train_blocks=22,
                                                           precision="bfloat16"),
                                  qat=GuardTrainConfig(lr=1e-4, max_steps=40, train_blocks=10))
    elif name == "full":
        config = GuardBuildConfig(profile="full", max_prompt_only=400, answer_harmful=400, answer_benign=150,
                                  drop_blocks=8, keep_neurons=896, refuse_graded=True,   # the default's recipe (above)
                                  teacher=GuardTrainConfig(epochs=2, lr=1e-4), distill=GuardTrainConfig(epochs=2, lr=1e-4),
                                  qat=GuardTrainConfig(epochs=1, lr=1e-4))
    else:
        raise ConfigError(f"guard profile {name!r} is not one of {', '.join(PROFILES)}")
    return config.replace(**overrides) if overrides else config


STAGES = ("teacher", "distill", "qat")


def with_overrides(config: GuardBuildConfig, overrides: list[str]) -> GuardBuildConfig:
    """Apply ``field=value`` strings; ``teacher.lr=1e-4`` (or ``distill.`` / ``qat.``) sets a stage's field."""
    top: list[str] = []
    stages: dict[str, list[str]] = {}
    for item in overrides:
        key = item.partition("=")[0].strip()
        stage, dot, _ = key.partition(".")
        if dot:
            if stage not in STAGES:
                raise ConfigError(f"--set {item!r}: {stage!r} is not a training stage ({', '.join(STAGES)})")
            stages.setdefault(stage, []).append(item[len(stage) + 1:])
        else:
            top.append(item)
    config = config.with_overrides(top)
    changes = {stage: getattr(config, stage).with_overrides(items) for stage, items in stages.items()}
    return config.replace(**changes) if changes else config


def sample_examples(examples: list[GuardExample], n: int, seed: int) -> list[GuardExample]:
    """A seeded subset of ``n`` examples (all when ``n`` is 0), the same wherever it is drawn."""
    if not n or n >= len(examples):
        return list(examples)
    return sorted(random.Random(f"guard-sample:{seed}").sample(examples, n), key=lambda e: e.id)


def held_out_groups(data: GuardData) -> set[str]:
    """The prompt groups no training example may have: every non-training split's and the probe's."""
    from deltaguard.guard.probe import PROBE

    return {e.group for e in data.examples if e.split != "train"} | {group_of(item.prompt) for item in PROBE}


def training_examples(config: GuardBuildConfig, drawn: list[GuardExample], data: GuardData) -> list[GuardExample]:
    """What every training stage trains on: the drawn training-split examples plus the recipe's additions
    (``refuse_graded``, ``reply_prefixes``, ``reframe_requests``, ``balance_labels``). One definition, so a
    benchmark of the stages trains on what they do. ``data`` is the whole build's, for the held-out prompts
    that a rewording must not produce."""
    train = graded_refusals(drawn, seed=config.seed) if config.refuse_graded else drawn
    if config.reply_prefixes:
        train = reply_prefixes(train, seed=config.seed, share=config.reply_prefixes)
    if config.reframe_requests:
        train = reframe_requests(train, seed=config.seed, per_request=config.reframe_requests,
                                 per_safe_request=config.reframe_safe_requests or None,
                                 exclude=held_out_groups(data))
    return balance_labels(train, seed=config.seed) if config.balance_labels else train


def load_data(path: Path) -> GuardData:
    """The build's examples as written by the data step (re-checked for disjoint splits)."""
    rows = read_json(path, what="guard data")
    try:
        data = GuardData(tuple(GuardExample(**{**r, "categories": tuple(r["categories"])}) for r in rows["examples"]))
    except (KeyError, TypeError) as exc:
        raise ConfigError(f"{path} is not guard data ({exc})") from None
    check_disjoint(data)
    return data


@dataclass
class BuildResult:
    """Where a build put its stages, and what each recorded."""

    run_dir: Path
    guard_dir: Path
    stages: dict[str, Path]
    n_steps_run: int


def build_guard(config: GuardBuildConfig, run_dir: str | Path, *, device: str = "cpu", progress: bool = True,
                log: Callable[[str], None] = lambda line: None) -> BuildResult:
    """Run (or resume) every stage of a guard build under ``run_dir``; returns the artifact's place."""
    from deltaguard.guard.artifact import save_guard
    from deltaguard.guard.format import verdict_tokens
    from deltaguard.guard.points import LOW_FPR
    from deltaguard.guard.prune import (
        choose_blocks_to_drop, head_importance, importances, prune_blocks, prune_head, prune_heads, prune_neurons,
    )
    from deltaguard.guard.quant import convert_qat, prepare_qat

    target = resolve_device(device)
    check_build(config)
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    steps = Steps(log)
    tokenizer = load_tokenizer(config.model)
    tokens = verdict_tokens(tokenizer)
    encoder = GuardEncoder(tokenizer, **config.encoder_settings)
    base_key = model_identity(config.model)

    # 1. data: the offline sets, plus the base model's replies to some of their prompts
    data_path = run_dir / data_file_name(config)

    def make_data() -> None:
        data = build_data(config, run_dir / "replies", device=target, progress=progress)
        write_json(data_path, {"summary": data.summary(), "examples": [e.to_dict() for e in data.examples]})

    steps.run("data", data_path, make_data)
    data = load_data(data_path)
    drawn = sample_examples(data.split("train"), config.n_train, config.seed)
    train = training_examples(config, drawn, data)
    data_key = data.content_hash

    def stage_dir(name: str, payload: dict[str, Any]) -> Path:
        return run_dir / "models" / content_key(f"guard-{name}", payload)

    def save(model: Any, out: Path, record: dict[str, Any]) -> None:
        with atomic_dir(out) as tmp:
            model.save_pretrained(tmp, safe_serialization=True)
            tokenizer.save_pretrained(tmp)
            write_json(tmp / "guard_stage.json", record)

    # 2. teacher
    teacher_payload = {"model": base_key, "data": data_key, "n_train": config.n_train, "encoder": config.encoder_settings,
                       "balance_labels": config.balance_labels, "teacher": config.teacher.to_dict(),
                       # only when on, so that the stages of builds without it keep their keys
                       **({"refuse_graded": True} if config.refuse_graded else {}),
                       **({"reply_prefixes": config.reply_prefixes} if config.reply_prefixes else {}),
                       **({"reframe_requests": config.reframe_requests} if config.reframe_requests else {}),
                       **({"reframe_safe_requests": config.reframe_safe_requests}
                          if config.reframe_safe_requests else {})}
    teacher_dir = stage_dir("teacher", teacher_payload)

    def make_teacher() -> None:
        model = load_model(config.model, dtype="float32", device=target)
        record = train_guard(model, encoder, train, config.teacher, label="train teacher", progress=progress)
        save(model.to("cpu"), teacher_dir, {"stage": "teacher", **record})

    steps.run("teacher", teacher_dir, make_teacher)

    # 3. prune
    prune_payload = {**teacher_payload, "n_calib": config.n_calib, "drop_blocks": config.drop_blocks,
                     "keep_neurons": config.keep_neurons,
                     # only when on, so that the stages of builds without it keep their keys
                     **({"keep_heads": config.keep_heads, "head_importance": "taylor"} if config.keep_heads else {})}
    pruned_dir = stage_dir("pruned", prune_payload)

    def make_pruned() -> None:
        model = load_model(str(teacher_dir), dtype="float32", device=target)
        examples = sample_examples(drawn, config.n_calib, config.seed + 1)
        batches = _calibration_batches(encoder, examples, target)
        with torch.no_grad(), compute_precision(target):
            measured = importances(model, [(ids, real) for ids, real, _ in batches])
        heads = None
        if config.keep_heads:   # measured on the whole teacher, like the others, before anything is cut
            with compute_precision(target):   # the same examples in batches of 2: a backward pass's memory
                heads = head_importance(model, _calibration_batches(encoder, examples, target, batch_size=2))
        drop = choose_blocks_to_drop(measured.blocks, config.drop_blocks)
        if config.keep_neurons and config.keep_neurons < model.config.intermediate_size:
            prune_neurons(model, config.keep_neurons, measured.neurons)
        if heads is not None:
            prune_heads(model, config.keep_heads, heads)
        prune_blocks(model, drop)
        save(model.to("cpu"), pruned_dir, {"stage": "pruned", "block_importance": measured.blocks.tolist(),
                                           "dropped_blocks": drop, "keep_neurons": config.keep_neurons,
                                           "keep_heads": config.keep_heads, "n_calib": config.n_calib,
                                           **({"head_importance": heads.tolist()} if heads is not None else {})})

    steps.run("prune", pruned_dir, make_pruned)

    # 4. distil
    distill_payload = {**prune_payload, "distill": config.distill.to_dict()}
    student_dir = stage_dir("student", distill_payload)

    def make_student() -> None:
        student = load_model(str(pruned_dir), dtype="float32", device=target)
        teacher = load_model(str(teacher_dir), dtype="float32", device=target)
        record = train_guard(student, encoder, train, config.distill, teacher=teacher, label="distil student",
                             progress=progress)
        del teacher
        save(student.to("cpu"), student_dir, {"stage": "student", **record})

    steps.run("distill", student_dir, make_student)

    # 5. INT4 QAT, head pruning, threshold on val, export
    qat_payload = {**distill_payload, "qat": config.qat.to_dict(), "group_size": config.group_size,
                   "quantize_embedding": config.quantize_embedding, "act_int8": config.act_int8, "n_val": config.n_val,
                   "qat_reference": config.qat_reference,
                   "scale_dtype": str(SCALE_DTYPE),   # float32-scale builds (format 1) are not reused
                   "low_fpr": "source-mean"}   # builds whose low_fpr capped the plain FPR are not reused
    guard_dir = run_dir / content_key("guard-int4", qat_payload)

    def make_guard() -> None:
        model = load_model(str(student_dir), dtype="float32", device=target)
        reference_dir = student_dir if config.qat_reference == "student" else teacher_dir
        teacher = load_model(str(reference_dir), dtype="float32", device=target) if config.qat.distill_weight else None
        prepare_qat(model, group_size=config.group_size, quantize_embedding=config.quantize_embedding,
                    act_int8=config.act_int8)
        record = train_guard(model, encoder, train, config.qat, teacher=teacher, label="INT4 QAT", progress=progress)
        del teacher
        gc.collect()
        convert_qat(model)
        prune_head(model, tokens.emitted)
        val = sample_examples(data.split("val"), config.n_val, config.seed + 2)
        probs = score(model, encoder, [(e.prompt, e.response) for e in val], tokens, head_token_ids=model.lm_head.token_ids,
                      progress=progress, label="score val")
        labels = [e.unsafe for e in val]
        threshold = choose_threshold(probs, labels)
        low_fpr = choose_threshold(probs, labels, max_fpr=LOW_FPR, sources=[e.source for e in val])
        stage_records = {name: read_json(path / "guard_stage.json", what="guard stage record")
                         for name, path in (("teacher", teacher_dir), ("pruned", pruned_dir), ("student", student_dir))}
        save_guard(model.to("cpu"), tokenizer, guard_dir, group_size=config.group_size, act_int8=config.act_int8,
                   tokens=tokens, record={
                       "build": config.to_dict(), "base_model": config.model, "base_identity": base_key,
                       "encoder": config.encoder_settings, "data": data.summary(), "data_file": data_path.name,
                       "threshold": threshold, "operating_points": {"low_fpr": low_fpr},
                       "threshold_chosen_on": f"val ({len(val)} examples): max_f1 = best F1, low_fpr = best F1 "
                                              f"with the FPR averaged over the harmless sources <= {LOW_FPR}",
                       "trained_groups": sorted({e.group for e in data.examples if e.split in ("train", "val")}),
                       "stages": {**stage_records, "int4": {"stage": "int4", **record}},
                       "stage_dirs": {"teacher": teacher_dir.name, "pruned": pruned_dir.name,
                                      "student": student_dir.name},
                   })

    steps.run("int4", guard_dir, make_guard)
    release_memory()
    _point_latest(run_dir / "guard", guard_dir)
    return BuildResult(run_dir, guard_dir, {"teacher": teacher_dir, "pruned": pruned_dir, "student": student_dir,
                                            "int4": guard_dir}, steps.n_run)


def data_file_name(config: GuardBuildConfig) -> str:
    """The data step's file name: a key of everything the examples depend on."""
    settings = {"version": DATA_VERSION, "seed": config.seed, "max_prompt_only": config.max_prompt_only,
                "model": model_identity(config.model),
                "answer_harmful": config.answer_harmful, "answer_benign": config.answer_benign,
                "reply_tokens": config.reply_tokens,
                # only when set, so that the data files of builds without it keep their names
                **({"compliant_sources": sorted(config.compliant_sources)} if config.compliant_sources else {})}
    return f"{content_key('guard-data', settings)}.json"


def build_data(config: GuardBuildConfig, replies_dir: Path, *, device: str | torch.device = "cpu",
               progress: bool = True) -> GuardData:
    """The build's examples: the offline sets (``build_examples``) plus the base model's replies to some of
    their prompts (``add_replies``). The replies are cached under ``replies_dir``, so a rebuild is quick."""
    data = build_examples(seed=config.seed, max_prompt_only=config.max_prompt_only)
    asked = prompts_to_answer(data, n_harmful=config.answer_harmful, n_benign=config.answer_benign, seed=config.seed)
    if not asked:
        return data
    from deltaguard.judges import make_judge
    from deltaguard.threats.base import Responder
    from deltaguard.threats.benign import refusal_flags

    responder = Responder(config.model, cache_dir=replies_dir, model_key=model_identity(config.model),
                          device=str(resolve_device(device)), progress=progress)
    prompts = [e.prompt for e in asked]
    try:
        replies = responder.respond(prompts, max_new_tokens=config.reply_tokens)
    finally:
        responder.release()
    refused = refusal_flags(make_judge("keyword"), prompts, replies)
    return add_replies(data, asked, replies, refused, seed=config.seed,
                       compliant_sources=config.compliant_sources or None)


def choose_threshold(probs: list[float], labels: list[bool], *, max_fpr: float | None = None,
                     sources: list[str] | None = None) -> float:
    """The P(unsafe) cut with the best F1 on these (validation) examples; 0.5 when they hold one class.

    ``max_fpr``: the best F1 among the cuts whose false-positive rate is at most this (a second operating point,
    for a user who must keep false alarms down); when no cut that flags anything keeps it, a cut above every
    score (nothing flagged). ``sources``: each example's source; with them the capped rate is the FPR averaged
    over the harmless sources, each weighing the same (``guard.check.source_mean_fpr``), so that the cap does
    not depend on how many easy harmless examples the split happens to hold.
    """
    if max_fpr is not None:
        check_range("max_fpr", max_fpr, 0.0, 1.0)
    if sources is not None and len(sources) != len(probs):
        raise ConfigError(f"{len(sources)} sources for {len(probs)} scores")
    if not probs or all(labels) or not any(labels):
        return 0.5
    n_unsafe = sum(1 for y in labels if y)
    n_safe = len(labels) - n_unsafe
    best = (-1.0, math.nextafter(max(probs), math.inf))
    for cut in sorted(set(probs)):
        flagged = [p >= cut for p in probs]   # one pass per cut gives tp, fp, fn and the capped rate
        tp = sum(1 for f, y in zip(flagged, labels) if f and y)
        fp = sum(flagged) - tp
        fn = n_unsafe - tp
        if max_fpr is not None:
            rate = fp / n_safe if sources is None else harmless_source_mean(flagged, labels, sources)
            if rate > max_fpr:
                continue
        f1 = 2 * tp / (2 * tp + fp + fn) if tp else 0.0
        if f1 > best[0]:
            best = (f1, cut)
    return float(best[1])


def harmless_flags_by_source(flagged: Sequence[bool], labels: Sequence[bool],
                             sources: Sequence[str]) -> dict[str, list[bool]]:
    """Source → whether each of its harmless examples was flagged, in example order."""
    per_source: dict[str, list[bool]] = {}
    for f, y, s in zip(flagged, labels, sources, strict=True):
        if not y:
            per_source.setdefault(s, []).append(bool(f))
    return per_source


def harmless_source_mean(flagged: Sequence[bool], labels: Sequence[bool], sources: Sequence[str]) -> float:
    """The share of harmless examples flagged, averaged over their sources with equal weight (the one definition
    ``choose_threshold``'s cap and ``guard.check.source_mean_fpr`` share); nan without harmless examples."""
    per_source = harmless_flags_by_source(flagged, labels, sources)
    if not per_source:
        return math.nan
    return sum(sum(f) / len(f) for f in per_source.values()) / len(per_source)


def _calibration_batches(encoder: GuardEncoder, examples: list[GuardExample], device: torch.device,
                         batch_size: int = 8) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Whole guard inputs (prefix + example + answer), right-padded, for the importance measurements:
    (ids, real-token mask, answer-token mask)."""
    from deltaguard.guard.train import pad_batch

    whole = []
    for e in (encoder.encode_example(x) for x in examples):
        prefix = encoder.prefixes[e.task]
        whole.append(replace(e, suffix_ids=prefix + e.suffix_ids, answer_mask=(False,) * len(prefix) + e.answer_mask))
    batches = []
    for start in range(0, len(whole), batch_size):
        ids, real, answer = pad_batch(whole[start:start + batch_size], encoder.pad_id)
        batches.append((ids.to(device), real.to(device), answer.to(device)))
    return batches


def check_build(config: GuardBuildConfig) -> None:
    """Refuse settings the model cannot take (reads only its config), before any work starts."""
    from transformers import AutoConfig

    from deltaguard.guard.prune import attention_shape
    from deltaguard.guard.quant import check_group_size

    model_config = AutoConfig.from_pretrained(resolve_model_dir(config.model))
    if config.drop_blocks >= model_config.num_hidden_layers:
        raise ConfigError(f"guard.drop_blocks={config.drop_blocks} would leave no block of "
                          f"{model_config.num_hidden_layers}")
    if config.keep_neurons > model_config.intermediate_size:
        raise ConfigError(f"guard.keep_neurons={config.keep_neurons} exceeds the model's "
                          f"{model_config.intermediate_size} MLP neurons")
    n_heads, n_kv, head_dim = attention_shape(model_config)
    if config.keep_heads > n_heads // n_kv:
        raise ConfigError(f"guard.keep_heads={config.keep_heads} exceeds the {n_heads // n_kv} query heads of each "
                          f"of the model's {n_kv} key/value groups")
    kept = model_config.num_hidden_layers - config.drop_blocks
    for stage, trained, blocks, where in (("teacher", config.teacher, model_config.num_hidden_layers, "the model"),
                                          ("distill", config.distill, kept, "after pruning"),
                                          ("qat", config.qat, kept, "after pruning")):
        if trained.train_blocks > blocks:
            raise ConfigError(f"guard.{stage}.train_blocks={trained.train_blocks} exceeds the {blocks} "
                              f"blocks that stage trains ({where})")
    neurons = config.keep_neurons or model_config.intermediate_size
    heads = n_kv * config.keep_heads if config.keep_heads else n_heads
    for dim, what in ((model_config.hidden_size, "hidden size"), (neurons, "kept MLP width"),
                      (heads * head_dim, "kept attention width")):
        check_group_size(config.group_size, dim, f" ({what})")


def forget_latest(link: Path) -> None:
    """Remove the ``guard`` pointer (a symlink, or a copy where links fail); the builds it named stay."""
    if link.is_symlink() or link.is_file():
        link.unlink()
    elif link.is_dir():
        shutil.rmtree(link)


def _point_latest(link: Path, target: Path) -> None:
    """``guard`` → the newest build, as a relative symlink (a copy where symlinks fail)."""
    forget_latest(link)
    try:
        link.symlink_to(target.name, target_is_directory=True)
    except OSError:
        shutil.copytree(target, link)


__all__ = ["BuildResult", "GuardBuildConfig", "PROFILES", "build_data", "build_guard", "check_build", "choose_threshold",
           "data_file_name", "forget_latest", "guard_profile", "harmless_flags_by_source", "harmless_source_mean",
           "load_data", "sample_examples", "training_examples", "with_overrides"]
