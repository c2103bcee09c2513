"""Generation throughput: the generate stage's `generate_texts` against one-prompt-at-a-time
`model.generate`, and against llama.cpp serving the wheel's GGUF, on the same prompts and settings.

    python bench/run.py --only generation --gen-repeats 5

`generate_texts` is imported from tunelab.core.generation, not copied: the figure is whatever sampler the
generate stage has. Settings are `generate.response` from params (the generate stage's answers).
New tokens are counted the same way for both transformers paths: generated ids that are not the pad
token (a sequence that stopped early is padded, and that padding is not counted).

Each repeat answers all `--gen-count` prompts with `generate_texts` (one `generate.response` batch
at the defaults), then `--naive-count` of the same prompts one at a time, a different slice each
repeat. One-at-a-time decoding does the same work per prompt whatever else is asked, so its tokens/s
on a slice estimates its tokens/s on the whole set, in a sixth of the time at the defaults (it is
the slow side: ~5x slower). The ratio of each repeat is kept and the figure is the median ratio, so
a co-tenant's load that comes and goes lands on both sides. llama.cpp, also one request at a time,
answers the same slices.
"""

from __future__ import annotations

import importlib.util
import logging
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from bench.common import Context, Figure, Target, median, size_flag

log = logging.getLogger("bench")


def add_arguments(parser: Any) -> None:
    group = parser.add_argument_group("generation")
    group.add_argument("--gen-prompts", default="data/seed/preference_prompts.txt",
                       help="one user request per line, relative to --repo (default: data/seed/preference_prompts.txt)")
    size_flag(group, "--gen-count", 48, 4, "prompts answered per repeat (48 = one generate.response batch)")
    size_flag(group, "--naive-count", 8, 2, "of those, how many the one-at-a-time paths (naive, llama.cpp) answer per "
              "repeat, a different slice each repeat; 0 = all")
    size_flag(group, "--gen-repeats", 3, 1, "repeats of each path; medians count")
    size_flag(group, "--gen-max-new-tokens", 0, 8, "max new tokens; 0 = generate.response.max_new_tokens")
    group.add_argument("--no-llama-cpp", action="store_true", help="skip the llama.cpp server comparison")
    group.add_argument("--llama-concurrency", type=int, default=1,
                       help="requests in flight to the llama.cpp server (default: 1; its server runs one at a time)")
    group.add_argument("--llama-timeout-s", type=float, default=120.0,
                       help="how long the llama.cpp server may take to start (default: 120)")


def read_prompts(path: Path, count: int) -> list[str]:
    lines = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not lines:
        raise ValueError(f"{path} holds no prompts")
    return [lines[i % len(lines)] for i in range(count)]  # cycled when more are asked for than the file has


def repeat_slice(prompts: list[str], repeat: int, count: int) -> list[str]:
    """The `repeat`-th run of `count` consecutive prompts, wrapping around; all of them when count is 0."""
    if not count or count >= len(prompts):
        return prompts
    return [prompts[(repeat * count + i) % len(prompts)] for i in range(count)]


def naive_generate(model: Any, tokenizer: Any, prompts: list[str], sampling: Any, seed: int) -> tuple[int, float]:
    """(new tokens, seconds) of `model.generate` called once per prompt: no batching, no length sorting."""
    import torch

    greedy = sampling.temperature <= 0
    new_tokens = 0
    began = time.perf_counter()
    for number, prompt in enumerate(tqdm(prompts, desc="naive model.generate", unit="seq")):
        encoded = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
        torch.manual_seed(seed * 1_000_003 + number)
        with torch.inference_mode():
            generated = model.generate(
                **encoded, max_new_tokens=sampling.max_new_tokens, do_sample=not greedy,
                temperature=None if greedy else sampling.temperature, top_p=None if greedy else sampling.top_p,
                top_k=None, repetition_penalty=sampling.repetition_penalty,
                pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
            )
        new_tokens += int((generated[0, encoded["input_ids"].shape[1]:] != tokenizer.pad_token_id).sum())
    return new_tokens, time.perf_counter() - began


def tunelab_generate(model: Any, tokenizer: Any, prompts: list[str], sampling: Any, seed: int) -> tuple[int, float]:
    """(new tokens, seconds) of the generate stage's batched, length-sorted `generate_texts`."""
    from tunelab.core.generation import GenerationStats, generate_texts

    stats = GenerationStats()
    began = time.perf_counter()
    generate_texts(model, tokenizer, prompts, sampling, seed, description="tunelab generate_texts", stats=stats)
    return stats.new_tokens, time.perf_counter() - began


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def llama_cpp_rates(context: Context, prompts: list[str], sampling: Any, repeats: int, args: Any) -> list[float]:
    """New tokens/s of llama.cpp's OpenAI-compatible server (llama-cpp-python[server]) on the wheel's GGUF,
    through TuneLab's openai teacher; raises RuntimeError when the server cannot be had."""
    from tunelab.core.models import smollm2_gguf_path
    from tunelab.synth.teachers import OpenAITeacher, TeacherSpec

    if importlib.util.find_spec("llama_cpp") is None:
        raise RuntimeError("llama-cpp-python is not installed (`make test` installs requirements-test.txt)")
    port = _free_port()
    server_log = context.work / "llama-server.log"
    process = subprocess.Popen(
        [sys.executable, "-m", "llama_cpp.server", "--model", str(smollm2_gguf_path()), "--host", "127.0.0.1",
         "--port", str(port), "--n_ctx", "2048", "--n_threads", str(context.threads)],
        stdout=subprocess.DEVNULL, stderr=server_log.open("w"),  # a file: an unread pipe would fill and stall it
    )
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.time() + args.llama_timeout_s
        while True:
            try:
                urllib.request.urlopen(f"{url}/models", timeout=2).read()
                break
            except OSError:
                if process.poll() is not None or time.time() > deadline:
                    raise RuntimeError(f"the llama.cpp server did not start: {server_log.read_text()[-300:]!r}") \
                        from None
                time.sleep(0.5)
        teacher = OpenAITeacher(TeacherSpec(name="llama-cpp", backend="openai", model="smollm2", base_url=url,
                                            concurrency=args.llama_concurrency, retries=2, timeout_s=600.0))
        teacher.complete(prompts[:1], sampling, context.seed, "llama.cpp warm-up")
        rates = []
        for repeat in range(repeats):
            teacher.stats.new_tokens, teacher.stats.seconds = 0, 0.0
            teacher.complete(repeat_slice(prompts, repeat, args.naive_count), sampling, context.seed + repeat,
                             "llama.cpp server")
            rates.append(teacher.stats.tokens_per_s)
        return rates
    finally:
        process.terminate()
        process.wait(timeout=30)


def run(args: Any, context: Context) -> list[Figure]:
    import dataclasses

    from tunelab.core.config import build
    from tunelab.core.generation import SamplingSettings, chat_prompt
    from tunelab.core.models import load_tokenizer, load_variant

    sampling = build(SamplingSettings, context.params["generate"]["response"], "generate.response")
    if args.gen_max_new_tokens:
        sampling = dataclasses.replace(sampling, max_new_tokens=args.gen_max_new_tokens)
    tokenizer = load_tokenizer(context.base_dir)
    model = load_variant(context.base_dir)
    prompts = [chat_prompt(tokenizer, p) for p in read_prompts(context.path(args.gen_prompts), args.gen_count)]
    one_at_a_time = len(repeat_slice(prompts, 0, args.naive_count))
    settings = {**dataclasses.asdict(sampling), "prompts": len(prompts), "one_at_a_time_prompts": one_at_a_time,
                "threads": context.threads}
    log.info("generation settings: %s", settings)

    warm = dataclasses.replace(sampling, max_new_tokens=2)
    tunelab_generate(model, tokenizer, prompts[:1], warm, context.seed)  # thread pools, first-call allocations
    ours, naive, ratios = [], [], []
    for repeat in tqdm(range(args.gen_repeats), desc="generation repeats", unit="repeat"):
        tokens, seconds = tunelab_generate(model, tokenizer, prompts, sampling, context.seed + repeat)
        ours.append(tokens / seconds)
        tokens, seconds = naive_generate(model, tokenizer, repeat_slice(prompts, repeat, args.naive_count), sampling,
                                         context.seed + repeat)
        naive.append(tokens / seconds)
        ratios.append(ours[-1] / naive[-1])
    figures = [Figure(
        name="generation: generate_texts vs naive model.generate", value=median(ours), unit="tok/s",
        baseline=median(naive), baseline_name="one prompt at a time", ratio=median(ratios),
        target=Target(">= 4x naive", "ratio", ">=", 4.0), samples=ours, baseline_samples=naive,
        note=f"new tokens/s, generate.response settings, {len(prompts)} prompts (naive: {one_at_a_time} of them per "
             "repeat); ratio = median of per-repeat ratios",
        details={**settings, "ratios": ratios},
    )]
    del model

    comparison = dict(name="generation: generate_texts vs llama.cpp server", value=median(ours), unit="tok/s",
                      baseline_name="llama.cpp, same GGUF (Q4_1)", samples=ours, details=settings)
    if args.no_llama_cpp:
        figures.append(Figure(**comparison, note="skipped (--no-llama-cpp)"))
        return figures
    try:
        served = llama_cpp_rates(context, prompts, sampling, args.gen_repeats, args)
    except RuntimeError as err:
        log.warning("llama.cpp comparison unavailable: %s", err)
        figures.append(Figure(**comparison, note=f"llama.cpp unavailable: {err}"))
        return figures
    figures.append(Figure(
        **comparison, baseline=median(served), baseline_samples=served,
        note="llama.cpp decodes the 4-bit GGUF, TuneLab the fp32 weights dequantised from it; "
             f"{args.llama_concurrency} request(s) in flight, {context.threads} threads, the naive slices",
    ))
    return figures
