"""Prompt sets from the user's own files: ``.jsonl``, ``.csv`` (one row per prompt) or ``.txt`` (one per line).

JSONL/CSV rows name their text in one of the columns ``text``, ``prompt``, ``instruction``, ``question``,
``goal`` or ``behavior``; an ``id`` column is used when present (else ``<file stem>-<row>``), an
``answer`` column becomes ``meta["answer"]``, and every other column is kept in ``meta``. A ``split``
column (``calib``/``train``/``eval``) assigns splits explicitly; without it rows are split by id hash
like every named set. Empty or malformed files raise ``FormatError`` naming the file and line.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from deltaguard.data.base import SPLITS, Prompt
from deltaguard.errors import ConfigError, FormatError

TEXT_COLUMNS = ("text", "prompt", "instruction", "question", "goal", "behavior")
SUFFIXES = (".jsonl", ".csv", ".txt")


def looks_like_path(spec: str) -> bool:
    return spec.endswith(SUFFIXES) or "/" in spec or spec.startswith(("~", "."))


def read_prompt_file(path: str | Path) -> list[Prompt]:
    """Every prompt of a local file, in file order, with explicit ``meta["split"]`` where given."""
    path = Path(path).expanduser()
    if path.suffix not in SUFFIXES:
        raise ConfigError(f"prompt file {path} must end in {', '.join(SUFFIXES)}")
    if not path.is_file():
        raise ConfigError(f"prompt file {path} does not exist")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise FormatError(f"prompt file {path} is not UTF-8 text") from None
    if path.suffix == ".txt":
        prompts = [Prompt(id=f"{path.stem}-{n:05d}", text=line.strip(), meta={})
                   for n, line in enumerate(text.splitlines(), start=1) if line.strip()]
    elif path.suffix == ".jsonl":
        prompts = [_row_prompt(row, path, n) for n, row in _jsonl_rows(text, path)]
    else:
        prompts = [_row_prompt(row, path, n) for n, row in _csv_rows(text, path)]
    if not prompts:
        raise FormatError(f"prompt file {path} holds no prompts")
    _check_ids_and_splits(prompts, path)
    return prompts


def _jsonl_rows(text: str, path: Path) -> list[tuple[int, dict[str, Any]]]:
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise FormatError(f"prompt file {path} line {number} is not valid JSON ({exc.msg})") from None
        if not isinstance(row, dict):
            raise FormatError(f"prompt file {path} line {number} is not a JSON object")
        rows.append((number, row))
    return rows


def _csv_rows(text: str, path: Path) -> list[tuple[int, dict[str, Any]]]:
    try:
        reader = csv.DictReader(text.splitlines(keepends=True))
        rows = [(number, dict(row)) for number, row in enumerate(reader, start=2)]
    except csv.Error as exc:
        raise FormatError(f"prompt file {path} is not valid CSV ({exc})") from None
    for number, row in rows:
        if None in row:  # more cells than header columns
            raise FormatError(f"prompt file {path} line {number} has more cells than the header")
    return rows


def _row_prompt(row: dict[str, Any], path: Path, number: int) -> Prompt:
    column = next((c for c in TEXT_COLUMNS if c in row), None)
    if column is None:
        raise FormatError(f"prompt file {path} line {number} has none of the columns {', '.join(TEXT_COLUMNS)}")
    value = row[column]
    if not isinstance(value, str) or not value.strip():
        raise FormatError(f"prompt file {path} line {number}: {column!r} must be a non-empty string")
    meta = {k: v for k, v in row.items() if k not in (column, "id") and v not in (None, "")}
    if "answer" in meta:
        meta["answer"] = str(meta["answer"]).strip()
    prompt_id = str(row["id"]).strip() if row.get("id") not in (None, "") else f"{path.stem}-{number:05d}"
    return Prompt(id=prompt_id, text=value.strip(), meta=meta)


def _check_ids_and_splits(prompts: list[Prompt], path: Path) -> None:
    seen: set[str] = set()
    for prompt in prompts:
        if prompt.id in seen:
            raise FormatError(f"prompt file {path} repeats id {prompt.id!r}")
        seen.add(prompt.id)
    has_split = [("split" in p.meta) for p in prompts]
    if any(has_split) and not all(has_split):
        raise FormatError(f"prompt file {path}: either every row has a 'split' or none does")
    for prompt in prompts:
        split = prompt.meta.get("split")
        if split is not None and split not in SPLITS:
            raise FormatError(f"prompt file {path}: prompt {prompt.id} has split {split!r}; allowed: {', '.join(SPLITS)}")
