"""Evaluate's generation: lm-eval's own HF loop against TuneLab's decoder, on the same requests.

    python bench/evaluate_decoder.py --model models/base --rows reports/samples/heldout_prompts.jsonl \
        --repeats 3 --out reports/bench_evaluate_decoder.json

The requests are the held-out IFEval prompts with the chat template applied and the task's own
generation kwargs (`evaluate.ifeval_sampling`), as the evaluate stage sends them. Each repeat runs
both paths, alternating which goes first, so load that comes and goes lands on both; the figure is
the median of the per-repeat time ratios. Both paths must return the same texts (greedy), which
is checked, so the ratio compares equal work. Not yet part of `bench/run.py`'s table.
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
    parser.add_argument("--limit", type=int, default=0, help="first N prompts only (0 = all)")
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
    from tunelab.eval.lmeval import timed_lm

    config = load_section(read_params(args.params), "evaluate", EvaluateSettings)
    tokenizer = load_tokenizer(args.model)
    lm = timed_lm(load_variant(args.model), tokenizer, config.batch_size)
    kwargs = config.ifeval_sampling.generation_kwargs()
    requests = [Instance("generate_until", {}, (chat_prompt(tokenizer, row["prompt"]), dict(kwargs)), i)
                for i, row in enumerate(read_jsonl(args.rows))][: args.limit or None]

    def timed(path: str) -> tuple[float, list[str]]:
        torch.manual_seed(0)
        started = time.perf_counter()
        texts = lm.generate_until(requests) if path == "tunelab" else HFLM.generate_until(lm, requests)
        return time.perf_counter() - started, texts

    repeats = []
    for repeat in range(args.repeats):
        order = ["tunelab", "lm_eval"] if repeat % 2 == 0 else ["lm_eval", "tunelab"]
        seconds, texts = {}, {}
        for path in order:
            seconds[path], texts[path] = timed(path)
        tokens = sum(len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts["tunelab"])
        repeats.append({"seconds": seconds, "new_tokens": tokens, "same_texts": texts["tunelab"] == texts["lm_eval"],
                        "speedup": seconds["lm_eval"] / seconds["tunelab"]})
        print(json.dumps(repeats[-1]), flush=True)
    result = {
        "requests": len(requests), "generation_kwargs": kwargs, "model": str(args.model),
        "machine": platform.processor() or platform.machine(), "torch_threads": torch.get_num_threads(),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "repeats": repeats,
        "median_speedup": statistics.median(r["speedup"] for r in repeats),
        "median_tokens_per_s": {path: statistics.median(r["new_tokens"] / r["seconds"][path] for r in repeats)
                                for path in ("tunelab", "lm_eval")},
    }
    print(json.dumps({k: result[k] for k in ("requests", "median_speedup", "median_tokens_per_s")}))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
