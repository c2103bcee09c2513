"""One MLflow run per pipeline run: params, every metric, curves, datasets, artifacts, models.

DVC files are the record; MLflow is the view. The report stage checks that the server answers
before it writes anything (a server that is down fails the stage with nothing written) and calls
`log_pipeline_run` after report.md and the figures are written, so a later tracking failure never
costs a DVC output. A run is always ended: FINISHED, FAILED on an exception, KILLED on
SIGTERM/SIGINT; a run whose process was SIGKILLed is marked KILLED by the next report stage that
finds its process gone.

Metric names are the JSON paths of `reports/<stage>.json`, joined with dots, with `@` written
`_at_` (MLflow allows only letters, digits and `_ - . / space`):
`evaluate.variants.aligned.ifeval.prompt_level_loose.mean`, `evaluate.variants.sft.humaneval.pass_at_1.ci_low`,
`sft.train_loss`. Training curves are step metrics `sft.curve.loss`, `reward.curve.accuracy`, `align.curve.rewards/margins`.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from tunelab.core.config import ConfigError, check_range
from tunelab.core.measuring import directory_size_mb

log = logging.getLogger(__name__)

# What the pipeline reads and writes as data, logged as MLflow dataset inputs with the DVC hash
# (from dvc.lock) as digest: the same digest means the same bytes.
DATASETS = {
    "data/generated": "generation",
    "data/curated": "training",
    "data/preference": "preference",
    "data/seed/heldout_prompts.txt": "evaluation",
    "data/seed/leetcode_eval.jsonl": "evaluation",
}
# Trained weights, logged so a run can be loaded back (`download_models`).
MODELS = ("models/sft", "models/aligned")
REGISTRABLE = ("sft", "aligned")  # variants the Model Registry takes (tunelab.track.registry)
# MLflow's experiment type: model training, not GenAI development. MLflow 3.17's UI does not act
# on it (its navigation follows the sidebar's "Model training" / GenAI switch, default GenAI, kept
# in the browser), so `make ui` prints `runs_table_url`, which opens the runs table directly.
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}


class TrackingUnavailable(RuntimeError):
    """The tracking server did not answer; the report stage checks first, so its outputs are not written."""


@dataclass
class TrackingSettings:
    experiment: str = "tunelab"  # MLflow experiment every pipeline run lands in
    retries: int = 4  # tries to reach a tracking server before the report stage fails
    backoff_s: float = 2.0  # wait after the first failed try; doubles after each
    max_model_mb: float = 100.0  # models/sft and models/aligned bigger than this (a full fine-tune)
    # are not copied into MLflow; their DVC hash is tagged instead (`dvc pull` restores them)
    tags: dict[str, str] = field(default_factory=dict)  # extra tags on every run
    registered_model: str = "tunelab"  # Model Registry names: <registered_model>-<variant>; "" = register nothing
    register: list[str] = field(default_factory=lambda: ["aligned"])  # variants registered each run: aligned, sft

    def __post_init__(self) -> None:
        check_range("tracking.retries", self.retries, 1)
        check_range("tracking.backoff_s", self.backoff_s, 0.0)
        check_range("tracking.max_model_mb", self.max_model_mb, 0.0)
        unknown = [variant for variant in self.register if variant not in REGISTRABLE]
        if unknown:
            raise ConfigError(f"tracking.register: {', '.join(map(str, unknown))} cannot be registered "
                              f"(allowed: {', '.join(REGISTRABLE)})")


def tracking_uri() -> str:
    """MLFLOW_TRACKING_URI if set, else mlflow.db at the DVC project root.

    `dvc exp run --temp/--queue` runs stages in a copy of the workspace but sets DVC_ROOT to the
    real project, so a path anchored there keeps every run in one store.
    """
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    root = Path(os.environ.get("DVC_ROOT") or Path.cwd()).resolve()
    return f"sqlite:///{root / 'mlflow.db'}"


def run_name(method: str) -> str:
    """The DVC experiment's name (set by `dvc exp run`), or workspace-<method> for plain `dvc repro`."""
    return os.environ.get("DVC_EXP_NAME") or f"workspace-{method}"


def flatten(data: Any, prefix: str = "", sep: str = ".") -> dict[str, Any]:
    """{'a': {'b': 1}} -> {'a.b': 1}; lists are skipped (they are curves or samples, not scalars)."""
    flat: dict[str, Any] = {}
    if isinstance(data, dict):
        for key, value in data.items():
            flat.update(flatten(value, f"{prefix}{sep}{key}" if prefix else str(key), sep))
    elif not isinstance(data, list):
        flat[prefix] = data
    return flat


def metric_name(key: str) -> str:
    """MLflow metric names allow only letters, digits, _ - . / and space: pass@1 -> pass_at_1."""
    return re.sub(r"[^\w\-./ ]", "_", key.replace("@", "_at_"))


def scalar_metrics(reports: dict[str, Any]) -> dict[str, float]:
    """Every number in the stage reports; None (no estimate, e.g. n=0) and booleans are left out."""
    return {
        metric_name(key): float(value) for key, value in flatten(reports).items()
        if isinstance(value, (int, float)) and not isinstance(value, bool)
    }


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def dvc_hashes(lock: dict[str, Any]) -> dict[str, str]:
    """path -> md5 of every dep and out dvc.lock records (a directory's hash without '.dir')."""
    hashes = {}
    for stage in lock.get("stages", {}).values():
        for entry in stage.get("deps", []) + stage.get("outs", []):
            if entry.get("md5"):
                hashes[entry["path"]] = entry["md5"].removesuffix(".dir")
    return hashes


def wait_for_server(uri: str, retries: int, backoff_s: float) -> None:
    """Return once an http(s) tracking server answers /health; a local store needs no wait."""
    if not uri.startswith(("http://", "https://")):
        return
    health = uri.rstrip("/") + "/health"
    delay = backoff_s
    for attempt in range(1, retries + 1):
        try:
            with urllib.request.urlopen(health, timeout=10):
                return
        except (urllib.error.URLError, OSError) as error:
            reason = getattr(error, "reason", error)
            if attempt == retries:
                raise TrackingUnavailable(
                    f"MLflow tracking server {uri} did not answer after {retries} tries ({reason}); "
                    "start the server (or unset MLFLOW_TRACKING_URI for the local mlflow.db) and re-run: "
                    "dvc repro report") from None
            log.warning("MLflow server %s: try %d/%d failed (%s); retrying in %.0f s",
                        uri, attempt, retries, reason, delay)
            time.sleep(delay)
            delay *= 2


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def close_abandoned_runs(client: Any, experiment_id: str) -> list[str]:
    """Mark KILLED the RUNNING runs whose report process on this host no longer exists (SIGKILL)."""
    closed = []
    for run in client.search_runs([experiment_id], filter_string="attributes.status = 'RUNNING'"):
        tags = run.data.tags
        if tags.get("tunelab.host") == socket.gethostname() and not _process_alive(int(tags.get("tunelab.pid", 0))):
            client.set_terminated(run.info.run_id, status="KILLED")
            closed.append(run.info.run_id)
    if closed:
        log.warning("marked %d abandoned MLflow run(s) KILLED: %s", len(closed), ", ".join(closed))
    return closed


class _Interrupted(BaseException):
    """Raised by the SIGTERM handler so the run can be ended before the process exits."""


@contextmanager
def ended_run(mlflow: Any, name: str, tags: dict[str, str]) -> Iterator[Any]:
    """An active run that ends FINISHED, FAILED on an error, or KILLED on SIGTERM/SIGINT."""
    def interrupt(signum: int, frame: Any) -> None:
        raise _Interrupted(signal.Signals(signum).name)

    previous = signal.signal(signal.SIGTERM, interrupt)
    run = mlflow.start_run(run_name=name, tags=tags)
    try:
        yield run
    except (_Interrupted, KeyboardInterrupt):
        mlflow.end_run(status="KILLED")
        raise SystemExit(f"error: interrupted; MLflow run {run.info.run_id} marked KILLED") from None
    except BaseException:
        mlflow.end_run(status="FAILED")
        raise
    else:
        mlflow.end_run(status="FINISHED")
    finally:
        signal.signal(signal.SIGTERM, previous)



def _log_datasets(mlflow: Any, hashes: dict[str, str], root: Path) -> None:
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset

    for path, context in DATASETS.items():
        if path in hashes and (root / path).exists():
            source = resolve_dataset_source(str((root / path).resolve()))
            dataset = MetaDataset(source=source, name=path, digest=hashes[path])
            mlflow.log_input(dataset, context=context)


def _log_models(mlflow: Any, hashes: dict[str, str], root: Path, max_mb: float) -> None:
    for path in MODELS:
        directory = root / path
        if not directory.is_dir():
            continue
        size = directory_size_mb(directory)
        if size <= max_mb:
            mlflow.log_artifacts(str(directory), artifact_path=path)
        else:
            log.info("%s is %.0f MB (> tracking.max_model_mb): tagged with its DVC hash, not copied", path, size)
            mlflow.set_tag(f"tunelab.not_logged.{path}", f"{size:.0f} MB; dvc pull restores md5 {hashes.get(path, '?')}")


def log_pipeline_run(
    params: dict[str, Any], reports: dict[str, Any], lock: dict[str, Any], artifacts: dict[str, list[Path]],
    config: TrackingSettings, root: Path = Path("."),
) -> str:
    """Log one pipeline run and return its id.

    `artifacts` maps an artifact folder ('' = the run's root) to the files logged there.
    """
    import mlflow

    uri = tracking_uri()
    wait_for_server(uri, config.retries, config.backoff_s)
    mlflow.set_tracking_uri(uri)
    experiment = mlflow.set_experiment(config.experiment)
    client = mlflow.MlflowClient(uri)
    for key, value in EXPERIMENT_KIND.items():
        client.set_experiment_tag(experiment.experiment_id, key, value)
    close_abandoned_runs(client, experiment.experiment_id)

    method = str(params.get("method", ""))
    name = run_name(method)
    hashes = dvc_hashes(lock)
    commit = git_commit()
    tags = {
        "method": method, "sft.peft": str(params.get("sft", {}).get("peft", "")), "dvc.exp_name": name,
        "git.commit": commit, "mlflow.source.git.commit": commit,
        "tunelab.host": socket.gethostname(), "tunelab.pid": str(os.getpid()),
        "mlflow.note.content": run_description(method, commit, reports),  # the run page's description
        **{f"dvc.md5.{path}": md5 for path, md5 in hashes.items() if path.startswith(("data/", "models/"))},
        **sandbox_tags(reports.get("evaluate", {}).get("sandbox", {})),
        **config.tags,
    }
    with ended_run(mlflow, name, tags) as run:
        mlflow.log_params({key: str(value)[:500] for key, value in flatten(params).items()})
        mlflow.log_metrics(scalar_metrics(reports))
        for stage in ("sft", "reward", "align"):
            for entry in reports.get(stage, {}).get("history", []):
                mlflow.log_metrics({metric_name(f"{stage}.curve.{key}"): float(value)
                                    for key, value in entry.items() if key != "step" and value is not None},
                                   step=int(entry["step"]))
        _log_datasets(mlflow, hashes, root)
        for folder, paths in artifacts.items():
            for path in paths:
                if path.is_file():
                    mlflow.log_artifact(str(path), artifact_path=folder or None)
        _log_models(mlflow, hashes, root, config.max_model_mb)
        if config.registered_model and config.register:
            from tunelab.track.registry import register_variants

            register_variants(client, run.info.run_id, config.registered_model, config.register, params, reports,
                              hashes, commit, config.max_model_mb, root)
        return run.info.run_id


def runs_table_url(server: str, experiment_id: str) -> str:
    """The experiment's runs table in MLflow's UI (with the switch on "Model training")."""
    return f"{server.rstrip('/')}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"


def main(argv: list[str] | None = None) -> None:
    """`python -m tunelab.track.tracking runs-url SERVER`: where `make ui` sends a researcher."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("command", choices=["runs-url"])
    parser.add_argument("server", help="the UI's address, e.g. http://127.0.0.1:5000")
    parser.add_argument("--experiment", default=TrackingSettings.experiment)
    args = parser.parse_args(argv)
    import mlflow

    experiment = mlflow.MlflowClient(tracking_uri()).get_experiment_by_name(args.experiment)
    if experiment is None:
        print(f"no MLflow experiment '{args.experiment}' in {tracking_uri()} yet: `make run` logs the first run")
        return
    print(f"MLflow runs table: {runs_table_url(args.server, experiment.experiment_id)}")


def run_description(method: str, commit: str, reports: dict[str, Any]) -> str:
    """Markdown for the run page: what ran, and every variant's held-out scores with intervals."""
    from tunelab.track.report import interval_cell

    columns = (("IFEval prompt loose", "ifeval", "prompt_level_loose"), ("IFEval inst loose", "ifeval", "inst_level_loose"),
               ("HumanEval pass@1", "humaneval", "pass@1"))
    lines = [f"TuneLab pipeline run: method {method}, commit {commit}. Scores in % with 95% intervals "
             "(reports/evaluate.json).", "", "| variant | " + " | ".join(label for label, _, _ in columns) + " |",
             "| --- |" + " --- |" * len(columns)]
    for variant, scores in reports.get("evaluate", {}).get("variants", {}).items():
        cells = [interval_cell(scores[section][metric]) if metric in scores.get(section, {}) else "-"
                 for _, section, metric in columns]
        lines.append(f"| {variant} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def sandbox_tags(sandbox: dict[str, Any]) -> dict[str, str]:
    """The evaluated model code's isolation as run tags, so the MLflow UI shows a weaker run as such."""
    if not sandbox.get("variants"):
        return {}
    return {"sandbox.protections": ",".join(sandbox["protections"]) or "none",
            "sandbox.required": ",".join(sandbox["required"]), "sandbox.missing": ",".join(sandbox["missing"]) or "none"}


def download_models(run_id: str, destination: Path) -> list[Path]:
    """The run's sft and aligned weights, ready for `tunelab.core.models.load_variant(base, paths)`."""
    import mlflow

    mlflow.set_tracking_uri(tracking_uri())
    found = {item.path for item in mlflow.MlflowClient().list_artifacts(run_id, "models")}
    missing = [path for path in MODELS if path not in found]
    if missing:
        raise FileNotFoundError(f"MLflow run {run_id} holds no {', '.join(missing)} "
                                "(larger than tracking.max_model_mb: restore it with dvc pull)")
    return [Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=path, dst_path=str(destination)))
            for path in MODELS]


if __name__ == "__main__":
    main()
