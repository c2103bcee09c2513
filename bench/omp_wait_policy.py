"""Does OMP_WAIT_POLICY=PASSIVE pay: for one torch process alone, and for two at once (dvc queue start -j 2)?

    python bench/omp_wait_policy.py --model models/base --out reports/bench_omp_wait_policy.json

OpenMP's default lets a thread that has finished its share of a parallel region spin for a while
before it sleeps; PASSIVE makes it sleep at once. Spinning saves a wake-up when the cores are this
process's alone, and burns the cores another process needs when they are not. The workload is a
small slice of the pipeline's own work on the real base model, in a fresh process each time:
greedy generation of a batch of answers (`generate_texts`, as the generate and evaluate stages
run it) and a few LoRA training steps (forward and backward on a full batch). Each setting runs
`--repeats` times, the two policies alternating so drift hits both; "two at once" starts two
workloads together. The time is the work itself, measured inside each process (start-up, imports
and loading the model left out); with two at once, the slower of the two. Medians, and the ratio
default / passive (above 1: PASSIVE is faster).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[0] = str(REPO)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

PROMPTS = ["Write a short poem about autumn leaves.", "Explain what a hash table is.",
           "Give three tips for a job interview.", "Describe how rain forms.",
           "Write an email asking a colleague for a meeting.", "What is the difference between a list and a tuple?",
           "Summarise the plot of a heist film in two sentences.", "List four uses of baking soda."]


def workload(model_dir: Path, new_tokens: int, train_steps: int) -> float:
    """One process's share: generation, then LoRA steps, on the base model; the seconds they took."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from tunelab.core.generation import SamplingSettings, chat_prompt, generate_texts
    from tunelab.core.models import load_tokenizer

    tokenizer = load_tokenizer(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    sampling = SamplingSettings(max_new_tokens=new_tokens, temperature=0.0, batch_size=len(PROMPTS))
    began = time.perf_counter()
    generate_texts(model, tokenizer, [chat_prompt(tokenizer, p) for p in PROMPTS], sampling, seed=0,
                   description="omp workload")
    model = get_peft_model(model.train(), LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0,
                                                     target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    batch = torch.randint(100, 10_000, (4, 256), generator=torch.Generator().manual_seed(0))
    for _ in range(train_steps):
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return time.perf_counter() - began


def timed(command: list[str], policy: str | None, copies: int) -> float:
    """The slowest copy's seconds of work, `copies` workloads started together."""
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if policy:
        env["OMP_WAIT_POLICY"] = policy
    running = [subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for _ in range(copies)]
    seconds = []
    for process in running:
        out, err = process.communicate()
        if process.returncode:
            raise RuntimeError(f"workload failed: {err[-2000:]}")
        seconds.append(float(out.strip().splitlines()[-1]))
    return max(seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--model", type=Path, default=REPO / "models/base", help="base model dir (default: models/base)")
    parser.add_argument("--new-tokens", type=int, default=64, help="tokens generated per answer (default: 64)")
    parser.add_argument("--train-steps", type=int, default=4, help="LoRA steps of 4x256 tokens (default: 4)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per policy and setting (default: 3)")
    parser.add_argument("--out", type=Path, default=REPO / "reports/bench_omp_wait_policy.json")
    parser.add_argument("--workload", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.workload:
        print(workload(args.model, args.new_tokens, args.train_steps))
        return
    if not (args.model / "config.json").is_file():
        raise SystemExit(f"{args.model} holds no model; run `dvc repro base` first or pass --model")
    command = [sys.executable, str(Path(__file__).resolve()), "--workload", "--model", str(args.model),
               "--new-tokens", str(args.new_tokens), "--train-steps", str(args.train_steps)]
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    result = {"command": " ".join(sys.argv), "commit": commit.stdout.strip(), "cpus": os.cpu_count(),
              "date": time.strftime("%Y-%m-%d"), "settings": {}}
    for setting, copies in (("alone", 1), ("two at once", 2)):
        seconds: dict[str, list[float]] = {"default": [], "PASSIVE": []}
        for repeat in range(args.repeats):
            for name in (("default", "PASSIVE") if repeat % 2 == 0 else ("PASSIVE", "default")):
                seconds[name].append(timed(command, None if name == "default" else name, copies))
                print(f"{setting}, {name}: {seconds[name][-1]:.1f} s", flush=True)
        medians = {name: statistics.median(values) for name, values in seconds.items()}
        result["settings"][setting] = {"seconds": seconds, "median_s": medians,
                                       "default_over_passive": medians["default"] / medians["PASSIVE"]}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    for setting, figures in result["settings"].items():
        print(f"{setting}: default {figures['median_s']['default']:.1f} s, PASSIVE {figures['median_s']['PASSIVE']:.1f} s, "
              f"default/PASSIVE {figures['default_over_passive']:.2f}")


if __name__ == "__main__":
    main()
