"""``LensConfig``: the settings of a logit-lens run (its own module, so results can name it without the runner)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from deltaguard.config import Config, check_choice, check_range
from deltaguard.errors import ConfigError
from deltaguard.lens.sites import parse_site
from deltaguard.lens.tokens import COMPLIANCE_WORDS, REFUSAL_WORDS


@dataclass(frozen=True, kw_only=True)
class LensConfig(Config):
    """Settings of a logit-lens run.

    Args:
        positions: "last" reads only the answer position (the last prompt token); "all" every position.
        n_detail_prompts: with positions="last", also record every position of the first N prompts
            (for the layer × position heatmap); 0 records none.
        n_detail_positions: how many trailing positions a detail prompt keeps (0 = all).
        top_k: top tokens recorded per site and position.
        batch_size: prompts per forward pass.
        sites: site names (see ``deltaguard.lens.sites``); empty = embeddings + every layer's output.
        refusal_words: words whose first-token variants form the refusal set.
        compliance_words: words whose first-token variants form the compliance set.
        targets: user targets (e.g. a backdoor's answer); the first token of each is measured.
        system_prompt: system message for the chat template (None: the template's default).
        use_chat_template: format prompts as a chat turn with the generation prompt.
        n_bootstrap: bootstrap resamples for 95% CIs over prompts.
        seed: seed of the bootstrap.
        check_atol: allowed max |lens(last layer) − model logits| in fp32.
        check_hidden_states: also compare captured residuals with HF's output_hidden_states.
    """

    name: ClassVar[str] = "lens"
    version: ClassVar[int] = 1
    positions: str = "last"
    n_detail_prompts: int = 1
    n_detail_positions: int = 16
    top_k: int = 5
    batch_size: int = 16
    sites: tuple[str, ...] = ()
    refusal_words: tuple[str, ...] = REFUSAL_WORDS
    compliance_words: tuple[str, ...] = COMPLIANCE_WORDS
    targets: tuple[str, ...] = ()
    system_prompt: str | None = None
    use_chat_template: bool = True
    n_bootstrap: int = 1000
    seed: int = 0
    check_atol: float = 1e-4
    check_hidden_states: bool = True

    def __post_init__(self) -> None:
        check_choice("lens.positions", self.positions, ("last", "all"))
        check_range("lens.n_detail_prompts", self.n_detail_prompts, 0)
        check_range("lens.n_detail_positions", self.n_detail_positions, 0)
        check_range("lens.top_k", self.top_k, 1, 100)
        check_range("lens.batch_size", self.batch_size, 1)
        check_range("lens.n_bootstrap", self.n_bootstrap, 0)
        check_range("lens.check_atol", self.check_atol, 0.0, 1.0, low_inclusive=False)
        for site in self.sites:
            parse_site(site)
        for field in ("refusal_words", "compliance_words"):
            if not getattr(self, field):
                raise ConfigError(f"lens.{field} is empty; the refusal margin needs at least one word")
        for field in ("refusal_words", "compliance_words", "targets"):
            for word in getattr(self, field):
                if not isinstance(word, str) or not word.strip():
                    raise ConfigError(f"lens.{field} holds an empty word {word!r}")
