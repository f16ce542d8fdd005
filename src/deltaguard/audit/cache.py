"""What an audit caches in its run directory: judge verdicts and generated replies."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from deltaguard.audit.config import AuditConfig
from deltaguard.io import content_key, read_jsonl, write_jsonl


class CachedJudge:
    """Wraps a judge so each (prompt, response) is judged once per run directory (``judgments/``)."""

    def __init__(self, name: str, cache_dir: Path | None) -> None:
        from deltaguard.judges import make_judge

        self.name = name
        self._inner = make_judge(name)
        identity = {"judge": name, "version": getattr(self._inner, "version", None),
                    "prompt_hash": getattr(self._inner, "prompt_hash", None)}
        self.path = cache_dir / f"{content_key('judge', identity)}.jsonl" if cache_dir else None
        self._cache: dict[str, dict[str, Any]] = {}
        if self.path is not None and self.path.exists():
            self._cache = {row["key"]: row for row in read_jsonl(self.path, what="judgments file")}
        self.info: dict[str, Any] = {"name": name, "version": identity["version"],
                                     "prompt_hash": identity["prompt_hash"]}
        if hasattr(self._inner, "config"):
            self.info["config"] = self._inner.config.to_dict()

    def judge(self, items: list[Any]) -> list[Any]:
        from deltaguard.judges import Verdict

        keys = [content_key("item", [i.prompt, i.response]) for i in items]
        todo = [i for i, k in enumerate(keys) if k not in self._cache]
        if todo:
            verdicts = self._inner.judge([items[i] for i in todo])
            for index, verdict in zip(todo, verdicts):
                self._cache[keys[index]] = {"key": keys[index], **verdict.to_dict()}
            if self.path is not None:
                write_jsonl(self.path, list(self._cache.values()))
        return [Verdict.from_dict(self._cache[k]) for k in keys]


def generation_path(run_dir: Path, model_key: str, prompt_set: Any, gen_config: Any) -> Path:
    """Where one model's replies to one prompt set under one generation setting are cached."""
    key = content_key("gen", {"model": model_key, "set": prompt_set.content_hash, "name": prompt_set.name,
                              "generation": gen_config.to_dict()})
    return run_dir / "generations" / f"{key}.jsonl"


def generation_configs(config: AuditConfig, set_names: Any) -> dict[str, Any]:
    """The generation settings of each evaluation set (the word problems get ``task_max_new_tokens``)."""
    from deltaguard.generation import GenerationConfig

    def tokens(name: str) -> int:
        return config.task_max_new_tokens if name == "task" else config.max_new_tokens

    return {name: GenerationConfig(max_new_tokens=tokens(name), batch_size=config.batch_size) for name in set_names}


def generate_cached(load: Any, model_key: str, sets: dict[str, Any], gen_configs: dict[str, Any], run_dir: Path, *,
                    progress: bool = True) -> dict[str, list[str]]:
    """Replies of one model to each set; complete files in ``generations/`` are reused, partial ones resumed.

    ``gen_configs`` maps each set name to its GenerationConfig. ``load()`` returns ``(model, tokenizer)``
    and is called only when something must be generated.
    """
    from deltaguard.generation import generate_to_jsonl

    loaded: list[Any] = []
    outputs: dict[str, list[str]] = {}
    for name, prompt_set in sets.items():
        gen_config = gen_configs[name]
        path = generation_path(run_dir, model_key, prompt_set, gen_config)
        if path.exists():
            rows = {r["prompt_id"]: r["response"] for r in read_jsonl(path, what="generations file")}
            if all(pid in rows for pid in prompt_set.ids):
                outputs[name] = [rows[pid] for pid in prompt_set.ids]
                continue
        if not loaded:
            loaded.extend(load())
        rows_list = generate_to_jsonl(loaded[0], loaded[1], prompt_set, gen_config, path=path, model_id=model_key,
                                      progress=progress)
        outputs[name] = [r["response"] for r in rows_list]
    return outputs
