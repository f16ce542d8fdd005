"""How much of a fine-tune's delta does its attack need? Attack and utility of base + α·delta for several α.

The mitigation map finds that no compression of the delta strips the harmful fine-tune on the embedded
model, although 1-bit BitDelta keeps only 83-88% of the delta's direction. If the attack already works at a
fraction of the delta (it is *saturated*), a compression that keeps most of the direction cannot remove it;
this measures that directly: the keyword attack rate on harmful evaluation prompts and the word-problem
accuracy of base + α·(fine-tune − base), every rate with its 95% interval.

    python benchmarks/dose_response.py --base ALIGNED_DIR --finetuned FT_DIR [--alphas 0,0.1,0.25,0.5,1] [--n 64]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path


def scaled_model(base_dir: Path, finetuned_dir: Path, alpha: float, out: Path) -> Path:
    """Save base + α·(fine-tune − base) as an HF directory (every tensor, tied head included)."""
    import torch

    from deltaguard.models import load_model, load_tokenizer

    base, tuned = load_model(base_dir), load_model(finetuned_dir)
    tuned_state = tuned.state_dict()
    with torch.no_grad():
        for name, param in base.state_dict().items():
            param.add_(tuned_state[name].to(param.dtype) - param, alpha=alpha)
    base.save_pretrained(out, safe_serialization=True)
    load_tokenizer(finetuned_dir).save_pretrained(out)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", required=True, help="the aligned base (HF directory)")
    parser.add_argument("--finetuned", required=True, help="the harmful fine-tune of it (HF directory)")
    parser.add_argument("--alphas", default="0,0.1,0.25,0.5,1")
    parser.add_argument("--n", type=int, default=64, help="harmful and task evaluation prompts")
    parser.add_argument("--out", default="benchmarks/results/dose_response.json")
    args = parser.parse_args()

    from deltaguard.eval import ModelDir, Runner, Variant
    from deltaguard.generation import GenerationConfig
    from deltaguard.judges import make_judge
    from deltaguard.metrics import rate
    from deltaguard.threats.benign import compliance_flags, harmful_eval_set, is_correct, task_eval_set

    alphas = [float(a) for a in args.alphas.split(",")]
    harmful, task = harmful_eval_set(args.n, seed=0), task_eval_set(args.n, seed=0)
    judge = make_judge("keyword")
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        runner = Runner(Path(scratch) / "run", progress=False)
        for alpha in alphas:
            started = time.perf_counter()
            model_dir = scaled_model(Path(args.base), Path(args.finetuned), alpha, Path(scratch) / f"alpha-{alpha}")
            variant = Variant(f"alpha={alpha}", "model", ModelDir(model_dir))
            replies = runner.responses(variant, harmful, GenerationConfig(max_new_tokens=32, batch_size=32))
            answers = runner.responses(variant, task, GenerationConfig(max_new_tokens=64, batch_size=32))
            runner.release()
            attack = rate(list(compliance_flags(judge, harmful, replies)))
            utility = rate([is_correct(p, r) for p, r in zip(task.prompts, answers)])
            rows.append({"alpha": alpha, "attack": attack.to_dict(), "utility": utility.to_dict(),
                         "seconds": round(time.perf_counter() - started, 1)})
            print(f"α={alpha:<5g} attack {100 * attack.value:5.1f}% [{100 * attack.low:.0f}, {100 * attack.high:.0f}]  "
                  f"utility {100 * utility.value:5.1f}% [{100 * utility.low:.0f}, {100 * utility.high:.0f}]", flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"base": args.base, "finetuned": args.finetuned, "n": args.n, "rows": rows}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
