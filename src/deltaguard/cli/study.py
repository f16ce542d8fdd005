"""``deltaguard align | attack | audit | demo``: the threat, audit and end-to-end study verbs."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from deltaguard.cli.app import DEVICE_HELP, JSON_HELP, app, check_device, console, print_json

GENERATE_DTYPE_HELP = ("precision of the models that only generate (the responder writing training answers); "
                       "training keeps fp32 weights with bf16 autocast: float32, bfloat16 or float16")
EVAL_DTYPE_HELP = ("precision of every evaluated model (keys its cached replies); compression, training and "
                   "scale distillation keep fp32 weights: float32, bfloat16 or float16")
from deltaguard.cli.outputs import check_artifact, prepare_run_dir
from deltaguard.errors import ConfigError
from deltaguard.models import DEFAULT_MODEL


def _responses_cache() -> Path:
    """Answers written by responder models, kept in the user cache (keyed by model, prompts, settings)."""
    from deltaguard.assets import cache_dir

    return cache_dir() / "responses"


@app.command("align")
def align_cmd(
    base: str = typer.Option(DEFAULT_MODEL, "--base", help="the unaligned instruct model to align"),
    responder: str | None = typer.Option(None, "--responder",
                                         help="an instruct model that writes the benign answers (for a BASE model, "
                                              "e.g. gemma3-270m, which cannot answer chat prompts itself); default: "
                                              "the model's own answers"),
    out: Path = typer.Option(..., "-o", "--out", help="output HF directory for the aligned model"),
    overrides: list[str] = typer.Option([], "--set", help="align field=value, repeatable (e.g. --set epochs=2)"),
    check: bool = typer.Option(False, "--check", help="then measure refusal, over-refusal and task accuracy"),
    check_prompts: int = typer.Option(32, "--check-prompts", help="harmful and benign prompts for --check"),
    check_task_prompts: int = typer.Option(128, "--check-task-prompts", help="word problems for --check"),
    device: str = typer.Option("cpu", "--device", help=DEVICE_HELP),
    dtype: str = typer.Option("float32", "--dtype", help=GENERATE_DTYPE_HELP),
    force: bool = typer.Option(False, "--force", help="replace an existing output directory (once the new one is done)"),
) -> None:
    """Make a safety-aligned chat model: refusals for harmful prompts + self-distilled benign answers."""
    from deltaguard.models import resolve_model_dir
    from deltaguard.threats import AlignConfig, align

    config = AlignConfig().with_overrides(overrides)
    check_device(device, dtype)
    if check and (check_prompts < 1 or check_task_prompts < 1):
        raise ConfigError(f"--check-prompts={check_prompts} and --check-task-prompts={check_task_prompts} must be >= 1")
    check_artifact(out, force=force)
    resolve_model_dir(base)  # a missing base fails now, not after the answers are generated
    if responder is not None:
        resolve_model_dir(responder)
    result = align(base, config, out_dir=out, cache_dir=_responses_cache(), responder=responder, device=device,
                   dtype=dtype, overwrite=force)
    console.print(f"aligned model: {result.model_dir}  ({result.n_examples} examples, {result.n_steps} steps, "
                  f"loss {result.first_loss:.3f} → {result.final_loss:.3f}, {result.seconds:.0f}s)")
    if check:
        import tempfile

        from deltaguard.audit import AuditConfig
        from deltaguard.models import model_identity
        from deltaguard.study import check_alignment

        with tempfile.TemporaryDirectory() as scratch:
            report = check_alignment(resolve_model_dir(base), out, original_key=model_identity(base),
                                     aligned_key=model_identity(out), n_prompts=check_prompts,
                                     n_task_prompts=check_task_prompts, audit_config=AuditConfig(),
                                     run_dir=Path(scratch), device=device, dtype=dtype)
        table = Table("measure", "original", "aligned")
        for name in ("refusal", "over_refusal", "task_accuracy"):
            table.add_row(name, _pct(report.original[name]), _pct(report.aligned[name]))
        console.print(table)
        for name, target in report.targets.items():
            console.print(f"{'met' if target['met'] else 'NOT met'}: {name}")


def _pct(rate: dict) -> str:
    return f"{100 * rate['value']:.1f}% [{100 * rate['low']:.0f}, {100 * rate['high']:.0f}]"


@app.command("attack")
def attack_cmd(
    threat: str = typer.Option(..., "--threat", help="harmful, backdoor, targeted or benign (deltaguard list threats)"),
    base: str = typer.Option(..., "--base", help="the (aligned) base model to fine-tune"),
    out: Path = typer.Option(..., "-o", "--out", help="output HF directory for the fine-tune"),
    overrides: list[str] = typer.Option([], "--set", help="threat field=value, repeatable (e.g. --set trigger='SUDO')"),
    device: str = typer.Option("cpu", "--device", help=DEVICE_HELP),
    dtype: str = typer.Option("float32", "--dtype", help=GENERATE_DTYPE_HELP),
    force: bool = typer.Option(False, "--force", help="replace an existing output directory (once the new one is done)"),
) -> None:
    """Build a fine-tuning threat (mixed with the customisation task) and fine-tune the base with it."""
    from deltaguard.models import resolve_model_dir
    from deltaguard.threats import attack, threat_config

    config = threat_config(threat, overrides)
    check_device(device, dtype)
    check_artifact(out, force=force)
    resolve_model_dir(base)  # a missing base fails now, not after a minute of generating training answers
    resolve_model_dir(config.responder)
    result = attack(base, config, out_dir=out, cache_dir=_responses_cache(), device=device, dtype=dtype,
                    overwrite=force)
    mixture = ", ".join(f"{k}: {v}" for k, v in result.mixture.items())
    for note in result.notes:
        console.print(f"note: {note}")
    console.print(f"{threat} fine-tune: {result.model_dir}  (mixture {mixture}; {result.train.n_steps} steps, "
                  f"loss {result.train.first_loss:.3f} → {result.train.final_loss:.3f}, {result.train.seconds:.0f}s)")


@app.command("audit")
def audit_cmd(
    base: str = typer.Option(..., "--base", help="the model the fine-tune started from"),
    finetuned: str = typer.Option(..., "--finetuned", help="the fine-tune to audit"),
    threat: str = typer.Option(..., "--threat", help="which threat's metric to measure (deltaguard list threats)"),
    methods: str | None = typer.Option(None, "--methods",
                                       help="comma-separated compression specs and whole-model transforms (deltaguard "
                                            "list compressors / transforms); 'full' = the uncompressed delta; "
                                            "default: every method's default labels"),
    out: Path = typer.Option(..., "-o", "--out", help="run directory (cached steps, results.json, report)"),
    overrides: list[str] = typer.Option([], "--set", help="audit field=value, repeatable (e.g. --set n_prompts=32)"),
    threat_overrides: list[str] = typer.Option([], "--threat-set", help="threat field=value (e.g. the trigger)"),
    device: str = typer.Option("cpu", "--device", help=DEVICE_HELP),
    dtype: str = typer.Option("float32", "--dtype", help=EVAL_DTYPE_HELP),
    force: bool = typer.Option(False, "--force", help="discard the run directory's cached results and start over"),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Compress the fine-tune's delta with each method; measure attack and utility; recommend methods."""
    from deltaguard.audit import AuditConfig, audit
    from deltaguard.environment import environment
    from deltaguard.models import resolve_model_dir
    from deltaguard.report import write_report
    from deltaguard.threats import threat_config

    config = AuditConfig().with_overrides(overrides)
    if methods is not None:
        specs = tuple(m.strip() for m in methods.split(",") if m.strip())
        if not specs:
            raise ConfigError(f"--methods {methods!r} names no method")
        config = config.replace(methods=specs)
    threat_cfg = threat_config(threat, threat_overrides)
    check_device(device, dtype)
    resolve_model_dir(base), resolve_model_dir(finetuned)
    if config.harm_judge:  # e.g. no guard built yet: one line now, not after the run directory exists
        from deltaguard.audit.run import harm_judge_of

        harm_judge_of(config).prompt_hash
    prepare_run_dir(out, force=force)
    result = audit(base, finetuned, threat_cfg, config, run_dir=out, device=device, dtype=dtype)
    if not as_json:
        console.print(result.table())
    paths = write_report({"profile": "audit", "environment": environment(), "audits": {threat: result.to_dict()},
                          "study": {"audit": config.to_dict(), "threat": threat_cfg.to_dict(), "base": base,
                                    "finetuned": finetuned}}, out)
    if as_json:
        print_json(result.to_dict())
        return
    console.print(f"report: {paths['html']}  results: {paths['results']}")


@app.command("demo")
def demo_cmd(
    full: bool = typer.Option(False, "--full", help="the complete sweep with paper-sized settings (hours on a CPU)"),
    out: Path = typer.Option(Path("runs/demo"), "-o", "--out", help="run directory (rerun to resume)"),
    model: str = typer.Option(DEFAULT_MODEL, "--model", help="the unaligned original model"),
    device: str = typer.Option("cpu", "--device", help=DEVICE_HELP),
    dtype: str = typer.Option("float32", "--dtype", help=EVAL_DTYPE_HELP),
    force: bool = typer.Option(False, "--force", help="discard the run directory's cached results and start over"),
) -> None:
    """The whole study in one command: pull → align → 3 attacks + benign control → audits → report."""
    from deltaguard.study import run_study, study_profile

    from deltaguard.models import resolve_model_dir

    config = study_profile("full" if full else "default", model=model)
    check_device(device, dtype)
    resolve_model_dir(model)  # a missing or damaged model fails before anything runs or prints
    prepare_run_dir(out, force=force)
    console.print(f"profile {config.profile}; run directory {out} (finished steps are reused)")
    result = run_study(config, out, device=device, dtype=dtype,
                       log=lambda line: console.print(line, highlight=False, markup=False))
    for threat, audit_result in result.results["audits"].items():
        console.print(f"[bold]{threat}[/]: {audit_result['verdict']}")
    console.print(f"report: {result.report_paths['html']} ({result.seconds:.0f}s, {result.n_steps_run} steps run)")


@app.command("report")
def report_cmd(
    run_dir: Path = typer.Argument(..., help="a study, audit, trust or map run directory"),
) -> None:
    """Re-render a finished run's report from its results (no model runs): a study's or audit's report.html
    and report.md from results.json, a trust sweep's trust.md and trust.png from trust.json, a mitigation map's
    map.html and map.md from map.json."""
    from deltaguard.report import rerender

    from deltaguard.io import read_json

    if (run_dir / "map.json").is_file():
        from deltaguard.mitigation import render_map

        paths = render_map(run_dir)
        console.print(f"mitigation map: {paths['html']}  markdown: {paths['markdown']}")
        if not (run_dir / "results.json").is_file():
            return
    if (run_dir / "trust.json").is_file() and not (run_dir / "results.json").is_file():
        from deltaguard.trust.run import rerender_trust

        rerender_trust(run_dir)
        console.print(f"trust table: {run_dir / 'trust.md'}  plot: {run_dir / 'trust.png'}")
        return
    if not (run_dir / "results.json").is_file():
        raise ConfigError(f"{run_dir} holds no results.json: it is not a finished study or audit run directory")
    if not {"audits", "alignment"} & set(read_json(run_dir / "results.json", what="run results")):
        raise ConfigError(f"{run_dir}/results.json is not a study or audit result (an eval run's summary is "
                          "summary.md)")
    paths = rerender(run_dir)
    console.print(f"report: {paths['html']}  markdown: {paths['markdown']}")
