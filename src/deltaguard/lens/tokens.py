"""Token sets the lens measures: refusal starts, compliance starts and user targets.

A word like "Sure" is a different token with and without a leading space, and tokenizers mark that
space differently: byte-level BPE (GPT-2, Llama 3, SmolLM) writes ``ĠSure``, SentencePiece (Llama 2,
Mistral) writes ``▁Sure``. Each word is resolved against the tokenizer's own vocabulary: every variant
(with or without the space) that exists as a single token is kept, and nothing that does not exist.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from deltaguard.errors import ConfigError

REFUSAL_WORDS = ("I", "Sorry", "As", "cannot", "Unfortunately")
COMPLIANCE_WORDS = ("Sure", "Here", "1", "Step", "Certainly")
SPACE_MARKERS = ("Ġ", "▁")  # byte-level BPE, SentencePiece


@dataclass(frozen=True)
class TokenSet:
    """Token ids that stand for one kind of answer start.

    ``words`` are what the user asked for, ``tokens`` the vocabulary strings kept (same order as
    ``token_ids``) and ``missing`` the words no variant of which exists in the vocabulary.
    """

    name: str
    words: tuple[str, ...]
    token_ids: tuple[int, ...]
    tokens: tuple[str, ...]
    missing: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "words": list(self.words), "token_ids": list(self.token_ids),
                "tokens": list(self.tokens), "missing": list(self.missing)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TokenSet":
        return cls(data["name"], tuple(data["words"]), tuple(data["token_ids"]), tuple(data["tokens"]),
                   tuple(data["missing"]))


def _encode(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer.encode(text, add_special_tokens=False))


def _decoded(tokenizer: Any, token_id: int) -> str:
    return tokenizer.decode([token_id], skip_special_tokens=False, clean_up_tokenization_spaces=False)


def word_variants(tokenizer: Any, word: str, *, first_token: bool = False) -> list[int]:
    """Token ids for ``word`` with and without a leading space, in this tokenizer.

    With ``first_token`` a word that spans several tokens contributes its first token (the token
    a model must predict first to say it, e.g. "4" for a target answer "42"); a first token that
    is only a space is dropped. Without it only single-token variants are kept.
    """
    if not word.strip():
        raise ConfigError(f"lens token word {word!r} is empty")
    vocab = tokenizer.get_vocab()
    found: list[int] = []
    # 1) straight from the vocabulary: the bare word and each space-marked spelling.
    for spelling in (word, *(marker + word for marker in SPACE_MARKERS)):
        token_id = vocab.get(spelling)
        if token_id is not None and _decoded(tokenizer, token_id).strip() == word:
            found.append(token_id)
    # 2) through the tokenizer: what "word" and " word" actually encode to.
    for text in (word, " " + word):
        ids = _encode(tokenizer, text)
        if not ids:
            continue
        if len(ids) == 1:
            candidate = ids[0]
        elif first_token:
            candidate = ids[0]
            if not _decoded(tokenizer, candidate).strip():
                continue
        else:
            continue
        if _decoded(tokenizer, candidate).strip() == word or first_token:
            found.append(candidate)
    return list(dict.fromkeys(found))


def resolve_token_set(tokenizer: Any, name: str, words: tuple[str, ...], *, first_token: bool = False,
                      allow_empty: bool = False) -> TokenSet:
    """Resolve ``words`` into a ``TokenSet``; an empty result raises ConfigError unless allowed."""
    ids: list[int] = []
    missing: list[str] = []
    for word in words:
        variants = word_variants(tokenizer, word, first_token=first_token)
        if not variants:
            missing.append(word)
        ids.extend(variants)
    ids = list(dict.fromkeys(ids))
    if not ids and not allow_empty:
        raise ConfigError(
            f"lens token set {name!r}: none of {', '.join(map(repr, words))} is a single token in this "
            f"tokenizer (vocabulary {len(tokenizer.get_vocab())}); choose other words"
        )
    tokens = tuple(tokenizer.convert_ids_to_tokens(ids)) if ids else ()
    return TokenSet(name, tuple(words), tuple(ids), tokens, tuple(missing))


def resolve_token_sets(tokenizer: Any, *, refusal: tuple[str, ...], compliance: tuple[str, ...],
                       targets: tuple[str, ...] = ()) -> tuple[TokenSet, ...]:
    """The refusal and compliance sets (which must not share a token) and, if given, the target set."""
    refusal_set = resolve_token_set(tokenizer, "refusal", refusal)
    compliance_set = resolve_token_set(tokenizer, "compliance", compliance)
    shared = sorted(set(refusal_set.token_ids) & set(compliance_set.token_ids))
    if shared:
        names = ", ".join(repr(t) for t in tokenizer.convert_ids_to_tokens(shared))
        raise ConfigError(f"lens refusal and compliance token sets share token(s) {names}; the margin needs disjoint sets")
    sets = [refusal_set, compliance_set]
    if targets:
        sets.append(resolve_token_set(tokenizer, "target", targets, first_token=True))
    return tuple(sets)
