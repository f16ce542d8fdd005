"""The one cached runner for generation and judging: every evaluation (eval, audit, study) goes through it.

Inside a run directory:

    generations/gen-<key>.jsonl   one variant's replies to one prompt set under one generation setting;
                                  key = (variant key, set name, set content hash, generation config)
    choices/choice-<key>.json     one variant's forced-choice log-probabilities on one prompt set
    judgments/judge-<key>.jsonl   one judge's verdicts; key = (judge name, version, prompt hash); rows are
                                  keyed by (prompt, response), so identical replies of two variants are
                                  judged once

A file is rewritten atomically after every batch, so an interrupted run resumes where it stopped and a
rerun does no work. Models are loaded only when something must be generated, and at most one is held:
asking for another variant releases the previous one (a 135M model in fp32 is 0.5 GB; a sweep holds
a dozen).

A variant without weights (``eval.Endpoint``) always generates through the ``openai`` backend, whatever
backend the generation config names, so its files are keyed (and their rows record settings) with
``backend: openai``; it has no forced choice (no logits over HTTP).
"""

from __future__ import annotations

import gc
from pathlib import Path
from typing import Any

from deltaguard.data import PromptSet
from deltaguard.errors import ConfigError
from deltaguard.eval.variants import Variant
from deltaguard.generation import GenerationConfig, generate_to_jsonl
from deltaguard.io import content_key, read_jsonl, write_jsonl
from deltaguard.judges import BaseJudge, JudgeItem, Verdict

JUDGE_CHUNK = 32  # verdicts written to disk at least this often


class Runner:
    """Generates (cached, resumable) replies of variants and judges them (cached, resumable)."""

    def __init__(self, run_dir: str | Path, *, device: str = "cpu", dtype: str = "float32", progress: bool = True) -> None:
        self.run_dir = Path(run_dir)
        self.device, self.dtype, self.progress = device, dtype, progress
        self.files: dict[str, str] = {}
        self._loaded: tuple[str, Any, Any] | None = None
        self._judges: dict[str, CachedJudge] = {}

    # -- models -----------------------------------------------------------------------------------

    def model(self, variant: Variant) -> tuple[Any, Any]:
        """The variant's ``(model, tokenizer)``, loading it (and releasing any other) when needed."""
        if self._loaded is None or self._loaded[0] != variant.key:
            self.release()
            model, tokenizer = variant.source.load(device=self.device, dtype=self.dtype)
            self._loaded = (variant.key, model, tokenizer)
        return self._loaded[1], self._loaded[2]

    def release(self) -> None:
        """Drop the loaded model (memory goes back before the next one loads)."""
        if self._loaded is not None:
            self._loaded = None
            gc.collect()
            try:
                import torch

                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
            except ImportError:  # pragma: no cover - torch is a dependency
                pass

    # -- generation --------------------------------------------------------------------------------

    @staticmethod
    def generation_config(variant: Variant, config: GenerationConfig) -> GenerationConfig:
        """The settings the variant's replies are generated with: an endpoint always uses the openai backend."""
        if not variant.source.has_weights and config.backend != "openai":
            return config.replace(backend="openai")
        return config

    def generation_path(self, variant: Variant, prompts: PromptSet, config: GenerationConfig) -> Path:
        config = self.generation_config(variant, config)
        payload = {"model": variant.key, "set": prompts.content_hash, "name": prompts.name,
                   "generation": config.to_dict()}
        if self.dtype != "float32" and variant.source.has_weights:  # the weights' precision changes replies
            payload["dtype"] = self.dtype                             # (fp32 keys stay as they were)
        key = content_key("gen", payload)
        return self.run_dir / "generations" / f"{key}.jsonl"

    def generate(self, variant: Variant, prompts: PromptSet, config: GenerationConfig) -> list[dict[str, Any]]:
        """Rows ``{prompt_id, prompt, response, ...}`` in prompt order; finished files are reused, partial ones resumed."""
        config = self.generation_config(variant, config)
        path = self.generation_path(variant, prompts, config)
        self.files[f"generations/{variant.label}/{prompts.name}"] = str(path.relative_to(self.run_dir))
        if path.exists():
            rows = {r["prompt_id"]: r for r in read_jsonl(path, what="generations file")}
            if all(pid in rows for pid in prompts.ids):
                return [rows[pid] for pid in prompts.ids]
        model, tokenizer = self.model(variant)
        return generate_to_jsonl(model, tokenizer, prompts, config, path=path, model_id=variant.key,
                                 progress=self.progress)

    def responses(self, variant: Variant, prompts: PromptSet, config: GenerationConfig) -> list[str]:
        return [row["response"] for row in self.generate(variant, prompts, config)]

    # -- forced choice -----------------------------------------------------------------------------

    def choices(self, variant: Variant, prompts: PromptSet, options: tuple[str, ...],
                config: GenerationConfig) -> list[dict[str, float]]:
        """``{option: log P(option first)}`` per prompt (``eval.choice``), cached like generations in
        ``choices/choice-<key>.json``."""
        from deltaguard.eval.choice import option_logprobs
        from deltaguard.io import read_json, write_json

        if not variant.source.has_weights:
            raise ConfigError(f"forced choice needs the model's logits; {variant.label} is behind an endpoint "
                              "(check variant.source.has_weights first)")
        payload = {"model": variant.key, "set": prompts.content_hash, "name": prompts.name, "options": list(options),
                   "system_prompt": config.system_prompt, "chat": config.use_chat_template, "dtype": self.dtype}
        path = self.run_dir / "choices" / f"{content_key('choice', payload)}.json"
        self.files[f"choices/{variant.label}/{prompts.name}"] = str(path.relative_to(self.run_dir))
        if path.exists():
            rows = read_json(path, what="forced-choice file")["rows"]
            if [r["prompt_id"] for r in rows] == prompts.ids:
                return [r["logprobs"] for r in rows]
        model, tokenizer = self.model(variant)
        logprobs = option_logprobs(model, tokenizer, prompts.texts, options, config)
        write_json(path, {"rows": [{"prompt_id": pid, "logprobs": lp} for pid, lp in zip(prompts.ids, logprobs)]})
        return logprobs

    # -- judging -----------------------------------------------------------------------------------

    def cached(self, judge: BaseJudge) -> "CachedJudge":
        """``judge`` behind this run directory's verdict cache (one instance per judge identity)."""
        key = CachedJudge.key_of(judge)
        if key not in self._judges:
            self._judges[key] = CachedJudge(judge, self.run_dir / "judgments")
        return self._judges[key]

    def judge(self, judge: BaseJudge, items: list[JudgeItem]) -> list[Verdict]:
        return self.cached(judge).judge(items)


class CachedJudge:
    """A judge whose verdicts are kept in ``judgments/<key>.jsonl``, keyed by (prompt, response)."""

    def __init__(self, judge: BaseJudge, cache_dir: Path | None) -> None:
        self.inner = judge
        self.name, self.version, self.measures = judge.name, judge.version, judge.measures
        self.path = cache_dir / f"{self.key_of(judge)}.jsonl" if cache_dir is not None else None
        self._cache: dict[str, dict[str, Any]] = {}
        if self.path is not None and self.path.exists():
            self._cache = {row["key"]: row for row in read_jsonl(self.path, what="judgments file")}

    @staticmethod
    def key_of(judge: BaseJudge) -> str:
        return content_key("judge", {"judge": judge.name, "version": judge.version, "prompt_hash": judge.prompt_hash})

    @property
    def prompt_hash(self) -> str:
        return self.inner.prompt_hash

    @property
    def info(self) -> dict[str, Any]:
        """Name, version, prompt hash and config of the judge (for results files)."""
        info: dict[str, Any] = {"name": self.name, "version": self.version, "prompt_hash": self.prompt_hash}
        if hasattr(self.inner, "config"):
            info["config"] = self.inner.config.to_dict()
        return info

    def judge(self, items: list[JudgeItem]) -> list[Verdict]:
        keys = [content_key("item", [item.prompt, item.response]) for item in items]
        todo: list[int] = []
        pending: set[str] = set()
        for index, key in enumerate(keys):  # each distinct item not yet cached, once
            if key not in self._cache and key not in pending:
                pending.add(key)
                todo.append(index)
        for start in range(0, len(todo), JUDGE_CHUNK):
            chunk = todo[start:start + JUDGE_CHUNK]
            verdicts = self.inner.judge([items[i] for i in chunk])
            for index, verdict in zip(chunk, verdicts, strict=True):
                self._cache[keys[index]] = {"key": keys[index], **verdict.to_dict()}
            if self.path is not None:
                write_jsonl(self.path, list(self._cache.values()))
        return [Verdict.from_dict(self._cache[k]) for k in keys]


__all__ = ["CachedJudge", "JUDGE_CHUNK", "Runner"]
