"""What a GRPO step costs, split into generation, reward (the sandbox included) and training.

    python bench/run.py --only online_rl

TuneLab's own path, `tunelab.train.align.train_alignment("grpo")` with the repo's `align` params
(only max_steps and checkpoint_every overridden), on models/sft when the repo has one (else the
base model stands in for it) and the preference stage's prompts (`--rl-prompts`). The mix is the
params' own unless `--rl-code-prompts N` makes it N code problems and N instruction prompts, so
the sandbox's share can be seen.

Times come from TRL's own profiling blocks (`trl.extras.profiling`: one around generation, one
around each reward function), which TRL only hands to wandb, MLflow or trackio; here they are
collected per step instead. A step's training time is its wall time (step end to step end) less
generation and rewards: the policy's and (with beta > 0) the reference's log-probabilities, the
backward pass and the optimiser. Completion tokens/s is the step's completion tokens (mean length
x completions) over its wall time. Medians over the timed steps, after `--warmup-steps`. Peak memory
is the training report's: allocated CUDA memory on a GPU, the process's resident memory on CPU.

On a GPU, `--params` with `profiles/gpu.yaml`'s align.grpo section measures TRL-sized steps.
"""

from __future__ import annotations

import dataclasses
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from bench.common import Context, Figure, median, size_flag

log = logging.getLogger("bench")


def add_arguments(parser: Any) -> None:
    group = parser.add_argument_group("online_rl")
    group.add_argument("--rl-prompts", default="data/preference/prompts.jsonl",
                       help="IFEval-format prompts, relative to --repo (the preference stage's training prompts)")
    size_flag(group, "--rl-timed-steps", 3, 1, "GRPO steps timed after the warm-up steps")
    size_flag(group, "--rl-code-prompts", 0, 0, "N code problems and N instruction prompts (0: the params' own mix)")


class ProfiledSteps(TrainerCallback):
    """Each step's wall time and the seconds TRL's profiling blocks spent in it, by block name."""

    def __init__(self) -> None:
        self.steps: list[dict[str, Any]] = []
        self.blocks: dict[str, float] = {}
        self.last = time.perf_counter()

    def add(self, name: str, seconds: float) -> None:
        self.blocks[name] = self.blocks.get(name, 0.0) + seconds

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        now = time.perf_counter()
        self.steps.append({"step": state.global_step, "wall_s": now - self.last, "blocks": self.blocks})
        self.blocks, self.last = {}, now


def timed_grpo(context: Context, args: Any, scratch: Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    from trl.extras import profiling

    from tunelab.core.io import read_jsonl
    from tunelab.train.align import AlignSettings, train_alignment

    align = context.section("align", AlignSettings)
    steps = args.warmup_steps + args.rl_timed_steps
    # With code prompts asked for, as many instruction prompts as code ones: a timed step of two
    # prompts then holds a code prompt about half the time, so the sandbox's share shows.
    rl = align.rl if not args.rl_code_prompts else dataclasses.replace(
        align.rl, code_prompts=args.rl_code_prompts, instruction_prompts=args.rl_code_prompts)
    settings = dataclasses.replace(align, rl=rl, grpo=dataclasses.replace(align.grpo, max_steps=steps),
                                   optim=dataclasses.replace(align.optim, checkpoint_every=0))
    sft_dir = context.path("models/sft") if (context.path("models/sft") / "adapter_config.json").is_file() \
        else context.base_dir
    prompts = read_jsonl(context.path(args.rl_prompts))
    clock = ProfiledSteps()
    original = profiling.ProfilingContext._log_metrics

    def collected(self: Any, duration: float) -> None:
        clock.add(self.name.split(".", 1)[1], duration)  # "GRPOTrainer.transformers.generate" -> the block
        original(self, duration)

    profiling.ProfilingContext._log_metrics = collected
    try:
        report = train_alignment("grpo", context.base_dir, sft_dir, [], settings, scratch / "grpo", scratch / "work",
                                 [clock], prompts=prompts)
    finally:
        profiling.ProfilingContext._log_metrics = original
    return clock.steps[args.warmup_steps:], report


def run(args: Any, context: Context) -> list[Figure]:
    from tunelab.train.align import AlignSettings
    from tunelab.train.rewards import KINDS

    grpo = context.section("align", AlignSettings).grpo
    with tempfile.TemporaryDirectory(dir=context.work, prefix="online-rl-") as scratch:
        steps, report = timed_grpo(context, args, Path(scratch))
    history = {entry["step"]: entry for entry in report["history"]}
    rows = []
    for step in steps:
        blocks = step["blocks"]
        generation = sum(s for name, s in blocks.items() if "generate" in name)
        reward = sum(s for name, s in blocks.items() if name in KINDS)
        completions = grpo.prompts_per_step * grpo.num_generations
        tokens = history.get(step["step"], {}).get("completions/mean_length", 0.0) * completions
        rows.append({"generation_s": generation, "reward_s": reward, "training_s": step["wall_s"] - generation - reward,
                     "step_s": step["wall_s"], "tokens_per_s": tokens / step["wall_s"]})
    log.info("online_rl: %s", rows)
    setting = (f"{grpo.prompts_per_step} prompts x {grpo.num_generations} completions of up to "
               f"{grpo.max_completion_length} tokens; {report['prompts']['code']} code and "
               f"{report['prompts']['instructions']} instruction prompts in the mix")
    figure = lambda name, key, unit: Figure(name, median([r[key] for r in rows]), unit,
                                            samples=[r[key] for r in rows], note=setting)
    return [figure("GRPO step", "step_s", "s"), figure("GRPO step: generation", "generation_s", "s"),
            figure("GRPO step: rewards (sandbox included)", "reward_s", "s"),
            figure("GRPO step: training", "training_s", "s"),
            figure("GRPO completion tokens/s", "tokens_per_s", "tokens/s"),
            # Peak allocated CUDA memory on a GPU, peak resident memory of the process on CPU.
            Figure("GRPO peak memory", report["peak_memory_mb"], "MB", note=setting)]
