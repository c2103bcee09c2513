"""Training throughput and CPU model-FLOPs utilisation: TuneLab's SFT and DPO paths against TRL's
trainers at TRL's defaults, on the same model, adapter and rows, timed step by step.

    python bench/run.py --only matmul,training

TuneLab's side is what the sft and align stages run, `tunelab.train.sft.train_sft` and
`tunelab.train.align.train_alignment("dpo")` with the `sft`/`align` params; only max_steps (warm-up plus
timed steps) and checkpoint_every (0, so no checkpoint is written inside a timed step) are
overridden. The baseline hands the same model, LoRA config and rows to TRL's SFTTrainer/DPOTrainer
with nothing set but what a run needs (output dir, steps, no saving or reporting, CPU): batch size
(8), max_length (1024), bf16 autocast and gradient checkpointing are TRL's defaults.

Every run is timed by StepClock: `--warmup-steps` steps, then `--timed-steps` steps. A step lasts
from the previous step's end to its own (data, forward, backward, optimizer, logging). Its tokens
are non-padding tokens: the attention-mask sum of every batch the model trains on (prompts and
completions; DPO's chosen and rejected rows), not padding and not DPO's reference pass. Tokens/s
is the median over the timed steps of step tokens / step seconds.

TRL's bf16 default is pathological on a CPU without bf16 units (AVX2 only): autocast runs the
matmuls in bf16, at a few percent of the fp32 rate here (machine.py's bf16 figure), and a step takes
several times as long as in fp32. So a baseline trains on `--trl-rows` rows (pairs) and stops after
the step that passes `--trl-budget-s`. When its warm-up step
alone passes the budget, that one step is the measurement, and the figure says so (the first-step
overhead is small next to it: compare TuneLab's warm-up and timed steps in the JSON).

MFU (Chowdhery et al. 2022, "PaLM", appendix B): tokens/s x FLOPs per token / peak FLOP/s, the peak
being this run's square fp32 matmul rate (bench/machine.py). FLOPs per token after Kaplan et al.
2020 ("Scaling Laws for Neural Language Models", sec. 2.1): ~6N for full training (2N forward, 4N
backward), N the model's parameters (embeddings counted once: SmolLM2 ties them to the LM head,
whose matmul is real work). With frozen base weights (LoRA, DoRA, QLoRA, prompt tuning) the
backward pass still computes activation gradients (2N) but no weight gradients: ~4N, the adapters'
own FLOPs (~2% of N at r=8) left out. DPO adds the reference model's forward pass (the same weights
with the adapter disabled, every step): 4N + 2N. Attention's score and value matmuls are left out
too, so these MFUs slightly understate the work done. The model-shaped matmul rate (machine.py) is
the ceiling at this model's width; each MFU figure's note gives the share of it as well.
"""

from __future__ import annotations

import dataclasses
import logging
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from bench.common import Context, Figure, Target, median, size_flag

log = logging.getLogger("bench")

FROZEN_BASE = ("lora", "qlora", "dora", "prompt_tuning")  # sft.peft values that train adapters only


def add_arguments(parser: Any) -> None:
    group = parser.add_argument_group("training")
    group.add_argument("--sft-data", default="data/curated/train.jsonl",
                       help="SFT conversations, relative to --repo; the seed tasks stand in when it is absent "
                            "(default: data/curated/train.jsonl)")
    group.add_argument("--pairs", default="data/preference/pairs.jsonl",
                       help="DPO pairs, relative to --repo; mismatched SFT answers stand in when it is absent "
                            "(default: data/preference/pairs.jsonl)")
    size_flag(group, "--train-rows", 64, 8, "SFT rows and preference pairs taken from the start of each file")
    size_flag(group, "--warmup-steps", 1, 1, "untimed first steps of every run (thread pools, allocator, data)")
    size_flag(group, "--timed-steps", 3, 1, "timed steps of every run after the warm-up; the median step counts")
    size_flag(group, "--trl-rows", 1, 1, "rows (pairs) a TRL-defaults baseline trains on: its bf16 step takes "
              "minutes per few hundred tokens on an AVX2 CPU")
    size_flag(group, "--trl-budget-s", 60.0, 10.0, "a TRL-defaults baseline stops after the step that passes this "
              "many seconds (at least one step)", type=float)
    size_flag(group, "--train-max-length", 0, 128, "overrides max_length of every run (sft/align optim.max_length, "
              "TRL's 1024); 0 = params and TRL's default")
    group.add_argument("--skip-trl", action="store_true", help="skip the TRL-defaults baselines")


# ------------------------------------------------------------------------------------------------ data

def sft_rows(context: Context, path: str, count: int) -> list[dict[str, Any]]:
    from tunelab.core.io import read_jsonl
    from tunelab.synth.chatdata import CONVERSATION, alpaca_messages

    file = context.path(path)
    if file.is_file():
        return read_jsonl(file, CONVERSATION)[:count]
    seed = context.path(context.params["generate"]["self_instruct"]["seed_tasks"])
    log.warning("%s is absent (run the pipeline first); SFT rows come from the seed tasks in %s", file, seed)
    rows = [{"messages": alpaca_messages({"instruction": task["instruction"], **task["instances"][0]})}
            for task in read_jsonl(seed, ("instruction", "instances"))]
    return rows[:count]


def preference_pairs(context: Context, path: str, count: int, conversations: list[dict]) -> list[dict[str, Any]]:
    from tunelab.core.io import read_jsonl
    from tunelab.train.align import PAIR

    file = context.path(path)
    if file.is_file():
        pairs = read_jsonl(file, PAIR)[:count]
        return [{key: pair[key] for key in PAIR} for pair in pairs]
    log.warning("%s is absent (run the pipeline first); pairs are SFT rows with another row's answer as rejected "
                "(throughput depends on lengths, not on which answer is better)", file)
    return [{"prompt": row["messages"][:-1], "chosen": row["messages"][-1:],
             "rejected": conversations[(i + 1) % len(conversations)]["messages"][-1:]}
            for i, row in enumerate(conversations)]


# ------------------------------------------------------------------------------------------------ timing

class StepClock(TrainerCallback):
    """Seconds and non-padding tokens of each optimizer step, and the run's settings; stops training
    after `warmup` + `timed` steps, or after the step that passes `budget_s` (see the module docstring)."""

    def __init__(self, warmup: int, timed: int, budget_s: float = float("inf")) -> None:
        self.warmup, self.timed, self.budget_s = warmup, timed, budget_s
        self.steps: list[tuple[float, int]] = []  # (seconds, tokens) of every step, warm-up included
        self.tokens = 0

    def count(self, module: Any, args: tuple, kwargs: dict) -> None:
        """Forward pre-hook: tokens of a training forward. DPO's reference pass runs under no_grad."""
        import torch

        if module.training and torch.is_grad_enabled():
            mask = kwargs.get("attention_mask")
            self.tokens += int(mask.sum()) if mask is not None else kwargs["input_ids"].numel()

    def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        from tunelab.train.training import trainable_parameters

        trainable, total = trainable_parameters(model)
        self.settings = {"batch_size": args.per_device_train_batch_size, "max_length": args.max_length,
                         "bf16": args.bf16, "gradient_checkpointing": args.gradient_checkpointing,
                         "trainable_params": trainable, "total_params": total}
        self.hook = model.register_forward_pre_hook(self.count, with_kwargs=True)
        self.step_began = time.perf_counter()

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        now = time.perf_counter()
        self.steps.append((now - self.step_began, self.tokens))
        self.step_began, self.tokens = now, 0
        if len(self.steps) >= self.warmup + self.timed or sum(s for s, _ in self.steps) > self.budget_s:
            control.should_training_stop = True

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.hook.remove()

    def report(self) -> dict[str, Any]:
        timed = self.steps[self.warmup:]
        measured = timed or self.steps  # none timed: the budget ran out in the warm-up, whose step is all there is
        rates = [tokens / seconds for seconds, tokens in measured]
        return {"tokens_per_s": median(rates), "step_tokens_per_s": rates,
                "step_s": [round(s, 2) for s, _ in measured], "step_tokens": [t for _, t in measured],
                "warmup_s": [round(s, 2) for s, _ in self.steps[:self.warmup]] if timed else [],
                "warmup_counted": not timed, "budget_s": None if self.budget_s == float("inf") else self.budget_s,
                **self.settings}


# ------------------------------------------------------------------------------------------------ runs

def tunelab_sft(context: Context, settings: Any, rows: list[dict], out_dir: Path, args: Any) -> dict[str, Any]:
    from tunelab.train.sft import train_sft

    clock = StepClock(args.warmup_steps, args.timed_steps)
    train_sft(context.base_dir, rows, [], settings, out_dir, out_dir.with_name(out_dir.name + "-work"), [clock])
    return clock.report()


def tunelab_dpo(context: Context, settings: Any, sft_dir: Path, pairs: list[dict], out_dir: Path,
                args: Any) -> dict[str, Any]:
    from tunelab.train.align import train_alignment

    clock = StepClock(args.warmup_steps, args.timed_steps)
    train_alignment("dpo", context.base_dir, sft_dir, pairs, settings, out_dir,
                    out_dir.with_name(out_dir.name + "-work"), [clock])
    return clock.report()


def baseline_arguments(out_dir: Path, args: Any) -> dict[str, Any]:
    """The only settings a TRL-defaults baseline gets: where to write, how long, nothing saved or reported
    (and --train-max-length when given, as on TuneLab's side). use_cpu: without it transformers refuses
    TRL's bf16 default on a machine with no GPU."""
    import torch

    length = {"max_length": args.train_max_length} if args.train_max_length else {}
    return dict(output_dir=str(out_dir), max_steps=args.warmup_steps + args.timed_steps, save_strategy="no",
                report_to="none", use_cpu=not torch.cuda.is_available(), **length)


def trl_default_train(trainer: Any, args: Any) -> dict[str, Any]:
    clock = StepClock(args.warmup_steps, args.timed_steps, args.trl_budget_s)
    trainer.add_callback(clock)
    trainer.train()
    return {**clock.report(), "rows": len(trainer.train_dataset)}


def trl_default_sft(context: Context, settings: Any, rows: list[dict], out_dir: Path, args: Any) -> dict[str, Any]:
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    from tunelab.core.models import load_tokenizer
    from tunelab.train.sft import load_model_and_peft, to_prompt_completion

    model, peft_config = load_model_and_peft(context.base_dir, settings)
    trainer = SFTTrainer(model=model, args=SFTConfig(**baseline_arguments(out_dir, args)),
                         train_dataset=Dataset.from_list(to_prompt_completion(rows)),
                         processing_class=load_tokenizer(context.base_dir, padding_side="right"),
                         peft_config=peft_config)
    return trl_default_train(trainer, args)


def trl_default_dpo(context: Context, settings: Any, sft_dir: Path, pairs: list[dict], out_dir: Path,
                    args: Any) -> dict[str, Any]:
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    from tunelab.core.models import load_tokenizer, load_variant

    trainer = DPOTrainer(model=load_variant(context.base_dir, [sft_dir]),
                         args=DPOConfig(**baseline_arguments(out_dir, args)), train_dataset=Dataset.from_list(pairs),
                         processing_class=load_tokenizer(context.base_dir, padding_side="right"),
                         peft_config=settings.lora.peft_config())
    return trl_default_train(trainer, args)


def baseline_or_reason(name: str, run: Any) -> tuple[dict[str, Any] | None, str]:
    """A baseline's report, or why there is none. Any exception counts: a TRL default that cannot run
    here is a finding to record, not a reason to lose TuneLab's own figures."""
    try:
        return run(), ""
    except Exception as err:  # noqa: BLE001
        log.exception("%s baseline failed", name)
        return None, f"{name} failed: {type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''}"


# ------------------------------------------------------------------------------------------------ figures

def flops_per_token(method: str, n_params: int, reference_forward: bool = False) -> float:
    """See the module docstring: 6N full, ~4N with frozen base weights, +2N for DPO's reference."""
    factor = 6 if method == "full" else 4
    return (factor + (2 if reference_forward else 0)) * n_params


def model_params(report: dict[str, Any], method: str) -> int:
    """N: the model's own parameters (PEFT's total also counts the adapter's)."""
    return report["total_params"] - (report["trainable_params"] if method in FROZEN_BASE else 0)


def mfu(report: dict[str, Any] | None, method: str, gflops: float | None, reference: bool = False) -> float | None:
    if report is None or not gflops:
        return None
    flops = flops_per_token(method, model_params(report, method), reference)
    return 100.0 * report["tokens_per_s"] * flops / (gflops * 1e9)


def describe(report: dict[str, Any] | None, name: str) -> str:
    if report is None:
        return ""
    text = (f"{name}: batch {report['batch_size']}, max_length {report['max_length']}, "
            f"{'bf16' if report['bf16'] else 'fp32'}, "
            f"gradient checkpointing {'on' if report['gradient_checkpointing'] else 'off'}")
    if "rows" in report:
        text += f", {report['rows']} row(s)"
    if report["warmup_counted"]:
        return text + (f", 1 step of {report['step_s'][0]:.0f} s, warm-up included (it passed the "
                       f"{report['budget_s']:.0f} s budget)")
    steps = len(report["step_s"])
    return text + f", median of {steps} timed step{'s' * (steps > 1)} of ~{statistics.mean(report['step_s']):.0f} s"


def pair_figures(family: str, method: str, ours: dict, baseline: dict | None, reason: str, peaks: dict,
                 reference: bool, target: Target | None) -> list[Figure]:
    factor = flops_per_token(method, 1, reference)
    peak, shaped = peaks.get("square"), peaks.get("model_shaped")
    note = "; ".join(filter(None, [describe(ours, "TuneLab"), reason or describe(baseline, "TRL defaults")]))
    details = {"tunelab": ours, "trl_defaults": baseline, "flops_per_token": f"{factor:g}N", "method": method,
               "peak_gflops": peak, "model_shaped_gflops": shaped,
               "mfu_of_model_shaped_ceiling_pct": mfu(ours, method, shaped, reference)}
    samples = {"samples": ours["step_tokens_per_s"],
               "baseline_samples": baseline["step_tokens_per_s"] if baseline else []}
    return [
        Figure(name=f"{family} tokens/s ({method}, non-padding)", value=ours["tokens_per_s"], unit="tok/s",
               baseline=baseline["tokens_per_s"] if baseline else None, baseline_name="TRL defaults", note=note,
               details=details, **samples),
        Figure(name=f"{family} CPU MFU ({factor:g}N FLOPs/token)", value=mfu(ours, method, peak, reference), unit="%",
               baseline=mfu(baseline, method, peak, reference), baseline_name="TRL defaults", target=target,
               note=(f"of the square matmul peak; {mfu(ours, method, shaped, reference):.0f} % of the model-shaped "
                     "matmul ceiling" if peak and shaped else "of the square matmul peak" if peak
                     else "no matmul peak measured (run the matmul family too)"),
               details={"flops_per_token": f"{factor:g}N", "peak_gflops": peak, "model_shaped_gflops": shaped}),
    ]


def run(args: Any, context: Context, peaks: dict[str, float]) -> list[Figure]:
    from tunelab.train.align import AlignSettings
    from tunelab.train.sft import SFTSettings

    steps = args.warmup_steps + args.timed_steps
    length = {"max_length": args.train_max_length} if args.train_max_length else {}
    sft = context.section("sft", SFTSettings)
    align = context.section("align", AlignSettings)
    sft = dataclasses.replace(sft, optim=dataclasses.replace(sft.optim, max_steps=steps, checkpoint_every=0, **length))
    align = dataclasses.replace(align, optim=dataclasses.replace(align.optim, max_steps=steps, checkpoint_every=0,
                                                                 **length))
    rows = sft_rows(context, args.sft_data, args.train_rows)
    pairs = preference_pairs(context, args.pairs, args.train_rows, rows)
    log.info("training: %d SFT rows, %d pairs, sft.peft=%s, %d warm-up + %d timed steps, TRL baselines %s",
             len(rows), len(pairs), sft.peft, args.warmup_steps, args.timed_steps,
             "skipped" if args.skip_trl else f"on {args.trl_rows} row(s) within {args.trl_budget_s:.0f} s")

    with tempfile.TemporaryDirectory(dir=context.work, prefix="training-") as scratch:
        scratch = Path(scratch)  # fresh every run: a leftover checkpoint must never be resumed from
        ours_sft = tunelab_sft(context, sft, rows, scratch / "sft", args)
        trl_sft, sft_reason = (None, "skipped (--skip-trl)") if args.skip_trl else baseline_or_reason(
            "TRL-defaults SFT", lambda: trl_default_sft(context, sft, rows[:args.trl_rows], scratch / "trl-sft", args))
        ours_dpo = tunelab_dpo(context, align, scratch / "sft", pairs, scratch / "dpo", args)
        trl_dpo, dpo_reason = (None, "skipped (--skip-trl)") if args.skip_trl else baseline_or_reason(
            "TRL-defaults DPO", lambda: trl_default_dpo(context, align, scratch / "sft", pairs[:args.trl_rows],
                                                        scratch / "trl-dpo", args))
    return (pair_figures("SFT", sft.peft, ours_sft, trl_sft, sft_reason, peaks, False,
                         Target(">= 40 % MFU", "value", ">=", 40.0))
            + pair_figures("DPO", "lora", ours_dpo, trl_dpo, dpo_reason, peaks, True, None))
