"""Named prompt sets and tasks with deterministic, disjoint calibration / training / evaluation splits.

``load_prompts(spec, split=..., limit=..., seed=...)`` accepts a registered name (``deltaguard data
list``), ``name:split``, a local ``.jsonl``/``.csv``/``.txt`` path, or ``hf:org/name[?options]``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from deltaguard.data import generated as _generated  # noqa: F401  (registers arith, benign, calib-chat, requests)
from deltaguard.data import wheel_sets as _wheel_sets  # noqa: F401  (registers advbench, donotanswer, pyrit-*)
from deltaguard.data import trust_sets as _trust_sets  # noqa: F401  (registers rtp, jailbreak, stereotypes, ...)
from deltaguard.data.base import (
    ALL, SPLITS, DatasetSource, Prompt, PromptSet, check_disjoint, datasets, dedupe, make_set,
    normalise_text, sample, select_split, split_of,
)
from deltaguard.data.hub import PREFIX as HUB_PREFIX
from deltaguard.data.hub import read_hub_dataset
from deltaguard.data.local import looks_like_path, read_prompt_file
from deltaguard.errors import ConfigError, DeltaguardError, FormatError

DEFAULT_FRACTIONS = DatasetSource.fractions


def parse_spec(spec: str, split: str) -> tuple[str, str]:
    """Split ``"name:split"`` into (name, split); a split in the spec wins over the argument."""
    head, sep, tail = spec.rpartition(":")
    if sep and head and tail in (*SPLITS, ALL):
        return head, tail
    return spec, split


def load_prompts(spec: str, *, split: str = "eval", limit: int | None = None, seed: int = 0) -> PromptSet:
    """One split of a prompt set; ``limit`` keeps a seeded random subset (in pool order)."""
    if not isinstance(spec, str) or not spec.strip():
        raise ConfigError("prompt set spec must be a non-empty name or path")
    if limit is not None and limit < 1:
        raise ConfigError(f"limit={limit} must be >= 1")
    spec, split = parse_spec(spec.strip(), split)
    if split not in (*SPLITS, ALL):
        raise ConfigError(f"split {split!r} must be one of {', '.join((*SPLITS, ALL))}")
    if spec.startswith(HUB_PREFIX):
        pool = dedupe(read_hub_dataset(spec))
        chosen = select_split(spec, pool, split, DEFAULT_FRACTIONS)
        source = f"hub {spec[len(HUB_PREFIX):]}"
    elif spec not in datasets and (looks_like_path(spec) or Path(spec).expanduser().exists()):
        pool = read_prompt_file(spec)
        chosen = _file_split(spec, pool, split)
        source = f"file {Path(spec).expanduser()}"
    else:
        member = datasets.get(spec)()
        if split != ALL and split not in member.splits:
            raise ConfigError(f"{spec} has no {split!r} split; its splits: {', '.join((*member.splits, ALL))}")
        pool = dedupe(member.load_pool(seed), keys=member.dedupe_keys)
        chosen = select_split(member.name, pool, split, member.fractions)
        source = member.source
    if not chosen:
        raise FormatError(f"prompt set {spec} has no prompts in split {split!r}")
    group_key = datasets.get(spec).group_key if spec in datasets else None
    return make_set(spec, split, sample(chosen, limit, seed, group_key=group_key), source)


def _file_split(spec: str, pool: list[Prompt], split: str) -> list[Prompt]:
    if split == ALL:
        return pool
    if "split" in pool[0].meta:  # explicit splits (validated: all rows have one)
        return [p for p in pool if p.meta["split"] == split]
    pool = dedupe(pool)
    return select_split(Path(spec).stem, pool, split, DEFAULT_FRACTIONS)


@dataclass(frozen=True)
class DatasetInfo:
    """One row of ``deltaguard data list``."""

    name: str
    description: str
    source: str
    size: int | None
    splits: dict[str, int]
    error: str | None = None


def list_datasets() -> list[DatasetInfo]:
    """Every registered set with its size and split sizes (an unavailable asset is reported, not raised)."""
    infos = []
    for name in datasets.names():
        member = datasets.get(name)()
        try:
            pool = dedupe(member.load_pool(0), keys=member.dedupe_keys)
        except DeltaguardError as exc:
            infos.append(DatasetInfo(name, datasets.describe(name), member.source, None, {}, str(exc)))
            continue
        counts = {s: 0 for s in member.splits}
        for prompt in pool:
            counts[split_of(member.name, prompt.id, member.fractions)] += 1
        infos.append(DatasetInfo(name, datasets.describe(name), member.source, len(pool), counts))
    return infos


__all__ = [
    "ALL", "HUB_PREFIX", "SPLITS", "DatasetInfo", "DatasetSource", "Prompt", "PromptSet", "check_disjoint",
    "datasets", "dedupe", "list_datasets", "load_prompts", "make_set", "normalise_text", "parse_spec", "sample",
    "select_split", "split_of",
]
