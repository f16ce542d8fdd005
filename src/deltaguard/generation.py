"""Batched generation: left padding, KV cache, chat templates, greedy or seeded sampling, stop at EOS.

``generate(model, tokenizer, prompts, config)`` returns one ``Generation`` per prompt, in input order.
Inside, prompts are sorted by token length (longest first, so memory trouble shows up in the first
batch) and decoded ``batch_size`` at a time with one KV cache per batch. Sampling draws every row
from its own generator seeded by ``(config.seed, prompt id)``, so a sampled answer does not depend on
which other prompts share its batch, on the sort order, or on a resumed run doing fewer prompts.

``generate_to_jsonl`` writes rows ``{prompt_id, prompt, response, n_new_tokens, model_id, settings}``
and, run again on the same file, only generates the prompts that are missing (resume). The file is
rewritten atomically after each batch, so an interrupted run loses at most one batch.

Backends: the ``backends`` registry maps a name to a class built as ``Backend(model, tokenizer)``
with one method, ``generate_batches(texts, ids, config) -> Iterator[(indices, generations)]``, which
yields finished batches (``indices`` into ``texts``) in any order. ``hf`` (transformers, CPU or GPU)
runs a model in this process; ``openai`` sends each prompt to an OpenAI-compatible chat endpoint
(``model`` is an ``openai_http.EndpointClient``, ``tokenizer`` None; see ``OpenAIBackend``). A vLLM
backend fits the same shape: ``model`` is a ``vllm.LLM``, it formats ``texts`` with the chat template,
calls ``LLM.generate`` with ``SamplingParams(max_tokens=..., temperature=0 or config.temperature,
top_p=..., seed=...)`` and yields one batch; it is not shipped because it cannot be tested on the CPU
machines this project runs on.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterator, Protocol

import torch

from deltaguard.config import Config, check_range
from deltaguard.data import PromptSet
from deltaguard.errors import ConfigError, FormatError, ModelOutputError
from deltaguard.io import read_jsonl, write_jsonl
from deltaguard.models import cache_kwargs, chat_prompt, output_cache
from deltaguard.progress import progress_bar
from deltaguard.registry import Registry
from deltaguard.sampling import pick_tokens, row_is_sampleable


@dataclass(frozen=True, kw_only=True)
class GenerationConfig(Config):
    """How responses are generated.

    Args:
        max_new_tokens: most tokens generated per prompt (EOS ends a response earlier).
        do_sample: sample instead of greedy decoding.
        temperature: softmax temperature when sampling.
        top_p: nucleus sampling mass when sampling (1.0 keeps every token).
        seed: sampling seed; each prompt draws from its own generator seeded by (seed, prompt id).
        batch_size: prompts decoded together.
        system_prompt: system turn for the chat template (None: the template's default).
        use_chat_template: wrap each prompt as one user turn with the tokenizer's chat template.
        backend: generation backend name (see ``deltaguard list backends``).
    """

    name: ClassVar[str] = "generation"
    version: ClassVar[int] = 1
    max_new_tokens: int = 64
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int = 0
    batch_size: int = 16
    system_prompt: str | None = None
    use_chat_template: bool = True
    backend: str = "hf"

    def __post_init__(self) -> None:
        check_range("generation.max_new_tokens", self.max_new_tokens, 1, 32768)
        check_range("generation.temperature", self.temperature, 0.0, None, low_inclusive=False)
        check_range("generation.top_p", self.top_p, 0.0, 1.0, low_inclusive=False)
        check_range("generation.batch_size", self.batch_size, 1, 4096)
        if self.backend not in backends:
            backends.get(self.backend)  # raises ConfigError with did-you-mean


@dataclass(frozen=True)
class Generation:
    """One response; ``n_new_tokens`` counts generated tokens including a final EOS (over an endpoint: the
    server's ``usage.completion_tokens``, None when it reports no usage)."""

    prompt_id: str
    prompt: str
    response: str
    n_new_tokens: int | None


class Backend(Protocol):
    def generate_batches(self, texts: list[str], ids: list[str],
                         config: GenerationConfig) -> Iterator[tuple[list[int], list[Generation]]]: ...


backends: Registry[type] = Registry("backend")


@backends.register("hf")
class HFBackend:
    """Hugging Face transformers causal LMs: batched decode with a KV cache (CPU or GPU)."""

    def __init__(self, model: Any, tokenizer: Any) -> None:
        self.model, self.tokenizer = model, tokenizer

    def encode(self, texts: list[str], config: GenerationConfig) -> list[list[int]]:
        tok = self.tokenizer
        templated = config.use_chat_template and bool(getattr(tok, "chat_template", None))
        if templated:
            texts = [chat_prompt(tok, t, system=config.system_prompt) for t in texts]
        elif config.system_prompt:
            texts = [f"{config.system_prompt}\n\n{t}" for t in texts]
        return [tok(t, add_special_tokens=not templated)["input_ids"] for t in texts]

    def generate_batches(self, texts: list[str], ids: list[str],
                         config: GenerationConfig) -> Iterator[tuple[list[int], list[Generation]]]:
        encoded = self.encode(texts, config)
        order = sorted(range(len(texts)), key=lambda i: -len(encoded[i]))
        stop_ids = stop_token_ids(self.model, self.tokenizer)
        pad_id = pad_token_id(self.tokenizer, stop_ids)
        for start in range(0, len(order), config.batch_size):
            indices = order[start:start + config.batch_size]
            seeds = [sample_seed(config.seed, ids[i]) for i in indices] if config.do_sample else None
            new_tokens = decode_batch(self.model, [encoded[i] for i in indices], config=config,
                                      stop_ids=stop_ids, pad_id=pad_id, seeds=seeds)
            batch = []
            for i, tokens in zip(indices, new_tokens):
                kept = [t for t in tokens if t not in stop_ids]
                response = self.tokenizer.decode(kept, skip_special_tokens=True).strip()
                batch.append(Generation(prompt_id=ids[i], prompt=texts[i], response=response, n_new_tokens=len(tokens)))
            yield indices, batch


@backends.register("openai")
class OpenAIBackend:
    """An OpenAI-compatible ``POST {base_url}/chat/completions`` endpoint (a model deltaguard does not hold).

    ``model`` is an ``openai_http.EndpointClient``. Each prompt is one request: ``messages`` = the system
    prompt (when ``config.system_prompt`` is set) and the user text — the server applies its own chat
    template — with ``max_tokens = config.max_new_tokens`` and ``temperature = 0`` (greedy), or, when
    sampling, ``config.temperature``, ``config.top_p`` and ``seed = sample_seed(config.seed, prompt id)``
    (so a prompt's sampled reply does not depend on the other prompts, as in ``hf``). Requests run
    ``client.concurrency`` at a time; timeouts, dropped connections, 429 and 5xx answers are retried with
    backoff. Any request that still fails, or a 4xx answer, stops the run with an ``EndpointError`` — never
    a made-up reply — after the replies already finished are handed out (so the run resumes from them).
    Finished replies are yielded ``config.batch_size`` at a time.
    """

    def __init__(self, model: Any, tokenizer: Any) -> None:
        from deltaguard.openai_http import EndpointClient

        if not isinstance(model, EndpointClient):
            raise ConfigError("the openai backend generates through an endpoint (deltaguard.eval.Endpoint), "
                              f"not a loaded {type(model).__name__}; use backend hf for local models")
        self.client = model

    def request_body(self, text: str, prompt_id: str, config: GenerationConfig) -> dict[str, Any]:
        """The JSON sent for one prompt (exactly the generation settings, nothing else)."""
        messages = ([{"role": "system", "content": config.system_prompt}] if config.system_prompt else [])
        body: dict[str, Any] = {"model": self.client.model_name, "messages": [*messages, {"role": "user", "content": text}],
                                "max_tokens": config.max_new_tokens}
        if config.do_sample:
            body.update(temperature=config.temperature, top_p=config.top_p, seed=sample_seed(config.seed, prompt_id))
        else:
            body["temperature"] = 0
        return body

    def generate_batches(self, texts: list[str], ids: list[str],
                         config: GenerationConfig) -> Iterator[tuple[list[int], list[Generation]]]:
        from deltaguard.openai_http import completed_in_pool

        if not config.use_chat_template:
            raise ConfigError("generation.use_chat_template=false is not possible over an endpoint: the openai backend "
                              "sends chat messages and the server applies its own template")
        indices: list[int] = []
        batch: list[Generation] = []
        with self.client.http_client() as http:
            finished = completed_in_pool(lambda i: self._one(http, texts[i], ids[i], config), list(range(len(texts))),
                                         self.client.concurrency)
            try:
                for index, generation in finished:
                    indices.append(index)
                    batch.append(generation)
                    if len(batch) >= config.batch_size:
                        yield indices, batch
                        indices, batch = [], []
            except Exception:
                if batch:  # keep what finished before the failure: a rerun resumes from it
                    yield indices, batch
                raise
            finally:
                finished.close()  # an abandoned run drops the requests not yet sent
        if batch:
            yield indices, batch

    def _one(self, http: Any, text: str, prompt_id: str, config: GenerationConfig) -> Generation:
        from deltaguard.errors import EndpointError
        from deltaguard.openai_http import chat_text, completion_tokens, error_detail, fatal_message, post_json

        client = self.client
        reply, last = post_json(http, "/chat/completions", self.request_body(text, prompt_id, config), client.retry)
        where = f"endpoint {client.public_url}"
        if reply is None:
            raise EndpointError(f"{where} {last} on prompt {prompt_id} (after {client.retry.max_retries} retries); "
                                "rerun to resume from the replies already saved")
        fatal = fatal_message(reply.status_code, what="endpoint", url=client.base_url, model=client.model_name,
                              key_env=client.key_env)
        if fatal:
            raise EndpointError(fatal)
        if reply.status_code >= 400:
            raise EndpointError(f"{where} rejected prompt {prompt_id} with HTTP {reply.status_code}: {error_detail(reply)}")
        try:
            data = reply.json()
            response = chat_text(data)
        except ValueError as exc:
            message = str(exc) if "chat completion" in str(exc) else "response is not JSON"
            raise EndpointError(f"{where} answered prompt {prompt_id} with something unreadable ({message})") from None
        return Generation(prompt_id=prompt_id, prompt=text, response=response.strip(),
                          n_new_tokens=completion_tokens(data))


def stop_token_ids(model: Any, tokenizer: Any) -> set[int]:
    """EOS ids from the tokenizer and the model's generation config."""
    ids: set[int] = set()
    for value in (getattr(tokenizer, "eos_token_id", None),
                  getattr(getattr(model, "generation_config", None), "eos_token_id", None)):
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, (list, tuple)):
            ids.update(v for v in value if isinstance(v, int))
    if not ids:
        raise ConfigError("the tokenizer and model define no EOS token; generation could never stop early")
    return ids


def pad_token_id(tokenizer: Any, stop_ids: set[int]) -> int:
    pad = getattr(tokenizer, "pad_token_id", None)
    return pad if isinstance(pad, int) else min(stop_ids)


def sample_seed(seed: int, prompt_id: str) -> int:
    return int(hashlib.sha256(f"{seed}:{prompt_id}".encode()).hexdigest()[:15], 16)


def left_pad(sequences: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask), both [batch, max_len], padded on the left."""
    width = max(len(s) for s in sequences)
    input_ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        if seq:
            input_ids[row, width - len(seq):] = torch.tensor(seq, dtype=torch.long)
            mask[row, width - len(seq):] = 1
    return input_ids, mask


@torch.inference_mode()
def decode_batch(model: Any, sequences: list[list[int]], *, config: GenerationConfig, stop_ids: set[int],
                 pad_id: int, seeds: list[int] | None = None,
                 on_first_logits: Callable[[torch.Tensor], None] | None = None) -> list[list[int]]:
    """New token ids for each left-padded sequence (each list ends at and includes its EOS, if any).

    ``on_first_logits`` receives the next-token logits after the prompt, ``[batch, vocab]`` (used by
    judges that read first-token probabilities, such as Llama Guard's P(unsafe)).
    """
    if any(len(s) == 0 for s in sequences):
        raise ConfigError("cannot generate from an empty prompt (it encodes to zero tokens)")
    device = next(model.parameters()).device
    input_ids, mask = left_pad(sequences, pad_id)
    input_ids, mask = input_ids.to(device), mask.to(device)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)  # [batch, pos]; real tokens count from 0
    stop = torch.tensor(sorted(stop_ids), device=device)
    generators = None
    if seeds is not None:
        generators = [torch.Generator(device=device).manual_seed(s) for s in seeds]
    out = model(input_ids=input_ids, attention_mask=mask, position_ids=positions, use_cache=True, logits_to_keep=1)
    cache = output_cache(out)
    if on_first_logits is not None:
        on_first_logits(out.logits[:, -1, :].detach())
    next_pos = positions[:, -1:] + 1
    finished = torch.zeros(len(sequences), dtype=torch.bool, device=device)
    steps: list[torch.Tensor] = []
    for step in range(config.max_new_tokens):
        logits = out.logits[:, -1, :].float()  # [batch, vocab]
        token = _pick(logits, config, generators)
        token = torch.where(finished, torch.full_like(token, pad_id), token)
        steps.append(token)
        finished |= torch.isin(token, stop)
        if bool(finished.all()) or step == config.max_new_tokens - 1:
            break
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=-1)
        out = model(input_ids=token[:, None], attention_mask=mask, position_ids=next_pos, **cache_kwargs(model, cache),
                    use_cache=True)
        cache = output_cache(out)
        next_pos = next_pos + 1
    tokens = torch.stack(steps, dim=1).tolist()  # [batch, steps]
    results = []
    for row in tokens:
        kept = []
        for t in row:
            kept.append(t)
            if t in stop_ids:
                break
        results.append(kept)
    return results


def _pick(logits: torch.Tensor, config: GenerationConfig, generators: list[torch.Generator] | None) -> torch.Tensor:
    bad = ~row_is_sampleable(logits)
    if bool(bad.any()):
        raise ModelOutputError(f"the model produced non-finite logits for {int(bad.sum())} of {len(bad)} prompts in "
                               "a batch (NaN/inf weights or activations); check the model or delta")
    return pick_tokens(logits, temperature=config.temperature, top_p=config.top_p,
                       generators=generators if config.do_sample else None)


def generate(model: Any, tokenizer: Any, prompts: list[str] | PromptSet,
             config: GenerationConfig = GenerationConfig(), *, progress: bool = True) -> list[Generation]:
    """Responses to ``prompts`` in input order (batched and length-sorted inside)."""
    texts, ids = _texts_and_ids(prompts)
    results: list[Generation | None] = [None] * len(texts)
    for indices, batch in _run(model, tokenizer, texts, ids, config, progress=progress):
        for index, generation in zip(indices, batch):
            results[index] = generation
    assert all(r is not None for r in results)
    return results  # type: ignore[return-value]


def generate_to_jsonl(model: Any, tokenizer: Any, prompts: list[str] | PromptSet, config: GenerationConfig,
                      *, path: str | Path, model_id: str, progress: bool = True) -> list[dict[str, Any]]:
    """Generate into a JSONL file, skipping prompts whose rows are already there; rows in input order."""
    path = Path(path)
    texts, ids = _texts_and_ids(prompts)
    settings = config.to_dict()
    done: dict[str, dict[str, Any]] = {}
    if path.exists():
        for row in read_jsonl(path, what="generations file"):
            if row.get("model_id") != model_id or row.get("settings") != settings:
                raise FormatError(
                    f"generations file {path} holds rows for another model or other settings "
                    f"(model_id {row.get('model_id')!r}); use a new output path"
                )
            done[row["prompt_id"]] = row
    todo = [i for i, pid in enumerate(ids) if pid not in done]
    if todo:
        def rows_in_order() -> list[dict[str, Any]]:
            return [done[pid] for pid in ids if pid in done]

        for indices, batch in _run(model, tokenizer, [texts[i] for i in todo], [ids[i] for i in todo], config,
                                   progress=progress):
            for generation in batch:
                done[generation.prompt_id] = {
                    "prompt_id": generation.prompt_id, "prompt": generation.prompt, "response": generation.response,
                    "n_new_tokens": generation.n_new_tokens, "model_id": model_id, "settings": settings,
                }
            write_jsonl(path, rows_in_order())
    return [done[pid] for pid in ids]


def _texts_and_ids(prompts: list[str] | PromptSet) -> tuple[list[str], list[str]]:
    if isinstance(prompts, PromptSet):
        return list(prompts.texts), list(prompts.ids)
    if isinstance(prompts, str) or not all(isinstance(p, str) for p in prompts):
        raise ConfigError("prompts must be a PromptSet or a list of strings")
    return list(prompts), [f"p{i:05d}" for i in range(len(prompts))]


def _run(model: Any, tokenizer: Any, texts: list[str], ids: list[str], config: GenerationConfig,
         *, progress: bool) -> Iterator[tuple[list[int], list[Generation]]]:
    if len(set(ids)) != len(ids):
        raise ConfigError("prompt ids must be unique within one generate call")
    if not texts:
        return
    backend = backends.get(config.backend)(model, tokenizer)
    with progress_bar("generating", len(texts), enabled=progress, transient=True) as bar:
        for indices, batch in backend.generate_batches(texts, ids, config):
            yield indices, batch
            bar.advance(len(indices))
