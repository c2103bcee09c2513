"""Training throughput and CPU model-FLOPs utilisation: TuneLab's SFT and DPO paths against TRL's
trainers at TRL's defaults, on the same model, adapter and rows.

TuneLab's side is the stages' own entry points (`tunelab.sft.train_sft`, `tunelab.align.train_alignment`)
with `sft`/`align` params, only max_steps overridden. The baseline is the same model and PEFT config
handed to TRL's SFTTrainer/DPOTrainer with a config that sets nothing but what a run needs (output
dir, steps, no saving or reporting, CPU when there is no GPU, token counting): batch size, sequence
length, precision (bf16) and gradient checkpointing are TRL's defaults. Tokens/s is non-padding
tokens trained on over the wall time of `trainer.train()` on both sides, start-up included: SFT's from
the Trainer's own count, DPO's from TRL's `num_tokens` counter (chosen and rejected rows), as
DPOTrainer leaves the Trainer's count at 0.

MFU (Chowdhery et al. 2022, "PaLM", appendix B): tokens/s x FLOPs per token / peak FLOP/s, the peak
being this run's measured fp32 matmul rate (bench/machine.py). FLOPs per token after Kaplan et al.
2020 ("Scaling Laws for Neural Language Models", sec. 2.1): ~6N for full training (2N forward, 4N
backward), N the model's parameters (embeddings counted once: SmolLM2 ties them to the LM head,
whose matmul is real work). With frozen base weights (LoRA, DoRA, QLoRA, prompt tuning) the
backward pass still computes activation gradients (2N) but no weight gradients: ~4N, the adapters'
own FLOPs (~2% of N at r=8) left out. DPO adds the reference model's forward pass (the same weights
with the adapter disabled, every step): 4N + 2N. Attention's score and value matmuls (12·L·d·T per
token for training) are left out as well: ~10% more at T = 400 tokens for SmolLM2-135M, so these
MFUs slightly understate the work done.
"""

from __future__ import annotations

import dataclasses
import logging
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import Context, Figure, Target, size_flag

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
    size_flag(group, "--train-rows", 64, 4, "SFT rows and preference pairs taken from the start of each file")
    size_flag(group, "--sft-steps", 12, 1, "TuneLab SFT steps (params' sft.optim.max_steps is overridden)")
    size_flag(group, "--dpo-steps", 6, 1, "TuneLab DPO steps (params' align.optim.max_steps is overridden)")
    size_flag(group, "--trl-steps", 4, 1, "max steps of each TRL-defaults baseline")
    size_flag(group, "--trl-rows", 0, 1, "rows (pairs) the TRL-defaults baselines train on; 0 = --train-rows")
    size_flag(group, "--trl-budget-s", 300.0, 30.0, "a TRL-defaults baseline stops after the step that passes this "
              "many seconds: its bf16 default runs at ~1/20 of fp32 speed on CPUs without bf16 units "
              "(one step of 4 short rows took 3 min on the 2-core AVX2 VM)", type=float)
    size_flag(group, "--train-max-length", 0, 128, "overrides sft/align optim.max_length; 0 = params")
    group.add_argument("--skip-trl", action="store_true", help="skip the TRL-defaults baselines")


# ------------------------------------------------------------------------------------------------ data

def sft_rows(context: Context, path: str, count: int) -> list[dict[str, Any]]:
    from tunelab.chatdata import CONVERSATION, alpaca_messages
    from tunelab.io import read_jsonl

    file = context.path(path)
    if file.is_file():
        return read_jsonl(file, CONVERSATION)[:count]
    seed = context.path(context.params["generate"]["self_instruct"]["seed_tasks"])
    log.warning("%s is absent (run the pipeline first); SFT rows come from the seed tasks in %s", file, seed)
    rows = [{"messages": alpaca_messages({"instruction": task["instruction"], **task["instances"][0]})}
            for task in read_jsonl(seed, ("instruction", "instances"))]
    return rows[:count]


def preference_pairs(context: Context, path: str, count: int, conversations: list[dict]) -> list[dict[str, Any]]:
    from tunelab.align import PAIR
    from tunelab.io import read_jsonl

    file = context.path(path)
    if file.is_file():
        pairs = read_jsonl(file, PAIR)[:count]
        return [{key: pair[key] for key in PAIR} for pair in pairs]
    log.warning("%s is absent (run the pipeline first); pairs are SFT rows with another row's answer as rejected "
                "(throughput depends on lengths, not on which answer is better)", file)
    return [{"prompt": row["messages"][:-1], "chosen": row["messages"][-1:],
             "rejected": conversations[(i + 1) % len(conversations)]["messages"][-1:]}
            for i, row in enumerate(conversations)]


def logged_dpo_tokens(history: list[dict[str, Any]], steps: int) -> float | None:
    """Tokens DPO trained on, from TRL's `num_tokens` metric (the attention-mask sum of every chosen
    and rejected row, cumulative), scaled up when the last log came before the last step. Needed
    because DPOTrainer leaves the Trainer's own count (align.json's tokens_seen) at 0."""
    logged = [entry for entry in history if "num_tokens" in entry and entry.get("step")]
    if not logged:
        return None
    return logged[-1]["num_tokens"] * steps / logged[-1]["step"]


def mean_pair_tokens(tokenizer: Any, pairs: list[dict[str, Any]], max_length: int | None) -> float:
    """Tokens one DPO row puts through the model: prompt + chosen and prompt + rejected, each cut at
    max_length. The fallback estimate (rows seen x this mean) where TRL logged no `num_tokens`."""
    totals = []
    for pair in pairs:
        total = 0
        for answer in ("chosen", "rejected"):
            text = tokenizer.apply_chat_template(pair["prompt"] + pair[answer], tokenize=False)
            length = len(tokenizer(text, add_special_tokens=False)["input_ids"])
            total += min(length, max_length) if max_length else length
        totals.append(total)
    return statistics.mean(totals)


# ------------------------------------------------------------------------------------------------ runs

def timed_train(trainer: Any, budget_s: float) -> dict[str, Any]:
    """Train, stopping after the step that passes `budget_s`; what a report needs."""
    from transformers import TrainerCallback

    from tunelab.training import Stopwatch, trainable_parameters

    class StopAfter(TrainerCallback):
        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if time.perf_counter() - began > budget_s:
                control.should_training_stop = True

    trainer.add_callback(StopAfter())
    began = time.perf_counter()
    with Stopwatch() as clock:
        trainer.train()
    trainable, total = trainable_parameters(trainer.model)
    return {"steps": trainer.state.global_step, "runtime_s": clock.seconds,
            "tokens_seen": trainer.state.num_input_tokens_seen,
            "tokens_per_s": trainer.state.num_input_tokens_seen / clock.seconds,
            "trainable_params": trainable, "total_params": total,
            "batch_size": trainer.args.per_device_train_batch_size, "max_length": trainer.args.max_length,
            "bf16": trainer.args.bf16, "gradient_checkpointing": trainer.args.gradient_checkpointing}


def baseline_arguments(out_dir: Path, steps: int) -> dict[str, Any]:
    """The only settings a TRL-defaults baseline gets: where to write, how long, nothing saved or reported.
    use_cpu: without it transformers refuses TRL's bf16 default on a machine with no GPU."""
    import torch

    return dict(output_dir=str(out_dir), max_steps=steps, save_strategy="no", report_to="none",
                use_cpu=not torch.cuda.is_available())


def trl_default_sft(context: Context, settings: Any, rows: list[dict], out_dir: Path, args: Any) -> dict[str, Any]:
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    from tunelab.models import load_tokenizer
    from tunelab.sft import load_model_and_peft, to_prompt_completion

    model, peft_config = load_model_and_peft(context.base_dir, settings)
    config = SFTConfig(**baseline_arguments(out_dir, args.trl_steps), include_num_input_tokens_seen="non_padding")
    trainer = SFTTrainer(model=model, args=config, train_dataset=Dataset.from_list(to_prompt_completion(rows)),
                         processing_class=load_tokenizer(context.base_dir, padding_side="right"),
                         peft_config=peft_config)
    return timed_train(trainer, args.trl_budget_s)


def trl_default_dpo(context: Context, settings: Any, sft_dir: Path, pairs: list[dict], out_dir: Path,
                    args: Any) -> dict[str, Any]:
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    from tunelab.models import load_tokenizer, load_variant

    tokenizer = load_tokenizer(context.base_dir, padding_side="right")
    config = DPOConfig(**baseline_arguments(out_dir, args.trl_steps))
    trainer = DPOTrainer(model=load_variant(context.base_dir, [sft_dir]), args=config,
                         train_dataset=Dataset.from_list(pairs), processing_class=tokenizer,
                         peft_config=settings.lora.peft_config())
    report = timed_train(trainer, args.trl_budget_s)
    # TRL's counter behind its num_tokens metric: the default logging_steps (10) may log none of a short run.
    counted = getattr(trainer, "_total_train_tokens", None)
    rows_seen = report["steps"] * config.per_device_train_batch_size * config.gradient_accumulation_steps
    report["tokens_seen"] = counted or rows_seen * mean_pair_tokens(tokenizer, pairs, config.max_length)
    report["tokens_counted"] = bool(counted)
    report["tokens_per_s"] = report["tokens_seen"] / report["runtime_s"]
    return report


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


def mfu(report: dict[str, Any] | None, method: str, peak_gflops: float | None, reference: bool = False) -> float | None:
    if report is None or not peak_gflops:
        return None
    flops = flops_per_token(method, model_params(report, method), reference)
    return 100.0 * report["tokens_per_s"] * flops / (peak_gflops * 1e9)


def pair_figures(family: str, method: str, ours: dict, baseline: dict | None, reason: str, peak: float | None,
                 reference: bool, target: Target | None) -> list[Figure]:
    factor = flops_per_token(method, 1, reference)
    note = reason or "baseline: TRL's trainer at TRL's defaults, same model, adapter and rows"
    details = {"tunelab": ours, "trl_defaults": baseline, "flops_per_token": f"{factor:g}N", "method": method,
               "peak_gflops": peak}
    return [
        Figure(name=f"{family} tokens/s ({method})", value=ours["tokens_per_s"], unit="tok/s",
               baseline=baseline["tokens_per_s"] if baseline else None, baseline_name="TRL defaults", note=note,
               details=details),
        Figure(name=f"{family} CPU MFU ({factor:g}N FLOPs/token)", value=mfu(ours, method, peak, reference), unit="%",
               baseline=mfu(baseline, method, peak, reference), baseline_name="TRL defaults", target=target,
               note=note if peak else "no matmul peak measured (run the matmul family too)"),
    ]


def run(args: Any, context: Context, peak_gflops: float | None) -> list[Figure]:
    from tunelab.align import AlignSettings, train_alignment
    from tunelab.models import load_tokenizer
    from tunelab.sft import SFTSettings, train_sft

    sft = context.section("sft", SFTSettings)
    align = context.section("align", AlignSettings)
    length = {"max_length": args.train_max_length} if args.train_max_length else {}
    sft = dataclasses.replace(sft, optim=dataclasses.replace(sft.optim, max_steps=args.sft_steps, **length))
    align = dataclasses.replace(align, optim=dataclasses.replace(align.optim, max_steps=args.dpo_steps, **length))
    rows = sft_rows(context, args.sft_data, args.train_rows)
    pairs = preference_pairs(context, args.pairs, args.train_rows, rows)
    trl_rows, trl_pairs = rows[:args.trl_rows or None], pairs[:args.trl_rows or None]
    log.info("training: %d SFT rows, %d pairs, sft.peft=%s, %d/%d steps, TRL baselines %s", len(rows), len(pairs),
             sft.peft, args.sft_steps, args.dpo_steps, "skipped" if args.skip_trl else f"<= {args.trl_steps} steps")

    with tempfile.TemporaryDirectory(dir=context.work, prefix="training-") as scratch:
        scratch = Path(scratch)  # fresh every run: a leftover checkpoint must never be resumed from
        ours_sft = train_sft(context.base_dir, rows, [], sft, scratch / "sft", scratch / "sft-work")
        trl_sft, sft_reason = (None, "skipped (--skip-trl)") if args.skip_trl else baseline_or_reason(
            "TRL-defaults SFT", lambda: trl_default_sft(context, sft, trl_rows, scratch / "trl-sft", args))

        ours_dpo = train_alignment("dpo", context.base_dir, scratch / "sft", pairs, align, scratch / "dpo",
                                   scratch / "dpo-work")
        counted = logged_dpo_tokens(ours_dpo["history"], ours_dpo["steps"])
        if counted is None:
            tokenizer = load_tokenizer(context.base_dir, padding_side="right")
            rows_seen = ours_dpo["steps"] * align.optim.batch_size * align.optim.grad_accum
            counted = rows_seen * mean_pair_tokens(tokenizer, pairs, align.optim.max_length)
        ours_dpo["tokens_counted"] = bool(ours_dpo["history"] and "num_tokens" in ours_dpo["history"][-1])
        ours_dpo["tokens_seen"] = counted
        ours_dpo["tokens_per_s"] = counted / ours_dpo["runtime_s"]
        trl_dpo, dpo_reason = (None, "skipped (--skip-trl)") if args.skip_trl else baseline_or_reason(
            "TRL-defaults DPO", lambda: trl_default_dpo(context, align, scratch / "sft", trl_pairs, scratch / "trl-dpo",
                                                        args))

    for report in (ours_sft, ours_dpo):
        report.pop("history", None)
    return (pair_figures("SFT", sft.peft, ours_sft, trl_sft, sft_reason, peak_gflops, False,
                         Target(">= 40 % MFU", "value", ">=", 40.0))
            + pair_figures("DPO", "lora", ours_dpo, trl_dpo, dpo_reason, peak_gflops, True, None))
