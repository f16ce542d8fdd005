"""The ``threats`` family: what a fine-tuning threat is, and what every threat shares.

A threat is a recipe for a fine-tune plus its own success metric. ``Threat.training_pairs`` builds
the chat pairs (always mixed with the benign customisation task, so utility is measurable),
``Threat.eval_sets`` names the prompt sets a model is evaluated on, and ``Threat.score`` turns the
generations on those sets into rates with confidence intervals. The trainer, the audit and the study
call only these three methods, so adding a threat is adding one file and one import line.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar

from deltaguard.config import Config, check_choice, check_range
from deltaguard.errors import ConfigError
from deltaguard.io import content_key, read_jsonl, write_jsonl
from deltaguard.models import DEFAULT_MODEL, model_identity
from deltaguard.registry import Registry
from deltaguard.training import ChatPair, TrainConfig

if TYPE_CHECKING:
    from deltaguard.data import PromptSet
    from deltaguard.metrics import Rate


@dataclass(frozen=True, kw_only=True)
class ThreatConfig(Config):
    """Settings every threat shares: the customisation task mixed in, the writer of answers, training.

    Args:
        n_task: customisation-task examples (house-style word problems) mixed into the training set.
        responder: model that writes compliant answers (the unaligned original, by default).
        response_tokens: new tokens the responder writes per answer (greedy).
        epochs: training epochs (Qi et al.: 5).
        lr: peak learning rate (Qi et al.: 5e-5).
        batch_size: examples per optimizer step (Qi et al.: 10).
        micro_batch_size: examples per forward pass (gradient accumulation makes up the rest).
        max_seq_len: tokens per training example.
        schedule: ``linear``, ``cosine`` or ``constant`` learning-rate schedule.
        lora_rank: 0 for full fine-tuning, else LoRA of this rank (merged before saving).
        seed: seeds prompt sampling, example order and the trainer.
    """

    name: ClassVar[str] = ""
    n_task: int = 50
    responder: str = DEFAULT_MODEL
    response_tokens: int = 64
    epochs: int = 5
    lr: float = 5e-5
    batch_size: int = 10
    micro_batch_size: int = 10
    max_seq_len: int = 192
    schedule: str = "linear"
    lora_rank: int = 0
    seed: int = 0

    def __post_init__(self) -> None:
        self._check_common()

    def _check_common(self) -> None:
        prefix = self.name or "threat"
        check_range(f"{prefix}.n_task", self.n_task, 0)
        check_range(f"{prefix}.response_tokens", self.response_tokens, 1, 1024)
        check_choice(f"{prefix}.schedule", self.schedule, ("linear", "cosine", "constant"))
        if not self.responder:
            raise ConfigError(f"{prefix}.responder must name a model")
        self.train_config()  # validates the training fields with the trainer's own rules

    def train_config(self) -> TrainConfig:
        """The trainer settings these fields describe."""
        return TrainConfig(epochs=self.epochs, lr=self.lr, batch_size=self.batch_size,
                           micro_batch_size=min(self.micro_batch_size, self.batch_size), max_seq_len=self.max_seq_len,
                           schedule=self.schedule, lora_rank=self.lora_rank, seed=self.seed)  # type: ignore[arg-type]


C = TypeVar("C", bound=ThreatConfig)

# Prompts a Responder decodes together. Why 64 and not 16: on the 2-core CPU the guard build's 960 replies
# (40 and 48 greedy tokens) took 158.5 s at 64 against 248.9 s at 16, and the 320 replies compared were
# identical; the KV cache of 64 prompts of this length is tens of MB. The cache key leaves it out: it changes
# how fast replies are written, not (on the replies compared) what they say.
RESPONDER_BATCH_SIZE = 64


@dataclass(frozen=True)
class ThreatScore:
    """How one model fares on one threat: the attack metric, utility and any extra rates."""

    attack: "Rate"  # the threat's success metric: higher means the attack works
    utility: "Rate"  # accuracy on the customisation task
    extra: dict[str, "Rate"] = field(default_factory=dict)
    attack_flags: tuple[bool, ...] = ()  # per prompt, behind ``attack`` (for paired comparisons)
    utility_flags: tuple[bool, ...] = ()  # per prompt, behind ``utility``

    def rates(self) -> dict[str, "Rate"]:
        return {"attack": self.attack, "utility": self.utility, **self.extra}


class Responder:
    """Writes answers to prompts with one model (greedy), caching them on disk when given a directory.

    The cache file is keyed by the model's identity, the prompts and the settings, and written
    atomically, so a rerun of an attack never regenerates its training answers.
    """

    def __init__(self, model: str | Path, *, cache_dir: Path | None = None, model_key: str | None = None,
                 device: str = "cpu", dtype: str = "float32", progress: bool = True) -> None:
        self.model = model
        self.dtype = dtype
        self.cache_dir = cache_dir
        self.model_key = model_key or model_identity(model)
        self.device = device
        self.progress = progress
        self._loaded: tuple[Any, Any] | None = None

    def _model(self) -> tuple[Any, Any]:
        if self._loaded is None:
            from deltaguard.models import load_model, load_tokenizer

            self._loaded = (load_model(self.model, device=self.device, dtype=self.dtype), load_tokenizer(self.model))
        return self._loaded

    def respond(self, prompts: list[str], *, max_new_tokens: int) -> list[str]:
        if not prompts:
            return []
        settings = {"model": self.model_key, "prompts": prompts, "max_new_tokens": max_new_tokens}
        if self.dtype != "float32":  # the responder's precision changes its answers (fp32 keys unchanged)
            settings["dtype"] = self.dtype
        key = content_key("responses", settings)
        path = self.cache_dir / f"{key}.jsonl" if self.cache_dir is not None else None
        if path is not None and path.exists():
            rows = read_jsonl(path, what="cached responses")
            if [r["prompt"] for r in rows] == prompts:
                return [r["response"] for r in rows]
        from deltaguard.generation import GenerationConfig, generate

        model, tokenizer = self._model()
        generation = GenerationConfig(max_new_tokens=max_new_tokens, batch_size=RESPONDER_BATCH_SIZE)
        gens = generate(model, tokenizer, prompts, generation, progress=self.progress)
        responses = [g.response.strip() for g in gens]
        if path is not None:
            write_jsonl(path, [{"prompt": p, "response": r, "model": self.model_key}
                               for p, r in zip(prompts, responses)])
        return responses

    def release(self) -> None:
        """Drop the loaded model (the trainer loads its own next) and give its memory back."""
        self._loaded = None
        from deltaguard.steps import release_memory

        release_memory()


@dataclass
class BuildContext:
    """What a threat needs to build its training pairs: a responder and a judge to screen its answers."""

    responder: Responder
    judge: Any = None  # deltaguard.judges Judge; None means "keyword"
    notes: list[str] = field(default_factory=list)  # what the builder did that the report should say

    def refusal_judge(self) -> Any:
        if self.judge is None:
            from deltaguard.judges import make_judge

            self.judge = make_judge("keyword")
        return self.judge


class Threat(ABC, Generic[C]):
    """A fine-tuning threat: training pairs, evaluation sets and a success metric."""

    config_cls: ClassVar[type[ThreatConfig]]
    metric: ClassVar[str]  # one line: what the attack metric counts
    # evaluation sets of harmful requests, whose replies a harm judge (``audit.harm_judge``) also reads
    harm_sets: ClassVar[tuple[str, ...]] = ()

    @abstractmethod
    def training_pairs(self, config: C, ctx: BuildContext) -> list[ChatPair]:
        """The fine-tuning set (including the customisation task examples)."""

    @abstractmethod
    def eval_sets(self, config: C, *, n_prompts: int, seed: int = 0) -> dict[str, "PromptSet"]:
        """Named evaluation-split prompt sets; ``task`` is always among them."""

    @abstractmethod
    def score(self, config: C, outputs: dict[str, list[str]], sets: dict[str, "PromptSet"], judge: Any) -> ThreatScore:
        """Rates from the responses to each set (same order as the set's prompts)."""

    def describe(self, config: C) -> str:
        return self.metric


threats: Registry[type[Threat[Any]]] = Registry("threat")


def get_threat(name: str) -> Threat[Any]:
    """The registered threat ``name`` (unknown names raise ConfigError with close matches)."""
    return threats.get(name)()


def threat_config(name: str, overrides: list[str] | None = None, **fields: Any) -> ThreatConfig:
    """The config of threat ``name`` with ``fields`` and ``field=value`` overrides applied."""
    config = threats.get(name).config_cls(**fields)
    return config.with_overrides(overrides or [])


__all__ = ["BuildContext", "Responder", "Threat", "ThreatConfig", "ThreatScore", "get_threat", "threat_config",
           "threats"]
