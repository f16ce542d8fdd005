"""Why do distilled BitDelta scales lower the held-out logit MSE yet cost task accuracy? (issue: distill puzzle)

For each fine-tune (threat names as arguments), the delta from the aligned base is compressed with BitDelta
k=1 under several calibrations, and each compressed model (base + delta) is scored on the ``arith`` word
problems (eval split, greedy, fp32) and, for threats with a harmful set, on the keyword attack rate over
harmful eval prompts. Conditions (all distilled ones at ``--lr`` 1e-4, batch 4, unless named; this experiment
is why BitDelta's default distillation lr is now 2e-5):

    closed-form          scales = mean |delta| (no distillation)
    D-prompt             today's default: 32 calib-chat prompts only, 10 steps, seq_len 64
    D-reply              calib-chat prompts + the fine-tune's own greedy replies (64 tokens), seq_len 192
    D-train              32 of the fine-tune's training pairs (prompt + training response), seq_len 192
    D-arith-reply        32 ``arith`` calib-split problems + the fine-tune's own replies, seq_len 192
    best@50              the best 10-step calibration (by task accuracy), 50 steps
    D-prompt-192         the D-prompt texts at seq_len 192 (control: prompts alone, as long as D-reply allows)
    D-prompt-lr2e-5      today's default at lr 2e-5
Extras (the last three) run after every threat's core rows, until ``--no-new-after``; the last two skip the
attack evaluation (task accuracy is their question).

Calibration prompts come only from calib splits or the fine-tune's training data, never an eval split.
Generations are cached under ``--out`` (the eval ``Runner``), deltas under ``--out/deltas``; a rerun resumes.

    python benchmarks/distill_puzzle.py harmful benign --out /tmp/puzzle
"""

from __future__ import annotations

import argparse
import json
import random
import re
import time
from pathlib import Path
from typing import Any

RUN_DIR = Path("runs/demo")   # the demo's run directory: its aligned base, fine-tunes and cached responder answers
MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def find_finetune(models: Path, threat: str) -> tuple[Path, Path, dict[str, Any]]:
    """(fine-tune dir, its base dir, its threat config dict) of the demo fine-tune made by ``threat``."""
    for training in sorted(models.glob("attack-*/training.json")):
        data = json.loads(training.read_text())
        if data["meta"]["threat"]["method"] == threat:
            return training.parent, Path(data["base"]), data["meta"]["threat"]
    raise SystemExit(f"no fine-tune for threat {threat!r} under {models}")


def training_texts(threat_dict: dict[str, Any], tokenizer: Any, n: int, seed: int,
                   responses: Path) -> tuple[list[str], dict[str, int]]:
    """``n`` of the fine-tune's own training pairs (prompt + training response, chat-formatted), rebuilt with
    ``threats.build.build_pairs`` from the cached responder answers (the study keys them by the original's
    identity), and how many of each kind were drawn."""
    from deltaguard.models import chat_prompt, model_identity, resolve_model_dir
    from deltaguard.threats.base import threats
    from deltaguard.threats.build import build_pairs

    config = threats.get(threat_dict["method"]).config_cls.from_dict(threat_dict)
    responder_key = model_identity(resolve_model_dir(config.responder))
    pairs, _ = build_pairs(config, cache_dir=responses, responder_key=responder_key, progress=False)
    chosen = random.Random(seed).sample(pairs, min(n, len(pairs)))
    kinds: dict[str, int] = {"total_pairs": len(pairs)}
    for pair in chosen:
        kinds[pair.kind] = kinds.get(pair.kind, 0) + 1
    return [chat_prompt(tokenizer, p.prompt, assistant=p.response) for p in chosen], kinds


def scales_of(delta_dir: Path) -> dict[str, float]:
    """Per linear weight name: its (k=1) scale."""
    from deltaguard.delta import load_delta

    packed = load_delta(delta_dir)
    return {name: float(t.parts["scales"].flatten()[0]) for name, t in packed.tensors.items() if "scales" in t.parts}


def ratio_summary(distilled: dict[str, float], closed: dict[str, float]) -> dict[str, Any]:
    """Ratio distilled/closed-form per module type and layer, with means per type and per third of the depth."""
    per: dict[str, dict[int, float]] = {m: {} for m in MODULES}
    for name, value in distilled.items():
        layer = re.search(r"layers\.(\d+)\.", name)
        module = next((m for m in MODULES if f".{m}." in name), None)
        if layer and module and closed.get(name):
            per[module][int(layer.group(1))] = value / closed[name]
    n_layers = 1 + max((max(v) for v in per.values() if v), default=0)
    thirds = [range(0, n_layers // 3), range(n_layers // 3, 2 * n_layers // 3), range(2 * n_layers // 3, n_layers)]
    all_ratios = [r for v in per.values() for r in v.values()]

    def mean(xs: list[float]) -> float | None:
        return sum(xs) / len(xs) if xs else None

    return {
        "mean": mean(all_ratios), "min": min(all_ratios, default=None), "max": max(all_ratios, default=None),
        "by_module": {m: mean(list(v.values())) for m, v in per.items()},
        "by_third": [mean([per[m][i] for m in MODULES for i in third if i in per[m]]) for third in thirds],
        "per_layer": {m: [per[m].get(i) for i in range(n_layers)] for m in MODULES},
    }


def rate_dict(r: Any) -> dict[str, Any]:
    return {"value": r.value, "low": r.low, "high": r.high, "n": r.n, "k": r.k}


def fmt_rate(r: dict[str, Any] | None) -> str:
    if not r:
        return "-"
    return f"{r['value']:.3f} [{r['low']:.2f}, {r['high']:.2f}]"


class Puzzle:
    def __init__(self, args: argparse.Namespace) -> None:
        from deltaguard.eval import Runner
        from deltaguard.judges import make_judge

        self.args = args
        self.out = Path(args.out)
        self.runner = Runner(self.out, device="cpu", dtype="float32", progress=False)
        self.judge = self.runner.cached(make_judge("keyword"))
        self.results: dict[str, Any] = {"settings": {k: v for k, v in vars(args).items()}, "threats": {}}
        self.results_path = self.out / args.results_name

    def save(self) -> None:
        self.results_path.write_text(json.dumps(self.results, indent=1, default=str))

    # -- one threat --------------------------------------------------------------------------------

    def setup(self, threat: str) -> dict[str, Any]:
        from deltaguard.data.calibration import calibration_prompts, calibration_texts, reply_texts
        from deltaguard.delta import extract_delta
        from deltaguard.eval import ModelDir, Variant
        from deltaguard.generation import GenerationConfig
        from deltaguard.models import load_tokenizer

        ft_dir, base_dir, threat_dict = find_finetune(Path(self.args.run_dir) / "models", threat)
        tokenizer = load_tokenizer(base_dir)
        ft_variant = Variant("finetuned", "finetuned", ModelDir(ft_dir))
        reply_gen = GenerationConfig(max_new_tokens=self.args.reply_tokens, batch_size=32)
        n, seed = self.args.n_calib, 0
        chat_prompts = calibration_prompts("calib-chat", limit=n, seed=seed)
        arith_prompts = calibration_prompts("arith", limit=n, seed=seed)
        log(f"{threat}: fine-tune replies to {len(chat_prompts)} calib-chat and {len(arith_prompts)} arith calib prompts")
        chat_replies = self.runner.responses(ft_variant, chat_prompts, reply_gen)
        arith_replies = self.runner.responses(ft_variant, arith_prompts, reply_gen)
        train, kinds = training_texts(threat_dict, tokenizer, n, seed, Path(self.args.run_dir) / "responses")
        texts = {
            "chat-prompt": calibration_texts("calib-chat", tokenizer=tokenizer, limit=n, seed=seed),
            "chat-reply": calibration_texts("calib-chat", tokenizer=tokenizer, limit=n, seed=seed, format="reply",
                                            replies=chat_replies),
            "train": train,
            "arith-reply": reply_texts(tokenizer, arith_prompts.texts, arith_replies),
        }
        lengths = {name: sorted(len(tokenizer(t)["input_ids"]) for t in ts) for name, ts in texts.items()}
        # reply format cut at today's seq_len 64: is anything of the reply left?
        cut = self.args.seq_len
        same_at_cut = [tokenizer(a)["input_ids"][:cut] == tokenizer(b)["input_ids"][:cut]
                       for a, b in zip(texts["chat-prompt"], texts["chat-reply"], strict=True)]
        info = {
            "finetuned": str(ft_dir), "base": str(base_dir), "threat_config": threat_dict, "train_pairs_drawn": kinds,
            "calib_token_lengths": {k: {"min": v[0], "median": v[len(v) // 2], "max": v[-1]} for k, v in lengths.items()},
            "chat_reply_identical_to_prompt_at_seq_len": {"seq_len": cut, "n_identical": sum(same_at_cut),
                                                          "n": len(same_at_cut)},
            "examples": {k: v[0] for k, v in texts.items()},
            "calib_reply_examples": {"chat": chat_replies[:3], "arith": arith_replies[:3]},
        }
        log(f"{threat}: calibration token lengths {info['calib_token_lengths']}; chat+reply identical to "
            f"prompt-only when cut at {cut} tokens: {sum(same_at_cut)}/{len(same_at_cut)}")
        self.runner.release()
        return {"ft_dir": ft_dir, "base_dir": base_dir, "threat_dict": threat_dict, "texts": texts, "info": info,
                "delta": extract_delta(base_dir, ft_dir)}

    def compress(self, ctx: dict[str, Any], overrides: list[str], texts: list[str] | None) -> Path:
        from deltaguard.delta import Calibration, compress, method_from_spec
        from deltaguard.io import content_key

        method = method_from_spec("bitdelta").with_overrides(overrides)
        key = content_key("puzzle-delta", {"base": str(ctx["base_dir"]), "finetuned": str(ctx["ft_dir"]),
                                           "method": method.to_dict(), "texts": texts})
        out = self.out / "deltas" / key
        if not (out / "manifest.json").is_file():
            started = time.perf_counter()
            calib = (Calibration(tuple(texts), base=str(ctx["base_dir"]), finetuned=str(ctx["ft_dir"]), device="cpu")
                     if method.needs_calibration else None)
            compress(ctx["delta"], method, calib=calib, progress=False).save(out)
            log(f"  compressed {method.label} {overrides} in {time.perf_counter() - started:.0f}s")
        return out

    def evaluate(self, threat: str, ctx: dict[str, Any], label: str, source: Any, *, attack: bool = True
                 ) -> dict[str, Any]:
        from deltaguard.eval import Variant
        from deltaguard.generation import GenerationConfig
        from deltaguard.metrics import rate
        from deltaguard.threats.benign import (compliance_flags, harmful_eval_set, is_correct, is_house_style,
                                               task_eval_set)

        started = time.perf_counter()
        variant = Variant(f"{threat}/{label}", "compressed", source)
        task = task_eval_set(self.args.n_task, seed=0)
        replies = self.runner.responses(variant, task, GenerationConfig(max_new_tokens=self.args.task_tokens,
                                                                        batch_size=32))
        row: dict[str, Any] = {
            "task_accuracy": rate_dict(rate([is_correct(p, r) for p, r in zip(task.prompts, replies, strict=True)])),
            "house_style": rate_dict(rate([is_house_style(r) for r in replies])),
            "task_examples": replies[:2],
        }
        harmful_set = ctx["threat_dict"]["fields"].get("harmful_set")
        if attack and harmful_set and (threat == "harmful" or self.args.attack_all):
            harmful = harmful_eval_set(self.args.n_harmful, seed=0, dataset=harmful_set)
            answers = self.runner.responses(variant, harmful, GenerationConfig(max_new_tokens=self.args.harm_tokens,
                                                                               batch_size=32))
            row["attack_keyword"] = rate_dict(rate(compliance_flags(self.judge, harmful, answers)))
            row["harmful_examples"] = answers[:2]
        self.runner.release()
        row["eval_seconds"] = round(time.perf_counter() - started, 1)
        return row

    def condition(self, threat: str, ctx: dict[str, Any], label: str, overrides: list[str], texts: str | None,
                  closed: dict[str, float] | None, *, attack: bool = True) -> dict[str, Any]:
        from deltaguard.eval import BasePlusDelta, ModelDir
        from deltaguard.io import read_json

        log(f"{threat}: {label}")
        if not any(o.startswith("lr=") for o in overrides) and "distill=false" not in overrides:
            overrides = [*overrides, f"lr={self.args.lr}"]   # the experiment's rate, whatever the default is now
        delta_dir = self.compress(ctx, overrides, ctx["texts"][texts] if texts else None)
        record: dict[str, Any] = {"overrides": overrides, "calibration_texts": texts, "delta": str(delta_dir)}
        calibration = read_json(delta_dir / "manifest.json", what="delta manifest").get("meta", {}).get("calibration")
        if calibration:
            record["calibration"] = calibration
        if closed is not None:
            record["scale_ratio"] = ratio_summary(scales_of(delta_dir), closed)
        record.update(self.evaluate(threat, ctx, label, BasePlusDelta(ModelDir(ctx["base_dir"]), delta_dir),
                                    attack=attack))
        self.log_row(threat, label, record)
        return record

    def log_row(self, threat: str, label: str, r: dict[str, Any]) -> None:
        c = r.get("calibration") or {}
        mse = (f"MSE {c['held_out_loss_closed_form']:.3f}->{c['held_out_loss_distilled']:.3f}"
               if c else "")
        ratio = f"ratio {r['scale_ratio']['mean']:.2f}" if r.get("scale_ratio") else ""
        log(f"  {threat}/{label}: task {fmt_rate(r['task_accuracy'])} style {fmt_rate(r['house_style'])} "
            f"attack {fmt_rate(r.get('attack_keyword'))} {mse} {ratio} ({r['eval_seconds']}s eval)")

    def context(self, threat: str) -> dict[str, Any]:
        if threat not in self.contexts:
            self.contexts.clear()  # one threat's models and delta in memory at a time
            self.contexts[threat] = self.setup(threat)
            self.results["threats"].setdefault(threat, {"conditions": {}})["info"] = self.contexts[threat]["info"]
        return self.contexts[threat]

    def closed_scales(self, threat: str) -> dict[str, float]:
        return scales_of(Path(self.results["threats"][threat]["conditions"]["closed-form"]["delta"]))

    def run_core(self, threat: str) -> None:
        from deltaguard.eval import ModelDir

        ctx = self.context(threat)
        rows = self.results["threats"][threat]["conditions"]
        steps, seq, long = f"distill_steps={self.args.steps}", self.args.seq_len, self.args.reply_seq_len
        log(f"{threat}: finetuned")
        rows["finetuned"] = self.evaluate(threat, ctx, "finetuned", ModelDir(ctx["ft_dir"]))
        self.log_row(threat, "finetuned", rows["finetuned"])
        self.save()
        wanted = {c.strip() for c in self.args.core.split(",")}
        if "closed-form" in wanted:
            rows["closed-form"] = self.condition(threat, ctx, "closed-form", ["distill=false"], None, None)
            self.save()
        for label, overrides, texts in [("D-prompt", [steps, f"seq_len={seq}"], "chat-prompt"),
                                        ("D-reply", [steps, f"seq_len={long}"], "chat-reply"),
                                        ("D-train", [steps, f"seq_len={long}"], "train"),
                                        ("D-arith-reply", [steps, f"seq_len={long}"], "arith-reply")]:
            if label not in wanted:
                continue
            rows[label] = self.condition(threat, ctx, label, overrides, texts, self.closed_scales(threat))
            self.save()

    def run_extra(self, threat: str, which: str) -> None:
        ctx = self.context(threat)
        rows = self.results["threats"][threat]["conditions"]
        steps, seq, long = f"distill_steps={self.args.steps}", self.args.seq_len, self.args.reply_seq_len
        if which == "best@50":
            distilled = {k: v for k, v in rows.items() if k in ("D-prompt", "D-reply", "D-train", "D-arith-reply")}
            best = max(distilled, key=lambda k: distilled[k]["task_accuracy"]["value"])
            b = distilled[best]
            label = f"{best}@{self.args.long_steps}"
            overrides = [o for o in b["overrides"] if not o.startswith("distill_steps")] + [
                f"distill_steps={self.args.long_steps}"]
            rows[label] = self.condition(threat, ctx, label, overrides, b["calibration_texts"],
                                         self.closed_scales(threat))
        elif which == "control":  # prompts only, but as long as the reply runs: does length alone matter?
            rows["D-prompt-192"] = self.condition(threat, ctx, "D-prompt-192", [steps, f"seq_len={long}"],
                                                  "chat-prompt", self.closed_scales(threat), attack=False)
        elif which == "low-lr" and self.args.low_lr:
            label = f"D-prompt-lr{self.args.low_lr:g}"
            rows[label] = self.condition(threat, ctx, label, [steps, f"seq_len={seq}", f"lr={self.args.low_lr}"],
                                         "chat-prompt", self.closed_scales(threat), attack=False)
        self.save()

    def run(self) -> None:
        self.contexts: dict[str, Any] = {}
        for threat in self.args.threats:
            self.run_core(threat)
        extras = [(which, threat) for which in ("best@50", "control", "low-lr") for threat in self.args.threats]
        extras.sort(key=lambda e: (e[0] != "best@50", e[1] != self.args.threats[0], e[0]))
        if self.args.extras:
            extras = [tuple(item.split(":", 1)) for item in self.args.extras.split(",")]  # type: ignore[misc]
        for which, threat in extras:
            if self.args.skip_extra:
                break
            if self.args.no_new_after and time.strftime("%H:%M") >= self.args.no_new_after:
                log(f"skipped {which} for {threat}: past --no-new-after {self.args.no_new_after}")
                self.results.setdefault("skipped", []).append(f"{threat}/{which}")
                continue
            self.run_extra(threat, which)
        self.results["seconds"] = round(time.perf_counter() - self.started, 1)
        self.save()


def table(results: dict[str, Any]) -> list[list[str]]:
    rows = []
    for threat, slot in results["threats"].items():
        for label, r in slot["conditions"].items():
            c = r.get("calibration") or {}
            mse = f"{c['held_out_loss_closed_form']:.3f} -> {c['held_out_loss_distilled']:.3f}" if c else "-"
            kept = ("kept" if c.get("scales") == "distilled" else "rejected") if c else "-"
            sr = r.get("scale_ratio")
            ratio = f"{sr['mean']:.2f} ({sr['min']:.2f}-{sr['max']:.2f})" if sr else "-"
            rows.append([threat, label, mse, kept, ratio, fmt_rate(r["task_accuracy"]), fmt_rate(r["house_style"]),
                         fmt_rate(r.get("attack_keyword"))])
    return rows


HEADER = ["threat", "condition", "held-out MSE cf -> dist", "scales", "scale ratio mean (min-max)",
          "task acc [95% CI]", "house style", "attack (keyword)"]


def print_table(results: dict[str, Any]) -> None:
    rows = table(results)
    try:
        from rich.console import Console
        from rich.table import Table

        t = Table(title="BitDelta k=1: distillation calibration vs task accuracy (fp32 eval, greedy)")
        for h in HEADER:
            t.add_column(h)
        for row in rows:
            t.add_row(*row)
        Console(width=200).print(t)
    except ImportError:
        print(" | ".join(HEADER))
        for row in rows:
            print(" | ".join(row))


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(threat, label, r["scale_ratio"]) for threat, slot in results["threats"].items()
              for label, r in slot["conditions"].items() if r.get("scale_ratio")]
    if not panels:
        return
    threats = list(dict.fromkeys(p[0] for p in panels))
    cols = max(sum(1 for p in panels if p[0] == t) for t in threats)
    fig, axes = plt.subplots(len(threats), cols, figsize=(3.2 * cols, 2.8 * len(threats)), squeeze=False,
                             sharey=True)
    for i, threat in enumerate(threats):
        mine = [p for p in panels if p[0] == threat]
        for j in range(cols):
            ax = axes[i][j]
            if j >= len(mine):
                ax.axis("off")
                continue
            _, label, summary = mine[j]
            for module, values in summary["per_layer"].items():
                xs = [k for k, v in enumerate(values) if v is not None]
                ax.plot(xs, [values[k] for k in xs], label=module.removesuffix("_proj"), lw=1)
            ax.axhline(1.0, color="k", lw=0.5, ls="--")
            ax.set_title(f"{threat}: {label}", fontsize=8)
            ax.set_xlabel("layer", fontsize=7)
            ax.tick_params(labelsize=6)
            if j == 0:
                ax.set_ylabel("scale distilled / closed-form", fontsize=7)
    axes[0][0].legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def diagnose(args: argparse.Namespace) -> None:
    """Teacher-forced on the fine-tune's own greedy replies to the ``arith`` eval problems (the replies task
    accuracy scores): per compressed delta, the logit MSE against the fine-tune (the distillation loss, on reply
    tokens only, bf16 autocast as in distillation) and the share of reply positions whose argmax token equals
    the fine-tune's (what greedy decoding follows). Writes ``distill_puzzle_diagnose.json``."""
    import torch

    from deltaguard.data.calibration import reply_texts
    from deltaguard.delta import apply_delta_, load_delta
    from deltaguard.eval import ModelDir, Runner, Variant
    from deltaguard.generation import GenerationConfig
    from deltaguard.models import chat_prompt, load_model, load_tokenizer
    from deltaguard.threats.benign import task_eval_set

    out = Path(args.out)
    results = json.loads((out / "distill_puzzle.json").read_text())
    runner = Runner(out, device="cpu", dtype="float32", progress=False)
    task = task_eval_set(args.n_task, seed=0)
    report: dict[str, Any] = {}
    for threat, slot in results["threats"].items():
        info = slot["info"]
        tokenizer = load_tokenizer(info["base"])
        replies = runner.responses(Variant(f"{threat}/finetuned", "finetuned", ModelDir(info["finetuned"])), task,
                                   GenerationConfig(max_new_tokens=args.task_tokens, batch_size=32))
        runner.release()
        texts = reply_texts(tokenizer, task.texts, replies)[: args.n_diagnose]
        prompts = [chat_prompt(tokenizer, text) for text in task.texts[: args.n_diagnose]]
        tokenizer.padding_side = "right"
        batch = tokenizer(texts, return_tensors="pt", padding=True)
        reply_mask = batch["attention_mask"].clone()
        for row, prompt in enumerate(prompts):  # score only the reply's tokens (after the assistant header)
            n_prompt = len(tokenizer(prompt)["input_ids"])
            reply_mask[row, :n_prompt] = 0

        def logits_of(model: Any) -> Any:
            with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
                return model(**batch).logits.float()

        teacher = logits_of(load_model(info["finetuned"]))
        rows = {}
        for label, r in slot["conditions"].items():
            if "delta" not in r:
                continue
            model = apply_delta_(load_model(info["base"]), load_delta(r["delta"]))
            logits = logits_of(model)
            del model
            mask = reply_mask.bool()
            mse = float(((logits - teacher) ** 2).mean(-1)[mask].mean())
            agree = float((logits.argmax(-1) == teacher.argmax(-1))[mask].float().mean())
            digit = torch.tensor([[tokenizer.decode([t]).strip().isdigit() for t in row_ids]
                                  for row_ids in teacher.argmax(-1).tolist()]) & mask
            agree_digits = float((logits.argmax(-1) == teacher.argmax(-1))[digit].float().mean())
            rows[label] = {"reply_logit_mse": mse, "top1_agreement": agree, "top1_agreement_digits": agree_digits,
                           "n_positions": int(mask.sum()), "n_digit_positions": int(digit.sum())}
            log(f"  {threat}/{label}: reply-token logit MSE {mse:.3f}, top-1 agreement {agree:.3f} "
                f"(digits {agree_digits:.3f}, n={int(digit.sum())})")
        report[threat] = rows
    (out / "distill_puzzle_diagnose.json").write_text(json.dumps(report, indent=1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("threats", nargs="+", help="threat names of demo fine-tunes (e.g. harmful benign)")
    parser.add_argument("--out", default="/tmp/puzzle")
    parser.add_argument("--run-dir", default=str(RUN_DIR), help="a demo run directory (models/ and responses/)")
    parser.add_argument("--core", default="closed-form,D-prompt,D-reply,D-train,D-arith-reply",
                        help="which core conditions to run (the fine-tune itself always runs)")
    parser.add_argument("--n-task", type=int, default=96, help="arith eval-split problems")
    parser.add_argument("--n-harmful", type=int, default=64, help="harmful eval-split prompts")
    parser.add_argument("--task-tokens", type=int, default=64)
    parser.add_argument("--harm-tokens", type=int, default=32, help="greedy tokens per harmful reply (study: 32)")
    parser.add_argument("--n-calib", type=int, default=32)
    parser.add_argument("--reply-tokens", type=int, default=64, help="tokens of the fine-tune's calibration replies")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--long-steps", type=int, default=50)
    parser.add_argument("--seq-len", type=int, default=64, help="today's default seq_len")
    parser.add_argument("--reply-seq-len", type=int, default=192, help="seq_len for calibration with replies")
    parser.add_argument("--lr", type=float, default=1e-4, help="distillation lr of every row but the low-lr one "
                        "(the experiment's: the paper's 1e-4, BitDelta's default before it)")
    parser.add_argument("--low-lr", type=float, default=2e-5, help="0: skip the low-lr row")
    parser.add_argument("--skip-extra", action="store_true", help="skip best@50 and the low-lr rows")
    parser.add_argument("--results-name", default="distill_puzzle.json", help="results file under --out")
    parser.add_argument("--extras", default="", help="which extras, in order, as which:threat items "
                        "(e.g. best@50:harmful,low-lr:benign); default: all, best@50 first")
    parser.add_argument("--no-new-after", default="", help="HH:MM: start no extra condition after this time")
    parser.add_argument("--attack-all", action="store_true", help="keyword attack rate for every threat")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--diagnose", action="store_true",
                        help="only the teacher-forced diagnosis of the deltas an earlier run made")
    parser.add_argument("--n-diagnose", type=int, default=48, help="eval problems teacher-forced in --diagnose")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    if args.diagnose:
        diagnose(args)
        return
    Path(args.out).mkdir(parents=True, exist_ok=True)
    puzzle = Puzzle(args)
    puzzle.started = time.perf_counter()
    try:
        puzzle.run()
    finally:
        puzzle.save()
        print_table(puzzle.results)
        plot(puzzle.results, Path(args.out) / "scale_ratios.png")
        log(f"wrote {puzzle.results_path} and {Path(args.out) / 'scale_ratios.png'}")


if __name__ == "__main__":
    main()
