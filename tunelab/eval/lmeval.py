"""Run lm-evaluation-harness tasks on an already-loaded model, and keep every per-item score.

TuneLab's own offline tasks live in `tunelab/eval/lm_eval_tasks` (an lm-eval include_path); any
other task lm-eval knows (e.g. `mmlu`, `gsm8k` on a machine with hub access) runs the same way.
The model is handed to lm-eval's HF wrapper as an object, so every variant TuneLab can load
(merged adapters, prompt tuning, full fine-tunes, compressed models) is evaluated identically.

Generation requests go through `tunelab.core.generation.generate_texts` (the generate stage's batched
decoder: length-sorted batches, rows leave the batch as they finish, our nucleus sampler) rather
than the wrapper's own loop, with the same stop sequences, token budget and decoding settings.
`bench/evaluate_decoder.py` measures it against lm-eval's loop on the same requests (figures in
docs/performance.md). Our one extra generation kwarg, `stop_after_code_block`, ends a code answer
once its first code block closes (the only code the sandbox runs). Requests whose generation
kwargs hold anything else (top_k, num_beams, ...) take the wrapper's path, without that kwarg.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunelab.core.config import ConfigError

TASKS_DIR = Path(__file__).parent / "lm_eval_tasks"
# Our tasks report under short section names, the ones reports and MLflow have always used.
SECTIONS = {"tunelab_ifeval": "ifeval", "tunelab_humaneval": "humaneval",
            "tunelab_humaneval_sampled": "humaneval_sampled", "tunelab_leetcode": "leetcode",
            "tunelab_explain": "explanation", "tunelab_codepairs": "code_pairs"}


@dataclass
class LmEvalTask:
    """One lm-eval task and what to change in its config (e.g. dataset_kwargs, generation_kwargs)."""

    task: str
    overrides: dict[str, Any] = field(default_factory=dict)
    chat: bool = True  # apply the model's chat template to the prompt

    @property
    def section(self) -> str:
        """Where its results go in evaluate.json. An extra task named like one of our sections
        (lm-eval's own `ifeval`) goes under `lm_eval_<name>`, beside ours, never over it."""
        if self.task in SECTIONS:
            return SECTIONS[self.task]
        return f"lm_eval_{self.task}" if self.task in SECTIONS.values() else self.task


@dataclass
class TaskRun:
    """What one task produced: per-item scores in document order, and the logged samples."""

    scores: dict[str, list[Any]]
    samples: list[dict[str, Any]]
    aggregate: dict[str, Any]


@functools.cache
def task_manager(include_defaults: bool) -> Any:
    """lm-eval's task index: ours, plus lm-eval's own thousands of tasks only when one is asked for
    (indexing those takes seconds in every evaluation stage)."""
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=str(TASKS_DIR), include_defaults=include_defaults)


def needs_builtin_tasks(tasks: list[LmEvalTask]) -> bool:
    return any(task.task not in SECTIONS for task in tasks)


def task_config(task: LmEvalTask) -> dict[str, Any]:
    """The task's full config with the overrides applied (lm-eval takes a dict as a whole task)."""
    from lm_eval.tasks._yaml_loader import load_yaml

    entry = task_manager(needs_builtin_tasks([task])).task_index.get(task.task)
    if entry is None or entry.yaml_path is None:
        raise ConfigError(f"evaluate.lm_eval_tasks: lm-eval knows no task {task.task!r} "
                          f"(ours are in {TASKS_DIR}: {', '.join(sorted(SECTIONS))})")
    config = copy.deepcopy(load_yaml(entry.yaml_path, resolve_func=True))
    for key, value in task.overrides.items():
        if isinstance(value, dict) and isinstance(config.get(key), dict):
            config[key] = {**config[key], **value}
        else:
            config[key] = value
    config.pop("group", None)
    config.pop("tag", None)
    return config


# The decoding settings tunelab.core.generation.SamplingSettings covers; anything else goes to lm-eval's loop.
FAST_PATH_KWARGS = {"until", "do_sample", "temperature", "top_p", "repetition_penalty", "max_gen_toks",
                    "stop_after_code_block"}


def timed_lm(model: Any, tokenizer: Any, batch_size: int, max_length: int | None = None) -> Any:
    """lm-eval's HF wrapper around `model`, generating through TuneLab's decoder and counting
    generated tokens and generation time."""
    from lm_eval.models.huggingface import HFLM

    class TimedHFLM(HFLM):
        new_tokens = 0
        seconds = 0.0

        def generate_until(self, requests, disable_tqdm: bool = False):
            started = time.perf_counter()
            args = [request.args for request in requests]
            if all(set(kwargs) <= FAST_PATH_KWARGS for _, kwargs in args):
                texts = generate_for_requests(self, args)
            else:  # lm-eval's loop passes unknown kwargs to generate: it gets ours dropped, the answer runs on
                texts = super().generate_until(without_our_kwargs(requests), disable_tqdm=disable_tqdm)
            self.seconds += time.perf_counter() - started
            self.new_tokens += sum(len(self.tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts)
            return texts

    return TimedHFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, max_length=max_length)


def without_our_kwargs(requests: list[Any]) -> list[Any]:
    """Copies of lm-eval requests without `stop_after_code_block`, which only our decoder knows."""
    return [dataclasses.replace(r, arguments=(r.args[0], {k: v for k, v in r.args[1].items()
                                                          if k != "stop_after_code_block"})) for r in requests]


def generate_for_requests(lm: Any, args: list[tuple[str, dict]]) -> list[str]:
    """lm-eval's generate_until semantics (stop at EOS or any `until` string, cut the text there,
    at most max_gen_toks new tokens) on `tunelab.core.generation.generate_texts`, one call per distinct
    set of generation kwargs, in request order."""
    from lm_eval.models.utils import (
        handle_stop_sequences,
        normalize_gen_kwargs,
        postprocess_generated_text,
    )

    from tunelab.core.generation import SamplingSettings, generate_texts
    from tunelab.tasks.humaneval import first_code_block_closed

    eos = lm.tok_decode(lm.eot_token_id, skip_special_tokens=False)
    groups: dict[str, list[int]] = {}
    for index, (_, gen_kwargs) in enumerate(args):
        groups.setdefault(json.dumps(gen_kwargs, sort_keys=True, default=str), []).append(index)
    outputs = [""] * len(args)
    for group_number, indices in enumerate(groups.values()):
        kwargs = normalize_gen_kwargs(dict(args[indices[0]][1]), lm.max_gen_toks)
        stop_when = first_code_block_closed if kwargs.pop("stop_after_code_block", False) else None
        until = handle_stop_sequences(kwargs.pop("until", None), eos=eos)
        sampling = SamplingSettings(
            max_new_tokens=kwargs["max_gen_toks"],
            temperature=kwargs.get("temperature", 0.0) if kwargs.get("do_sample") else 0.0,
            top_p=kwargs.get("top_p", 1.0) or 1.0,
            repetition_penalty=kwargs.get("repetition_penalty", 1.0),
            batch_size=int(lm.batch_size),
        )
        stop_strings = [u for u in until if u and u != eos] or None  # EOS itself ends generation anyway
        texts = generate_texts(lm.model, lm.tokenizer, [args[i][0] for i in indices], sampling, seed=group_number,
                               description="lm-eval requests", stop_strings=stop_strings, stop_when=stop_when)
        for index, text in zip(indices, texts):
            outputs[index] = postprocess_generated_text(generation=text, stop=until, think_end_token=None)
    return outputs


def run_tasks(lm: Any, tasks: list[LmEvalTask], seed: int) -> dict[str, TaskRun]:
    """Evaluate `tasks` with lm-eval; one call per chat setting, since lm-eval applies it globally."""
    from lm_eval import simple_evaluate

    runs: dict[str, TaskRun] = {}
    for chat in (True, False):
        chosen = [t for t in tasks if t.chat == chat]
        if not chosen:
            continue
        output = simple_evaluate(
            model=lm, tasks=[task_config(t) for t in chosen], task_manager=task_manager(needs_builtin_tasks(chosen)),
            apply_chat_template=chat, log_samples=True, bootstrap_iters=0,  # our own intervals below
            random_seed=seed, numpy_random_seed=seed, torch_random_seed=seed, fewshot_random_seed=seed,
        )
        for task in chosen:
            samples = sorted(output["samples"][task.task], key=lambda s: s["doc_id"])
            names = samples[0]["metrics"] if samples else []
            runs[task.section] = TaskRun(
                scores={name: [s[name] for s in samples] for name in names},
                samples=samples,
                aggregate=output["results"][task.task],
            )
    return runs
