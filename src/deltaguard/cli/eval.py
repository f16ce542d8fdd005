"""``deltaguard eval``, ``deltaguard judge-check`` and ``deltaguard data list|show``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from deltaguard.cli.app import DEVICE_HELP, DTYPE_HELP, JSON_HELP, add_group, app, check_device, console, print_json
from deltaguard.cli.outputs import check_artifact, prepare_run_dir
from deltaguard.errors import ConfigError
from deltaguard.io import write_json

data_app = add_group("data", "Prompt sets and tasks: sizes, sources and splits.")


def _csv(value: str, what: str) -> tuple[str, ...]:
    items = tuple(v.strip() for v in value.split(",") if v.strip())
    if not items:
        raise ConfigError(f"{what} must name at least one item, got {value!r}")
    return items


ENDPOINT_HELP = ("evaluate the model served at this OpenAI-compatible base URL (the part before /chat/completions, "
                 "e.g. http://127.0.0.1:8000/v1); --model is then the served model's name; a key is read from "
                 "$DELTAGUARD_ENDPOINT_API_KEY only")
CONCURRENCY_HELP = "requests in flight at once with --endpoint"


def endpoint_source(ctx: typer.Context, endpoint: str, model: str, concurrency: int) -> Any:
    """The ``Endpoint`` of ``--endpoint URL --model NAME`` (the URL checked before anything runs)."""
    from deltaguard.eval import Endpoint

    source = Endpoint(endpoint, model, concurrency=concurrency)   # ConfigError on a malformed URL
    given = ctx.get_parameter_source("model")   # typer's own click: compare the enum member by name
    if getattr(given, "name", None) != "COMMANDLINE":
        raise ConfigError("--endpoint needs --model NAME: the name the endpoint serves the model under")
    return source


@app.command("eval")
def eval_(
    ctx: typer.Context,
    model: str = typer.Option("smollm2-135m-instruct", "--model",
                              help="model spec: embedded name, HF dir, .gguf or hub id (with --endpoint: the served name)"),
    endpoint: str | None = typer.Option(None, "--endpoint", help=ENDPOINT_HELP),
    concurrency: int = typer.Option(4, "--concurrency", help=CONCURRENCY_HELP),
    delta: Path | None = typer.Option(None, "--delta", help="compressed delta to apply to the model in memory"),
    suite: str = typer.Option("safety,over-refusal,utility", "--suite",
                              help="comma-separated suites (deltaguard list suites): safety, over-refusal, utility"),
    judge: str = typer.Option("keyword", "--judge", help="comma-separated judges: keyword, llm, llamaguard"),
    limit: int | None = typer.Option(None, "--limit", help="at most N prompts per set (seeded subset)"),
    out: Path = typer.Option(..., "-o", "--out", help="run directory (reused: finished work is skipped)"),
    judge_options: list[str] = typer.Option([], "--judge-opt", help="judge.field=value, repeatable (e.g. llm.backend=hf)"),
    overrides: list[str] = typer.Option([], "--set", help="eval field=value or generation.field=value, repeatable"),
    device: str = typer.Option("cpu", "--device", help=DEVICE_HELP),
    dtype: str = typer.Option("float32", "--dtype", help=DTYPE_HELP),
    threads: int | None = typer.Option(None, "--threads", help="CPU threads for torch"),
    force: bool = typer.Option(False, "--force", help="discard the run directory's cached results and start over"),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Measure refusal, attack success, harmfulness, over-refusal, task accuracy and perplexity.

    With --endpoint URL --model NAME the replies come from an OpenAI-compatible endpoint;
    perplexity, which needs the model's logits, is then skipped."""
    from deltaguard.eval import BasePlusDelta, EvalConfig, ModelDir, Variant, evaluate
    from deltaguard.metrics import Rate
    from deltaguard.models import set_threads

    remote = endpoint_source(ctx, endpoint, model, concurrency) if endpoint is not None else None
    if remote is not None and delta is not None:
        raise ConfigError("--delta cannot be merged into a model behind --endpoint: deltaguard does not hold its weights")
    config = EvalConfig(suites=_csv(suite, "--suite"), judges=_csv(judge, "--judge"),
                        judge_options=tuple(judge_options), limit=limit).with_overrides(overrides)
    check_device(device, dtype)
    if delta is not None and not delta.is_dir():
        raise ConfigError(f"--delta {delta} is not a delta directory")
    set_threads(threads)
    prepare_run_dir(out, force=force)
    if remote is not None:
        source, label = remote, f"{model} @ {remote.base_url}"
    else:
        source = ModelDir(model) if delta is None else BasePlusDelta(model, delta)
        label = model if delta is None else f"{model}+{delta.name}"
    result = evaluate(Variant(label, "model", source), config, out_dir=out, device=device, dtype=dtype)
    if as_json:
        print_json(result.to_dict())
        return
    table = Table("metric", "dataset", "judge", "value", "95% CI", "n", "errors", title=label)
    for m in result.metrics:
        r = m.result
        fmt = (lambda x: f"{x:.1%}") if isinstance(r, Rate) else (lambda x: f"{x:.3g}")
        value = "n/a" if r.value != r.value else fmt(r.value)
        ci = "n/a" if r.low != r.low else f"{fmt(r.low)} – {fmt(r.high)}"
        table.add_row(m.metric, f"{m.dataset}:{m.split}", m.judge or "-", value, ci, str(r.n), str(r.n_errors))
    console.print(table)
    console.print(f"wrote {out / 'results.json'} and {out / 'summary.md'}")


@app.command("judge-check")
def judge_check(
    judge: str = typer.Option(..., "--judge", help="judge name: keyword, llm, llamaguard, guard"),
    task: str | None = typer.Option(None, "--task", help="refusal or harm (default: refusal if the judge judges refusals)"),
    limit: int | None = typer.Option(None, "--limit", help="at most N labelled responses (seeded subset)"),
    seed: int = typer.Option(0, "--seed", help="subset seed"),
    judge_options: list[str] = typer.Option([], "--judge-opt", help="field=value for the judge, repeatable"),
    out: Path = typer.Option(..., "-o", "--out", help="output directory for judge-check-<judge>-<task>.json"),
    force: bool = typer.Option(False, "--force", help="replace an existing judge-check file"),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Agreement of a judge with human labels (accuracy, precision, recall, F1, Cohen's kappa)."""
    from deltaguard.judges import check_judge, default_task, judge_from_overrides

    options = [o.partition(".")[2] if o.startswith(f"{judge}.") else o for o in judge_options]
    judge_obj = judge_from_overrides(judge, options)
    target = out / f"judge-check-{judge}-{task or default_task(judge_obj)}.json"
    check_artifact(target, force=force)
    with console.status(f"judging with {judge}"):
        result = check_judge(judge_obj, task=task, limit=limit, seed=seed)
        record = result.to_dict()
        if result.task == "harm":   # and on text unlike PyRIT's: the caveat the agreement needs (guard.probe)
            from deltaguard.guard.probe import judge_on_probe

            record["probe"] = judge_on_probe(judge_obj)
    path = write_json(out / f"judge-check-{judge}-{result.task}.json", record)
    if as_json:
        print_json(record)
        return
    a = result.agreement
    c = a.confusion
    positive = "refusal" if result.task == "refusal" else "unsafe"
    left_out = result.dataset.get("n_left_out_trained_on", 0)
    ambiguous = result.dataset.get("n_left_out_ambiguous", 0)
    table = Table("statistic", "value", title=f"{judge} v{result.judge_version} vs humans ({result.task}, "
                                              f"{result.dataset['name']}, n={a.n}, judge errors={result.n_errors}"
                                              + (f", {left_out} left out: the judge trained on them" if left_out else "")
                                              + (f", {ambiguous} graded in between left out: no label "
                                                 f"({result.dataset['ambiguous_judged_positive']} judged {positive})"
                                                 if ambiguous else "")
                                              + ")")
    for name, value in (("accuracy", a.accuracy), ("precision", a.precision), ("recall", a.recall), ("F1", a.f1),
                        ("Cohen's kappa", a.kappa)):
        table.add_row(name, f"{value:.3f}")
    console.print(table)
    matrix = Table("human \\ judge", positive, f"not {positive}", title="confusion matrix")
    matrix.add_row(positive, str(c.tp), str(c.fn))
    matrix.add_row(f"not {positive}", str(c.fp), str(c.tn))
    console.print(matrix)
    if "probe" in record:
        from deltaguard.guard.check import probe_lines

        for line in probe_lines({"stages": {judge: record}}):
            console.print(line, highlight=False)
    console.print(f"wrote {path}")


@data_app.command("list")
def data_list() -> None:
    """Every registered prompt set with its source, size and split sizes."""
    from deltaguard.data import SPLITS, list_datasets

    table = Table("name", "source", "size", *SPLITS, "description")
    for info in list_datasets():
        if info.error:
            table.add_row(info.name, info.source, "unavailable", *["-"] * len(SPLITS), info.error)
            continue
        table.add_row(info.name, info.source, str(info.size), *[str(info.splits.get(s, "-")) for s in SPLITS],
                      info.description)
    console.print(table)


@data_app.command("show")
def data_show(spec: str = typer.Argument(..., help="set name, name:split, file path or hf:org/name"),
              split: str = typer.Option("eval", "--split", help="calib, train, eval or all"),
              limit: int = typer.Option(5, "--limit", help="prompts to show")) -> None:
    """Print a few prompts of a set (with their ids and metadata)."""
    from deltaguard.data import load_prompts

    prompts = load_prompts(spec, split=split, limit=limit)
    console.print(f"{prompts.name}:{prompts.split} ({prompts.source}, content hash {prompts.content_hash})")
    for p in prompts.prompts:
        meta = {k: v for k, v in p.meta.items() if k != "response"}
        console.print(f"[bold]{p.id}[/] {p.text}  [dim]{meta}[/]", highlight=False)
