"""``deltaguard guard build|check``: make the compact guard, and measure every stage of it."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from deltaguard.cli.app import DEVICE_HELP, JSON_HELP, add_group, check_device, console, print_json
from deltaguard.cli.outputs import prepare_run_dir

guard_app = add_group("guard", "The compact safety guard: build it (prune, distil, INT4 QAT) and check it.")


@guard_app.command("build")
def build_cmd(
    out: Path = typer.Option(..., "-o", "--out", help="build directory (cached stages; the guard lands in OUT/guard)"),
    profile: str = typer.Option("default", "--profile", help="default (planned for a 2-core CPU) or full"),
    model: str | None = typer.Option(None, "--model", help="the model the guard is made from (default: embedded)"),
    overrides: list[str] = typer.Option([], "--set", help="build field=value, repeatable (teacher.lr=1e-4 sets a "
                                                          "stage's field; stages: teacher, distill, qat)"),
    device: str = typer.Option("cpu", "--device", help=DEVICE_HELP),
    force: bool = typer.Option(False, "--force", help="discard the build directory's cached stages and start over"),
) -> None:
    """Data → teacher → prune → distil → INT4 QAT → head pruning → a verified guard directory (resumable)."""
    from deltaguard.guard.build import build_guard, check_build, guard_profile, with_overrides

    config = with_overrides(guard_profile(profile), overrides)
    if model is not None:
        config = config.replace(model=model)
    check_device(device)
    check_build(config)  # a missing model or settings it cannot take fail before anything is touched
    prepare_run_dir(out, force=force)
    console.print(f"guard profile {config.profile}; build directory {out} (finished stages are reused)")
    result = build_guard(config, out, device=device, log=lambda line: console.print(line, highlight=False, markup=False))
    console.print(f"guard: {out / 'guard'} -> {result.guard_dir.name}  (measure it: deltaguard guard check {out / 'guard'})")


@guard_app.command("check")
def check_cmd(
    guard_dir: Path = typer.Argument(..., help="a guard directory (OUT/guard of a build)"),
    n_test: int = typer.Option(0, "--n-test", help="examples measured (0 = the whole split)"),
    split: str = typer.Option("test", "--split", help="test (the model card) or val (for choosing a recipe: "
                                                      "cross-fitted thresholds; test and check are not read)"),
    stages: str = typer.Option("teacher,pruned,student,int4,keyword", "--stages",
                               help="comma-separated: teacher, pruned, student, int4, int4-bf16 and int4-int8 "
                                    "(the INT4 guard computing in bfloat16, or with INT8 integer matmuls), keyword"),
    wording: bool = typer.Option(True, "--wording/--no-wording",
                                 help="also ask the split's requests in each of guard.frames' wordings, to show "
                                      "whether a verdict follows what is asked or how it is worded"),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """F1 / FPR / accuracy / AUPRC on the test split for every stage and the keyword judge, size, speed
    (also written to check.json, or check-val.json for --split val, in the build directory)."""
    from deltaguard.errors import ConfigError
    from deltaguard.guard.check import SPLITS, STAGES, check_guard, format_table, probe_lines, task_lines, wording_lines
    from deltaguard.io import write_json

    chosen = tuple(s.strip() for s in stages.split(",") if s.strip())
    unknown = [s for s in chosen if s not in STAGES]
    if unknown or not chosen:
        raise ConfigError(f"--stages {stages!r}: choose from {', '.join(STAGES)}")
    if n_test < 0:
        raise ConfigError(f"--n-test={n_test} must be >= 0")
    if split not in SPLITS:
        raise ConfigError(f"--split {split!r}: choose from {', '.join(SPLITS)}")
    def log(line: str) -> None:
        if not as_json:
            console.print(line, highlight=False, markup=False)

    result = check_guard(guard_dir, n_test=n_test, split=split, stages=chosen, wording=wording,
                         progress=not as_json, log=log)
    write_json(Path(guard_dir).resolve().parent / ("check.json" if split == "test" else "check-val.json"), result)
    if as_json:
        print_json(result)
        return
    table = Table("model", "F1", "FPR", "FPR, source mean", "accuracy", "AUPRC", "F1 human-graded replies",
                  "refusal-check agreement", "size", "judgments/s",
                  title=f"guard check: {result['n_test']} {split} examples (95% intervals; thresholds "
                        f"{result['thresholds']})")
    for row in format_table(result):
        table.add_row(*row)
    console.print(table)
    for stage, row in result["stages"].items():
        strict = row.get("low_fpr")
        if strict:
            parts = [f"F1 {strict['f1']['value']:.3f}", f"FPR {strict['fpr']['value']:.3f} "
                     f"[{strict['fpr']['low']:.3f}, {strict['fpr']['high']:.3f}]"]
            if strict.get("fpr_source_mean"):
                parts.append(f"source-mean FPR {strict['fpr_source_mean']['value']:.3f}")
            if strict.get("human_responses"):
                parts.append(f"accuracy on human-graded replies {strict['human_responses']['accuracy']['value']:.3f}")
            console.print(f"{stage} at a threshold chosen for source-mean FPR <= {strict['max_fpr']:.2f}: "
                          + ", ".join(parts), highlight=False)
    for line in task_lines(result):
        console.print(line, highlight=False)
    for line in probe_lines(result):
        console.print(line, highlight=False)
    for line in wording_lines(result):
        console.print(line, highlight=False)
    teacher_bf16 = result.get("teacher_bf16_bytes")
    int4 = result["stages"].get("int4", {}).get("size_bytes")
    if teacher_bf16 and int4:
        console.print(f"INT4 guard on disk: {int4 / 2**20:.1f} MiB = 1/{teacher_bf16 / int4:.1f} of the teacher in bf16 "
                      f"({teacher_bf16 / 2**20:.1f} MiB)")
