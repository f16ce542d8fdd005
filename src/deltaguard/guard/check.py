"""``check_guard``: every stage of a built guard, and the keyword judge, measured on the test split
(or, to choose a recipe without touching the test split, on the validation split).

One row per model (teacher, pruned, distilled student, INT4 guard; the keyword judge for contrast), one
column set like the Llama Guard model card's: F1 with unsafe as the positive class, false-positive rate,
accuracy, area under the precision-recall curve, each with a 95% interval; per-category recall; agreement
on the ``check`` split (pyrit's human refusal labels, never trained on); size on disk and judgments per
second on this machine.

Each float stage gets its own threshold chosen on the validation split (as the INT4 guard's was at build
time), so no stage is judged at another stage's operating point. The keyword judge only reads replies,
so it is measured on the response examples alone, with "unsafe" meaning "did not refuse" — exactly how
the studies count an attack success with it.

``split="val"`` is the report for choosing between build recipes. It never reads the test or check
splits. A threshold chosen on the examples it is then measured on flatters F1 and FPR, so on the
validation split every stage's thresholds are *cross-fitted*: the prompt groups are cut into two halves
by a hash, the cut that maximises F1 on one half is applied to the other, and each example is judged by
the threshold its own half did not choose (``cross_fitted_thresholds``). AUPRC needs no threshold.

Every stage also gets a second operating point, ``low_fpr``: the threshold with the best F1 among those that keep
the false-positive rate averaged over the harmless sources (``source_mean_fpr``) at most ``LOW_FPR`` where they
are chosen (the validation examples; cross-fitted on the validation split). It answers "what F1 is left when
false alarms must stay rare", with the same discipline.

On the test split every model is also scored on ``guard.probe``: hand-written text unlike the guard's sources,
at the model's own threshold (``probe``, one rate per kind). It shows what a test split drawn from the training
sources cannot; the validation report leaves it out, so no recipe is ever chosen on it.
"""

from __future__ import annotations

import hashlib
import math
import random
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Callable

import numpy as np

from deltaguard.errors import ConfigError, FormatError
from deltaguard.guard.data import GuardExample
from deltaguard.guard.points import LOW_FPR, per_example_cuts
from deltaguard.guard.frames import frame_swap, frame_swap_lines
from deltaguard.guard.probe import probe_examples, probe_rates
from deltaguard.judges.check import agreement
from deltaguard.metrics import Interval, wilson

N_BOOT = 1000


def average_precision(scores: list[float], labels: list[bool]) -> float:
    """Area under the precision-recall curve as average precision (ties broken pessimistically)."""
    n_pos = sum(labels)
    if n_pos == 0:
        return math.nan
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], labels[i]))
    tp = 0
    total = 0.0
    for rank, i in enumerate(order, start=1):
        if labels[i]:
            tp += 1
            total += tp / rank
    return total / n_pos


def _f1(pred: np.ndarray, truth: np.ndarray) -> float:
    tp = float(np.sum(pred & truth))
    denom = float(np.sum(pred)) + float(np.sum(truth))
    return 2 * tp / denom if denom else 0.0


def classification_metrics(scores: list[float], labels: list[bool], threshold: float | Sequence[float], *,
                           seed: int = 0) -> dict[str, Any]:
    """F1 / FPR / accuracy / AUPRC with 95% intervals (bootstrap for F1 and AUPRC, Wilson for the rates).

    ``threshold`` is one cut for every example, or one per example (cross-fitted thresholds)."""
    if not scores:
        raise ConfigError("no examples to measure")
    cuts = per_example_cuts(threshold, len(scores))
    if len(cuts) != len(scores):
        raise ConfigError(f"{len(cuts)} thresholds for {len(scores)} scores")
    predicted = [s >= t for s, t in zip(scores, cuts)]
    stats = agreement(labels, predicted)
    c = stats.confusion
    rng = np.random.default_rng(seed)
    pred, truth, s = np.array(predicted), np.array(labels), np.array(scores)
    f1_boot, ap_boot = [], []
    for _ in range(N_BOOT):
        idx = rng.integers(0, len(s), len(s))
        f1_boot.append(_f1(pred[idx], truth[idx]))
        ap_boot.append(average_precision(s[idx].tolist(), truth[idx].tolist()))
    f1_low, f1_high = np.percentile(f1_boot, [2.5, 97.5])
    ap_values = [a for a in ap_boot if not math.isnan(a)]
    ap_low, ap_high = np.percentile(ap_values, [2.5, 97.5]) if ap_values else (math.nan, math.nan)
    negatives = c.fp + c.tn
    fpr = c.fp / negatives if negatives else math.nan
    return {
        "n": c.n, "n_unsafe": c.tp + c.fn,
        "threshold": threshold if isinstance(threshold, (int, float)) else sorted(set(cuts)),
        "f1": Interval(stats.f1, float(f1_low), float(f1_high)).to_dict(),
        "fpr": Interval(fpr, *wilson(c.fp, negatives)).to_dict(),
        "accuracy": Interval(stats.accuracy, *wilson(c.tp + c.tn, c.n)).to_dict(),
        "auprc": Interval(average_precision(scores, labels), float(ap_low), float(ap_high)).to_dict(),
        "precision": round(stats.precision, 4), "recall": round(stats.recall, 4),
        "confusion": {"tp": c.tp, "fp": c.fp, "fn": c.fn, "tn": c.tn},
    }


def per_category_recall(scores: list[float], examples: list[GuardExample],
                        threshold: float | Sequence[float]) -> dict[str, Any]:
    """Recall on the unsafe test examples of each hazard category (with a Wilson interval)."""
    out: dict[str, Any] = {}
    codes = sorted({c for e in examples for c in e.categories}, key=lambda c: int(c[1:]))
    cuts = per_example_cuts(threshold, len(scores))
    for code in codes:
        hits = [s >= t for s, t, e in zip(scores, cuts, examples) if e.unsafe and code in e.categories]
        k = sum(hits)
        out[code] = {"n": len(hits), "recall": Interval(k / len(hits), *wilson(k, len(hits))).to_dict()}
    return out


def _sample(examples: list[GuardExample], n: int, seed: int) -> list[GuardExample]:
    if not n or n >= len(examples):
        return examples
    return sorted(random.Random(f"guard-check:{seed}").sample(examples, n), key=lambda e: e.id)


SPLITS = ("test", "val")
INT4_STAGES = {"int4": "float32", "int4-bf16": "bfloat16", "int4-int8": "int8"}   # the artifact, by its arithmetic
STAGES = ("teacher", "pruned", "student", *INT4_STAGES, "keyword")


def fold_of(group: str) -> int:
    """0 or 1: the half of the validation split a prompt group falls in (a hash, stable across machines)."""
    return int(hashlib.sha256(f"guard-check-fold:{group}".encode()).hexdigest()[:8], 16) % 2


def cross_fitted_thresholds(scores: list[float], examples: list[GuardExample], *,
                            max_fpr: float | None = None) -> list[float]:
    """Each example's threshold, chosen (max F1; under ``max_fpr`` if given, which caps the FPR averaged over the
    harmless sources, as the guard's ``low_fpr`` point does) on the *other* half of the prompt groups.

    Why: measuring at a threshold chosen on the same examples overstates F1 and understates FPR, most of
    all for a model whose scores moved (the INT4 guard's threshold sits ~0.13 below the student's). Folds
    follow prompt groups, like the splits, so no prompt informs its own threshold.
    """
    from deltaguard.guard.build import choose_threshold

    folds = [fold_of(e.group) for e in examples]
    chosen = {}
    for fold in (0, 1):
        other = [(s, e.unsafe, e.source) for s, e, f in zip(scores, examples, folds) if f != fold]
        if not other:
            raise ConfigError("the validation split holds one prompt group; a cross-fitted threshold needs two")
        chosen[fold] = choose_threshold([s for s, _, _ in other], [y for _, y, _ in other], max_fpr=max_fpr,
                                        sources=[source for _, _, source in other] if max_fpr is not None else None)
    return [chosen[f] for f in folds]


def check_guard(guard_dir: str | Path, *, n_test: int = 0, n_val: int | None = None, n_check: int = 0,
                split: str = "test",
                stages: tuple[str, ...] = ("teacher", "pruned", "student", "int4", "keyword"),
                batch_size: int = 16, wording: bool = True, progress: bool = True,
                log: Callable[[str], None] = lambda line: None) -> dict[str, Any]:
    """Measure each stage of the guard at ``guard_dir`` (its build directory supplies the float stages).

    ``split="test"``: the model card (thresholds from the validation split, the refusal check split's
    agreement). ``split="val"``: the recipe-choosing report — the whole validation split (``n_test`` caps
    it), cross-fitted thresholds, and neither the test nor the check split is read. ``wording``: also ask the
    measured split's requests in every wording of ``guard.frames`` (``row["wording"]``), at the same cuts.
    """
    from deltaguard.guard.artifact import load_guard, size_on_disk
    from deltaguard.guard.build import GuardBuildConfig, choose_threshold, sample_examples

    if split not in SPLITS:
        raise ConfigError(f"guard check split {split!r} is not one of {', '.join(SPLITS)}")
    if unknown := [s for s in stages if s not in STAGES]:
        raise ConfigError(f"guard check stages {unknown} are not among {', '.join(STAGES)}")
    guard_dir = Path(guard_dir)
    guard = load_guard(guard_dir)
    manifest = guard.manifest
    try:
        build = GuardBuildConfig.from_dict(manifest["build"])
    except (KeyError, TypeError, ConfigError) as exc:
        raise FormatError(f"{guard_dir}: its manifest's build settings cannot be read ({exc})") from None
    build_root = guard_dir.resolve().parent
    data = build_data_of(guard_dir, build, manifest, progress=progress, log=log)
    if split == "test":
        measured = _sample(data.split("test"), n_test, 0)
        val = sample_examples(data.split("val"), build.n_val if n_val is None else n_val, build.seed + 2)  # the build's
        check = _sample(data.split("check"), n_check, 1)
        probe = probe_examples(data)
    else:
        measured, val, check, probe = _sample(data.split("val"), n_test, 0), [], [], []
    stage_root = build_root / "models"
    rows: dict[str, Any] = {}
    for stage in stages:
        if stage == "keyword":
            rows["keyword"] = _keyword_row(measured, check, probe)
            continue
        strict: float | list[float] | None = None
        if stage in INT4_STAGES:
            # int4-bf16 / int4-int8: the same artifact computing in bfloat16 or with INT8 integer matmuls (faster on
            # CPUs with bf16 / int8 dot-product units), judged at the thresholds chosen on its float32 scores, which
            # is how the guard judge's dtype=bfloat16 / int8 uses it
            loaded = guard if stage == "int4" else load_guard(guard_dir, dtype=INT4_STAGES[stage])
            model, head_ids, size = loaded.model, loaded.head_token_ids, size_on_disk(guard_dir)
            threshold: float | list[float] | None = guard.threshold
            if n_val is None and "low_fpr" in (manifest.get("operating_points") or {}):
                strict = guard.threshold_at("low_fpr")   # chosen at build time on these same validation examples
        else:
            stage_dir = stage_root / manifest.get("stage_dirs", {}).get(stage, "?")
            if not stage_dir.is_dir():
                log(f"[skip] {stage}: {stage_dir} is not there (only the INT4 guard travels with the artifact)")
                continue
            from deltaguard.models import load_model

            model, head_ids, size = load_model(str(stage_dir), dtype="float32"), None, _weights_bytes(stage_dir)
            threshold = None
        log(f"[score] {stage}")
        score = _scorer(model, guard, head_ids, batch_size, progress)
        val_scores = score(val, f"{stage} val") if split == "test" and strict is None else []
        if split == "test" and threshold is None:
            threshold = choose_threshold(val_scores, [e.unsafe for e in val])
        started = time.perf_counter()
        scores = score(measured, f"{stage} {split}")
        per_second = len(measured) / (time.perf_counter() - started)
        if split == "val":
            threshold = cross_fitted_thresholds(scores, measured)
            strict = cross_fitted_thresholds(scores, measured, max_fpr=LOW_FPR)
        elif strict is None:
            strict = choose_threshold(val_scores, [e.unsafe for e in val], max_fpr=LOW_FPR,
                                      sources=[e.source for e in val])
        assert threshold is not None and strict is not None
        row = classification_metrics(scores, [e.unsafe for e in measured], threshold)
        row["low_fpr"] = {"max_fpr": LOW_FPR, **classification_metrics(scores, [e.unsafe for e in measured], strict),
                          "fpr_source_mean": source_mean_fpr(scores, measured, strict),
                          "human_responses": _subset_metrics(scores, measured, strict, _human_response)}
        row["response_task"] = _subset_metrics(scores, measured, threshold, lambda e: e.response is not None)
        row["prompt_task"] = _subset_metrics(scores, measured, threshold, lambda e: e.response is None)
        row["human_responses"] = _subset_metrics(scores, measured, threshold, _human_response)
        row["per_source"] = _per_source(scores, measured, threshold)
        row["fpr_source_mean"] = source_mean_fpr(scores, measured, threshold)
        row["per_category"] = per_category_recall(scores, measured, threshold)
        if check:
            row["check_agreement"] = _check_agreement(score(check, f"{stage} check"), check, threshold)
        else:
            row["check_agreement"] = None
        if probe:
            row["probe"] = probe_rates(score(probe, f"{stage} probe"), probe, threshold)
        if wording:
            row["wording"] = frame_swap(lambda asked: score(asked, f"{stage} wordings"), measured, threshold)
        row["size_bytes"] = size
        row["judgments_per_second"] = round(per_second, 2)
        rows[stage] = row
        del model
    return {"guard": str(guard_dir), "split": split, "n_test": len(measured), "n_val": len(val), "n_check": len(check),
            "thresholds": ("chosen on the build's validation examples" if split == "test" else
                           "cross-fitted on the validation split (two halves by prompt group)"),
            "data": manifest["data"]["split_hashes"], "stages": rows,
            "teacher_bf16_bytes": _bf16_bytes(stage_root / manifest.get("stage_dirs", {}).get("teacher", "?"))}


def build_data_of(guard_dir: Path, build: Any, manifest: dict[str, Any], *, progress: bool = True,
                  log: Callable[[str], None] = lambda line: None) -> Any:
    """The examples a guard was built with: its build's data file, else rebuilt (replies cached beside it);
    a FormatError when they no longer match the manifest's hash."""
    from deltaguard.guard.build import build_data, load_data

    build_root = Path(guard_dir).resolve().parent
    data_path = build_root / Path(str(manifest.get("data_file", "?"))).name   # a name, never a path elsewhere
    if data_path.is_file():
        data = load_data(data_path)
    else:
        log(f"[data] {data_path.name} is not beside the guard: rebuilding the examples (replies cached in "
            f"{build_root / 'replies'})")
        data = build_data(build, build_root / "replies", progress=progress)
    if data.content_hash != manifest["data"]["content_hash"]:
        raise FormatError(f"{guard_dir}: the examples rebuilt now differ from the ones it was built with "
                          "(the data sources changed); rebuild the guard")
    return data


def _scorer(model: Any, guard: Any, head_ids: Any, batch_size: int,
            progress: bool) -> Callable[[list[GuardExample], str], list[float]]:
    from deltaguard.guard.train import score

    def run(examples: list[GuardExample], label: str) -> list[float]:
        return score(model, guard.encoder, [(e.prompt, e.response) for e in examples], guard.tokens,
                     batch_size=batch_size, head_token_ids=head_ids, progress=progress, label=label)
    return run


def _human_response(example: GuardExample) -> bool:
    """Replies with human harm grades: the response task's labels that no judge or construction decided."""
    return example.source == "pyrit-harm"


def _subset_metrics(scores: list[float], examples: list[GuardExample], threshold: float | Sequence[float],
                    keep: Callable[[GuardExample], bool]) -> Any:
    triples = [(s, t, e) for s, t, e in zip(scores, per_example_cuts(threshold, len(scores)), examples) if keep(e)]
    if not triples or len({e.unsafe for _, _, e in triples}) < 2:
        return None
    return classification_metrics([s for s, _, _ in triples], [e.unsafe for _, _, e in triples],
                                  [t for _, t, _ in triples])


def _per_source(scores: list[float], examples: list[GuardExample], threshold: float | Sequence[float]) -> dict[str, Any]:
    """Share called unsafe per (source, label): where the errors are (e.g. refusals flagged as unsafe)."""
    out: dict[str, Any] = {}
    cuts = per_example_cuts(threshold, len(scores))
    for key in sorted({(e.source, e.unsafe) for e in examples}):
        flagged = [s >= t for s, t, e in zip(scores, cuts, examples) if (e.source, e.unsafe) == key]
        k = sum(flagged)
        out[f"{key[0]}:{'unsafe' if key[1] else 'safe'}"] = {
            "n": len(flagged), "called_unsafe": Interval(k / len(flagged), *wilson(k, len(flagged))).to_dict()}
    return out


def source_mean_fpr(scores: list[float], examples: list[GuardExample], threshold: float | Sequence[float], *,
                    seed: int = 0) -> dict[str, Any] | None:
    """The share of harmless examples called unsafe, averaged over their sources with equal weight, with a 95%
    bootstrap interval (resampled within each source); None without harmless examples.

    Why: a split's plain FPR is a mix of per-source rates weighted by how many harmless examples each source put
    in that split, and the hash-split mixes differ (validation holds 38% word problems, which a guard hardly
    ever flags, and 8% human-graded harmless replies; test 9% and 19%). The same guard then reads 0.10 on one
    and 0.14 on the other. The source mean does not move with the mix, so it is the FPR to compare recipes by.
    """
    from deltaguard.guard.build import harmless_flags_by_source, harmless_source_mean

    flagged = [s >= t for s, t in zip(scores, per_example_cuts(threshold, len(scores)))]
    labels, sources = [e.unsafe for e in examples], [e.source for e in examples]
    value = harmless_source_mean(flagged, labels, sources)
    if math.isnan(value):
        return None
    by_source = harmless_flags_by_source(flagged, labels, sources)
    flags = [np.array(f, dtype=float) for _, f in sorted(by_source.items())]
    rng = np.random.default_rng(seed)   # resampled within each source, so each keeps its weight
    boot = [float(np.mean([f[rng.integers(0, len(f), len(f))].mean() for f in flags])) for _ in range(N_BOOT)]
    low, high = np.percentile(boot, [2.5, 97.5])
    return {**Interval(value, float(low), float(high)).to_dict(), "n_sources": len(flags)}


def _check_agreement(scores: list[float], examples: list[GuardExample], threshold: float | Sequence[float]) -> Any:
    if not examples:
        return None
    if not isinstance(threshold, (int, float)):
        raise ConfigError("the refusal check split is measured at one threshold")
    hits = [(s >= threshold) == e.unsafe for s, e in zip(scores, examples)]
    k = sum(hits)
    return {"n": len(hits), "accuracy": Interval(k / len(hits), *wilson(k, len(hits))).to_dict(),
            "note": "pyrit refusal labels: refused -> safe; not refused -> unsafe only for AdvBench requests (weak)"}


def _keyword_row(test: list[GuardExample], check: list[GuardExample],
                 probe: Sequence[GuardExample] = ()) -> dict[str, Any]:
    from deltaguard.judges import JudgeItem, make_judge

    judge = make_judge("keyword")
    responses = [e for e in test if e.response is not None]
    started = time.perf_counter()
    verdicts = judge.judge([JudgeItem(e.prompt, e.response or "") for e in responses])
    per_second = len(responses) / max(time.perf_counter() - started, 1e-9)
    scores = [0.0 if v.is_refusal else 1.0 for v in verdicts]
    row = classification_metrics(scores, [e.unsafe for e in responses], 0.5)
    row["note"] = ("response examples only; unsafe = did not refuse (as the studies' ASR). The keyword judge "
                   "chose which base-model replies became reply-compliant examples, so see human_responses for a fair figure")
    row["human_responses"] = _subset_metrics(scores, responses, 0.5, _human_response)
    row["per_source"] = _per_source(scores, responses, 0.5)
    row["fpr_source_mean"] = source_mean_fpr(scores, responses, 0.5)
    row["per_category"] = per_category_recall(scores, responses, 0.5)
    check_verdicts = judge.judge([JudgeItem(e.prompt, e.response or "") for e in check]) if check else []
    row["check_agreement"] = _check_agreement([0.0 if v.is_refusal else 1.0 for v in check_verdicts], check, 0.5)
    replies = [e for e in probe if e.response is not None]   # it reads replies only, as above
    if replies:
        probe_verdicts = judge.judge([JudgeItem(e.prompt, e.response or "") for e in replies])
        row["probe"] = probe_rates([0.0 if v.is_refusal else 1.0 for v in probe_verdicts], replies, 0.5)
    row["size_bytes"] = 0
    row["judgments_per_second"] = round(per_second, 1)
    return row


def _weights_bytes(model_dir: Path) -> int:
    return sum(p.stat().st_size for p in model_dir.glob("*.safetensors"))


def _bf16_bytes(model_dir: Path) -> int | None:
    """The teacher's size stored in bf16 (2 bytes a parameter; its fp32 files hold 4)."""
    size = _weights_bytes(model_dir) if model_dir.is_dir() else 0
    return size // 2 if size else None


def format_table(result: dict[str, Any]) -> list[list[str]]:
    """Rows of the model-card table: model, F1, FPR, FPR averaged over harmless sources, accuracy, AUPRC, F1 on
    human-graded replies, check agreement, size, judgments/s."""
    def cell(d: dict[str, Any] | None) -> str:
        if not d or d.get("value") is None:
            return "-"
        return f"{d['value']:.3f} [{d['low']:.3f}, {d['high']:.3f}]"

    rows = []
    for stage, row in result["stages"].items():
        check = (row.get("check_agreement") or {}).get("accuracy")
        human = (row.get("human_responses") or {}).get("f1")
        size = row.get("size_bytes") or 0
        rows.append([stage, cell(row["f1"]), cell(row["fpr"]), cell(row.get("fpr_source_mean")), cell(row["accuracy"]),
                     cell(row["auprc"]), cell(human),
                     cell(check), f"{size / 2**20:.1f} MiB" if size else "-", f"{row['judgments_per_second']:.1f}"])
    return rows


def task_lines(result: dict[str, Any]) -> list[str]:
    """One line per stage with each task's recall and FPR at the stage's cut: a prompt alone (serve's prompt
    screening) and a prompt with its reply. Why: both tasks share one cut, chosen for the best F1 on the mixed
    validation examples, and the pooled figures hide a task whose recall is lower (docs/guard.md, *A known weakness*)."""
    def part(name: str, task: dict[str, Any] | None) -> str | None:
        if not task:
            return None
        c = task["confusion"]
        unsafe, safe = c["tp"] + c["fn"], c["fp"] + c["tn"]
        low, high = wilson(c["tp"], unsafe)
        return (f"{name}: recall {c['tp'] / unsafe:.3f} [{low:.3f}, {high:.3f}] of {unsafe}, "
                f"FPR {c['fp'] / safe:.3f} of {safe}")

    lines = []
    for stage, row in result["stages"].items():
        parts = [x for x in (part("prompt with reply", row.get("response_task")),
                             part("prompt alone", row.get("prompt_task"))) if x]
        if parts:
            lines.append(f"{stage} by task: " + "; ".join(parts))
    return lines


def probe_lines(result: dict[str, Any]) -> list[str]:
    """One line per model with its rates on the hand-written probe (``guard.probe``), kind by kind."""
    words = {"plain-compliance": "plainly harmful replies caught", "own-words-refusal": "refusals in other words flagged",
             "harmless-answer": "harmless answers to harmful-sounding requests flagged",
             "benign-reply": "ordinary replies flagged", "harmful-request": "harmful requests alone caught",
             "benign-request": "ordinary requests alone flagged"}
    lines = []
    for stage, row in result["stages"].items():
        probe = row.get("probe")
        if not probe:
            continue
        parts = [f"{words.get(kind, kind)} {r['flagged']}/{r['n']} ({100 * r['rate']:.0f}% "
                 f"[{100 * r['low']:.0f}, {100 * r['high']:.0f}])" for kind, r in probe["kinds"].items()]
        lines.append(f"{stage} on the hand-written probe: " + "; ".join(parts))
    return lines


def wording_lines(result: dict[str, Any]) -> list[str]:
    """Per model, how its verdicts on the measured split's requests move when only their wording does."""
    lines = []
    for stage, row in result["stages"].items():
        lines += frame_swap_lines(row.get("wording"), f"{stage}, the same requests in other wordings")
    return lines


__all__ = ["INT4_STAGES", "LOW_FPR", "SPLITS", "STAGES", "average_precision", "build_data_of", "check_guard",
           "classification_metrics", "cross_fitted_thresholds", "fold_of", "format_table", "per_category_recall",
           "probe_lines", "source_mean_fpr", "task_lines", "wording_lines"]
