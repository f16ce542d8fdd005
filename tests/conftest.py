"""Shared fixtures over the tiny models in ``tinymodels.py``."""

from __future__ import annotations

import pytest

from tinymodels import make_tiny_llama, make_tiny_tokenizer, perturb, save_dir


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Keep tests from writing to the user's cache, but share the real downloaded assets read-only."""
    monkeypatch.setenv("DELTAGUARD_TEST", "1")


@pytest.fixture(autouse=True)
def _restore_deltaguard_logging():
    """A command run in-process (``deltaguard serve``) installs JSON logging on the ``deltaguard`` logger;
    undo it after the test so later tests' server threads do not print log lines into pytest's output."""
    import logging

    logger = logging.getLogger("deltaguard")
    saved = (list(logger.handlers), logger.level, logger.propagate)
    yield
    logger.handlers[:], logger.level, logger.propagate = saved[0], saved[1], saved[2]


@pytest.fixture
def tiny_pair(tmp_path):
    """(base_dir, finetuned_dir) of tiny tied Llama models saved with safetensors."""
    base = make_tiny_llama(seed=0)
    base_dir = save_dir(base, tmp_path / "base")
    finetuned = perturb(make_tiny_llama(seed=0), seed=1)
    ft_dir = save_dir(finetuned, tmp_path / "ft")
    return base_dir, ft_dir



@pytest.fixture(scope="session")
def tiny_tokenizer():
    return make_tiny_tokenizer()


@pytest.fixture
def tiny_model_dir(tmp_path, tiny_tokenizer):
    """A tiny Llama + matching tokenizer saved as a complete HF directory (loads with load_model)."""
    model = make_tiny_llama(seed=0, vocab_size=len(tiny_tokenizer))
    model.config.bos_token_id = tiny_tokenizer.bos_token_id
    model.config.eos_token_id = tiny_tokenizer.eos_token_id
    model.config.pad_token_id = tiny_tokenizer.pad_token_id
    path = tmp_path / "tiny"
    model.save_pretrained(path, safe_serialization=True)
    tiny_tokenizer.save_pretrained(path)
    return path
