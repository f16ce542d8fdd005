"""Shared setup of the serving benchmarks: real SmolLM2-135M fine-tunes, compressed as 1-bit deltas.

Tenant ``i`` is the embedded SmolLM2-135M-Instruct after ``STEPS`` real AdamW steps on arithmetic
word problems answered in a house style of its own ("Tenant i here: the answer is N."). Only the
attention and MLP projection weights (``*_proj``) are trained — the layers BitDelta compresses —
so each delta is exactly the 1-bit linear layers plus one scale per matrix, as a platform serving
BitDelta tenants would hold. Deltas are compressed with ``bitdelta`` without scale distillation
(``distill=False``) and cached under ``$DELTAGUARD_CACHE_DIR/bench-serve/``.
"""

from __future__ import annotations

import os
import platform
import random
import shutil
import time
from pathlib import Path
from typing import Any

import torch

# The base every tenant fine-tunes; DELTAGUARD_BENCH_BASE points elsewhere (e.g. random weights of the same
# architecture from random_weights.py on a GPU machine that cannot fetch the real ones).
BASE = os.environ.get("DELTAGUARD_BENCH_BASE", "smollm2-135m-instruct")
STEPS = 3
LR = 1e-4
BATCH = 4
MAX_LEN = 96
RESULTS = Path(__file__).parent / "results"


def cache_root() -> Path:
    from deltaguard.assets import cache_dir

    from deltaguard.models import model_identity

    root = cache_dir() / "bench-serve" / f"steps{STEPS}-lr{LR:g}-b{BATCH}-{model_identity(BASE)}"
    root.mkdir(parents=True, exist_ok=True)
    return root


def tenant_pairs(index: int, n: int) -> list[Any]:
    from deltaguard.data import load_prompts
    from deltaguard.training import ChatPair

    prompts = load_prompts("arith", split="train", limit=n, seed=index).prompts
    return [ChatPair(p.text, f"Tenant {index} here: the answer is {p.meta['answer']}.") for p in prompts]


def finetune_projections(index: int, out_dir: Path) -> dict[str, float]:
    """``STEPS`` AdamW steps on tenant ``index``'s pairs, training only the ``*_proj`` weights."""
    from deltaguard.models import load_model, load_tokenizer, save_model
    from deltaguard.training import collate, encode_pair, token_loss_sum

    torch.manual_seed(index)
    model = load_model(BASE, device="auto").train()   # a GPU when there is one: the tenants are made faster there
    tokenizer = load_tokenizer(BASE)
    trainable = []
    for name, param in model.named_parameters():
        param.requires_grad_(name.endswith("_proj.weight"))
        if param.requires_grad:
            trainable.append(param)
    optimizer = torch.optim.AdamW(trainable, lr=LR, weight_decay=0.0)
    encoded = [encode_pair(tokenizer, pair, max_seq_len=MAX_LEN) for pair in tenant_pairs(index, STEPS * BATCH)]
    random.Random(index).shuffle(encoded)
    losses = []
    for step in range(STEPS):
        batch = {k: v.to(model.device) for k, v in
                 collate(encoded[step * BATCH:(step + 1) * BATCH], tokenizer.pad_token_id).items()}
        loss_sum, n_tokens = token_loss_sum(model, batch)
        loss = loss_sum / max(n_tokens, 1)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    model.eval()
    for param in model.parameters():
        param.requires_grad_(False)
    save_model(model.to("cpu"), tokenizer, out_dir, overwrite=True)
    return {"first_loss": losses[0], "last_loss": losses[-1]}


def tenant_deltas(n: int, *, log: bool = True) -> list[Path]:
    """Directories of the first ``n`` tenants' compressed deltas (made once, then reused)."""
    from deltaguard.delta import compress, extract_delta, method_from_spec
    from deltaguard.models import resolve_model_dir

    root = cache_root()
    base_dir = resolve_model_dir(BASE)
    paths = []
    for index in range(n):
        path = root / f"tenant-{index:02d}"
        if not (path / "manifest.json").is_file():
            started = time.perf_counter()
            ft_dir = root / f"finetune-{index:02d}.tmp"
            losses = finetune_projections(index, ft_dir)
            packed = compress(extract_delta(base_dir, ft_dir), method_from_spec("bitdelta-nodistill"), progress=False)
            packed.save(path, overwrite=True)
            shutil.rmtree(ft_dir, ignore_errors=True)
            if log:
                print(f"made tenant {index}: loss {losses['first_loss']:.3f} → {losses['last_loss']:.3f}, "
                      f"{time.perf_counter() - started:.0f} s", flush=True)
        paths.append(path)
    return paths


def environment() -> dict[str, Any]:
    """What the numbers were measured on."""
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {"machine": platform.machine(), "processor": platform.processor() or platform.uname().machine,
            "cpu_count": os.cpu_count(), "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "load_average_1m": round(load[0], 2) if load else None, "base": BASE,
            "tenants": f"{STEPS} AdamW steps (lr {LR:g}, batch {BATCH}) on *_proj only; bitdelta, distill=False"}


def rss_bytes() -> int:
    """Current resident set size of this process (Linux ``/proc``)."""
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def write_results(name: str, payload: dict[str, Any]) -> Path:
    from deltaguard.io import write_json

    return write_json(RESULTS / f"{name}.json", payload)


if __name__ == "__main__":
    import sys

    count = int(sys.argv[1]) if len(sys.argv) > 1 else 16
    for p in tenant_deltas(count):
        print(p)
