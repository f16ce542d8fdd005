"""Fixtures for the serving tests (helpers live in ``serve_helpers.py``)."""

from __future__ import annotations

import pytest

from serve_helpers import (
    LiveServer, World, compress_to, make_finetune, make_tiny_llama, make_tiny_tokenizer, start_server,
    write_tenants, TENANT_METHODS,
)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models run fastest on one thread; on shared cores, extra threads mostly spin against each other."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def world(tmp_path_factory) -> World:
    root = tmp_path_factory.mktemp("serve")
    tok = make_tiny_tokenizer()
    base = make_tiny_llama(seed=0, vocab_size=len(tok))
    base.config.bos_token_id, base.config.eos_token_id, base.config.pad_token_id = (
        tok.bos_token_id, tok.eos_token_id, tok.pad_token_id)
    base.generation_config.eos_token_id = tok.eos_token_id
    base_dir = root / "base"
    base.save_pretrained(base_dir, safe_serialization=True)
    tok.save_pretrained(base_dir)
    delta_dirs = {}
    for i, (name, spec) in enumerate(TENANT_METHODS.items()):
        ft_dir = make_finetune(base_dir, root / f"ft-{name}", seed=100 + i)
        delta_dirs[name] = compress_to(base_dir, ft_dir, spec, root / f"delta-{name}")
    other = make_tiny_llama(seed=7, vocab_size=len(tok))
    other_dir = root / "other-base"
    other.save_pretrained(other_dir, safe_serialization=True)
    other_ft = make_finetune(other_dir, root / "ft-other", seed=9)
    other_delta = compress_to(other_dir, other_ft, "bitdelta-nodistill", root / "delta-other")
    tenants_path = write_tenants(root / "tenants.yaml", delta_dirs)
    return World(root, base_dir, delta_dirs, tenants_path, other_delta)


@pytest.fixture(scope="session")
def base_model(world):
    from deltaguard.models import load_model

    return load_model(world.base_dir)


@pytest.fixture(scope="session")
def tokenizer(world):
    from deltaguard.models import load_tokenizer

    return load_tokenizer(world.base_dir)


@pytest.fixture(scope="session")
def deltas(world):
    from deltaguard.delta import load_delta

    return {name: load_delta(path) for name, path in world.delta_dirs.items()}


@pytest.fixture(scope="module")
def live(world):
    """One live server for a test module: limits small enough to hit in tests."""
    from deltaguard.serve import create_app

    server = start_server(world, max_body_bytes=4096, max_prompt_tokens=200, max_new_tokens=16, default_new_tokens=8)
    with LiveServer(create_app(server)) as running:
        running.app_server = server
        yield running
