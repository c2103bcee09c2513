"""The compress stage on a tiny random Llama: int8 and pruned variants, their round trip, and its errors."""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, write_params
from tunelab.core.config import ConfigError, load_section
from tunelab.core.io import read_json
from tunelab.train.compress import (
    INT8_WEIGHTS,
    MARKER,
    CompressSettings,
    compress_aligned,
    compressed_variants,
    compressible_linears,
    is_compressed,
    load_compressed,
    read_marker,
)

SPARSITY = 0.3


@pytest.fixture(scope="module")
def lora_sft(tiny_model_dir, tmp_path_factory) -> Path:
    """A LoRA adapter with random B, so merging it really changes the weights that get compressed."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(1)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    peft_model = get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    out = tmp_path_factory.mktemp("sft-lora")
    peft_model.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def compressed(tiny_model_dir, lora_sft, tmp_path_factory) -> tuple[dict, Path]:
    out = tmp_path_factory.mktemp("compressed")
    report = compress_aligned(tiny_model_dir, [lora_sft], CompressSettings(int8=True, prune_sparsity=SPARSITY), out)
    return report, out


def reference(tiny_model_dir, lora_sft):
    from tunelab.core.models import load_variant

    return load_variant(tiny_model_dir, [lora_sft])


@pytest.mark.parametrize("value", [1.0, 1.5, -0.1])
def test_sparsity_outside_zero_to_one_fails_naming_the_key(value):
    with pytest.raises(ConfigError, match=r"^compress\.prune_sparsity: .* is outside"):
        load_section({"compress": {"prune_sparsity": value}}, "compress", CompressSettings)


def test_unknown_compress_key_fails():
    with pytest.raises(ConfigError, match="compress: unknown key 'sparsity'"):
        load_section({"compress": {"sparsity": 0.3}}, "compress", CompressSettings)


def test_zero_sparsity_means_no_pruned_variant():
    assert CompressSettings(int8=True, prune_sparsity=0.0).kinds() == ["int8"]
    assert CompressSettings(int8=False, prune_sparsity=0.5).kinds() == ["pruned"]


def test_variants_are_self_describing(compressed, tiny_model_dir, lora_sft):
    report, out = compressed
    assert compressed_variants(out) == {"int8": out / "int8", "pruned": out / "pruned"}
    assert not is_compressed(tiny_model_dir)
    for kind in ("int8", "pruned"):
        marker = read_marker(out / kind)
        assert marker["kind"] == kind and marker["prompt_adapter"] is False
        assert marker["source"] == {"model": str(tiny_model_dir), "adapters": [str(lora_sft)]}
        assert len(marker["settings"]["modules"]) == report["variants"][kind]["compressed_layers"] == 14
        assert (out / kind / "tokenizer.json").is_file()
    assert "lm_head" not in read_marker(out / "int8")["settings"]["modules"]


def test_int8_weights_are_a_quarter_of_the_fp32_linears(compressed, tiny_model_dir, lora_sft):
    report, out = compressed
    model = reference(tiny_model_dir, lora_sft)
    linear_fp32_mb = sum(m.weight.numel() * 4 for m in compressible_linears(model).values()) / 1e6
    int8 = report["variants"]["int8"]
    assert int8["weights_mb"] < report["uncompressed"]["state_mb"]
    # int8 stores 1 byte per weight instead of 4; scales, zero points and pickle framing cost a little
    saved = report["uncompressed"]["state_mb"] - int8["weights_mb"]
    assert 0.6 * 0.75 * linear_fp32_mb < saved <= 0.75 * linear_fp32_mb
    assert int8["parameters"] == report["uncompressed"]["parameters"] == sum(p.numel() for p in model.parameters())


def test_int8_round_trip_generates_close_logits(compressed, tiny_model_dir, lora_sft):
    import torch
    from torch.ao.nn.quantized.dynamic import Linear as QuantizedLinear

    report, out = compressed
    model = load_compressed(out / "int8")
    assert not model.training
    assert sum(isinstance(m, QuantizedLinear) for m in model.modules()) == 14
    assert isinstance(model.lm_head, torch.nn.Linear)
    assert model.lm_head.weight is model.model.embed_tokens.weight  # the head stays tied and float
    ids = torch.tensor([[1, 2, 3, 4, 5]])
    with torch.no_grad():
        diff = (model(input_ids=ids).logits - reference(tiny_model_dir, lora_sft)(input_ids=ids).logits).abs().max()
    assert 0 < float(diff) < 0.05
    assert 0 < report["variants"]["int8"]["max_abs_logit_diff"] < 0.05
    assert report["variants"]["int8"]["probe_top1_agreement"] > 0.5  # random logits: near-ties flip
    assert 0 <= report["variants"]["int8"]["probe_kl"] < 0.01
    assert report["probe"]["tokens"] > 20
    generated = model.generate(input_ids=ids, max_new_tokens=3, do_sample=False)
    assert generated.shape == (1, 8)


def test_pruned_linears_hold_the_requested_zeros(compressed, tiny_model_dir, lora_sft):
    import torch

    from tunelab.core.generation import chat_prompt
    from tunelab.core.models import load_tokenizer

    report, out = compressed
    model = load_compressed(out / "pruned")
    linears = compressible_linears(model)
    assert len(linears) == 14
    for name, module in linears.items():
        zeros = int((module.weight == 0).sum())
        assert zeros == round(SPARSITY * module.weight.numel()), name  # l1_unstructured rounds per layer
    # embeddings and the tied head are not pruned
    assert torch.equal(model.model.embed_tokens.weight, reference(tiny_model_dir, lora_sft).model.embed_tokens.weight)
    pruned = report["variants"]["pruned"]
    assert pruned["sparsity"] == pytest.approx(SPARSITY, abs=0.005)
    # dense storage: the zeros cost as much as any weight; only a sparse format or a compressor sees them
    assert pruned["weights_mb"] == pytest.approx(report["uncompressed"]["state_mb"], rel=0.02)
    numel = sum(module.weight.numel() for module in linears.values())
    saved_by_mask = (SPARSITY * 4 - 1 / 8) * numel / 1e6  # 4 bytes per zero dropped, 1 bit per weight added
    assert pruned["bitmask_mb"] == pytest.approx(report["uncompressed"]["state_mb"] - saved_by_mask, abs=0.002)
    assert pruned["weights_gzip_mb"] < pruned["uncompressed_gzip_mb"] < pruned["weights_mb"]
    assert "stored densely" in pruned["storage_note"]
    assert 0 < pruned["max_abs_logit_diff"] < 1.0
    # The agreement is the share of probe positions whose top-1 token the saved pruned model keeps.
    tokenizer = load_tokenizer(out / "pruned")
    ids = tokenizer(chat_prompt(tokenizer, report["probe"]["user"]) + report["probe"]["assistant"],
                    return_tensors="pt", add_special_tokens=False).input_ids
    assert ids.shape[1] == report["probe"]["tokens"]
    with torch.no_grad():
        top1 = model(input_ids=ids).logits.argmax(-1)
        reference_top1 = reference(tiny_model_dir, lora_sft)(input_ids=ids).logits.argmax(-1)
    assert pruned["probe_top1_agreement"] == pytest.approx(float((top1 == reference_top1).float().mean()), abs=1e-4)
    # Zeroing the 30% smallest |w| keeps much of each layer's output, so a good share of top-1 picks
    # survives; zeroing the largest weights, or all of them, keeps next to none. It still moves the
    # logits far more than int8 rounding does, so on a random model's near-tied logits it flips more.
    assert 0.2 < pruned["probe_top1_agreement"] < report["variants"]["int8"]["probe_top1_agreement"]
    generated = model.generate(input_ids=torch.tensor([[1, 2, 3]]), max_new_tokens=2, do_sample=False)
    assert generated.shape == (1, 5)


def test_prompt_tuned_model_keeps_its_prompt(tiny_model_dir, tmp_path):
    import torch
    from peft import PeftModel, PromptTuningConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(2)
    tuned = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                           PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=3))
    tuned.save_pretrained(tmp_path / "sft")
    prompt = tuned.get_prompt_embedding_to_save("default")
    report = compress_aligned(tiny_model_dir, [tmp_path / "sft"], CompressSettings(prune_sparsity=0.5), tmp_path / "out")
    assert report["uncompressed"]["prompt_adapter"] is True
    for kind in ("int8", "pruned"):
        model = load_compressed(tmp_path / "out" / kind)
        assert isinstance(model, PeftModel)
        assert torch.equal(model.get_prompt_embedding_to_save("default"), prompt)
        assert report["variants"][kind]["max_abs_logit_diff"] < 1.0
        assert model.generate(input_ids=torch.tensor([[1, 2, 3]]), max_new_tokens=2, do_sample=False).shape[1] == 5
    assert report["variants"]["pruned"]["sparsity"] == pytest.approx(0.5, abs=0.005)


def test_switching_a_variant_off_removes_its_stale_output(compressed, tiny_model_dir, tmp_path):
    _, out = compressed
    again = tmp_path / "compressed"
    shutil.copytree(out, again)
    report = compress_aligned(tiny_model_dir, [], CompressSettings(int8=True, prune_sparsity=0.0), again)
    assert set(report["variants"]) == {"int8"}
    assert compressed_variants(again) == {"int8": again / "int8"}
    assert read_marker(again / "int8")["source"]["adapters"] == []


def test_missing_or_corrupt_models_fail_with_one_line(compressed, tiny_model_dir, tmp_path):
    _, out = compressed
    with pytest.raises(FileNotFoundError, match="holds no model"):
        compress_aligned(tmp_path / "absent", [], CompressSettings(), tmp_path / "out")
    broken = tmp_path / "broken"
    shutil.copytree(tiny_model_dir, broken)
    (broken / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(ValueError, match=r"^\S*broken holds a corrupt or incomplete model \([^\n]*\); restore it"):
        compress_aligned(broken, [], CompressSettings(), tmp_path / "out")
    with pytest.raises(FileNotFoundError, match="holds no compressed model"):
        load_compressed(tiny_model_dir)
    truncated = tmp_path / "int8"
    shutil.copytree(out / "int8", truncated)
    weights = truncated / INT8_WEIGHTS
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(ValueError, match=r"model_int8\.pt cannot be loaded: [^\n]*$"):
        load_compressed(truncated)
    (truncated / MARKER).write_text("{")
    with pytest.raises(ValueError, match="is not valid JSON"):
        load_compressed(truncated)
    (truncated / MARKER).write_text('{"kind": "int8"}')
    with pytest.raises(ValueError, match="lacks source, settings, prompt_adapter, settings.modules"):
        load_compressed(truncated)


def stage_command(params: Path, base: Path, sft: Path, aligned: Path, work: Path) -> list[str]:
    return [sys.executable, "-m", "stages.compress", "--params", str(params), "--model", str(base),
            "--sft", str(sft), "--aligned", str(aligned), "--out", str(work / "models/compressed"),
            "--metrics", str(work / "reports/compress.json")]


def test_compress_stage_writes_both_variants_and_metrics(repo_params, tiny_model_dir, lora_sft, tmp_path):
    from tunelab.core.models import PASSTHROUGH_FILE

    aligned = tmp_path / "aligned"  # method: none, the cheapest aligned model there is
    aligned.mkdir()
    (aligned / PASSTHROUGH_FILE).write_text(json.dumps({"method": "none", "passes_through": str(lora_sft)}))
    params = copy.deepcopy(repo_params)
    params["compress"] = {"int8": True, "prune_sparsity": SPARSITY}
    command = stage_command(write_params(tmp_path / "params.yaml", params), tiny_model_dir, lora_sft, aligned,
                            tmp_path)
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stderr
    report = read_json(tmp_path / "reports/compress.json")
    assert set(report["variants"]) == {"int8", "pruned"}
    assert report["source"]["adapters"] == [str(lora_sft), str(aligned)]
    assert compressed_variants(tmp_path / "models/compressed").keys() == {"int8", "pruned"}
    assert "resolved compress config" in result.stderr

    params["compress"]["prune_sparsity"] = 1.0
    write_params(tmp_path / "params-bad.yaml", params)
    (tmp_path / "reports/compress.json").unlink()
    result = subprocess.run(stage_command(tmp_path / "params-bad.yaml", tiny_model_dir, lora_sft, aligned, tmp_path),
                            capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == "error: compress.prune_sparsity: 1.0 is outside [0.0, 1.0)"
    assert not (tmp_path / "reports/compress.json").exists()
