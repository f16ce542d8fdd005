"""The study's judges: the compact guard, built once into the user cache when the audit's harm judge is
``guard``, and every judge's measured agreement with human labels, so the report can say how far each
number it prints can be trusted (cached under ``evals/judge-check-<key>.json``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from deltaguard.audit import AuditConfig
from deltaguard.io import content_key, read_json, write_json
from deltaguard.steps import Steps


def ensure_guard(steps: Steps, audit_config: AuditConfig, *, device: str, progress: bool,
                 log: Callable[[str], None]) -> None:
    """Build the default guard into the user cache if the audit needs it and none is there (once per machine).

    A cached guard built with other settings than today's default profile (an older deltaguard's) is rebuilt,
    its finished stages reused: otherwise an upgrade would keep judging with the old recipe's guard.
    """
    if audit_config.harm_judge != "guard":
        return
    from deltaguard.guard.build import build_guard, forget_latest, guard_profile
    from deltaguard.judges.guard import default_guard_dir

    guard_dir = default_guard_dir()
    wanted = guard_profile("default")
    if (guard_dir / "manifest.json").is_file():
        if is_current_build(guard_dir, wanted):
            return
        log(f"the cached guard at {guard_dir} was built with older default settings: rebuilding it "
            "(finished stages are reused)")
        forget_latest(guard_dir)
    else:
        log(f"the audit's harm judge is the compact guard and none is built yet: building it once into "
            f"{guard_dir.parent} (`deltaguard guard build --profile default`; later runs reuse it)")
    steps.run("guard build", guard_dir, lambda: build_guard(wanted, guard_dir.parent, device=device,
                                                             progress=progress, log=log))


def is_current_build(guard_dir: Path, wanted: Any) -> bool:
    """Whether the guard at ``guard_dir`` is in this deltaguard's format and was built with ``wanted`` from the
    examples this deltaguard would build (the data file's name keys ``DATA_VERSION``: new split or labelling
    rules leave the settings unchanged but still need a new guard)."""
    from deltaguard.errors import ConfigError, FormatError
    from deltaguard.guard.artifact import FORMAT_VERSION
    from deltaguard.guard.build import GuardBuildConfig, data_file_name

    try:
        manifest = read_json(guard_dir / "manifest.json", what="guard manifest")
        return (manifest.get("format_version") == FORMAT_VERSION
                and GuardBuildConfig.from_dict(manifest["build"]) == wanted
                and manifest.get("data_file") == data_file_name(wanted))
    except (ConfigError, FormatError, KeyError, TypeError, AttributeError):
        return False


def judge_checks(steps: Steps, audit_config: AuditConfig, run_dir: Path) -> dict[str, Any]:
    """Each audit judge's agreement with human labels: the attack judge on PyRIT's refusal labels, the harm
    judge on PyRIT's graded harm (prompts a trained judge saw are left out by ``check_on``) and on the
    hand-written probe (``guard.probe``: how it does on text unlike any labelled source)."""
    from deltaguard.guard.probe import judge_on_probe
    from deltaguard.judges import make_judge
    from deltaguard.judges.check import check_judge

    plan = {}
    attack_judge = make_judge(audit_config.judge)
    if "refusal" in attack_judge.measures:   # an attack judge of unsafe content has no refusal labels to meet
        plan["attack"] = (attack_judge, "refusal")
    if audit_config.harm_judge:              # AuditConfig already refused a harm judge that cannot judge harm
        plan["harm"] = (make_judge(audit_config.harm_judge), "harm")
    # labels 2: the harm task leaves PyRIT's in-between grades out (graded_harm_label); checks made before count
    # them as safe and are not reused. probe 1: the harm judge is also run on guard.probe
    key = content_key("judge-check", {**{role: [judge.name, judge.prompt_hash, task] for role, (judge, task) in plan.items()},
                                      "labels": 2, "probe": 1})
    path = run_dir / "evals" / f"{key}.json"

    def work() -> None:
        checks = {role: check_judge(judge, task=task).to_dict() for role, (judge, task) in plan.items()}
        if "harm" in plan:   # agreement on PyRIT's kind of text, then on plain hand-written text unlike it
            checks["harm"]["probe"] = judge_on_probe(plan["harm"][0])
        write_json(path, checks)

    steps.run("judge check", path, work)
    return read_json(path, what="judge check")


__all__ = ["ensure_guard", "judge_checks"]
