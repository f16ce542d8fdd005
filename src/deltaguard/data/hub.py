"""Prompt sets from the Hugging Face hub, for users who are online: ``hf:org/name[?options]``.

Options (URL query style): ``config`` (dataset configuration), ``split`` (the hub split to read,
default ``train``), ``column`` (text column; default: the first of ``local.TEXT_COLUMNS`` present),
``answer`` (a column copied to ``meta["answer"]``). Example:
``hf:walledai/AdvBench?column=prompt``. The ``datasets`` package is imported only here; offline
machines get one clear ``AssetError`` instead of a stack trace.
"""

from __future__ import annotations

from urllib.parse import parse_qsl

from deltaguard.data.base import Prompt
from deltaguard.data.local import TEXT_COLUMNS
from deltaguard.errors import AssetError, ConfigError

PREFIX = "hf:"
OPTIONS = ("config", "split", "column", "answer")


def parse_hub_spec(spec: str) -> tuple[str, dict[str, str]]:
    """``hf:org/name?k=v&...`` → (``org/name``, options)."""
    body = spec[len(PREFIX):]
    repo, _, query = body.partition("?")
    options = dict(parse_qsl(query, keep_blank_values=False))
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise ConfigError(f"hub dataset option(s) {', '.join(unknown)} unknown; allowed: {', '.join(OPTIONS)}")
    if repo.count("/") != 1 or not all(repo.split("/")):
        raise ConfigError(f"hub dataset {spec!r} must look like hf:org/name")
    return repo, options


def read_hub_dataset(spec: str) -> list[Prompt]:
    repo, options = parse_hub_spec(spec)
    try:
        import datasets as hf_datasets
    except ImportError:
        raise AssetError(f"{spec} needs the 'datasets' package (pip install datasets) and network access") from None
    try:
        table = hf_datasets.load_dataset(repo, options.get("config"), split=options.get("split", "train"))
    except Exception as exc:  # network, auth, missing repo or split: one message for the user
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise AssetError(f"could not load {repo!r} from the Hugging Face hub: {type(exc).__name__}: {first}") from None
    columns = list(table.column_names)
    column = options.get("column") or next((c for c in TEXT_COLUMNS if c in columns), None)
    if column not in columns:
        raise ConfigError(f"{spec}: text column {column!r} not found; columns: {', '.join(columns)}")
    answer = options.get("answer")
    if answer is not None and answer not in columns:
        raise ConfigError(f"{spec}: answer column {answer!r} not found; columns: {', '.join(columns)}")
    stem = repo.split("/")[1]
    prompts = []
    for index, row in enumerate(table):
        text = str(row[column] or "").strip()
        if not text:
            continue
        meta = {"answer": str(row[answer]).strip()} if answer else {}
        prompts.append(Prompt(id=f"{stem}-{index:06d}", text=text, meta=meta))
    if not prompts:
        raise AssetError(f"{spec} holds no non-empty {column!r} values")
    return prompts
