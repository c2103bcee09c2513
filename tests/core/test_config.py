"""Params validation: every section of params.yaml loads, and bad values fail with one named line."""

from dataclasses import dataclass, field, fields
from typing import Literal

import pytest
import yaml

from stages.params import (
    SETTINGS as SECTIONS,  # each section's typed settings, as the params stage checks them
)
from tests.conftest import REPO
from tunelab.core.config import ConfigError, Study, build, load_section
from tunelab.eval.evaluate import EvaluateSettings
from tunelab.synth.curation import CurateSettings
from tunelab.synth.synthesis import GenerateSettings
from tunelab.train.align import AlignSettings
from tunelab.train.sft import SFTSettings


def test_every_params_section_loads(repo_params):
    loaded = {name: load_section(repo_params, name, cls) for name, cls in SECTIONS.items()}
    assert len(loaded) == 12
    assert set(repo_params) == set(SECTIONS) | {"method"}, "a params section has no typed config"
    assert Study(repo_params["method"], repo_params).method == repo_params["method"]


def test_unknown_key_names_key_and_allowed(params_copy):
    params_copy["sft"]["optim"]["lerning_rate"] = 1e-4
    with pytest.raises(ConfigError, match=r"sft\.optim: unknown key 'lerning_rate' \(allowed: .*learning_rate"):
        load_section(params_copy, "sft", SFTSettings)


def test_wrong_type_is_named(params_copy):
    params_copy["generate"]["magpie"]["count"] = "many"
    with pytest.raises(ConfigError, match=r"generate\.magpie\.count: expected an integer, got 'many'"):
        load_section(params_copy, "generate", GenerateSettings)


def test_unknown_method_lists_allowed():
    with pytest.raises(ConfigError, match=r"method: 'ppo' is not allowed \(allowed: dpo, ipo, orpo, kto, simpo, grpo, rloo, none\)"):
        Study("ppo", {})


def test_yaml_float_strings_and_ints_become_floats(params_copy):
    params_copy["align"]["optim"]["learning_rate"] = "5e-5"
    params_copy["align"]["dpo"]["beta"] = 1
    settings = load_section(params_copy, "align", AlignSettings)
    assert settings.optim.learning_rate == 5e-5 and settings.dpo.beta == 1.0


def test_literal_and_range_checks(params_copy):
    params_copy["evaluate"]["humaneval_style"] = "fewshot"
    with pytest.raises(ConfigError, match="humaneval_style: 'fewshot' is not allowed"):
        load_section(params_copy, "evaluate", EvaluateSettings)
    params_copy["evaluate"]["humaneval_style"] = "chat"
    params_copy["curate"]["near_duplicate_jaccard"] = 1.5
    with pytest.raises(ConfigError, match="near_duplicate_jaccard: 1.5 is outside"):
        load_section(params_copy, "curate", CurateSettings)


def test_bool_is_not_an_int():
    @dataclass
    class Example:
        steps: int = 1
        mode: Literal["a", "b"] = "a"
        names: list[str] = field(default_factory=list)

    with pytest.raises(ConfigError, match="steps: expected an integer, got True"):
        build(Example, {"steps": True}, "example")
    with pytest.raises(ConfigError, match=r"names\[1\]: expected a string"):
        build(Example, {"names": ["x", 3]}, "example")


def test_every_training_method_has_its_params_section(params_copy):
    from tunelab.core.config import ALIGNMENT_METHODS as METHODS
    from tunelab.train.sft import SFT_METHODS, SFTSettings

    for peft in SFT_METHODS:
        params_copy["sft"]["peft"] = peft
        assert load_section(params_copy, "sft", SFTSettings).peft == peft
    params_copy["sft"]["peft"] = "adapter"
    with pytest.raises(ConfigError, match="sft.peft: 'adapter' is not allowed"):
        load_section(params_copy, "sft", SFTSettings)
    assert {m for m in METHODS if m != "none"} <= set(params_copy["align"])  # a section per method


def test_gpu_profile_becomes_dvc_set_params(repo_params):
    import yaml

    from tunelab.core.profiles import overrides

    profile = yaml.safe_load((REPO / "profiles/gpu.yaml").read_text())
    arguments = overrides(profile, repo_params)
    assert len(arguments) == 47
    assert "align.grpo.num_generations=8" in arguments and "align.grpo.max_completion_length=512" in arguments
    assert "sft.peft=qlora" in arguments and "sft.packing=true" in arguments and "sft.group_by_length=false" in arguments
    assert "base.source=Qwen/Qwen2.5-0.5B-Instruct" in arguments


def test_full_profile_turns_on_what_the_default_leaves_out(repo_params):
    import yaml

    from tunelab.core.profiles import overrides

    arguments = overrides(yaml.safe_load((REPO / "profiles/full.yaml").read_text()), repo_params)
    assert repo_params["peft_compare"]["methods"] == [] and repo_params["compress"]["prune_sparsity"] == 0
    assert 'peft_compare.methods=["lora","prompt_tuning"]' in arguments
    assert "compress.prune_sparsity=0.3" in arguments and "evaluate.pass_at_k.samples=5" in arguments
    assert "evaluate.leetcode.file=data/seed/leetcode_eval.jsonl" in arguments
    with pytest.raises(ConfigError, match="profile key 'sft.optim.max_stpes' is not in params.yaml"):
        overrides({"sft": {"optim": {"max_stpes": 1}}}, repo_params)


@pytest.mark.parametrize("profile", sorted(path.name for path in (REPO / "profiles").glob("*.yaml")))
def test_a_profile_through_the_shell_reaches_dvc_as_its_values(profile, repo_params):
    """`dvc exp run $(python -m tunelab.core.profiles P)` as the README writes it: unquoted, so the
    shell splits at spaces and keeps quotes. Each -S argument must arrive whole and parse (as DVC
    parses it, YAML) to the profile's value."""
    import json
    import subprocess
    import sys

    def merged_into(base: dict, profile: dict) -> dict:
        return {key: merged_into(value, profile[key]) if isinstance(value, dict) and key in profile
                else profile.get(key, value) for key, value in base.items()}

    show_argv = f"{sys.executable} -c 'import json, sys; print(json.dumps(sys.argv[1:]))'"
    shell = subprocess.run(["bash", "-c", f"{show_argv} $({sys.executable} -m tunelab.core.profiles profiles/{profile})"],
                           cwd=REPO, capture_output=True, text=True, check=True)
    argv = json.loads(shell.stdout)
    assert argv[0::2] == ["-S"] * (len(argv) // 2) and len(argv) % 2 == 0
    merged = json.loads(json.dumps(repo_params))
    for argument in argv[1::2]:
        name, value = argument.split("=", 1)
        *parents, key = name.split(".")
        section = merged
        for parent in parents:
            section = section[parent]
        section[key] = yaml.safe_load(value)
    assert merged == merged_into(repo_params, yaml.safe_load((REPO / "profiles" / profile).read_text()))
    assert merged != repo_params


def test_a_profile_value_with_spaces_is_refused(tmp_path, monkeypatch):
    from tunelab.core.profiles import main

    (tmp_path / "params.yaml").write_text("generate:\n  magpie:\n    system_prompt: null\n")
    (tmp_path / "p.yaml").write_text("generate:\n  magpie:\n    system_prompt: You are kind.\n")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit, match="generate.magpie.system_prompt: its value holds whitespace"):
        main(["p.yaml"])


def test_accelerate_configs_parse():
    from accelerate.commands.config.config_args import load_config_from_file

    configs = sorted((REPO / "configs/accelerate").glob("*.yaml"))
    kinds = {path.stem: load_config_from_file(str(path)).distributed_type.value for path in configs}
    assert kinds == {"ddp": "MULTI_GPU", "fsdp": "FSDP", "deepspeed_zero3": "DEEPSPEED"}


def test_a_zero3_config_that_cannot_save_one_model_is_refused(tmp_path):
    from tunelab.core.launch import LaunchSettings

    config = yaml.safe_load((REPO / "configs/accelerate/deepspeed_zero3.yaml").read_text())
    LaunchSettings(processes=2, accelerate_config=str(REPO / "configs/accelerate/deepspeed_zero3.yaml"))  # as shipped
    config["deepspeed_config"]["zero3_save_16bit_model"] = False
    path = tmp_path / "zero3.yaml"
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(ConfigError, match="without zero3_save_16bit_model: true"):
        LaunchSettings(processes=2, accelerate_config=str(path))


def test_evaluate_rejects_pass_at_k_beyond_the_samples_and_our_own_task_names(params_copy):
    params_copy["evaluate"]["pass_at_k"].update(samples=4, k=[1, 10])
    with pytest.raises(ConfigError, match=r"evaluate.pass_at_k.k: 10 needs 1 <= k <= samples \(4\)"):
        load_section(params_copy, "evaluate", EvaluateSettings)
    params_copy["evaluate"]["pass_at_k"].update(k=[1])
    params_copy["evaluate"]["lm_eval_tasks"] = [{"task": "tunelab_humaneval"}]
    with pytest.raises(ConfigError, match="tunelab_humaneval is already run from its own params keys"):
        load_section(params_copy, "evaluate", EvaluateSettings)
    params_copy["evaluate"]["lm_eval_tasks"] = [{"task": "gsm8k", "chat": "yes"}]
    with pytest.raises(ConfigError, match=r"evaluate.lm_eval_tasks\[0\].chat: expected true or false"):
        load_section(params_copy, "evaluate", EvaluateSettings)


def test_every_evaluate_key_is_a_dependency_of_a_stage_that_reads_it():
    """dvc.yaml splits `evaluate` between heldout, the evaluate_<variant> stages and evaluate. A key
    that no stage lists would change results without DVC re-running anything."""
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]

    def keys(stage: str) -> set[str]:
        return {p.split(".", 1)[1] for p in stages[stage]["params"] if p.startswith("evaluate.")}

    variant_stages = [name for name in stages if name.startswith("evaluate_")]
    assert len(variant_stages) == 4 and all(keys(name) == keys("evaluate_base") for name in variant_stages)
    assert keys("heldout") | keys("evaluate_base") | keys("evaluate") == {f.name for f in fields(EvaluateSettings)}
    assert keys("heldout") == {"heldout", "heldout_seed", "heldout_file"}
    assert "judge" in keys("evaluate") and "judge" not in keys("evaluate_base")  # a new judge re-judges only
