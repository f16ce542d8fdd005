"""Prompts, prompt sets, the ``datasets`` registry, deterministic disjoint splits and the overlap check.

Every named set is a *pool* of prompts with stable ids. A prompt's split (calibration, training or
evaluation) is a pure function of the set name and its id, ``sha256("<set>:<id>")`` → one of 1000
buckets → the split whose share covers that bucket, so splits never change between runs or machines
and never share a prompt. Pools are de-duplicated on normalised text before splitting, so one text
cannot land in two splits under two ids. ``check_disjoint`` then guards against the remaining risk:
an evaluation prompt that also appears in some *other* set a model was trained or calibrated on.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import hashlib
import random
import re
import unicodedata
from dataclasses import dataclass, field
from typing import Any, ClassVar, Iterable

from deltaguard.errors import ConfigError
from deltaguard.io import canonical_json
from deltaguard.registry import Registry

SPLITS = ("calib", "train", "eval")
ALL = "all"  # every prompt of the pool, regardless of split (judge checks, custom files)
N_BUCKETS = 1000


@dataclass(frozen=True)
class Prompt:
    """One prompt: a stable id, its text and free-form metadata (category, answer, response, label)."""

    id: str
    text: str
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class PromptSet:
    """A split of a named set; ``content_hash`` identifies exactly these prompts (ids, texts, metadata)."""

    name: str
    split: str
    prompts: tuple[Prompt, ...]
    source: str
    content_hash: str

    def __len__(self) -> int:
        return len(self.prompts)

    @property
    def texts(self) -> list[str]:
        return [p.text for p in self.prompts]

    @property
    def ids(self) -> list[str]:
        return [p.id for p in self.prompts]

    def describe(self) -> dict[str, Any]:
        """What results.json records about the prompts behind a number."""
        return {"name": self.name, "split": self.split, "n": len(self.prompts), "source": self.source,
                "content_hash": self.content_hash}


def hash_prompts(name: str, split: str, prompts: Iterable[Prompt]) -> str:
    payload = [name, split, [[p.id, p.text, p.meta] for p in prompts]]
    return hashlib.sha256(canonical_json(payload).encode()).hexdigest()[:16]


def make_set(name: str, split: str, prompts: Iterable[Prompt], source: str) -> PromptSet:
    prompts = tuple(prompts)
    return PromptSet(name=name, split=split, prompts=prompts, source=source,
                     content_hash=hash_prompts(name, split, prompts))


_SPACE = re.compile(r"\s+")
_QUOTES = str.maketrans({"\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"', "\u2013": "-", "\u2014": "-"})


def normalise_text(text: str) -> str:
    """Text as compared for overlap: NFKC, curly quotes straightened, casefolded, whitespace collapsed,
    trailing punctuation dropped (so "How do I X?" and "how do i x" are the same prompt)."""
    text = unicodedata.normalize("NFKC", text).translate(_QUOTES).casefold()
    return _SPACE.sub(" ", text).strip().rstrip(".?!").strip()


def group_of(text: str) -> str:
    """A prompt's group: a hash of its normalised text. Splits that must never share a prompt (the guard's)
    and checks that must leave out what a judge trained on compare groups."""
    return hashlib.sha256(normalise_text(text).encode()).hexdigest()[:16]


def dedupe(prompts: Iterable[Prompt], *, keys: tuple[str, ...] = ()) -> list[Prompt]:
    """Keep the first of prompts whose normalised text (plus ``meta[k]`` for ``k`` in ``keys``) repeat."""
    seen: set[tuple[str, ...]] = set()
    kept = []
    for prompt in prompts:
        key = (normalise_text(prompt.text), *(normalise_text(str(prompt.meta.get(k, ""))) for k in keys))
        if key not in seen:
            seen.add(key)
            kept.append(prompt)
    return kept


def split_of(set_name: str, prompt_id: str, fractions: dict[str, float]) -> str:
    """The split a prompt belongs to: a hash of ``set:id`` into 1000 buckets, shares taken in SPLITS order."""
    bucket = int(hashlib.sha256(f"{set_name}:{prompt_id}".encode()).hexdigest()[:12], 16) % N_BUCKETS
    edge = 0.0
    for split in SPLITS:
        edge += fractions.get(split, 0.0) * N_BUCKETS
        if bucket < round(edge):
            return split
    return SPLITS[-1]  # rounding slack goes to eval


def select_split(set_name: str, prompts: list[Prompt], split: str, fractions: dict[str, float]) -> list[Prompt]:
    if split == ALL:
        return list(prompts)
    return [p for p in prompts if split_of(set_name, p.id, fractions) == split]


def sample(prompts: list[Prompt], limit: int | None, seed: int, *, group_key: str | None = None) -> list[Prompt]:
    """A seeded random subset of ``limit`` prompts, kept in pool order (all of them when limit is None).

    With ``group_key``, prompts sharing ``meta[group_key]`` (a counterfactual pair) are kept or dropped
    together: ``limit`` then keeps ``limit // largest group`` whole groups (at least one)."""
    if limit is None or limit >= len(prompts):
        return list(prompts)
    if group_key is not None:
        groups: dict[Any, list[int]] = {}
        for index, prompt in enumerate(prompts):
            groups.setdefault(prompt.meta.get(group_key), []).append(index)
        keys = list(groups)
        n_groups = max(1, limit // max(len(g) for g in groups.values()))
        chosen_keys = random.Random(seed).sample(range(len(keys)), min(n_groups, len(keys)))
        return [prompts[i] for i in sorted(i for k in chosen_keys for i in groups[keys[k]])]
    chosen = sorted(random.Random(seed).sample(range(len(prompts)), limit))
    return [prompts[i] for i in chosen]


class DatasetSource(ABC):
    """One named prompt set: a pool loader plus its split shares. Subclasses set the class attributes.

    ``load_pool(seed)`` returns every prompt with a stable id; ``seed`` only matters for sets whose pool
    is generated, and even there ids and split membership do not depend on it.
    """

    name: ClassVar[str] = ""
    source: ClassVar[str] = ""
    fractions: ClassVar[dict[str, float]] = {"calib": 0.1, "train": 0.3, "eval": 0.6}
    dedupe_keys: ClassVar[tuple[str, ...]] = ()
    group_key: ClassVar[str | None] = None   # meta field whose prompts ``limit`` keeps or drops together

    @abstractmethod
    def load_pool(self, seed: int = 0) -> list[Prompt]:
        """Every prompt of the set, with stable ids."""

    @property
    def splits(self) -> tuple[str, ...]:
        return tuple(s for s in SPLITS if self.fractions.get(s, 0.0) > 0)


datasets: Registry[type[DatasetSource]] = Registry("dataset")


def check_split_name(split: str, allowed: Iterable[str]) -> None:
    allowed = tuple(allowed)
    if split not in allowed:
        raise ConfigError(f"split {split!r} is not one of {', '.join(allowed)}")


def check_disjoint(eval_set: PromptSet, *others: PromptSet) -> None:
    """Raise ConfigError when an evaluation prompt also appears in a training or calibration set.

    Prompts match on normalised text (see ``normalise_text``), and on id when both sets share a name.
    """
    by_text = {normalise_text(p.text): p for p in eval_set.prompts}
    eval_ids = {p.id for p in eval_set.prompts}
    for other in others:
        if other is eval_set:
            continue
        clashes = [p for p in other.prompts
                   if normalise_text(p.text) in by_text or (other.name == eval_set.name and p.id in eval_ids)]
        if clashes:
            first = by_text.get(normalise_text(clashes[0].text), clashes[0])
            snippet = first.text if len(first.text) <= 60 else first.text[:57] + "..."
            raise ConfigError(
                f"evaluation set {eval_set.name}:{eval_set.split} shares {len(clashes)} prompt(s) with "
                f"{other.name}:{other.split} (e.g. {first.id} {snippet!r}); evaluate on prompts the model "
                "was not trained or calibrated on"
            )
