"""Where an SFT step's time goes: the torch profiler over the steps bench/training.py times.

    python bench/profile_sft.py --out reports/bench_profile_sft.json
    python bench/profile_sft.py --lora-dropout 0 --out reports/bench_profile_sft_dropout0.json

It trains `tunelab.train.sft.train_sft` with the `sft` params on the first `--rows` rows of
`data/curated/train.jsonl`, as bench/training.py does (only max_steps and checkpoint_every
overridden), and profiles every step after the warm-up. It reports, per step, the seconds, the
non-padding tokens and the positions the model computes (batch x padded length), and, over the
profiled steps, the operators by self CPU time, with the groups docs/performance.md's "What limits"
section discusses: matmuls, LoRA dropout's masks, TRL's chunked log-prob (the LM head and the
loss, forward and backward) and attention. Explains bench/training.py's SFT MFU figure; not part
of the table.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from the repo root

# Operator groups: (label, operator names (a trailing * matches a prefix), whether their self or
# total CPU time counts: total for TRL's autograd functions, whose matmuls run inside them).
GROUPS = (
    ("matmuls (aten::mm, addmm, bmm)", ("aten::mm", "aten::addmm", "aten::bmm"), "self"),
    ("LoRA dropout masks (aten::bernoulli_)", ("aten::bernoulli_",), "self"),
    ("TRL chunked log-prob, forward (LM head + log-softmax)", ("ChunkedLogProbFunction",), "total"),
    ("TRL chunked log-prob, backward", ("ChunkedLogProbFunctionBackward",), "total"),
    ("attention (scaled dot-product, forward and backward)", ("aten::_scaled_dot_product*",), "self"),
)


def matches(name: str, patterns: tuple[str, ...]) -> bool:
    return any(name.startswith(p[:-1]) if p.endswith("*") else name == p for p in patterns)


def profiler_callback(warmup: int) -> Any:
    import torch
    from transformers import TrainerCallback

    class StepProfile(TrainerCallback):
        """Per-step seconds and token counts; the torch profiler over every step after `warmup`."""

        def __init__(self) -> None:
            self.steps: list[dict[str, Any]] = []
            self.tokens = self.positions = 0
            self.profiler = None

        def count(self, module: Any, args: tuple, kwargs: dict) -> None:
            if module.training and torch.is_grad_enabled():
                mask = kwargs["attention_mask"]
                self.tokens += int(mask.sum())
                self.positions += mask.numel()
                self.shape = list(mask.shape)

        def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
            self.hook = model.register_forward_pre_hook(self.count, with_kwargs=True)
            self.began = time.perf_counter()

        def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if state.global_step == warmup and self.profiler is None:
                self.profiler = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU])
                self.profiler.__enter__()

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            now = time.perf_counter()
            self.steps.append({"seconds": round(now - self.began, 2), "tokens": self.tokens,
                               "positions": self.positions, "batch_shape": self.shape,
                               "profiled": self.profiler is not None})
            self.began, self.tokens, self.positions = now, 0, 0

        def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.hook.remove()
            if self.profiler is not None:
                self.profiler.__exit__(None, None, None)

    return StepProfile()


def operator_table(profiler: Any, top: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]], float]:
    """(the `top` operators by self CPU time, the GROUPS' times, total self CPU seconds)."""
    events = profiler.key_averages()
    total = sum(event.self_cpu_time_total for event in events) / 1e6
    rows = sorted(events, key=lambda event: event.self_cpu_time_total, reverse=True)
    operators = [{"name": event.key, "calls": event.count, "self_cpu_s": round(event.self_cpu_time_total / 1e6, 3),
                  "share": round(event.self_cpu_time_total / 1e6 / total, 4)} for event in rows[:top]]
    groups = []
    for label, patterns, which in GROUPS:
        matched = [event for event in events if matches(event.key, patterns)]
        seconds = sum(event.self_cpu_time_total if which == "self" else event.cpu_time_total
                      for event in matched) / 1e6
        groups.append({"group": label, "cpu_s": round(seconds, 3), "share": round(seconds / total, 4),
                       "time": which, "operators": sorted({event.key for event in matched})})
    return operators, groups, total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repo", type=Path, default=Path("."), help="the repository whose data and params to use")
    parser.add_argument("--rows", type=int, default=64, help="first N rows of the SFT data (default: 64, as bench)")
    parser.add_argument("--warmup-steps", type=int, default=1)
    parser.add_argument("--steps", type=int, default=3, help="profiled steps after the warm-up")
    parser.add_argument("--lora-dropout", type=float, default=None, help="override sft.lora.dropout")
    parser.add_argument("--group-by-length", action="store_true", help="override sft.group_by_length with true")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--top", type=int, default=15, help="operators listed")
    parser.add_argument("--out", type=Path, default=None, help="write the profile here as JSON")
    args = parser.parse_args()

    import torch

    from bench.common import Context
    from bench.training import sft_rows
    from tunelab.train.sft import SFTSettings, train_sft

    torch.set_num_threads(args.threads)
    repo = args.repo.resolve()
    work = repo / ".tunelab" / "bench"
    work.mkdir(parents=True, exist_ok=True)
    context = Context(repo=repo, params_path=repo / "params.yaml", model=repo / "models/base", work=work,
                      threads=args.threads, quick=False, seed=0)
    settings = context.section("sft", SFTSettings)
    settings = dataclasses.replace(settings, optim=dataclasses.replace(
        settings.optim, max_steps=args.warmup_steps + args.steps, checkpoint_every=0))
    if args.lora_dropout is not None:
        settings = dataclasses.replace(settings, lora=dataclasses.replace(settings.lora, dropout=args.lora_dropout))
    if args.group_by_length:
        settings = dataclasses.replace(settings, group_by_length=True)
    rows = sft_rows(context, "data/curated/train.jsonl", args.rows)

    profile = profiler_callback(args.warmup_steps)
    with tempfile.TemporaryDirectory(dir=work, prefix="profile-sft-") as scratch:
        train_sft(context.base_dir, rows, [], settings, Path(scratch) / "sft", Path(scratch) / "work", [profile])
    operators, groups, total = operator_table(profile.profiler, args.top)
    profiled = [step for step in profile.steps if step["profiled"]]
    tokens, positions = sum(s["tokens"] for s in profiled), sum(s["positions"] for s in profiled)
    result = {
        "settings": {"rows": len(rows), "peft": settings.peft, "lora_dropout": settings.lora.dropout,
                     "group_by_length": settings.group_by_length,
                     "batch_size": settings.optim.batch_size, "max_length": settings.optim.max_length,
                     "threads": args.threads, "torch": torch.__version__},
        "steps": profile.steps,
        "profiled_seconds": round(sum(s["seconds"] for s in profiled), 2),
        "padding_share": round(1 - tokens / positions, 4) if positions else None,
        "non_padding_tokens_per_s": round(tokens / sum(s["seconds"] for s in profiled), 1) if profiled else None,
        "positions_per_s": round(positions / sum(s["seconds"] for s in profiled), 1) if profiled else None,
        "self_cpu_s": round(total, 2),
        "groups": groups,
        "operators": operators,
        "date": time.strftime("%Y-%m-%d"),
    }
    print(json.dumps({key: result[key] for key in ("profiled_seconds", "padding_share", "non_padding_tokens_per_s",
                                                   "positions_per_s", "self_cpu_s")}))
    for group in groups:
        print(f"{group['share']:6.1%}  {group['cpu_s']:7.2f} s  {group['group']} ({group['time']} time)")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
