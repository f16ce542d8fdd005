"""Calibration texts with the model's own reply (``calib_format="reply"``): the text format, the config,
the calibration cache key and a tiny end-to-end audit."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from deltaguard.audit import AuditConfig, audit
from deltaguard.audit.run import CALIB_REPLY_TOKENS, Sweep
from deltaguard.data.calibration import calibration_prompts, calibration_texts, reply_texts
from deltaguard.errors import ConfigError
from deltaguard.eval import ModelDir
from deltaguard.steps import Steps


def test_reply_format_puts_the_reply_inside_the_assistant_turn(tiny_tokenizer):
    prompts = calibration_prompts("calib-chat", limit=3)
    replies = ["First reply here.", "Second one.", "Third."]
    texts = calibration_texts("calib-chat", tokenizer=tiny_tokenizer, limit=3, format="reply", replies=replies)
    plain = calibration_texts("calib-chat", tokenizer=tiny_tokenizer, limit=3)
    assert len(texts) == 3
    for prompt, reply, text, prompt_only in zip(prompts.texts, replies, texts, plain, strict=True):
        user_turn = f"<|im_start|>user\n{prompt}<|im_end|>\n"
        assert user_turn in text and user_turn in prompt_only
        # the reply is the assistant turn's content, closed like a real turn (not a generation prompt)
        assert text.endswith(f"<|im_start|>assistant\n{reply}<|im_end|>\n")
        assert text.index(user_turn) < text.index(reply)
        assert prompt_only.endswith("<|im_start|>assistant\n")  # prompt format: awaiting the reply
    assert reply_texts(tiny_tokenizer, ["hi"], ["hello"]) == [tiny_tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}], tokenize=False)]


def test_reply_format_from_a_text_file_and_its_errors(tmp_path, tiny_tokenizer):
    source = tmp_path / "calib.txt"
    source.write_text("line one\n\nline two\n", encoding="utf-8")
    assert calibration_texts(str(source), tokenizer=tiny_tokenizer, limit=5) == ["line one", "line two"]
    assert calibration_prompts(str(source), limit=5).texts == ["line one", "line two"]
    texts = calibration_texts(str(source), tokenizer=tiny_tokenizer, limit=5, format="reply", replies=["a", "b"])
    assert texts[1].endswith("<|im_start|>assistant\nb<|im_end|>\n") and "line two" in texts[1]
    with pytest.raises(ConfigError, match="needs the replies"):
        calibration_texts(str(source), tokenizer=tiny_tokenizer, limit=5, format="reply")
    with pytest.raises(ConfigError, match="2 calibration prompts but 1 replies"):
        calibration_texts(str(source), tokenizer=tiny_tokenizer, limit=5, format="reply", replies=["a"])
    with pytest.raises(ConfigError, match="format"):
        calibration_texts(str(source), tokenizer=tiny_tokenizer, limit=5, format="chat")


def test_calib_format_is_validated_and_stays_out_of_prompt_keys():
    with pytest.raises(ConfigError, match="calib_format"):
        AuditConfig(calib_format="x")
    assert AuditConfig().calib_format == "prompt"
    # a prompt config serialises as before the field existed (audit keys hash this dict)
    assert "calib_format" not in AuditConfig().to_dict()["fields"]
    reply = AuditConfig(calib_format="reply")
    assert reply.to_dict()["fields"]["calib_format"] == "reply"
    assert AuditConfig.from_dict(reply.to_dict()) == reply
    assert AuditConfig.from_dict(AuditConfig().to_dict()) == AuditConfig()


def _sweep(config: AuditConfig, tmp_path: Path) -> Sweep:
    return Sweep(ModelDir("b", key="base"), ModelDir("f", key="ft"), config, tmp_path, device="cpu", progress=False,
                 steps=Steps())


def test_calib_key_unchanged_for_prompt_and_different_for_reply(tmp_path):
    prompt_key = _sweep(AuditConfig(n_calib=8), tmp_path)._calib_key()
    assert prompt_key == {"set": "calib-chat", "n": 8, "seed": 0, "format": "chat"}  # the key it always had
    reply_key = _sweep(AuditConfig(n_calib=8, calib_format="reply"), tmp_path)._calib_key()
    assert reply_key != prompt_key
    assert reply_key == {**prompt_key, "calib_format": "reply", "reply_tokens": CALIB_REPLY_TOKENS}


@pytest.fixture
def tiny_pair_dirs(tmp_path, tiny_tokenizer):
    from tinymodels import make_tiny_llama

    dirs = []
    for name, nudge in (("base", 0.0), ("ft", 0.05)):
        model = make_tiny_llama(seed=0, vocab_size=len(tiny_tokenizer))
        for attr in ("bos_token_id", "eos_token_id", "pad_token_id"):
            setattr(model.config, attr, getattr(tiny_tokenizer, attr))
        generator = torch.Generator().manual_seed(5)
        with torch.no_grad():
            for param_name, param in model.named_parameters():
                if param_name.endswith("_proj.weight"):
                    param.add_(torch.randn(param.shape, generator=generator) * nudge)
        path = tmp_path / name
        model.save_pretrained(path, safe_serialization=True)
        tiny_tokenizer.save_pretrained(path)
        dirs.append(path)
    return dirs


def test_tiny_audit_with_reply_calibration_runs_end_to_end(tmp_path, tiny_pair_dirs, monkeypatch):
    from deltaguard.delta.methods import base as method_base
    from deltaguard.threats import HarmfulFinetuneConfig

    torch.set_num_threads(1)
    seen: list[tuple[str, ...]] = []
    original = method_base.Calibration.__init__

    def spy(self, *args, **kwargs):
        original(self, *args, **kwargs)
        seen.append(tuple(self.texts))

    monkeypatch.setattr(method_base.Calibration, "__init__", spy)
    base, finetuned = tiny_pair_dirs
    config = AuditConfig(methods=("bitdelta",), n_prompts=2, max_new_tokens=2, task_max_new_tokens=2, batch_size=4,
                         n_calib=3, calib_format="reply", n_boot=200, n_examples=1,
                         method_overrides=("bitdelta.distill_steps=1", "bitdelta.seq_len=128"))
    run = tmp_path / "run"
    result = audit(base, finetuned, HarmfulFinetuneConfig(), config, run_dir=run, progress=False)
    assert [r.label for r in result.rows] == ["base", "finetuned", "bitdelta"]
    assert result.config.calib_format == "reply"
    # the calibration texts were prompt + the fine-tune's cached reply, inside a closed assistant turn
    assert seen and all("<|im_start|>assistant\n" in t and t.endswith("<|im_end|>\n") for t in seen[0])
    replies = [json.loads(line)["response"] for path in (run / "generations").glob("*.jsonl")
               for line in path.read_text().splitlines()
               if json.loads(line)["prompt_id"] in calibration_prompts("calib-chat", limit=3).ids]
    assert len(replies) == 3
    assert sorted(replies) == sorted(t.rpartition("<|im_start|>assistant\n")[2].removesuffix("<|im_end|>\n")
                                     for t in seen[0])
    manifest = json.loads(next((run / "deltas").glob("*/manifest.json")).read_text())
    assert "calibration" in manifest["meta"]
