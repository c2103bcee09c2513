"""Evaluate's generation: lm-eval's own HF loop against TuneLab's decoder, on the same requests.

    python bench/evaluate_decoder.py --model models/base --rows reports/samples/heldout_prompts.jsonl \
        --repeats 3 --out reports/bench_evaluate_decoder.json

Two request sets, as the evaluate stage sends them: `ifeval`, the held-out IFEval prompts with the
chat template applied and `evaluate.ifeval_sampling`'s kwargs, and `humaneval`, the first
`evaluate.humaneval_limit` HumanEval problems in chat style with `evaluate.code_sampling`'s kwargs.
Each repeat runs both paths on both sets, alternating which goes first, so load that comes and
goes lands on both; a figure is the median of the per-repeat time ratios. The outputs are checked:
IFEval's greedy texts must be the same; HumanEval's must give the same code to the sandbox
(TuneLab stops once the first code block closes, lm-eval's loop writes the prose after it).
Not part of `bench/run.py`'s table.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from the repo root


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=Path("models/base"))
    parser.add_argument("--rows", type=Path, default=Path("reports/samples/heldout_prompts.jsonl"))
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--limit", type=int, default=0, help="first N prompts of each set only (0 = all)")
    parser.add_argument("--tasks", default="ifeval,humaneval", help="comma-separated: ifeval, humaneval")
    parser.add_argument("--out", type=Path, default=None, help="write the figures here as JSON")
    args = parser.parse_args()

    import torch
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    from tunelab.core.config import load_section, read_params
    from tunelab.core.generation import chat_prompt
    from tunelab.core.io import read_jsonl
    from tunelab.core.models import load_tokenizer, load_variant
    from tunelab.eval.evaluate import EvaluateSettings
    from tunelab.eval.lmeval import timed_lm, without_our_kwargs
    from tunelab.tasks.humaneval import CHAT_INSTRUCTION, extract_completion, load_humaneval

    config = load_section(read_params(args.params), "evaluate", EvaluateSettings)
    tokenizer = load_tokenizer(args.model)
    lm = timed_lm(load_variant(args.model), tokenizer, config.batch_size)
    request_sets = {}
    if "ifeval" in args.tasks:
        kwargs = config.ifeval_sampling.generation_kwargs()
        prompts = [chat_prompt(tokenizer, row["prompt"]) for row in read_jsonl(args.rows)]
        request_sets["ifeval"] = (kwargs, prompts)
    if "humaneval" in args.tasks:
        kwargs = config.code_sampling.generation_kwargs(stop_after_code_block=True)
        problems = load_humaneval(None, limit=config.humaneval_limit or None)
        prompts = [chat_prompt(tokenizer, CHAT_INSTRUCTION.format(prompt=p["prompt"])) for p in problems]
        request_sets["humaneval"] = (kwargs, prompts)

    def timed(path: str, kwargs: dict, prompts: list[str]) -> tuple[float, list[str]]:
        requests = [Instance("generate_until", {}, (prompt, dict(kwargs)), i)
                    for i, prompt in enumerate(prompts[: args.limit or None])]
        torch.manual_seed(0)
        started = time.perf_counter()
        texts = lm.generate_until(requests) if path == "tunelab" else HFLM.generate_until(lm, without_our_kwargs(requests))
        return time.perf_counter() - started, texts

    def same_output(task: str, ours: list[str], theirs: list[str]) -> bool:
        if task == "ifeval":
            return ours == theirs
        return [extract_completion(t, "chat").rstrip() for t in ours] == \
            [extract_completion(t, "chat").rstrip() for t in theirs]

    result = {"machine": platform.processor() or platform.machine(), "torch_threads": torch.get_num_threads(),
              "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "model": str(args.model), "tasks": {}}
    for task, (kwargs, prompts) in request_sets.items():
        repeats = []
        for repeat in range(args.repeats):
            order = ["tunelab", "lm_eval"] if repeat % 2 == 0 else ["lm_eval", "tunelab"]
            seconds, texts = {}, {}
            for path in order:
                seconds[path], texts[path] = timed(path, kwargs, prompts)
            tokens = {path: sum(len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts[path])
                      for path in order}
            repeats.append({"task": task, "seconds": seconds, "new_tokens": tokens,
                            "same_output": same_output(task, texts["tunelab"], texts["lm_eval"]),
                            "speedup": seconds["lm_eval"] / seconds["tunelab"]})
            print(json.dumps(repeats[-1]), flush=True)
        result["tasks"][task] = {
            "requests": len(prompts[: args.limit or None]), "generation_kwargs": kwargs, "repeats": repeats,
            "median_seconds": {path: statistics.median(r["seconds"][path] for r in repeats)
                               for path in ("tunelab", "lm_eval")},
            "median_speedup": statistics.median(r["speedup"] for r in repeats),
            "same_output_every_repeat": all(r["same_output"] for r in repeats),
        }
    print(json.dumps({task: {k: v for k, v in figures.items() if k != "repeats"}
                      for task, figures in result["tasks"].items()}))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
