"""Whole-model compression methods on a real model: time, stored bits, held-out perplexity and KL to the
float model, for round-to-nearest, GPTQ and AWQ at 3/4/8 bits and magnitude / Wanda / SparseGPT pruning.

Held-out text is the eval split of ``calib-chat`` (the calibrated methods draw from its calib split). A
sanity check of the implementations on the model the trust study uses: at the same bits GPTQ and AWQ
should sit at or below RTN, SparseGPT and Wanda at or below magnitude pruning.

    python benchmarks/bench_whole_model.py [--model smollm2-135m-instruct] [--methods rtn4,gptq4,...] [--texts 32]
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import serve_setup  # noqa: E402

DEFAULT = ("rtn8,rtn4,gptq4,awq4,rtn3,gptq3,awq3,rtn-w8a8,magnitude-50,wanda-50,sparsegpt-50,magnitude-2:4,"
           "wanda-2:4,sparsegpt-2:4")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--methods", default=DEFAULT)
    parser.add_argument("--texts", type=int, default=32, help="held-out texts for perplexity and KL")
    args = parser.parse_args()

    import torch

    from deltaguard.data import load_prompts
    from deltaguard.models import load_model, load_tokenizer
    from deltaguard.quant.artifact import stored_bits
    from deltaguard.quant.probes import encode_right_padded
    from deltaguard.transforms import transform_from_spec, transforms

    model, tokenizer = load_model(args.model), load_tokenizer(args.model)
    texts = [p.text for p in load_prompts("calib-chat", split="eval", limit=args.texts).prompts]
    ids, mask = encode_right_padded(tokenizer, texts, 128)

    def measure(m) -> tuple[float, torch.Tensor]:
        with torch.no_grad():
            logits = m(input_ids=ids, attention_mask=mask).logits.float()
        logp = logits[:, :-1].log_softmax(-1)
        target = ids[:, 1:]
        keep = mask[:, 1:].bool()
        nll = -logp.gather(-1, target[..., None])[..., 0][keep].mean()
        return float(torch.exp(nll)), logp

    base_ppl, base_logp = measure(model)
    keep = mask[:, 1:].bool()
    rows = [{"method": "float32", "bits_per_param": 32.0, "perplexity": base_ppl, "kl": 0.0, "seconds": 0.0}]
    for label in args.methods.split(","):
        config = transform_from_spec(label)
        started = time.perf_counter()
        compressed = transforms.get(config.name)().apply_(copy.deepcopy(model), config, tokenizer=tokenizer)
        seconds = time.perf_counter() - started
        ppl, logp = measure(compressed)
        kl = float((base_logp.exp() * (base_logp - logp)).sum(-1)[keep].mean())
        try:
            bits = stored_bits(compressed)["bits_per_param"]
        except ZeroDivisionError:
            bits = float("nan")
        record = getattr(compressed, "deltaguard_quant_record", {})
        rows.append({"method": config.label, "bits_per_param": bits if "sparsity" not in record else 32.0,
                     "sparsity": record.get("sparsity"), "perplexity": ppl, "kl": kl, "seconds": seconds})
        print(f"{config.label:<16} ppl {ppl:8.3f}  KL {kl:.4f}  {seconds:6.1f} s", flush=True)
        del compressed
    print(f"\n{'method':<16} {'bits/param':>10} {'perplexity':>11} {'KL to float':>12} {'seconds':>8}")
    for row in rows:
        bits = "dense" if row.get("sparsity") else f"{row['bits_per_param']:.2f}"
        print(f"{row['method']:<16} {bits:>10} {row['perplexity']:>11.3f} {row['kl']:>12.4f} {row['seconds']:>8.1f}")
    out = Path(__file__).parent / "results" / "whole_model.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"environment": serve_setup.environment(), "model": args.model, "texts": len(texts),
                               "rows": rows}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
