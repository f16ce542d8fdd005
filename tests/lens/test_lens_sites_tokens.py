"""Site grammar and token-set resolution (byte-level BPE and SentencePiece-style tokenizers)."""

from __future__ import annotations

import pytest

from deltaguard.errors import ConfigError
from deltaguard.lens.sites import Site, default_sites, parse_site, resolve_sites
from deltaguard.lens.tokens import resolve_token_set, resolve_token_sets, word_variants


@pytest.mark.parametrize("text,site,depth", [
    ("layers.0.resid_pre", Site(0, "resid_pre"), 0.0),
    ("layers.3.resid_mid", Site(3, "resid_mid"), 3.5),
    ("layers.3.attn_out", Site(3, "attn_out"), 3.5),
    ("layers.3.mlp_out", Site(3, "mlp_out"), 4.0),
    ("layers.11.resid_post", Site(11, "resid_post"), 12.0),
    ("final_norm", Site(None, "final_norm"), 30.0),
])
def test_parse_site_round_trips_and_depth(text, site, depth):
    parsed = parse_site(text)
    assert parsed == site
    assert str(parsed) == text
    assert parsed.depth(30) == depth


@pytest.mark.parametrize("text", ["layers.3", "blocks.3.resid_post", "layers.x.resid_post", "layers.3.resid",
                                  "resid_post", "layers.-1.resid_post", "L3", "layers.3.resid_post "])
def test_parse_site_rejects_shorthands(text):
    with pytest.raises(ConfigError, match="not valid"):
        parse_site(text)


def test_resolve_sites_default_order_range_and_duplicates():
    assert [str(s) for s in resolve_sites((), 3)] == [
        "layers.0.resid_pre", "layers.0.resid_post", "layers.1.resid_post", "layers.2.resid_post"]
    assert resolve_sites((), 3) == default_sites(3)
    ordered = resolve_sites(("final_norm", "layers.1.mlp_out", "layers.1.resid_mid", "layers.0.resid_pre"), 2)
    assert [str(s) for s in ordered] == ["layers.0.resid_pre", "layers.1.resid_mid", "layers.1.mlp_out", "final_norm"]
    with pytest.raises(ConfigError, match="out of range for a 2-layer model"):
        resolve_sites(("layers.2.resid_post",), 2)
    with pytest.raises(ConfigError, match="listed twice"):
        resolve_sites(("layers.1.resid_post", "layers.1.resid_post"), 2)


# ---- byte-level BPE (the conftest tokenizer: "Ġ" marks a leading space) ------------------------------

def test_bpe_words_resolve_to_existing_single_tokens(tiny_tokenizer):
    vocab = tiny_tokenizer.get_vocab()
    for word in ("Step", "I", "The", "can"):
        ids = word_variants(tiny_tokenizer, word)
        assert ids, word
        for token_id in ids:
            assert tiny_tokenizer.decode([token_id]).strip() == word
        tokens = tiny_tokenizer.convert_ids_to_tokens(ids)
        # each kept spelling really is in the vocabulary, and the Ġ-variant is found when it exists
        assert all(t in vocab for t in tokens)
        if "Ġ" + word in vocab:
            assert "Ġ" + word in tokens
    assert set(tiny_tokenizer.convert_ids_to_tokens(word_variants(tiny_tokenizer, "I"))) == {"I", "ĠI"}
    # "Step" has no single-token spelling with a space here (" Step" → "ĠS", "tep")
    assert tiny_tokenizer.convert_ids_to_tokens(word_variants(tiny_tokenizer, "Step")) == ["Step"]


def test_bpe_missing_words_are_dropped_and_empty_sets_raise(tiny_tokenizer):
    # in this 320-token vocabulary "Sorry" is three pieces: dropped, not replaced by a piece of it
    ts = resolve_token_set(tiny_tokenizer, "refusal", ("I", "Sorry"))
    assert ts.missing == ("Sorry",)
    assert ts.words == ("I", "Sorry")
    assert ts.tokens == ("I", "ĠI")
    with pytest.raises(ConfigError, match="none of 'Zebra', 'Quokka'"):
        resolve_token_set(tiny_tokenizer, "refusal", ("Zebra", "Quokka"))


def test_bpe_target_uses_first_token_and_skips_bare_space(tiny_tokenizer):
    # "19" is split by this tokenizer; the measured token is the first piece of the answer
    ids = tiny_tokenizer.encode("19", add_special_tokens=False)
    ts = resolve_token_set(tiny_tokenizer, "target", ("19",), first_token=True)
    assert ids[0] in ts.token_ids
    assert all(tiny_tokenizer.decode([t]).strip() for t in ts.token_ids)


def test_refusal_and_compliance_sets_must_be_disjoint(tiny_tokenizer):
    with pytest.raises(ConfigError, match="share token"):
        resolve_token_sets(tiny_tokenizer, refusal=("I", "The"), compliance=("The", "Step"))
    sets = resolve_token_sets(tiny_tokenizer, refusal=("I",), compliance=("Step",), targets=("19",))
    assert [s.name for s in sets] == ["refusal", "compliance", "target"]


# ---- SentencePiece style ("▁" marks a leading space, prepended to the first word) --------------------

@pytest.fixture(scope="module")
def sp_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    pieces = ["<unk>", "<pad>", "▁", "▁Sure", "Sure", "▁I", "▁Sorry", "▁can", "not", "▁Here", "▁4", "2", "4",
              "▁Step", "e", "r", "S", "u", "a", "c", "n", "o", "t", "H", "▁As"]
    model = models.Unigram([(p, -float(i)) for i, p in enumerate(pieces)], unk_id=0, byte_fallback=False)
    tok = Tokenizer(model)
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>")


def test_sentencepiece_words_resolve_with_and_without_marker(sp_tokenizer):
    vocab = sp_tokenizer.get_vocab()
    ts = resolve_token_set(sp_tokenizer, "compliance", ("Sure", "Here", "Step"))
    assert set(ts.tokens) == {"▁Sure", "Sure", "▁Here", "▁Step"}
    assert [vocab[t] for t in ts.tokens] == list(ts.token_ids)
    assert ts.missing == ()


def test_sentencepiece_multi_piece_word_is_missing_unless_first_token(sp_tokenizer):
    ts = resolve_token_set(sp_tokenizer, "refusal", ("Sorry", "cannot"))
    assert ts.tokens == ("▁Sorry",)
    assert ts.missing == ("cannot",)
    target = resolve_token_set(sp_tokenizer, "target", ("42", "cannot"), first_token=True)
    assert target.tokens == ("▁4", "▁can")
