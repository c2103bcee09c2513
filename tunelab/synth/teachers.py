"""Teachers: the models that write synthetic data, behind one small interface.

A teacher does two things: `complete` continues raw, already-templated prompts (Magpie needs
this, and so does Self-Instruct's numbered-list prompting), and `chat` answers conversations,
saying of each answer whether it ended or was cut at the token limit (curation counts cut ones, and
`curate.drop_cut_answers` drops them).
Backends:
- `transformers` (default): batched, length-sorted, seeded generation in this process.
- `openai`: any OpenAI-compatible server (vLLM, llama.cpp, Ollama, hosted APIs). `complete`
  uses /v1/completions, which hosted chat-only APIs lack; `chat` uses /v1/chat/completions.
  The API key is read from the environment variable named by `api_key_env`, never from params.
- `vllm`: in-process vLLM on a GPU; imported only when asked for.
Teachers are opened one at a time (the seed loaded three models in turn to fit memory).
"""

from __future__ import annotations

import gc
import json
import os
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Literal

from tqdm.auto import tqdm

from tunelab.core.answers import Answer, from_finish_reason
from tunelab.core.config import ConfigError, check_range
from tunelab.core.generation import GenerationStats, SamplingSettings, generate_answers


@dataclass
class TeacherSpec:
    name: str = "base"  # recorded in every row this teacher answers
    backend: Literal["transformers", "openai", "vllm"] = "transformers"
    model: str = "models/base"  # a local dir or hub id (transformers, vllm); the served model name (openai)
    tokenizer: str | None = None  # chat template source for an openai teacher's raw prompts (Magpie)
    base_url: str | None = None  # openai: e.g. http://127.0.0.1:8080/v1
    api_key_env: str | None = None  # openai: name of the environment variable holding the key
    concurrency: int = 4  # openai: requests in flight at once
    timeout_s: float = 300.0  # openai: per request
    retries: int = 3  # openai: attempts per request on connection errors, 429 and 5xx

    def __post_init__(self) -> None:
        if self.backend == "openai" and not self.base_url:
            raise ConfigError(f"teacher '{self.name}': the openai backend needs base_url (e.g. http://127.0.0.1:8080/v1)")
        check_range(f"teacher '{self.name}'.concurrency", self.concurrency, 1)
        check_range(f"teacher '{self.name}'.retries", self.retries, 1)

    @property
    def template_source(self) -> str:
        return self.tokenizer or self.model


SERVER_HINT = "start the server, or fix base_url (and api_key_env) in params.yaml"


class Teacher:
    """Common bookkeeping: generation statistics per teacher."""

    def __init__(self, spec: TeacherSpec):
        self.spec = spec
        self.stats = GenerationStats()

    @property
    def name(self) -> str:
        return self.spec.name

    def chat(self, conversations: list[list[dict]], sampling: SamplingSettings, seed: int,
             description: str) -> list[Answer]:
        prompts = [self.tokenizer.apply_chat_template(c, tokenize=False, add_generation_prompt=True)
                   for c in conversations]
        return self.continue_prompts(prompts, sampling, seed, description)

    def complete(self, prompts: list[str], sampling: SamplingSettings, seed: int, description: str,
                 stop: list[str] | None = None, keep_special_tokens: bool = False) -> list[str]:
        return [a.text for a in self.continue_prompts(prompts, sampling, seed, description, stop, keep_special_tokens)]

    def continue_prompts(self, prompts: list[str], sampling: SamplingSettings, seed: int, description: str,
                         stop: list[str] | None = None, keep_special_tokens: bool = False) -> list[Answer]:
        raise NotImplementedError

    def close(self) -> None:
        gc.collect()


class TransformersTeacher(Teacher):
    def __init__(self, spec: TeacherSpec):
        from tunelab.core.models import load_tokenizer, load_variant

        super().__init__(spec)
        self.tokenizer = load_tokenizer(spec.model)
        self.model = load_variant(spec.model)

    def continue_prompts(self, prompts, sampling, seed, description, stop=None, keep_special_tokens=False):
        return generate_answers(self.model, self.tokenizer, prompts, sampling, seed, description=description,
                                stop_strings=stop, stats=self.stats, keep_special_tokens=keep_special_tokens)

    def close(self) -> None:
        del self.model
        super().close()


class OpenAITeacher(Teacher):
    """Requests to an OpenAI-compatible server; each prompt gets its own seed for reproducibility."""

    def __init__(self, spec: TeacherSpec):
        super().__init__(spec)
        self.base_url = spec.base_url.rstrip("/")
        self.api_key = None
        if spec.api_key_env:
            self.api_key = os.environ.get(spec.api_key_env)
            if not self.api_key:
                raise ConfigError(f"teacher '{spec.name}': environment variable {spec.api_key_env} is not set "
                                  "(export it with the server's API key)")
        self._tokenizer = None

    @property
    def tokenizer(self) -> Any:
        # Only raw-prompt methods need the served model's chat template.
        if self._tokenizer is None:
            from transformers import AutoTokenizer

            try:
                self._tokenizer = AutoTokenizer.from_pretrained(self.spec.template_source)
            except (OSError, ValueError) as err:
                raise FileNotFoundError(
                    f"teacher '{self.name}': no tokenizer at {self.spec.template_source!r} for the served model's chat "
                    "template (set the teacher's tokenizer: to a local model or tokenizer dir)"
                ) from err
        return self._tokenizer

    def chat(self, conversations, sampling, seed, description):
        return self._map(
            "chat/completions",
            [{"messages": c, **self._sampling_body(sampling, seed + i)} for i, c in enumerate(conversations)],
            description,
        )

    def continue_prompts(self, prompts, sampling, seed, description, stop=None, keep_special_tokens=False):
        bodies = [{"prompt": p, **self._sampling_body(sampling, seed + i)} for i, p in enumerate(prompts)]
        if stop:
            for body in bodies:
                body["stop"] = stop
        return self._map("completions", bodies, description)

    def _sampling_body(self, sampling: SamplingSettings, seed: int) -> dict[str, Any]:
        greedy = sampling.temperature <= 0
        return {
            "model": self.spec.model,
            "max_tokens": sampling.max_new_tokens,
            "temperature": 0.0 if greedy else sampling.temperature,
            "top_p": 1.0 if greedy else sampling.top_p,
            "seed": seed,
            # Not in OpenAI's schema; vLLM and llama.cpp honour it, hosted APIs ignore extra keys.
            "repeat_penalty": sampling.repetition_penalty,
            "repetition_penalty": sampling.repetition_penalty,
        }

    def _map(self, endpoint: str, bodies: list[dict], description: str) -> list[Answer]:
        began = time.perf_counter()
        with ThreadPoolExecutor(self.spec.concurrency) as pool, tqdm(total=len(bodies), desc=description,
                                                                      unit="seq") as progress:
            def one(body: dict) -> Answer:
                answer, tokens = self._post(endpoint, body)
                self.stats.new_tokens += tokens
                progress.update(1)
                return answer

            outputs = list(pool.map(one, bodies))
        self.stats.seconds += time.perf_counter() - began
        return outputs

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        return headers

    def check_reachable(self) -> None:
        """Fail now, not hours into a stage, when nothing answers at base_url (any HTTP reply will do)."""
        try:
            urllib.request.urlopen(urllib.request.Request(f"{self.base_url}/models", headers=self._headers()),
                                   timeout=min(self.spec.timeout_s, 30.0)).close()
        except urllib.error.HTTPError:
            return  # it answered; what it thinks of /models or of the key shows in the first real request
        except (urllib.error.URLError, TimeoutError, ConnectionError) as err:
            raise RuntimeError(f"teacher '{self.name}': nothing answers at {self.base_url} "
                               f"({getattr(err, 'reason', err)}); {SERVER_HINT}") from None

    def _post(self, endpoint: str, body: dict) -> tuple[Answer, int]:
        url = f"{self.base_url}/{endpoint}"
        headers = self._headers()
        last_error = ""
        for attempt in range(self.spec.retries):
            request = urllib.request.Request(url, json.dumps(body).encode(), headers)
            try:
                with urllib.request.urlopen(request, timeout=self.spec.timeout_s) as response:
                    reply = json.loads(response.read())
                choice = reply["choices"][0]
                text = choice["message"]["content"] if "message" in choice else choice["text"]
                answer = from_finish_reason(text or "", choice.get("finish_reason"))
                return answer, int(reply.get("usage", {}).get("completion_tokens", 0))
            except urllib.error.HTTPError as err:
                last_error = f"HTTP {err.code}: {err.read()[:200]!r}"
                if err.code not in (429, 500, 502, 503, 504):
                    break
            except (urllib.error.URLError, TimeoutError, ConnectionError) as err:
                last_error = str(err)
            except (KeyError, IndexError, json.JSONDecodeError) as err:
                raise RuntimeError(f"teacher '{self.name}': {url} gave a reply that is not OpenAI-shaped ({err})") from err
            time.sleep(min(2**attempt, 10))
        raise RuntimeError(f"teacher '{self.name}': {url} failed after {self.spec.retries} tries: {last_error}; "
                           f"{SERVER_HINT}")


class VLLMTeacher(Teacher):
    """In-process vLLM; it needs a CUDA GPU and `pip install -r requirements-gpu.txt`."""

    def __init__(self, spec: TeacherSpec):
        try:
            import vllm
        except ImportError as err:
            raise RuntimeError(
                f"teacher '{spec.name}' asks for the vllm backend, but vLLM is not installed "
                "(it needs a CUDA GPU and its own environment: see requirements-gpu.txt), or use backend: transformers"
            ) from err
        super().__init__(spec)
        self._vllm = vllm
        self.llm = vllm.LLM(model=spec.model)
        self.tokenizer = self.llm.get_tokenizer()

    def continue_prompts(self, prompts, sampling, seed, description, stop=None, keep_special_tokens=False):
        greedy = sampling.temperature <= 0
        params = [
            self._vllm.SamplingParams(
                max_tokens=sampling.max_new_tokens, temperature=0.0 if greedy else sampling.temperature,
                top_p=1.0 if greedy else sampling.top_p, repetition_penalty=sampling.repetition_penalty,
                seed=seed + i, stop=stop, skip_special_tokens=not keep_special_tokens,
            )
            for i in range(len(prompts))
        ]
        began = time.perf_counter()
        results = self.llm.generate(prompts, params, use_tqdm=True)
        self.stats.seconds += time.perf_counter() - began
        self.stats.new_tokens += sum(len(r.outputs[0].token_ids) for r in results)
        return [from_finish_reason(r.outputs[0].text, r.outputs[0].finish_reason) for r in results]

    def close(self) -> None:
        del self.llm
        super().close()


BACKENDS = {"transformers": TransformersTeacher, "openai": OpenAITeacher, "vllm": VLLMTeacher}


def open_teacher(spec: TeacherSpec) -> Teacher:
    return BACKENDS[spec.backend](spec)


def describe(spec: TeacherSpec) -> dict[str, Any]:
    """What identifies a teacher's output, for fingerprints and reports (never the key itself)."""
    return {"name": spec.name, "backend": spec.backend, "model": spec.model, "tokenizer": spec.tokenizer,
            "base_url": spec.base_url}
