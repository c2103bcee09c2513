"""Alignment from the SFT model with TRL: offline on preference pairs (DPO, IPO, ORPO, KTO, SimPO),
online with verifiable rewards (GRPO, RLOO), or none.

All methods share one skeleton: the SFT model is rebuilt (its LoRA merged into the base weights,
or the full SFT model loaded), a fresh LoRA adapter is trained on top, and for methods with a
reference model (DPO, IPO, KTO) TRL uses the same weights with the adapter disabled as the
reference, so no second copy of the model is held. ORPO and SimPO need no reference at all.
The methods differ only in their config section and trainer class. GRPO and RLOO read prompts
instead of pairs (the preference stage's training prompts and code problems, `align.rl`) and
score the policy's own samples with `tunelab.train.rewards`; their KL reference is the same
adapter-disabled model. `none` trains nothing and passes the SFT model through, so the
evaluation compares base, sft and sft again.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunelab.core.config import ConfigError, as_dict, check_range
from tunelab.core.io import written_whole
from tunelab.core.launch import LaunchSettings, is_main_process
from tunelab.core.measuring import directory_size_mb
from tunelab.core.models import (
    PASSTHROUGH_FILE,
    artifact_kind,
    load_tokenizer,
    load_variant,
)
from tunelab.tasks.codeproblems import ProblemSource
from tunelab.train.checkpoints import CheckpointDir, training_key
from tunelab.train.rewards import RewardLog, RewardSettings
from tunelab.train.training import (
    TRAINING_CODE,
    LoraSettings,
    OptimSettings,
    save_trained,
    train_resumably,
    trainable_parameters,
    trainer_arguments,
)

PAIR = ("prompt", "chosen", "rejected")  # the fields of a preference row every offline method reads
PROMPT = ("key", "prompt", "instruction_id_list", "kwargs")  # an IFEval-format prompt row, as online methods read it
ONLINE_METHODS = ("grpo", "rloo")  # sample, score with verifiable rewards, update: prompts, not pairs


@dataclass
class DPOSettings:
    beta: float = 0.1  # DPO paper / TRL default; seed #4 used 0.1


@dataclass
class IPOSettings:
    beta: float = 0.1  # IPO's tau (TRL: beta with loss_type='ipo'); TRL default, the IPO paper sweeps 0.01-1


@dataclass
class ORPOSettings:
    beta: float = 0.1  # ORPO paper's lambda (TRL calls it beta), TRL default 0.1


@dataclass
class KTOSettings:
    beta: float = 0.1  # KTO paper / TRL default
    desirable_weight: float = 1.0  # paper: keep desirable:undesirable weight ratio in [1, 4/3]
    undesirable_weight: float = 1.0


@dataclass
class SimPOSettings:
    beta: float = 2.0  # SimPO paper: beta 2.0-2.5 (its rewards are length-normalised, so beta is large)
    gamma: float = 1.0  # target reward margin; the paper's gamma/beta ratio of ~0.5


@dataclass
class OnlineSettings:
    """What GRPO and RLOO share besides the optimiser. Defaults from TRL's GRPOConfig/RLOOConfig
    docs except where the CPU budget says otherwise (each such line says so)."""

    # Completions per prompt (the group a GRPO advantage is relative to; RLOO's leave-one-out
    # baseline). TRL's GRPO default is 8 and RLOO's 2; 4 halves GRPO's generation time on CPU.
    num_generations: int = 4
    max_completion_length: int = 128  # TRL: 512; the SFT answers the held-out set is scored on run to 128
    temperature: float = 1.0  # TRL default: sampling spread is what gives a group different rewards
    top_p: float = 1.0  # TRL default
    beta: float = 0.0  # KL coefficient; 0 loads no reference model (TRL's GRPO default)
    epsilon: float = 0.2  # PPO-style clip of the importance ratio (TRL default, DeepSeekMath's 0.2)
    learning_rate: float = 1e-6  # TRL default (full fine-tuning); a LoRA adapter needs more
    max_steps: int = 12
    prompts_per_step: int = 2  # x num_generations completions per optimiser step
    use_vllm: bool = False  # TRL's vLLM generation, colocated with training on each GPU (requirements-vllm.txt)

    def __post_init__(self) -> None:
        import importlib.util

        if self.use_vllm and importlib.util.find_spec("vllm") is None:
            raise ConfigError("use_vllm: true, but vllm is not installed; install requirements-vllm.txt on a CUDA "
                              "machine, or set use_vllm: false (generation through transformers)")
        check_range("num_generations", self.num_generations, 2)
        check_range("max_completion_length", self.max_completion_length, 1)
        check_range("temperature", self.temperature, 0.0)
        check_range("max_steps", self.max_steps, 1)
        check_range("prompts_per_step", self.prompts_per_step, 1)
        check_range("learning_rate", self.learning_rate, 0.0, 1.0)


@dataclass
class GRPOSettings(OnlineSettings):
    # TRL default 'dapo': token losses normalised over the batch's active tokens (no length bias);
    # 'grpo' is the DeepSeekMath paper's per-sequence normalisation.
    loss_type: str = "dapo"
    scale_rewards: str = "group"  # TRL default; the Dr. GRPO paper argues for 'none'

    def __post_init__(self) -> None:
        super().__post_init__()
        allowed = ("grpo", "dr_grpo", "dapo", "bnpo", "cispo")
        if self.loss_type not in allowed:
            raise ConfigError(f"loss_type: '{self.loss_type}' is not allowed (allowed: {', '.join(allowed)})")
        if self.scale_rewards not in ("group", "batch", "none"):
            raise ConfigError(f"scale_rewards: '{self.scale_rewards}' is not allowed (allowed: group, batch, none)")


@dataclass
class RLOOSettings(OnlineSettings):
    beta: float = 0.05  # TRL's RLOO default: RLOO adds the KL penalty to the reward
    normalize_advantages: bool = False  # TRL default


@dataclass
class OnlinePromptSettings:
    """align.rl: the prompts GRPO and RLOO sample on, and the rewards that score them."""

    instruction_prompts: int = 64  # drawn from the preference stage's training prompts (never validation); 0 = none
    code_prompts: int = 0  # drawn from code_sources; the 135M default passes almost none (README)
    code_sources: list[ProblemSource] = field(default_factory=lambda: [ProblemSource()])
    rewards: RewardSettings = field(default_factory=RewardSettings)
    seed: int = 0  # the draws of prompts and problems (fixed across a seed study: the prompts stay the same)

    def __post_init__(self) -> None:
        check_range("instruction_prompts", self.instruction_prompts, 0)
        check_range("code_prompts", self.code_prompts, 0)
        if not self.instruction_prompts and not self.code_prompts:
            raise ConfigError("align.rl: instruction_prompts and code_prompts are both 0; give one of them prompts")


@dataclass
class AlignSettings:
    lora: LoraSettings = field(default_factory=LoraSettings)
    optim: OptimSettings = field(default_factory=lambda: OptimSettings(learning_rate=5e-5))
    dpo: DPOSettings = field(default_factory=DPOSettings)
    orpo: ORPOSettings = field(default_factory=ORPOSettings)
    kto: KTOSettings = field(default_factory=KTOSettings)
    ipo: IPOSettings = field(default_factory=IPOSettings)
    simpo: SimPOSettings = field(default_factory=SimPOSettings)
    rl: OnlinePromptSettings = field(default_factory=OnlinePromptSettings)
    grpo: GRPOSettings = field(default_factory=GRPOSettings)
    rloo: RLOOSettings = field(default_factory=RLOOSettings)
    launch: LaunchSettings = field(default_factory=LaunchSettings)


def to_unpaired(pairs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """KTO rows: each pair gives one desirable and one undesirable completion."""
    rows = []
    for pair in pairs:
        rows.append({"prompt": pair["prompt"], "completion": pair["chosen"], "label": True})
        rows.append({"prompt": pair["prompt"], "completion": pair["rejected"], "label": False})
    return rows


def check_answers_fit(pairs: list[dict[str, Any]], tokenizer: Any, max_length: int) -> None:
    """Every pair's answers need tokens inside max_length. TRL cuts a pair at max_length after the
    prompt, so a prompt that fills it leaves both answers empty: ORPO and SimPO average
    log-probabilities over answer tokens (0/0 = NaN, which the first update writes into every
    weight), and the other methods learn nothing from the pair."""
    def prompt_tokens(prompt: Any) -> int:
        text = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False) \
            if isinstance(prompt, list) else prompt
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    lengths = [prompt_tokens(pair["prompt"]) for pair in pairs]
    too_long = sum(length >= max_length for length in lengths)
    if too_long:
        raise ValueError(f"{too_long} of {len(pairs)} preference pairs have prompts of {max_length} tokens or more "
                         f"(the longest: {max(lengths)}), which leaves their answers no room under "
                         f"align.optim.max_length={max_length}; raise align.optim.max_length")


def resolved_config(method: str, settings: AlignSettings) -> dict[str, Any]:
    """The params the aligned model records: only the sections `method` reads, so changing another
    method's section re-runs the align stage (DVC tracks all of `align`) to the same bytes, and
    the stages after it stay cached."""
    used = {"lora", "optim", "launch", method} | ({"rl"} if method in ONLINE_METHODS else set())
    return {"method": method, **{name: value for name, value in as_dict(settings).items() if name in used}}


def _trainer_for(method: str, settings: AlignSettings, work_dir: Path) -> tuple[type, Any]:
    """The TRL trainer class and its config for `method`; the only per-method code."""
    common = trainer_arguments(settings.optim, str(work_dir))
    if method in ("dpo", "ipo"):
        from trl import DPOConfig, DPOTrainer

        if method == "ipo":
            return DPOTrainer, DPOConfig(**common, beta=settings.ipo.beta, loss_type=["ipo"])
        return DPOTrainer, DPOConfig(**common, beta=settings.dpo.beta)
    if method == "orpo":
        from trl.experimental.orpo import ORPOConfig, ORPOTrainer

        return ORPOTrainer, ORPOConfig(**common, beta=settings.orpo.beta)
    if method == "simpo":
        from trl.experimental.cpo import CPOConfig, CPOTrainer

        # SimPO is CPO's trainer with the SimPO loss and no behaviour-cloning term (cpo_alpha=0).
        return CPOTrainer, CPOConfig(
            **common, loss_type="simpo", cpo_alpha=0.0, beta=settings.simpo.beta, simpo_gamma=settings.simpo.gamma,
        )
    from trl import KTOConfig, KTOTrainer

    return KTOTrainer, KTOConfig(
        **common, beta=settings.kto.beta, desirable_weight=settings.kto.desirable_weight,
        undesirable_weight=settings.kto.undesirable_weight,
    )


# The columns dvc.yaml's alignment plots name. Each method logs only some of them (DPO no KL, GRPO
# no margins); the rest are written as nan, which the plots leave out, so `dvc plots show` draws
# every method's curves instead of failing on a field one method lacks.
PLOT_COLUMNS = ("loss", "learning_rate", "rewards/margins", "rewards/accuracies", "reward", "reward_std", "kl",
                "completions/mean_length", "completions/clipped_ratio")


def plot_rows(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{**{column: float("nan") for column in PLOT_COLUMNS}, **entry} for entry in history]


def check_alignable(method: str, sft_dir: Path) -> None:
    if method != "none" and artifact_kind(sft_dir) == "prompt":
        raise ValueError(
            f"{sft_dir} is a prompt-tuning adapter, which cannot be merged into weights, and TRL's preference "
            "trainers do not handle virtual tokens; align a LoRA, QLoRA, DoRA or full SFT model, or set method: none"
        )


def pass_through(sft_dir: Path, out_dir: Path) -> dict[str, Any]:
    """method: none. The aligned model is the SFT model; the marker tells loaders to skip this stage."""
    with written_whole(out_dir) as partial:
        (partial / PASSTHROUGH_FILE).write_text(json.dumps({"method": "none", "passes_through": str(sft_dir)}) + "\n")
    return {"method": "none", "steps": 0, "runtime_s": 0.0, "train_loss": None, "history": []}


def online_prompts(prompt_rows: list[dict[str, Any]], settings: OnlinePromptSettings,
                   ) -> tuple[list[dict[str, Any]], dict[str, dict[str, Any]]]:
    """GRPO/RLOO prompt rows (`rewards.rl_rows`) and the code problems their rewards check, by task_id.
    Instruction prompts are a seeded draw from the preference stage's training prompts; code
    problems a seeded draw from `code_sources` (training problems only: evaluation reads its own files)."""
    import random

    from tunelab.tasks.codeproblems import load_sources
    from tunelab.train.rewards import rl_rows

    if settings.instruction_prompts > len(prompt_rows):
        raise ConfigError(f"align.rl.instruction_prompts: {settings.instruction_prompts} asked, but the preference "
                          f"stage wrote {len(prompt_rows)} training prompts; lower it or raise preference.prompts")
    instructions = random.Random(settings.seed).sample(prompt_rows, settings.instruction_prompts)
    problems: list[dict[str, Any]] = []
    if settings.code_prompts:
        pool = load_sources(settings.code_sources)
        if settings.code_prompts > len(pool):
            raise ConfigError(f"align.rl.code_prompts: {settings.code_prompts} asked, but code_sources hold "
                              f"{len(pool)} problems; lower it or add a source")
        problems = sorted(random.Random(settings.seed).sample(pool, settings.code_prompts), key=lambda p: p["task_id"])
    return rl_rows(instructions, problems), {problem["task_id"]: problem for problem in problems}


def check_prompts_per_step(method: str, prompts: int, settings: AlignSettings) -> None:
    """TRL's online trainers draw whole steps of distinct prompts and drop an incomplete last one:
    fewer prompts than one step needs would train 0 steps without a word."""
    import os

    per_step = getattr(settings, method).prompts_per_step * int(os.environ.get("WORLD_SIZE", "1"))
    if prompts < per_step:
        raise ConfigError(f"align.{method}.prompts_per_step: a step needs {per_step} distinct prompts "
                          f"(prompts_per_step x {os.environ.get('WORLD_SIZE', '1')} processes), but align.rl gives "
                          f"{prompts}; lower prompts_per_step or raise align.rl.instruction_prompts / code_prompts")


def _online_trainer_for(method: str, settings: AlignSettings, work_dir: Path, weights: list[float]) -> tuple[type, Any]:
    """TRL's GRPO or RLOO trainer and config: the optimiser section as for every method, with the
    method's own learning rate, steps and batch (completions per step = prompts x generations)."""
    online = settings.grpo if method == "grpo" else settings.rloo
    common = trainer_arguments(settings.optim, str(work_dir))
    del common["max_length"]  # online trainers bound the completion instead (max_completion_length)
    completions = online.prompts_per_step * online.num_generations
    common.update(learning_rate=online.learning_rate, max_steps=online.max_steps,
                  per_device_train_batch_size=completions, per_device_eval_batch_size=completions)
    shared = dict(num_generations=online.num_generations, max_completion_length=online.max_completion_length,
                  temperature=online.temperature, top_p=online.top_p, beta=online.beta, epsilon=online.epsilon,
                  reward_weights=weights, use_vllm=online.use_vllm, vllm_mode="colocate")
    if method == "grpo":
        from trl import GRPOConfig, GRPOTrainer

        return GRPOTrainer, GRPOConfig(**common, **shared, loss_type=online.loss_type,
                                       scale_rewards=online.scale_rewards)
    from trl import RLOOConfig, RLOOTrainer

    return RLOOTrainer, RLOOConfig(**common, **shared, normalize_advantages=online.normalize_advantages)


def _end_of_turn_ids(model: Any, tokenizer: Any) -> set[int]:
    ids = model.generation_config.eos_token_id
    ids = set(ids if isinstance(ids, list) else [] if ids is None else [ids])
    return ids | {tokenizer.eos_token_id, tokenizer.pad_token_id} - {None}


def train_alignment(
    method: str, base_dir: Path, sft_dir: Path, pairs: list[dict[str, Any]], settings: AlignSettings,
    out_dir: Path, work_dir: Path, callbacks: list[Any] | None = None, prompts: list[dict[str, Any]] | None = None,
) -> dict[str, Any] | None:
    """Train, save to `out_dir` once finished, and return the align report (None on non-main DDP ranks).
    Offline methods read `pairs`; GRPO and RLOO read `prompts` (the preference stage's prompts.jsonl
    rows). `callbacks` are extra TrainerCallbacks (bench/training.py times steps with one)."""
    from datasets import Dataset

    if method not in (*ONLINE_METHODS, "none"):  # the data first: it fails in seconds, before any model loads
        check_answers_fit(pairs, load_tokenizer(base_dir, padding_side="right"), settings.optim.max_length)
    check_alignable(method, sft_dir)
    if method == "none":
        return pass_through(sft_dir, out_dir) if is_main_process() else None
    online = method in ONLINE_METHODS
    reward_log = RewardLog()
    if online:
        from tunelab.train.rewards import build_rewards

        rows, problems = online_prompts(prompts or [], settings.rl)
        check_prompts_per_step(method, len(rows), settings)
        tokenizer = load_tokenizer(base_dir, padding_side="left")  # TRL's online trainers generate left-padded
    else:
        rows = to_unpaired(pairs) if method == "kto" else [
            {"prompt": p["prompt"], "chosen": p["chosen"], "rejected": p["rejected"]} for p in pairs
        ]
        tokenizer = load_tokenizer(base_dir, padding_side="right")
    model = load_variant(base_dir, [sft_dir], attention=settings.optim.attention)
    checkpoints = CheckpointDir(work_dir, training_key({"method": method, **as_dict(settings)}, rows, [base_dir, sft_dir],
                                                  [*TRAINING_CODE, Path(__file__)]))
    extra: dict[str, Any] = {}
    if online:
        functions, weights = build_rewards(settings.rl.rewards, problems, _end_of_turn_ids(model, tokenizer),
                                           reward_log)
        trainer_class, args = _online_trainer_for(method, settings, checkpoints.root, weights)
        extra = {"reward_funcs": functions}
    else:
        trainer_class, args = _trainer_for(method, settings, checkpoints.root)
    trainer = trainer_class(
        model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tokenizer,
        peft_config=settings.lora.peft_config(), callbacks=callbacks, **extra,
    )
    trainable, total = trainable_parameters(trainer.model)
    training = train_resumably(trainer, checkpoints)
    save_trained(trainer, tokenizer, resolved_config(method, settings), out_dir, checkpoints)
    if not is_main_process():
        return None
    last = training["history"][-1] if training["history"] else {}
    report = {
        "method": method,
        **training,
        **({} if online else {"pairs": len(pairs)}),
        "train_rows": len(rows),
        "trainable_params": trainable,
        "total_params": total,
        "artifact_mb": directory_size_mb(out_dir),
        "final": {k: v for k, v in last.items() if k.startswith(("rewards/", "logps/", "reward", "kl"))},
    }
    if online:
        report["prompts"] = {"instructions": sum(bool(r["checks"]) for r in rows),
                             "code": sum(bool(r["task_id"]) for r in rows)}
        report["samples"] = reward_log.samples()
    return report


def score_on_validation(base_dir: Path, sft_dir: Path, aligned_dir: Path, validation: dict[str, Any]) -> dict[str, Any]:
    """The aligned model's validation scores beside the SFT model's, with the paired win/loss count.

    The validation prompts come from the preference stage's held-back split: this is the number to
    choose align settings on (`dvc exp show`), never the held-out evaluation set.
    """
    from tunelab.core.generation import SamplingSettings
    from tunelab.train.preference import validation_answers, win_loss

    rows = validation["rows"]
    if not rows:
        return {"prompts": 0}
    if artifact_kind(aligned_dir) == "passthrough":
        aligned = validation
    else:
        model = load_variant(base_dir, [sft_dir, aligned_dir])
        aligned = validation_answers(model, load_tokenizer(base_dir), rows, SamplingSettings(**validation["sampling"]))
    return {
        "prompts": len(rows),
        "sft": validation["accuracy"],
        "aligned": aligned["accuracy"],
        "prompt_loose_gain": aligned["accuracy"]["prompt_level_loose"] - validation["accuracy"]["prompt_level_loose"],
        **win_loss("aligned", "sft", aligned["prompt_loose"], validation["prompt_loose"]),
    }
