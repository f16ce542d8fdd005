"""``attack(base, config, out_dir=...)``: build a threat's training set and fine-tune the base on it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from deltaguard.threats.base import BuildContext, Responder, ThreatConfig, threats
from deltaguard.training import ChatPair, TrainResult, train_sft


@dataclass(frozen=True)
class AttackResult:
    """A fine-tuned model made by a threat, and what went into it."""

    model_dir: Path
    threat: str
    config: ThreatConfig
    train: TrainResult
    mixture: dict[str, int]
    notes: tuple[str, ...]


def build_pairs(config: ThreatConfig, *, cache_dir: Path | None = None, responder_key: str | None = None,
                device: str = "cpu", dtype: str = "float32", progress: bool = True) -> tuple[list[ChatPair], list[str]]:
    """The training pairs of the threat ``config`` describes, and the builder's notes."""
    threat = threats.get(config.name)()
    responder = Responder(config.responder, cache_dir=cache_dir, model_key=responder_key, device=device,
                          dtype=dtype, progress=progress)
    ctx = BuildContext(responder)
    pairs = threat.training_pairs(config, ctx)
    responder.release()
    return pairs, ctx.notes


def attack(base: str | Path, config: ThreatConfig, *, out_dir: str | Path, cache_dir: Path | None = None,
           responder_key: str | None = None, device: str = "cpu", dtype: str = "float32", progress: bool = True,
           overwrite: bool = False) -> AttackResult:
    """Fine-tune ``base`` with the threat ``config`` describes; saves an fp32 HF directory at ``out_dir``.

    ``training.json`` in the directory records the threat config, the mixture, the loss curve and the
    builder's notes (e.g. how many responder answers were dropped as refusals). ``cache_dir`` keeps the
    responder's answers so a rerun does not regenerate them.
    """
    pairs, notes = build_pairs(config, cache_dir=cache_dir, responder_key=responder_key, device=device,
                               dtype=dtype, progress=progress)
    result = train_sft(base, pairs, config.train_config(), out_dir=out_dir, progress=progress,
                       meta={"threat": config.to_dict(), "notes": notes}, device=device, overwrite=overwrite)
    mixture: dict[str, int] = {}
    for pair in pairs:
        mixture[pair.kind] = mixture.get(pair.kind, 0) + 1
    return AttackResult(Path(out_dir), config.name, config, result, mixture, tuple(notes))


def write_pairs(path: Path, pairs: list[ChatPair]) -> None:
    """Save training pairs as JSONL (prompt, response, kind) for inspection."""
    from deltaguard.io import write_jsonl

    write_jsonl(path, [{"prompt": p.prompt, "response": p.response, "kind": p.kind} for p in pairs])


__all__ = ["AttackResult", "attack", "build_pairs", "write_pairs"]
