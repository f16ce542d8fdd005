"""Every verb × every kind of bad input: exit 1 or 2, one ``error:`` line, no traceback, nothing written.

The matrix is generated from the CLI itself: each leaf command of the Typer app must be described in
``VERBS`` (a new verb fails ``test_every_verb_is_in_the_matrix`` until it is), and the cases come from
the kinds of its options — a missing path, a wrong type, a non-finite number, a corrupted file, an
unwritable output.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import pytest
from typer.testing import CliRunner

from tinymodels import make_tiny_llama, perturb, save_dir
from deltaguard.cli import app

runner = CliRunner()
NO_INPUTS = {"models list", "data list"}  # verbs that read nothing the user gives


@dataclass(frozen=True)
class Verb:
    """A valid invocation (``{placeholders}`` filled from the fixtures) and the kinds of its options."""

    args: tuple[str, ...]
    models: tuple[str, ...] = ()          # options naming a model directory
    deltas: tuple[str, ...] = ()          # options naming a delta directory ("" = the positional argument)
    text_files: tuple[str, ...] = ()      # options naming a text file (prompts, tenants, calibration)
    ints: tuple[str, ...] = ()            # integer options
    float_sets: tuple[str, ...] = ()      # ``--set field=`` entries whose field is a float
    output: str | None = None             # the output option (``-o``) or None
    extra: tuple[tuple[str, ...], ...] = field(default=())  # more bad argument lists, verb-specific


VERBS = {
    "compress": Verb(("compress", "--base", "{base}", "--finetuned", "{ft}", "--method", "dare", "-o", "{out}"),
                     models=("--base", "--finetuned"), ints=("--calib-limit",), float_sets=("p",), output="-o",
                     extra=(("--method", "kbit9"), ("--set", "nofield=1"))),
    "realign": Verb(("realign", "--model", "{ft}", "--reference", "{base}", "-o", "{out}", "--set", "epochs_first=0",
                     "--set", "epochs_second=0"), models=("--model", "--reference"),
                    float_sets=("safety_weight", "clip_lr"), output="-o",
                    extra=(("--method", "qrealign-w9a9"), ("--method", "bf16"), ("--set", "n_harmful=99999"))),
    "merge": Verb(("merge", "--base", "{base}", "--delta", "{delta}", "-o", "{out}"), models=("--base",),
                  deltas=("--delta",), output="-o"),
    "inspect": Verb(("inspect", "{delta}"), deltas=("",), ints=("--rows",)),
    "export": Verb(("export", "--delta", "{delta}", "--format", "peft", "--rank", "4", "--drop-non-linear", "-o", "{out}"),
                   deltas=("--delta",), ints=("--rank", "--rows"), output="-o",
                   extra=(("--format", "gguf"), ("--rank", "0"))),
    "eval": Verb(("eval", "--model", "{base}", "--suite", "safety", "--limit", "2", "-o", "{out}"),
                 models=("--model",), deltas=("--delta",), ints=("--limit", "--threads"),
                 float_sets=("generation.temperature",), output="-o",
                 extra=(("--suite", "speed"), ("--endpoint", "localhost:8000/v1"))),
    "judge-check": Verb(("judge-check", "--judge", "keyword", "--limit", "3", "-o", "{out}"),
                        ints=("--limit", "--seed"), output="-o", extra=(("--judge", "nope"), ("--task", "jokes"))),
    "lens": Verb(("lens", "--model", "{base}", "--prompts", "{prompts}", "--limit", "2", "-o", "{out}", "--no-plots"),
                 models=("--model",), deltas=("--delta",), text_files=("--prompts",), ints=("--limit",),
                 float_sets=("check_atol",), output="-o"),
    "align": Verb(("align", "--base", "{base}", "-o", "{out}"), models=("--base", "--responder"),
                  ints=("--check-prompts", "--check-task-prompts"), float_sets=("lr",), output="-o",
                  extra=(("--check", "--check-prompts", "0"),)),
    "attack": Verb(("attack", "--threat", "harmful", "--base", "{base}", "-o", "{out}", "--set", "responder={base}"),
                   models=("--base",), float_sets=("lr",), output="-o", extra=(("--threat", "harmfull"),)),
    "audit": Verb(("audit", "--base", "{base}", "--finetuned", "{ft}", "--threat", "benign", "--methods", "kbit4",
                   "-o", "{out}"), models=("--base", "--finetuned"), float_sets=("max_utility_drop",), output="-o",
                  extra=(("--methods", "kbit4,nope"), ("--methods", ","))),
    "demo": Verb(("demo", "--model", "{base}", "-o", "{out}"), models=("--model",), output="-o"),
    "report": Verb(("report", "{run}"), text_files=("",)),
    "serve": Verb(("serve", "--base", "{base}", "--tenants", "{tenants}", "--port", "0"), models=("--base",),
                  text_files=("--tenants",), ints=("--port",), float_sets=("request_timeout_seconds",),
                  extra=(("--host", "no-such-host.invalid"),)),
    "serve hash-key": Verb(("serve", "hash-key", "--tenant", "acme", "--delta", "{delta}"),
                           extra=(("--key-stdin",),)),  # stdin gives "short": under the 16-character minimum
    "models pull": Verb(("models", "pull", "smollm2-135m-instruct"), extra=(("nope",),)),
    "data show": Verb(("data", "show", "{prompts}"), text_files=("",), ints=("--limit",)),
    "list": Verb(("list", "compressors"), extra=(("nope",),)),
    "trust": Verb(("trust", "--model", "{ft}", "--base", "{base}", "--methods", "kbit4,rtn4", "-o", "{out}",
                   "--set", "n_prompts=2", "--set", "judges=keyword"), models=("--model", "--base"),
                  float_sets=("flag_drop",), output="-o",
                  extra=(("--methods", "kbit4,nope"), ("--seeds", "a,b"), ("--profile", "huge"),
                         ("--set", "n_prompts=1"), ("--endpoint", "ftp://example.com/v1"))),
    "guard build": Verb(("guard", "build", "--model", "{base}", "-o", "{out}", "--set", "keep_neurons=64",
                         "--set", "group_size=32", "--set", "drop_blocks=1"), models=("--model",), float_sets=("teacher.lr", "qat.temperature"),
                        output="-o", extra=(("--profile", "tiny"), ("--set", "group_size=48"), ("--set", "nope.lr=1"),
                                            ("--set", "drop_blocks=2"))),
    "map": Verb(("map", "--families", "{base}", "-o", "{out}"), models=("--families",),
                ints=("--workers", "--ray-cpus"), output="-o",
                extra=(("--profile", "huge"), ("--threats", "harmfull"), ("--methods", "kbit9"),
                       ("--set", "align_levels=bad"), ("--set", "attack_levels=weak: epochz=1"), ("--workers", "0"),
                       ("--ray", "local", "--workers", "2"), ("--set", "n_prompts=1"))),
    "guard check": Verb(("guard", "check", "{delta}"), deltas=("",), ints=("--n-test",),
                        extra=(("--stages", "nope"), ("--n-test", "-1"), ("--split", "train"))),
}


def leaf_commands() -> set[str]:
    import typer

    def walk(command, path: str) -> set[str]:
        subs = getattr(command, "commands", None)
        if not subs:
            return {path}
        found = {path} if getattr(command, "invoke_without_command", False) and path else set()
        for name, sub in subs.items():
            found |= walk(sub, f"{path} {name}".strip())
        return found

    return walk(typer.main.get_command(app), "")


def test_every_verb_is_in_the_matrix():
    assert leaf_commands() - NO_INPUTS == set(VERBS)


@pytest.fixture(scope="module")
def files(tmp_path_factory, tiny_tokenizer):
    from deltaguard.delta import compress, extract_delta, method_from_spec
    from deltaguard.serve import hash_key

    root = tmp_path_factory.mktemp("bad-inputs")
    vocab = len(tiny_tokenizer)
    base = save_dir(make_tiny_llama(seed=0, vocab_size=vocab, tied=False), root / "base")
    ft = save_dir(perturb(make_tiny_llama(seed=0, vocab_size=vocab, tied=False), seed=1, scale=0.02), root / "ft")
    for path in (base, ft):
        tiny_tokenizer.save_pretrained(path)
    delta = compress(extract_delta(base, ft), method_from_spec("kbit4"), progress=False).save(root / "delta")
    (root / "prompts.txt").write_text("How do I bake bread?\nWhat is 12 plus 7?\n")
    (root / "tenants.yaml").write_text(f"tenants:\n  - {{name: acme, delta: {delta}, key_sha256: {hash_key('k' * 20)}}}\n")
    run = root / "run"
    run.mkdir()
    (run / "results.json").write_text(json.dumps({"audits": {}}))
    # the corrupted inputs
    binary = root / "binary.bin"
    binary.write_bytes(bytes(range(256)) * 8)
    truncated = save_dir(make_tiny_llama(seed=0, vocab_size=vocab, tied=False), root / "truncated")
    tiny_tokenizer.save_pretrained(truncated)
    weights = truncated / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:4096])
    broken_delta = root / "broken-delta"
    compress(extract_delta(base, ft), method_from_spec("kbit4"), progress=False).save(broken_delta)
    tensors = broken_delta / "tensors.safetensors"
    tensors.write_bytes(tensors.read_bytes()[:100])
    (root / "blocker").write_text("a file where a directory must go")
    return {"root": root, "base": base, "ft": ft, "delta": delta, "prompts": root / "prompts.txt",
            "tenants": root / "tenants.yaml", "run": run, "binary": binary, "truncated": truncated,
            "broken_delta": broken_delta, "missing": root / "does-not-exist"}


def _fill(args, files, out):
    values = {k: str(v) for k, v in files.items()} | {"out": str(out)}
    return [a.format(**values) for a in args]


def _replace(args: list[str], option: str, value: str) -> list[str]:
    """``args`` with ``option``'s value (for ``""``: the positional argument, a path) replaced or added."""
    args = list(args)
    if option == "":
        index = next(i for i, a in enumerate(args) if a.startswith("/"))
        args[index] = value
        return args
    if option in args:
        args[args.index(option) + 1] = value
        return args
    return [*args, option, value]


def cases():
    """(verb, case id, mode, payload): mode ``replace`` sets option ``payload[0]`` (``""``: the positional
    argument) to ``payload[1]``; ``append`` adds ``payload`` to the valid invocation."""
    for name, verb in VERBS.items():
        for option in verb.models:
            yield name, f"{option}:missing-model", "replace", (option, "{missing}")
            yield name, f"{option}:truncated-weights", "replace", (option, "{truncated}")
        for option in verb.deltas:
            yield name, f"{option or 'arg'}:missing-delta", "replace", (option, "{missing}")
            yield name, f"{option or 'arg'}:corrupted-delta", "replace", (option, "{broken_delta}")
        for option in verb.text_files:
            yield name, f"{option or 'arg'}:missing-file", "replace", (option, "{missing}")
            yield name, f"{option or 'arg'}:binary-file", "replace", (option, "{binary}")
        for option in verb.ints:
            yield name, f"{option}:wrong-type", "replace", (option, "abc")
        for field_name in verb.float_sets:
            yield name, f"{field_name}:nan", "append", ("--set", f"{field_name}=nan")
            yield name, f"{field_name}:inf", "append", ("--set", f"{field_name}=inf")
        if verb.output:
            yield name, "output:unwritable", "replace", (verb.output, "{root}/blocker/out")
        for i, extra in enumerate(verb.extra):
            yield name, f"extra-{i}", "append", extra


CASES = list(cases())


@pytest.mark.parametrize("verb,case,mode,payload", CASES, ids=[f"{v}-{c}" for v, c, _, _ in CASES])
def test_bad_input_is_one_line_with_an_exit_code_and_writes_nothing(files, tmp_path, verb, case, mode, payload):
    out = tmp_path / "out"
    args = _fill(VERBS[verb].args, files, out)
    payload = _fill(payload, files, out)
    args = _replace(args, payload[0], payload[1]) if mode == "replace" else [*args, *payload]
    result = runner.invoke(app, args, input="short\n")
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code in (1, 2), (args, result.output)
    assert len(lines) == 1 and lines[0].startswith("error: "), (args, result.output)
    assert "Traceback" not in result.output and "internal error" not in result.output, result.output
    assert not out.exists(), "a failed command left output behind"
    assert (files["root"] / "blocker").is_file()
