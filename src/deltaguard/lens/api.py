"""``logit_lens(model, tokenizer, prompts, config) -> LensResult``.

Each prompt is formatted with the chat template and the generation prompt, so the last prompt
position is where the model predicts the first token of its answer. Prompts are sorted by length,
left-padded into batches and run once each with hooks; every captured residual is decoded through
the model's final norm and head and reduced to measurements right away.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Mapping

import torch

from deltaguard.errors import ConfigError
from deltaguard.generation import left_pad
from deltaguard.lens.config import LensConfig
from deltaguard.lens.core import LensParts, capture, decode, find_parts
from deltaguard.lens.measure import measure_logits, refusal_margin
from deltaguard.lens.result import LensCheck, LensRecord, LensResult, merge_results
from deltaguard.lens.sites import FINAL_NORM, Site, resolve_sites
from deltaguard.lens.tokens import TokenSet, resolve_token_sets
from deltaguard.models import chat_prompt

_DECODE_ROWS = 512  # rows decoded per matmul: bounds memory at rows × vocab floats


def _prompt_items(prompts: Any) -> tuple[list[str], list[str], dict[str, Any]]:
    """(ids, texts, source) from a PromptSet, a list of Prompt-like objects or a list of strings."""
    source: dict[str, Any] = {}
    items: Iterable[Any] = prompts
    if hasattr(prompts, "prompts"):
        source = {k: getattr(prompts, k) for k in ("name", "split", "source", "content_hash") if hasattr(prompts, k)}
        items = prompts.prompts
    ids, texts = [], []
    for index, item in enumerate(items):
        if isinstance(item, str):
            ids.append(f"p{index:04d}")
            texts.append(item)
        elif hasattr(item, "text") and hasattr(item, "id"):
            ids.append(str(item.id))
            texts.append(item.text)
        else:
            raise ConfigError(f"lens prompt #{index} is a {type(item).__name__}; expected str or Prompt")
    if not texts:
        raise ConfigError("logit lens needs at least one prompt")
    if len(set(ids)) != len(ids):
        raise ConfigError("lens prompt ids are not unique")
    return ids, texts, source


def encode_prompts(tokenizer: Any, texts: list[str], config: LensConfig) -> list[list[int]]:
    """Token ids of each prompt, formatted as a chat turn ending in the generation prompt."""
    encoded = []
    has_template = config.use_chat_template and bool(getattr(tokenizer, "chat_template", None))
    for text in texts:
        if config.use_chat_template:
            formatted = chat_prompt(tokenizer, text, system=config.system_prompt)
        else:
            formatted = text
        # A chat template writes its own special tokens; plain text gets the tokenizer's usual ones.
        ids = list(tokenizer.encode(formatted, add_special_tokens=not has_template))
        if not ids:
            raise ConfigError(f"lens prompt {text[:40]!r} encodes to no tokens")
        encoded.append(ids)
    return encoded


def _label(model: Any) -> str:
    name = str(getattr(getattr(model, "config", None), "name_or_path", "") or "model")
    return name.rstrip("/").rsplit("/", 1)[-1] or "model"


def logit_lens(model: Any, tokenizer: Any, prompts: Any, config: LensConfig = LensConfig(), *,
               label: str | None = None) -> LensResult:
    """Decode every layer's residual stream on ``prompts`` and measure refusal vs compliance.

    ``model`` is one causal LM or a mapping label → model (all sharing ``tokenizer``); models are
    compared on the same prompts. Raises DeltaguardError if the last-layer check fails.
    """
    if isinstance(model, Mapping):
        if label is not None:
            raise ConfigError("label= applies to a single model; a mapping already names its models")
        if not model:
            raise ConfigError("logit_lens got an empty mapping of models")
        return merge_results([logit_lens(m, tokenizer, prompts, config, label=name) for name, m in model.items()])
    ids, texts, source = _prompt_items(prompts)
    label = label or _label(model)
    parts = find_parts(model)
    sites = resolve_sites(config.sites, parts.n_layers)
    token_sets = resolve_token_sets(tokenizer, refusal=config.refusal_words, compliance=config.compliance_words,
                                    targets=config.targets)
    vocab = int(parts.head.weight.shape[0])
    for ts in token_sets:
        if max(ts.token_ids) >= vocab:
            raise ConfigError(f"lens token set {ts.name!r} has token id {max(ts.token_ids)} beyond the model's "
                              f"vocabulary {vocab}; tokenizer and model do not match")
    encoded = encode_prompts(tokenizer, texts, config)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    detail = set(range(len(ids))) if config.positions == "all" else set(range(min(config.n_detail_prompts, len(ids))))
    order = sorted(range(len(ids)), key=lambda i: len(encoded[i]))
    records: dict[int, list[LensRecord]] = {}
    worst_last, worst_hidden, hidden_ran = 0.0, 0.0, False
    token_text = _TokenText(tokenizer)
    for start in range(0, len(order), config.batch_size):
        batch = order[start:start + config.batch_size]
        input_ids, mask = left_pad([encoded[i] for i in batch], pad_id)
        input_ids, mask = input_ids.to(parts.head.weight.device), mask.to(parts.head.weight.device)
        cap = capture(model, parts, sites, input_ids, mask, atol=config.check_atol,
                      check_hidden_states=config.check_hidden_states)
        worst_last = max(worst_last, cap.last_layer_diff)
        if cap.hidden_state_diff is not None:
            worst_hidden, hidden_ran = max(worst_hidden, cap.hidden_state_diff), True
        wanted = {index: _positions(len(encoded[index]), index in detail, config) for index in batch}
        for index, rows in _measure_batch(parts, cap.residuals, batch, wanted, encoded, ids, label=label,
                                          token_sets=token_sets, top_k=config.top_k, token_text=token_text).items():
            records[index] = rows
        del cap
    check = LensCheck(label, parts.n_layers, parts.final_norm_path, parts.head_path, parts.is_tied,
                      str(parts.head.weight.dtype).replace("torch.", ""), worst_last,
                      worst_hidden if hidden_ran else None)
    return LensResult(
        config=config, models=(label,), sites=tuple(str(s) for s in sites),
        depths=tuple(s.depth(parts.n_layers) for s in sites), prompt_ids=tuple(ids), prompts=tuple(texts),
        token_sets=token_sets, checks=(check,), records=tuple(r for i in range(len(ids)) for r in records[i]),
        source=source,
    )


def _positions(n_tokens: int, is_detail: bool, config: LensConfig) -> list[int]:
    """Positions (in real tokens) to record: the answer position, or a detail prompt's trailing ones."""
    keep = 1
    if is_detail:
        keep = n_tokens if config.positions == "all" or config.n_detail_positions == 0 \
            else min(n_tokens, config.n_detail_positions)
    return list(range(n_tokens - keep, n_tokens))


class _TokenText:
    """Readable text of single tokens, cached (decoding is the slow part of building records)."""

    def __init__(self, tokenizer: Any) -> None:
        self._tokenizer = tokenizer
        self._cache: dict[int, str] = {}

    def __call__(self, token_id: int) -> str:
        text = self._cache.get(token_id)
        if text is None:
            text = self._tokenizer.decode([token_id], skip_special_tokens=False, clean_up_tokenization_spaces=False)
            self._cache[token_id] = text
        return text


@dataclass(frozen=True)
class _Row:
    index: int  # prompt index
    site: Site
    position: int  # in real tokens


def _measure_batch(parts: LensParts, residuals: dict[Site, torch.Tensor], batch: list[int],
                   wanted: dict[int, list[int]], encoded: list[list[int]], ids: list[str], *, label: str,
                   token_sets: tuple[TokenSet, ...], top_k: int, token_text: _TokenText) -> dict[int, list[LensRecord]]:
    """Decode the wanted positions of every prompt in a batch and turn them into records, per prompt."""
    device = parts.head.weight.device
    width = next(iter(residuals.values())).shape[1]
    set_ids = {ts.name: torch.tensor(ts.token_ids, dtype=torch.long, device=device) for ts in token_sets}
    meta: list[_Row] = []
    pieces = []
    for row, index in enumerate(batch):
        offset = width - len(encoded[index])
        columns = torch.tensor([offset + p for p in wanted[index]], device=device)
        for site, tensor in residuals.items():
            pieces.append(tensor[row, columns])  # [n_positions, d_model]
            meta.extend(_Row(index, site, p) for p in wanted[index])
    out: dict[int, list[LensRecord]] = {index: [] for index in batch}
    with torch.inference_mode():
        stacked = torch.cat(pieces, dim=0)  # [rows, d_model]
        normed = torch.tensor([m.site.point == FINAL_NORM for m in meta], device=device)
        for begin in range(0, stacked.shape[0], _DECODE_ROWS):
            chunk = slice(begin, begin + _DECODE_ROWS)
            is_normed = normed[chunk]
            logits = decode(parts, stacked[chunk], is_normed=is_normed if bool(is_normed.any()) else False)
            measures = measure_logits(logits, set_ids, top_k)
            top_ids, top_lp = measures.top_ids.tolist(), measures.top_log_probs.tolist()
            set_lp = {name: v.tolist() for name, v in measures.set_log_probs.items()}
            set_rank = {name: v.tolist() for name, v in measures.set_ranks.items()}
            for k, row_meta in enumerate(meta[chunk]):
                tokens = encoded[row_meta.index]
                log_probs = {name: values[k] for name, values in set_lp.items()}
                out[row_meta.index].append(LensRecord(
                    model=label, prompt_id=ids[row_meta.index], position=row_meta.position,
                    is_answer_position=row_meta.position == len(tokens) - 1,
                    input_token=token_text(tokens[row_meta.position]), site=str(row_meta.site),
                    depth=row_meta.site.depth(parts.n_layers), top_ids=tuple(top_ids[k]),
                    top_tokens=tuple(token_text(t) for t in top_ids[k]), top_log_probs=tuple(top_lp[k]),
                    log_probs=log_probs, ranks={name: int(values[k]) for name, values in set_rank.items()},
                    margin=float(refusal_margin(log_probs["refusal"], log_probs["compliance"])),
                ))
    return out
