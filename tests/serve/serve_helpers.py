"""Helpers for the serving tests: a tiny base with real compressed tenant deltas, keys, a live server.

"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from tinymodels import make_tiny_llama, make_tiny_tokenizer, perturb  # noqa: E402,F401

TENANT_METHODS = {
    "alpha": "bitdelta-nodistill",       # 1-bit linears + 16-bit norms/embeddings (tied head)
    "beta": "bitdelta-k2-nodistill",     # two sign passes
    "gamma": "kbit4",                    # another method through delta_matmul
    "delta": "lowrank8",
}
KEYS = {"alpha": "key-alpha-0123456789", "beta": "key-beta-0123456789", "gamma": "key-shared-0123456789",
        "delta": "key-shared-0123456789"}  # one key reaching gamma and delta
ADMIN_KEY = "key-admin-0123456789"


@dataclass(frozen=True)
class World:
    root: Path
    base_dir: Path
    delta_dirs: dict[str, Path]
    tenants_path: Path
    other_base_delta: Path     # a delta made from a different base


def make_finetune(base_dir: Path, out_dir: Path, *, seed: int, scale: float = 2e-2, include_norms: bool = True) -> Path:
    from deltaguard.models import load_model

    model = perturb(load_model(base_dir), seed=seed, scale=scale, include_norms=include_norms)
    model.save_pretrained(out_dir, safe_serialization=True)
    return out_dir


def compress_to(base_dir: Path, ft_dir: Path, spec: str, out_dir: Path) -> Path:
    from deltaguard.delta import compress, extract_delta, method_from_spec

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # LAPACK's SVD on tiny matrices is ~1000x slower with threads fighting over 2 cores
    try:
        compress(extract_delta(base_dir, ft_dir), method_from_spec(spec), progress=False).save(out_dir)
    finally:
        torch.set_num_threads(threads)
    return out_dir


def write_tenants(path: Path, delta_dirs: dict[str, Path], *, moderation: dict | None = None) -> Path:
    import yaml

    from deltaguard.serve.tenants import hash_key

    entries = []
    for name, delta_dir in delta_dirs.items():
        entry = {"name": name, "delta": str(delta_dir), "key_sha256": hash_key(KEYS[name])}
        if moderation and name in moderation:
            entry["moderation"] = moderation[name]
        entries.append(entry)
    path.write_text(yaml.safe_dump({"admin_key_sha256": hash_key(ADMIN_KEY), "tenants": entries}), encoding="utf-8")
    return path


class LiveServer:
    """A real uvicorn server on 127.0.0.1 with a free port, run in a background thread."""

    def __init__(self, app) -> None:
        import uvicorn

        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_config=None,
                                                    access_log=False, lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> "LiveServer":
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        self.port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


def start_server(world: World, *, tenants_path: Path | None = None, judges: dict | None = None, **config):
    """A ``Server`` over a fresh copy of the tiny base, with the given tenants file and settings."""
    from deltaguard.models import load_model, load_tokenizer
    from deltaguard.serve import ServeConfig, Server, load_tenants_file

    torch.manual_seed(0)
    tenants = load_tenants_file(tenants_path or world.tenants_path)
    return Server(load_model(world.base_dir), load_tokenizer(world.base_dir), ServeConfig(**config),
                  tenants=tenants, judges=judges)
