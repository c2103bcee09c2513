"""The openai teacher backend against a real server: llama.cpp's OpenAI-compatible server
(llama-cpp-python[server], from requirements-test.txt) serving the SmolLM2 GGUF on loopback."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request

import pytest

from tests.conftest import REPO, free_port, write_params
from tests.synth.test_synthesis import outputs, run_generate, tiny_generate_params
from tunelab.core.answers import Answer, from_finish_reason
from tunelab.core.generation import SamplingSettings
from tunelab.core.io import read_json, read_jsonl, write_jsonl
from tunelab.core.models import smollm2_gguf_path
from tunelab.synth.teachers import OpenAITeacher, TeacherSpec

pytest.importorskip("llama_cpp.server", reason="llama-cpp-python[server] is not installed (make test installs "
                                               "requirements-test.txt; it builds from source)")
API_KEY = "tunelab-test-key"
# A problem even SmolLM2-135M answers right (`return a + b` at every seed tried), so the code rows hold
# a known pass beside the repo's problems, which it fails.
ADD = {
    "task_id": "test/add", "title": "Add", "difficulty": "easy", "tags": [],
    "statement": "Write a function that receives two integers `a` and `b` and returns their sum.",
    "signature": "def add(a: int, b: int) -> int:", "prompt": "", "entry_point": "add",
    "test": "def check(candidate):\n    assert candidate(2, 3) == 5\n    assert candidate(-4, 4) == 0\n",
    "reference": "def add(a: int, b: int) -> int:\n    return a + b\n",
    "slow_reference": "def add(a: int, b: int) -> int:\n    return a + b\n",
}


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> str:
    port = free_port()
    log = tmp_path_factory.mktemp("llama-server") / "server.log"
    process = subprocess.Popen(
        [sys.executable, "-m", "llama_cpp.server", "--model", str(smollm2_gguf_path()), "--host", "127.0.0.1",
         "--port", str(port), "--n_ctx", "2048", "--n_threads", "2", "--api_key", API_KEY],
        stdout=subprocess.DEVNULL, stderr=log.open("w"),  # a file: an unread pipe would fill and stall it
    )
    url = f"http://127.0.0.1:{port}/v1"
    deadline = time.time() + 120
    while True:
        try:
            request = urllib.request.Request(f"{url}/models", headers={"Authorization": f"Bearer {API_KEY}"})
            urllib.request.urlopen(request, timeout=2).read()
            break
        except OSError:
            if process.poll() is not None or time.time() > deadline:
                process.kill()
                pytest.fail(f"llama.cpp server did not start: {log.read_text()[-2000:]}")
            time.sleep(0.5)
    yield url
    process.terminate()
    process.wait(timeout=30)


def spec(url: str, **overrides) -> TeacherSpec:
    values = dict(name="llama-cpp", backend="openai", model="smollm2", base_url=url, api_key_env="TUNELAB_TEST_KEY",
                  concurrency=2, retries=2, timeout_s=60.0)
    return TeacherSpec(**{**values, **overrides})


def served_model_answer(messages: list[dict], sampling: SamplingSettings) -> Answer:
    """llama.cpp's greedy chat answer in-process, with the settings the `server` fixture starts with."""
    from llama_cpp.server.model import LlamaProxy
    from llama_cpp.server.settings import ModelSettings

    settings = ModelSettings(model=str(smollm2_gguf_path()), n_ctx=2048, n_threads=2, verbose=False)
    llama = LlamaProxy.load_llama_from_model_settings(settings)
    reply = llama.create_chat_completion(messages=messages, max_tokens=sampling.max_new_tokens, temperature=0.0,
                                         top_p=1.0, repeat_penalty=sampling.repetition_penalty, seed=0)
    choice = reply["choices"][0]
    return from_finish_reason(choice["message"]["content"], choice["finish_reason"])


def test_chat_and_raw_completion(server, monkeypatch, smollm2_tokenizer_dir):
    monkeypatch.setenv("TUNELAB_TEST_KEY", API_KEY)
    teacher = OpenAITeacher(spec(server, tokenizer=str(smollm2_tokenizer_dir)))
    greedy = SamplingSettings(max_new_tokens=24, temperature=0.0)
    question = [{"role": "user", "content": "What is the capital of France?"}]
    answers = teacher.chat([question] * 2, greedy, 0, "chat")
    # The text a 135M model gives differs between CPUs (CI once answered without "Paris"), so the
    # reference is llama.cpp itself on this machine: the same GGUF, loaded by the server's own loader
    # with the server's settings, answering the same request in this process.
    assert answers[0] == answers[1] == served_model_answer(question, greedy)  # the text and why it stopped
    assert len(answers[0].text.split()) >= 3
    cut = teacher.chat([question], SamplingSettings(max_new_tokens=2, temperature=0.0), 0, "cut")
    assert [a.stopped for a in cut] == ["length"]
    # Magpie's raw pre-query prompt goes through /v1/completions and comes back as a user request.
    from tunelab.synth.magpie import pre_query_template

    sampled = SamplingSettings(max_new_tokens=32, temperature=1.0, top_p=1.0, repetition_penalty=1.0)
    requests = teacher.complete([pre_query_template(teacher.tokenizer)] * 3, sampled, 7, "magpie")
    assert all(len(r.split()) >= 3 for r in requests)
    assert teacher.complete([pre_query_template(teacher.tokenizer)] * 3, sampled, 7, "again") == requests  # seeded
    assert teacher.stats.new_tokens > 0


def test_generate_stage_with_an_openai_teacher(server, tmp_path, repo_params, tiny_model_dir, smollm2_tokenizer_dir):
    from tunelab.sandbox.harness import check_completion
    from tunelab.tasks.codeproblems import (
        extract_code,
        load_tunelab,
        runnable_completion,
    )

    params = tiny_generate_params(repo_params, tiny_model_dir)
    write_jsonl(tmp_path / "problems.jsonl", [ADD, *read_jsonl(REPO / "data/seed/code_problems.jsonl")[:2]])
    params["generate"]["code"]["sources"] = [{"format": "tunelab", "path": str(tmp_path / "problems.jsonl")}]
    params["generate"]["teachers"] = [spec(server, tokenizer=str(smollm2_tokenizer_dir)).__dict__]
    params["generate"]["response"].update(max_new_tokens=48)
    params["generate"]["code_response"].update(max_new_tokens=160)
    params["generate"]["self_instruct"].update(rouge_l_threshold=0.7, min_words=3)
    write_params(tmp_path / "params.yaml", params)
    os.environ["TUNELAB_TEST_KEY"] = API_KEY
    try:
        result = run_generate(tmp_path)
    finally:
        del os.environ["TUNELAB_TEST_KEY"]
    assert result.returncode == 0, result.stderr[-3000:]
    rows = outputs(tmp_path)
    assert {name: len(r) for name, r in rows.items()} == {"magpie": 6, "self_instruct": 5, "code": 3}
    assert all(r["teacher"] == "llama-cpp" for rs in rows.values() for r in rs)
    # Each answer was run against its problem's tests in the sandbox: checked again here under the
    # stage's limits, the answer a row holds gets the verdict the row records, and the one to ADD passes.
    code = params["generate"]["code"]
    problems = {p["task_id"]: p for p in load_tunelab(str(tmp_path / "problems.jsonl"))}
    for row in rows["code"]:
        problem, answer = problems[row["code"]["task_id"]], row["messages"][-1]["content"]
        verdict = check_completion(problem, runnable_completion(problem, extract_code(answer)),
                                   code["sandbox_timeout_s"], code["sandbox_memory_mb"])
        assert (row["code"]["status"], row["code"]["passed"]) == (verdict["status"], verdict["passed"]), answer
    assert [r["code"]["task_id"] for r in rows["code"] if r["code"]["passed"]] == ["test/add"]
    report = read_json(tmp_path / "generate.json")
    assert report["teachers"]["llama-cpp"]["new_tokens"] > 0
    assert report["methods"]["code"]["verified"] == 3 and report["methods"]["code"]["passed"] == 1
    assert API_KEY not in (tmp_path / "generate.json").read_text()


def test_wrong_key_and_missing_key_fail_clearly(server, monkeypatch):
    monkeypatch.delenv("TUNELAB_TEST_KEY", raising=False)
    from tunelab.core.config import ConfigError

    with pytest.raises(ConfigError, match="environment variable TUNELAB_TEST_KEY is not set"):
        OpenAITeacher(spec(server))
    monkeypatch.setenv("TUNELAB_TEST_KEY", "wrong")
    teacher = OpenAITeacher(spec(server))
    with pytest.raises(RuntimeError, match=r"failed after 2 tries: HTTP 401"):
        teacher.chat([[{"role": "user", "content": "hi"}]], SamplingSettings(max_new_tokens=4), 0, "chat")


def test_server_down_is_retried_then_named():
    teacher = OpenAITeacher(spec(f"http://127.0.0.1:{free_port()}/v1", api_key_env=None))
    began = time.time()
    with pytest.raises(RuntimeError, match=r"teacher 'llama-cpp': http://127\.0\.0\.1:\d+/v1/chat/completions failed after 2 tries"):
        teacher.chat([[{"role": "user", "content": "hi"}]], SamplingSettings(max_new_tokens=4), 0, "chat")
    assert time.time() - began < 10
