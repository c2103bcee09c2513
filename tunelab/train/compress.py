"""Compression of the aligned model: int8 dynamic quantization and L1 unstructured pruning.

Each variant is a self-describing directory: config, tokenizer, weights and a `tunelab_compressed.json`
marker naming its kind, source and settings. `load_compressed` rebuilds either kind as an eval-mode model
that `.generate()` accepts, so the evaluate stage can measure it beside the uncompressed variants.

Only the transformer blocks' nn.Linear layers are compressed: the embedding matrix is an nn.Embedding, and
the output head is tied to it in SmolLM2, so quantizing or pruning the head would either store a second
copy of the largest matrix or zero rows of the input embeddings as well. The output projection is also
the layer most sensitive to error (SparseGPT and Wanda leave it dense for that reason).

A prompt-tuned model (sft.peft: prompt_tuning with method: none) has nothing to merge: its virtual tokens
are inputs, not weights. Its underlying weights are compressed and the prompt adapter travels in the
variant's `prompt_adapter/`, so the variant is still the model the evaluate stage scores as aligned.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
import warnings
import zlib
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

from tunelab.core.config import ConfigError, check_range

log = logging.getLogger(__name__)

MARKER = "tunelab_compressed.json"
INT8_WEIGHTS = "model_int8.pt"  # a state dict: quantized layers hold packed int8 params, not safetensors-able
PROMPT_ADAPTER = "prompt_adapter"
KINDS = ("int8", "pruned")
# The logit check feeds every variant the same short chat turn, the kind of input the evaluate stage gives.
PROBE = ("Write a Python function that returns the sum of a list of numbers.",
         "def total(numbers):\n    return sum(numbers)\n")
QUANTIZE_API = "torch.ao.quantization.quantize_dynamic"
CHUNK = 1 << 24  # bytes read or compressed at a time


@dataclass
class CompressSettings:
    int8: bool = True  # int8 dynamic quantization of the Linear layers (weights int8, activations per batch)
    prune_sparsity: float = 0.3  # fraction of each Linear weight matrix zeroed by |w|; 0 = no pruned variant

    def __post_init__(self) -> None:
        check_range("compress.prune_sparsity", self.prune_sparsity, 0.0)
        if self.prune_sparsity >= 1.0:  # check_range is closed; 1.0 would zero every weight
            raise ConfigError(f"compress.prune_sparsity: {self.prune_sparsity} is outside [0.0, 1.0)")

    def kinds(self) -> list[str]:
        return [kind for kind, on in (("int8", self.int8), ("pruned", self.prune_sparsity > 0)) if on]


# --- the compressions -------------------------------------------------------------------------------


def weights_model(model: Any) -> Any:
    """The transformer under a prompt-tuning PeftModel, or the model itself."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def compressible_linears(model: Any) -> dict[str, Any]:
    """Every nn.Linear of the transformer except the (tied) output head, by module name."""
    import torch

    head = model.get_output_embeddings()
    return {name: module for name, module in model.named_modules()
            if isinstance(module, torch.nn.Linear) and module is not head}


@contextmanager
def _quiet_quantization_deprecation() -> Iterator[None]:
    # torch 2.13 marks torch.ao.quantization (and quantized tensors) deprecated in favour of torchao, which
    # is not installed here; the eager API still works, and the marker records which API wrote a variant.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"torch\.ao\.quantization is deprecated", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message=r"torch\.quantize_per_tensor", category=UserWarning)
        warnings.filterwarnings("ignore", message=r"TypedStorage is deprecated", category=UserWarning)
        yield


def quantize_int8(model: Any, names: list[str]) -> None:
    """Swap the named nn.Linear modules for dynamically quantized int8 ones, in place."""
    import torch
    from torch.ao.quantization import default_dynamic_qconfig, quantize_dynamic

    with _quiet_quantization_deprecation():
        quantize_dynamic(model, {name: default_dynamic_qconfig for name in names}, dtype=torch.qint8, inplace=True)


def prune_l1(model: Any, names: list[str], sparsity: float) -> None:
    """Zero the `sparsity` fraction of smallest-|w| entries of each named Linear weight, permanently."""
    from torch.nn.utils import prune

    modules = dict(model.named_modules())
    for name in names:
        prune.l1_unstructured(modules[name], "weight", amount=sparsity)
        prune.remove(modules[name], "weight")  # bake the mask into the weight: no mask buffers saved


def linear_weights(model: Any, names: list[str]) -> list[Any]:
    """The named float Linear layers' weight matrices."""
    modules = dict(model.named_modules())
    return [modules[name].weight.detach() for name in names]


def zero_fraction(model: Any, names: list[str]) -> float:
    weights = linear_weights(model, names)
    return sum(int((w == 0).sum()) for w in weights) / sum(w.numel() for w in weights)


def count_parameters(model: Any) -> int:
    """Weights held, counting a quantized Linear's packed weight and bias (they are not nn.Parameters)."""
    from torch.ao.nn.quantized.dynamic import Linear as QuantizedLinear

    total = sum(p.numel() for p in model.parameters())
    for module in model.modules():
        if isinstance(module, QuantizedLinear):
            bias = module.bias()
            total += module.weight().numel() + (0 if bias is None else bias.numel())
    return total


def unique_state(model: Any) -> dict[str, Any]:
    """The float model's state dict with each tied tensor once, as save_pretrained writes it."""
    seen: dict[int, str] = {}
    state = weights_model(model).state_dict()
    for name, tensor in state.items():
        seen.setdefault(tensor.data_ptr(), name)
    return {name: state[name] for name in seen.values()}


def state_mb(model: Any) -> float:
    """Bytes of the float model's tensors: what an uncompressed save would write."""
    return sum(t.numel() * t.element_size() for t in unique_state(model).values()) / 1e6


# --- saving and loading ------------------------------------------------------------------------------


def _save_common(model: Any, tokenizer: Any, out: Path, marker: dict[str, Any]) -> None:
    """Tokenizer, the prompt adapter where there is one, and the marker; the caller writes the weights."""
    from tunelab.core.models import save_tokenizer

    save_tokenizer(tokenizer, out)
    if weights_model(model) is not model:
        model.save_pretrained(out / PROMPT_ADAPTER)  # a PeftModel saves only its adapter
    (out / MARKER).write_text(json.dumps(marker, indent=2) + "\n")


def save_int8(model: Any, tokenizer: Any, out: Path, marker: dict[str, Any]) -> None:
    # save_pretrained cannot serialise packed quantized params; torch.save of the state dict can, and
    # torch.load(weights_only=True) reads it back without unpickling arbitrary objects.
    import torch

    inner = weights_model(model)
    inner.config.save_pretrained(out)
    inner.generation_config.save_pretrained(out)
    with _quiet_quantization_deprecation():
        torch.save(inner.state_dict(), out / INT8_WEIGHTS)
    _save_common(model, tokenizer, out, marker)


def save_pruned(model: Any, tokenizer: Any, out: Path, marker: dict[str, Any]) -> None:
    weights_model(model).save_pretrained(out, safe_serialization=True)
    _save_common(model, tokenizer, out, marker)


def is_compressed(path: str | Path) -> bool:
    return (Path(path) / MARKER).is_file()


def compressed_variants(root: str | Path) -> dict[str, Path]:
    """The compressed variants under the compress stage's output, by kind (for the evaluate stage)."""
    root = Path(root)
    return {kind: root / kind for kind in KINDS if is_compressed(root / kind)}


def read_marker(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not is_compressed(path):
        raise FileNotFoundError(f"{path} holds no compressed model (no {MARKER}; run the compress stage)")
    try:
        marker = json.loads((path / MARKER).read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path / MARKER} is not valid JSON ({err.msg})") from err
    if not isinstance(marker, dict) or marker.get("kind") not in KINDS:
        raise ValueError(f"{path / MARKER}: no kind among {', '.join(KINDS)}")
    missing = [key for key in ("source", "settings", "prompt_adapter") if key not in marker]
    if marker["kind"] == "int8" and "modules" not in marker.get("settings", {}):
        missing.append("settings.modules")
    if missing:
        raise ValueError(f"{path / MARKER} lacks {', '.join(missing)} (written by another version?)")
    return marker


def load_compressed(path: str | Path) -> Any:
    """An eval-mode model rebuilt from a compressed variant directory (a PeftModel if prompt-tuned)."""
    import torch
    from peft import PeftModel
    from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig

    path = Path(path)
    marker = read_marker(path)
    if marker["kind"] == "pruned":
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    else:
        weights = path / INT8_WEIGHTS
        if not weights.is_file():
            raise FileNotFoundError(f"{weights} is missing (the compress stage did not finish)")
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(path), dtype=torch.float32)
        model.generation_config = GenerationConfig.from_pretrained(path)
    if marker["prompt_adapter"]:
        # before quantizing: PEFT loads its adapter with load_state_dict(strict=False), which quantized
        # layers do not tolerate
        model = PeftModel.from_pretrained(model, path / PROMPT_ADAPTER)
    if marker["kind"] == "int8":
        inner = weights_model(model)
        quantize_int8(inner, marker["settings"]["modules"])
        try:
            with _quiet_quantization_deprecation():
                inner.load_state_dict(torch.load(weights, weights_only=True))
        except Exception as err:  # a truncated file, a foreign pickle, or weights of another architecture
            raise ValueError(f"{weights} cannot be loaded: {str(err).splitlines()[0]}") from err
    model.eval()
    return model


# --- measurement -------------------------------------------------------------------------------------


def probe_agreement(reference_logits: Any, model: Any, input_ids: Any) -> dict[str, float]:
    """How far the variant's next-token predictions on the probe are from the uncompressed model's."""
    import torch

    with torch.no_grad():
        logits = model(input_ids=input_ids).logits
    reference, ours = reference_logits.log_softmax(-1)[0], logits.log_softmax(-1)[0]
    return {
        "max_abs_logit_diff": round(float((logits - reference_logits).abs().max()), 6),
        "probe_kl": round(float((reference.exp() * (reference - ours)).sum(-1).mean()), 6),  # nats per token
        "probe_top1_agreement": round(float((ours.argmax(-1) == reference.argmax(-1)).float().mean()), 4),
    }


def gzip_mb(chunks: Iterable[bytes]) -> float:
    """Bytes after `gzip -1` of the concatenated chunks: level 1 because -6 takes minutes on 540 MB and
    finds the same runs of zeros."""
    compressor = zlib.compressobj(1, zlib.DEFLATED, 31)  # wbits 31: gzip framing
    total = sum(len(compressor.compress(chunk)) for chunk in chunks)
    return (total + len(compressor.flush())) / 1e6


def file_chunks(paths: list[Path]) -> Iterator[bytes]:
    for path in paths:
        with path.open("rb") as handle:
            while chunk := handle.read(CHUNK):
                yield chunk


def safetensors_chunks(model: Any) -> Iterator[bytes]:
    """The float model serialised as one safetensors file would be (tied tensors once), in memory."""
    from safetensors.torch import save

    data = memoryview(save({name: tensor.contiguous() for name, tensor in unique_state(model).items()}))
    for start in range(0, len(data), CHUNK):
        yield data[start:start + CHUNK]


def bitmask_mb(model: Any, names: list[str]) -> float:
    """Size if the named layers were stored as their nonzero values plus a 1-bit mask (the rest dense):
    what a sparse format could save, independent of how compressible the values themselves are."""
    weights = linear_weights(model, names)
    dense = sum(w.numel() * w.element_size() for w in weights)
    sparse = sum(int((w != 0).sum()) * w.element_size() + math.ceil(w.numel() / 8) for w in weights)
    return state_mb(model) - (dense - sparse) / 1e6


def files_mb(paths: list[Path]) -> float:
    return sum(p.stat().st_size for p in paths) / 1e6


# --- the stage's work --------------------------------------------------------------------------------


def load_source(base_dir: str | Path, adapters: list[str | Path]) -> Any:
    """The uncompressed aligned model in fp32 (the dtype quantize_dynamic's kernels take); a missing or
    corrupt part fails with one line naming it."""
    from tunelab.core.models import load_variant

    return load_variant(base_dir, adapters, dtype="float32")


def compress_variant(kind: str, base_dir: str | Path, adapters: list[str | Path], config: CompressSettings,
                     tokenizer: Any, out: Path, reference_logits: Any, probe_ids: Any) -> dict[str, Any]:
    """Build, save, reload and measure one compressed variant."""
    from tunelab.core.io import written_whole
    from tunelab.core.measuring import directory_size_mb

    model = load_source(base_dir, adapters)
    inner = weights_model(model)
    names = list(compressible_linears(inner))
    if kind == "pruned":  # the baseline the pruned file's gzip size must be read against
        uncompressed_gzip = gzip_mb(safetensors_chunks(inner))
    started = time.perf_counter()
    if kind == "int8":
        quantize_int8(inner, names)
        settings = {"dtype": "qint8", "api": QUANTIZE_API, "modules": names}
    else:
        prune_l1(inner, names, config.prune_sparsity)
        settings = {"method": "l1_unstructured", "sparsity": config.prune_sparsity, "modules": names}
    seconds = time.perf_counter() - started
    marker = {
        "kind": kind, "source": {"model": str(base_dir), "adapters": [str(a) for a in adapters]},
        "settings": settings, "prompt_adapter": inner is not model,
    }
    with written_whole(out) as partial:
        (save_int8 if kind == "int8" else save_pruned)(model, tokenizer, partial, marker)
    del model, inner

    loaded = load_compressed(out)  # every number below describes what is on disk, not what was in memory
    weight_files = [out / INT8_WEIGHTS] if kind == "int8" else sorted(out.glob("*.safetensors"))
    metrics = {
        "dir": str(out),
        "size_mb": round(directory_size_mb(out), 3),
        "weights_mb": round(files_mb(weight_files), 3),
        "parameters": count_parameters(loaded),
        "compressed_layers": len(names),
        "compress_time_s": round(seconds, 3),
        **probe_agreement(reference_logits, loaded, probe_ids),
    }
    if kind == "pruned":
        metrics["sparsity"] = round(zero_fraction(weights_model(loaded), names), 5)
        metrics["bitmask_mb"] = round(bitmask_mb(weights_model(loaded), names), 3)
        metrics["weights_gzip_mb"] = round(gzip_mb(file_chunks(weight_files)), 3)
        metrics["uncompressed_gzip_mb"] = round(uncompressed_gzip, 3)
        metrics["storage_note"] = (
            "unstructured zeros are stored densely, so weights_mb equals the uncompressed size; sparse storage "
            "would take bitmask_mb (nonzeros + 1-bit mask), and gzip -1 takes weights_gzip_mb against "
            "uncompressed_gzip_mb for the unpruned weights")
    return metrics


def compress_aligned(base_dir: str | Path, adapters: list[str | Path], config: CompressSettings,
                     out_dir: str | Path) -> dict[str, Any]:
    """Write each enabled compressed variant of base+adapters under `out_dir`; returns the metrics."""
    import torch

    from tunelab.core.generation import chat_prompt
    from tunelab.core.models import load_tokenizer

    out_dir = Path(out_dir)
    tokenizer = load_tokenizer(base_dir)
    log.info("loading the aligned model: %s + %s", base_dir, [str(a) for a in adapters])
    reference = load_source(base_dir, adapters)
    probe_ids = tokenizer(chat_prompt(tokenizer, PROBE[0]) + PROBE[1], return_tensors="pt",
                          add_special_tokens=False).input_ids  # the chat template has its own specials
    with torch.no_grad():
        reference_logits = reference(input_ids=probe_ids).logits
    summary = {
        "parameters": count_parameters(reference),
        "state_mb": round(state_mb(reference), 3),
        "compressible_layers": len(compressible_linears(weights_model(reference))),
        "prompt_adapter": weights_model(reference) is not reference,
    }
    del reference

    out_dir.mkdir(parents=True, exist_ok=True)
    variants = {}
    for kind in KINDS:
        target = out_dir / kind
        if kind not in config.kinds():
            if is_compressed(target):  # a variant switched off must not be evaluated from a stale run
                log.info("%s: switched off; removing the previous %s", kind, target)
                shutil.rmtree(target)
            continue
        log.info("%s: compressing %d Linear layers", kind, summary["compressible_layers"])
        variants[kind] = compress_variant(kind, base_dir, adapters, config, tokenizer, target, reference_logits,
                                          probe_ids)
        log.info("%s: %.1f MB on disk (weights %.1f MB, uncompressed %.1f MB), probe KL %.4f nats/token", kind,
                 variants[kind]["size_mb"], variants[kind]["weights_mb"], summary["state_mb"],
                 variants[kind]["probe_kl"])
    return {
        "config": asdict(config),
        "source": {"model": str(base_dir), "adapters": [str(a) for a in adapters]},
        "uncompressed": summary,
        "probe": {"user": PROBE[0], "assistant": PROBE[1], "tokens": int(probe_ids.shape[1])},
        "quantize_api": QUANTIZE_API,
        "torch": torch.__version__,
        "variants": variants,
    }
