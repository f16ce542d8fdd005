"""A model with a real model's architecture and tokenizer but freshly initialised weights.

For speed and memory measurements where the real weights cannot travel (a GPU machine with no network
and a size limit on what is copied to it): decode tokens/s, training steps/s and peak memory depend on
the architecture and the sequence lengths, not on the weight values. Never use it for a safety figure.

    python benchmarks/random_weights.py --like DIR_WITH_CONFIG_AND_TOKENIZER -o OUT_DIR [--seed 0]
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import torch

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
                   "generation_config.json", "vocab.json", "merges.txt", "tokenizer.model")


def make(like: Path, out: Path, *, seed: int = 0) -> Path:
    from transformers import AutoConfig, AutoModelForCausalLM

    from deltaguard.models import save_model

    config = AutoConfig.from_pretrained(like)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    save_model(model, None, out, overwrite=True)
    for name in TOKENIZER_FILES:
        if (like / name).is_file():
            shutil.copyfile(like / name, out / name)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--like", type=Path, required=True, help="directory with config.json and tokenizer files")
    parser.add_argument("-o", "--out", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    path = make(args.like, args.out, seed=args.seed)
    n_params = sum(f.stat().st_size for f in path.glob("*.safetensors")) // 4
    print(f"{path}: random weights, ~{n_params / 1e6:.0f}M parameters, architecture of {args.like}")


if __name__ == "__main__":
    main()
