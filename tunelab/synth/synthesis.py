"""The generate stage's engine: Magpie, Self-Instruct and code problems, answered by teachers.

Every method first writes user requests (with the instruction teacher), then each teacher answers
the requests assigned to it (`round_robin`: request i goes to teacher i mod T; `every_teacher`:
each teacher answers all of them, one row per teacher). Teachers are opened one at a time. Each
phase is a resumable shard (tunelab.core.resumable) keyed by everything that decides its rows, so a
killed run continues exactly where it stopped and changed settings start that phase afresh.
"""

from __future__ import annotations

import logging
import math
import random
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

from tunelab.core.answers import ENDED, is_cut
from tunelab.core.config import ConfigError, as_dict, check_range
from tunelab.core.generation import SamplingSettings
from tunelab.core.resumable import Shard, fill, fingerprint
from tunelab.synth import magpie, selfinstruct
from tunelab.synth.chatdata import ImportSpec, load_import
from tunelab.synth.magpie import MagpieSettings
from tunelab.synth.selfinstruct import SelfInstructSettings
from tunelab.synth.teachers import Teacher, TeacherSpec, describe, open_teacher
from tunelab.tasks import codeproblems, explanation
from tunelab.tasks.codeproblems import CodeSettings

log = logging.getLogger("tunelab")


@dataclass
class ExplainSettings:
    """Code explanation rows: the teacher explains the reference solution of code problems drawn
    from generate.code.sources, asked as the explanation evaluation asks (never its snippets)."""

    count: int = 0  # problems whose solution is explained (0 = off)

    def __post_init__(self) -> None:
        check_range("generate.explain.count", self.count, 0)


@dataclass
class GenerateSettings:
    seed: int = 0
    checkpoint_every: int = 48  # rows per chunk; a chunk is appended and checkpointed as one unit
    teachers: list[TeacherSpec] = field(default_factory=lambda: [TeacherSpec()])
    instruction_teacher: str | None = None  # the teacher that writes requests; None = the first one
    answer_with: Literal["round_robin", "every_teacher"] = "round_robin"
    response: SamplingSettings = field(
        default_factory=lambda: SamplingSettings(max_new_tokens=96, temperature=0.7, top_p=0.9,
                                               repetition_penalty=1.1, batch_size=48)
    )
    code_response: SamplingSettings = field(
        default_factory=lambda: SamplingSettings(max_new_tokens=256, temperature=0.2, top_p=0.95,
                                               repetition_penalty=1.0, batch_size=24)
    )  # code answers need room and little randomness
    magpie: MagpieSettings = field(default_factory=MagpieSettings)
    self_instruct: SelfInstructSettings = field(default_factory=SelfInstructSettings)
    code: CodeSettings = field(default_factory=CodeSettings)
    explain: ExplainSettings = field(default_factory=ExplainSettings)
    imports: list[ImportSpec] = field(default_factory=list)  # Alpaca / ShareGPT data to add as-is

    def __post_init__(self) -> None:
        check_range("generate.checkpoint_every", self.checkpoint_every, 1)
        if not self.teachers:
            raise ConfigError("generate.teachers: at least one teacher is needed")
        names = [t.name for t in self.teachers]
        if len(set(names)) != len(names):
            raise ConfigError(f"generate.teachers: names must be unique, got {names}")
        if self.instruction_teacher is not None and self.instruction_teacher not in names:
            raise ConfigError(f"generate.instruction_teacher: '{self.instruction_teacher}' is not one of {names}")
        if not (self.magpie.count or self.self_instruct.count or self.code.count or self.explain.count
                or self.imports):
            raise ConfigError("generate: every method has count 0 and there are no imports; nothing to generate")

    def teacher(self, name: str | None = None) -> TeacherSpec:
        name = name or self.instruction_teacher or self.teachers[0].name
        return next(t for t in self.teachers if t.name == name)


def code_version() -> str:
    """A hash of the modules that decide generated rows: partial work from other code is not reused."""
    import hashlib

    from tunelab.core import answers, generation, resumable
    from tunelab.synth import teachers

    modules = (answers, generation, resumable, teachers, magpie, selfinstruct, codeproblems, explanation,
               sys.modules[__name__])
    return hashlib.sha256(b"".join(Path(m.__file__).read_bytes() for m in modules)).hexdigest()[:16]


class TeacherPool:
    """Keeps at most one teacher open: switching closes the previous one to free its memory."""

    def __init__(self) -> None:
        self.current: Teacher | None = None
        self.stats: dict[str, dict[str, float]] = {}

    def get(self, spec: TeacherSpec) -> Teacher:
        if self.current is None or self.current.spec != spec:
            self.close()
            log.info("opening teacher %s (%s: %s)", spec.name, spec.backend, spec.model)
            self.current = open_teacher(spec)
        return self.current

    def close(self) -> None:
        if self.current is not None:
            stats = self.stats.setdefault(self.current.name, {"new_tokens": 0, "seconds": 0.0})
            stats["new_tokens"] += self.current.stats.new_tokens
            stats["seconds"] += self.current.stats.seconds
            self.current.close()
            self.current = None

    def report(self) -> dict[str, dict[str, float]]:
        self.close()
        return {name: {**s, "tokens_per_s": s["new_tokens"] / s["seconds"] if s["seconds"] else 0.0}
                for name, s in self.stats.items()}


class Synthesis:
    def __init__(self, config: GenerateSettings, work_dir: Path):
        self.config = config
        self.work_dir = Path(work_dir)
        self.pool = TeacherPool()
        self.shards: list[Shard] = []
        self.progress: dict[str, dict[str, int]] = {}
        self.rejected: Counter = Counter()  # Self-Instruct candidates dropped, per filter

    # -- shared machinery -------------------------------------------------------------------
    def shard(self, name: str, *parts: Any) -> Shard:
        key = fingerprint(code_version(), self.config.seed, self.config.checkpoint_every, *parts)
        shard = Shard(self.work_dir, name, key)
        self.shards.append(shard)
        return shard

    def run_shard(self, shard: Shard, target: int, make_chunk: Callable, what: str, max_chunks: int | None = None):
        size = self.config.checkpoint_every
        rows = fill(shard, target, make_chunk, max_chunks or math.ceil(target / size), what)
        self.progress[shard.directory.name] = {
            "resumed_rows": shard.progress.resumed_rows, "generated_rows": shard.progress.generated_rows,
            "dropped_partial_bytes": shard.progress.dropped_partial_bytes,
            "stale_discarded": int(shard.progress.stale_discarded),
        }
        return rows

    def chunk_seed(self, phase: str, index: int) -> int:
        return random.Random(f"{self.config.seed}/{phase}/{index}").randrange(2**31)

    def assignments(self, items: list[dict]) -> list[tuple[TeacherSpec, list[dict]]]:
        """Which teacher answers which items; an item naming its teacher keeps it (follow-up turns)."""
        teachers = self.config.teachers
        if items and all("teacher" in i for i in items):
            return [(t, [i for i in items if i["teacher"] == t.name]) for t in teachers]
        if self.config.answer_with == "every_teacher":
            return [(t, items) for t in teachers]
        return [(t, items[i :: len(teachers)]) for i, t in enumerate(teachers)]

    def answer(self, phase: str, items: list[dict], sampling: SamplingSettings,
               check: Callable[[dict, str], dict] | None = None) -> list[dict]:
        """Each item ({'id', 'messages'}) answered by its teacher(s); rows keep the item's order."""
        size = self.config.checkpoint_every
        answered: dict[str, dict] = {}
        for spec, share in self.assignments(items):
            if not share:
                continue
            shard = self.shard(f"{phase}-answers-{spec.name}", describe(spec), as_dict(sampling),
                               [(i["id"], i["messages"]) for i in share])

            def chunk(index: int, done: list[dict], missing: int, spec=spec, share=share) -> list[dict]:
                batch = share[index * size : (index + 1) * size]
                teacher = self.pool.get(spec)
                replies = teacher.chat([i["messages"] for i in batch], sampling,
                                       self.chunk_seed(f"{phase}/{spec.name}", index),
                                       f"{phase} answers ({spec.name}, chunk {index})")
                rows = []
                for item, reply in zip(batch, replies):
                    row = {"id": item["id"], "teacher": spec.name, "answer": reply.text.strip(), "stopped": reply.stopped}
                    if check is not None:
                        row["check"] = check(item, reply.text)
                    rows.append(row)
                return rows

            for row in self.run_shard(shard, len(share), chunk, f"{phase} answers by {spec.name}"):
                answered[f"{row['id']}@{spec.name}"] = row
        order = {item["id"]: n for n, item in enumerate(items)}
        return sorted(answered.values(), key=lambda r: (order[r["id"]], r["teacher"]))

    def row(self, item: dict, answer: dict, source: str, written_by_teacher: bool = True) -> dict:
        """A training row; `written_by_teacher` is False where the request came from a file."""
        row_id = item["id"] if self.config.answer_with == "round_robin" else f"{item['id']}@{answer['teacher']}"
        messages = item["messages"] + [{"role": "assistant", "content": answer["answer"]}]
        row = {"id": row_id, "request_id": item["id"], "messages": messages, "source": source,
               "teacher": answer["teacher"], "stopped": [answer["stopped"]]}
        if written_by_teacher:
            row["instruction_teacher"] = self.config.teacher().name
        if "check" in answer:
            row["code"] = answer["check"]
        return row

    def system_turn(self) -> list[dict]:
        prompt = self.config.magpie.system_prompt
        return [{"role": "system", "content": prompt}] if prompt else []

    # -- methods ------------------------------------------------------------------------------
    def magpie(self) -> list[dict]:
        config = self.config.magpie
        spec = self.config.teacher()
        teacher = self.pool.get(spec)
        prefix = magpie.pre_query_template(teacher.tokenizer, config.system_prompt)
        markers = magpie.end_of_turn_markers(teacher.tokenizer)
        size = self.config.checkpoint_every

        def queries(index: int, done: list[dict], missing: int) -> list[dict]:
            # A few spare requests cover the empty ones, without a whole extra chunk.
            wanted = min(size, missing + max(2, missing // 8))
            raw = self.pool.get(spec).complete([prefix] * wanted, config.instruction, self.chunk_seed("magpie", index),
                                               f"magpie requests (chunk {index})", keep_special_tokens=True)
            texts = [magpie.clean_instruction(text, markers) for text in raw]
            return [{"id": f"magpie-{index:04d}-{j:03d}", "query": t} for j, t in enumerate(texts) if t]

        shard = self.shard("magpie-requests", describe(spec), as_dict(config), prefix)
        # Empty requests are dropped, so allow extra chunks before calling the teacher unusable.
        found = self.run_shard(shard, config.count, queries, "magpie requests",
                               max_chunks=2 * math.ceil(config.count / size) + 2)
        items = [{"id": q["id"], "messages": self.system_turn() + [{"role": "user", "content": q["query"]}]}
                 for q in found]
        rows = [self.row(item, answer, "magpie")
                for item, answer in self._pair(items, self.answer("magpie", items, self.config.response))]
        if config.turns == 2:
            rows = self._second_turn(rows, spec, markers)
        return rows

    def _second_turn(self, rows: list[dict], spec: TeacherSpec, markers: list[str]) -> list[dict]:
        """Magpie multi-turn: the instruction teacher writes a follow-up to each conversation."""
        config = self.config.magpie
        size = self.config.checkpoint_every

        def follow_ups(index: int, done: list[dict], missing: int) -> list[dict]:
            batch = rows[index * size : (index + 1) * size]
            tokenizer = self.pool.get(spec).tokenizer
            prompts = [magpie.pre_query_template(tokenizer, None, r["messages"]) for r in batch]
            raw = self.pool.get(spec).complete(prompts, config.instruction, self.chunk_seed("magpie-turn2", index),
                                               f"magpie follow-ups (chunk {index})", keep_special_tokens=True)
            return [{"id": r["id"], "query": magpie.clean_instruction(t, markers)} for r, t in zip(batch, raw)]

        shard = self.shard("magpie-follow-ups", describe(spec), as_dict(config), [r["id"] for r in rows],
                           [r["messages"] for r in rows])
        found = self.run_shard(shard, len(rows), follow_ups, "magpie follow-ups")
        by_id = {r["id"]: r for r in rows}
        items = [{"id": f["id"], "messages": by_id[f["id"]]["messages"] + [{"role": "user", "content": f["query"]}],
                  "teacher": by_id[f["id"]]["teacher"]} for f in found if f["query"]]
        # Each follow-up goes to the teacher that gave the first answer (items name it).
        answers = self.answer("magpie-turn2", items, self.config.response)
        second = {a["id"]: a for a in answers}
        items_by_id = {i["id"]: i for i in items}
        out = []
        for row in rows:
            answer = second.get(row["id"])
            if answer is None:  # no usable follow-up: keep the single-turn conversation
                out.append(row)
                continue
            item = items_by_id[row["id"]]
            out.append({**row, "messages": item["messages"] + [{"role": "assistant", "content": answer["answer"]}],
                        "stopped": row["stopped"] + [answer["stopped"]]})
        return out

    def self_instruct(self) -> list[dict]:
        config = self.config.self_instruct
        spec = self.config.teacher()
        seed_tasks = selfinstruct.load_seed_tasks(config.seed_tasks)
        size = self.config.checkpoint_every

        def tasks(index: int, done: list[dict], missing: int) -> list[dict]:
            rng = random.Random(self.chunk_seed("self-instruct", index))
            teacher = self.pool.get(spec)
            pool = selfinstruct.RougePool([t["instruction"] for t in seed_tasks] + [d["instruction"] for d in done])
            prompts = [selfinstruct.build_prompt(teacher.tokenizer, selfinstruct.pick_examples(rng, seed_tasks, done, config))
                       for _ in range(min(size, 2 * missing))]  # about half the candidates survive the filters
            raw = teacher.complete(prompts, config.instruction, self.chunk_seed("self-instruct-sampling", index),
                                   f"self-instruct tasks (chunk {index})", stop=["\nTask "])
            kept = []
            for j, text in enumerate(raw):
                task = selfinstruct.parse_task(text)
                reason = selfinstruct.rejection_reason(task, pool, config)
                if reason:
                    self.rejected[reason] += 1
                    continue
                pool.add(task["instruction"])
                kept.append({"id": f"self-instruct-{index:04d}-{j:03d}", **task})
            return kept

        shard = self.shard("self-instruct-tasks", describe(spec), as_dict(config), seed_tasks)
        found = self.run_shard(shard, config.count, tasks, "self-instruct tasks",
                               max_chunks=4 * math.ceil(config.count / size) + 4)
        items = [{"id": t["id"], "messages": [{"role": "user", "content": selfinstruct.user_message(t)}]} for t in found]
        return [self.row(item, answer, "self_instruct")
                for item, answer in self._pair(items, self.answer("self-instruct", items, self.config.response))]

    def code(self) -> list[dict]:
        config = self.config.code
        problems = codeproblems.choose(codeproblems.load_sources(config.sources), config.count, self.config.seed)
        items = [{"id": f"code-{p['task_id']}", "messages": [{"role": "user", "content": codeproblems.user_message(p)}],
                  "problem": p} for p in problems]
        if config.answer == "reference":
            answers = [{"id": i["id"], "teacher": "reference", "answer": codeproblems.reference_answer(i["problem"]),
                        "stopped": ENDED} for i in items]
        else:
            answers = self.answer("code", items, self.config.code_response, self._code_check if config.verify else None)
        rows = []
        for item, answer in self._pair(items, answers):
            row = self.row(item, answer, f"code:{item['problem']['source']}", written_by_teacher=False)
            row["code"] = {"task_id": item["problem"]["task_id"], "difficulty": item["problem"]["difficulty"],
                           **row.get("code", {})}
            rows.append(row)
        return rows

    def explain(self) -> list[dict]:
        problems = codeproblems.choose(codeproblems.load_sources(self.config.code.sources), self.config.explain.count,
                                       self.config.seed)
        unsolved = [p["task_id"] for p in problems if not p.get("reference")]
        if unsolved:
            raise ValueError(f"generate.explain: {unsolved[0]} has no reference solution to explain; use "
                             "generate.code.sources whose problems have one, or set generate.explain.count: 0")
        items = [{"id": f"explain-{p['task_id']}", "problem": p,
                  "messages": [{"role": "user", "content": explanation.prompt_text(p["reference"].strip())}]}
                 for p in problems]
        return [self.row(item, answer, "explain", written_by_teacher=False)
                for item, answer in self._pair(items, self.answer("explain", items, self.config.response))]

    def _code_check(self, item: dict, text: str) -> dict:
        config = self.config.code
        return codeproblems.verify(item["problem"], text, config.sandbox_timeout_s, config.sandbox_memory_mb)

    def imports(self) -> list[dict]:
        return [row for index, spec in enumerate(self.config.imports) for row in load_import(spec, index)]

    # -- helpers --------------------------------------------------------------------------------
    def _pair(self, items: list[dict], answers: list[dict]) -> list[tuple[dict, dict]]:
        by_id = {i["id"]: i for i in items}
        return [(by_id[a["id"]], a) for a in answers]

    def finish(self) -> None:
        """All outputs are written: the partial work is no longer needed."""
        for shard in self.shards:
            shard.remove()


METHODS = ("magpie", "self_instruct", "code", "explain", "imports")


def generate_all(config: GenerateSettings, work_dir: Path) -> tuple[dict[str, list[dict]], dict[str, Any], Synthesis]:
    """Rows per method (enabled ones only) and the stage report."""
    synthesis = Synthesis(config, work_dir)
    outputs: dict[str, list[dict]] = {}
    counts = {"magpie": config.magpie.count, "self_instruct": config.self_instruct.count,
              "code": config.code.count, "explain": config.explain.count, "imports": len(config.imports)}
    try:
        for method in METHODS:
            if counts[method]:
                outputs[method] = getattr(synthesis, method)()
    finally:
        teacher_stats = synthesis.pool.report()
    report: dict[str, Any] = {
        "rows": sum(len(rows) for rows in outputs.values()),
        "methods": {m: {"rows": len(rows), "per_teacher": dict(Counter(r["teacher"] for r in rows)),
                        "cut_at_length": sum(map(is_cut, rows))}
                    for m, rows in outputs.items()},
        "teachers": teacher_stats,
        "resume": synthesis.progress,
        "self_instruct_rejected": dict(synthesis.rejected),
    }
    if "code" in outputs:
        checked = [r["code"] for r in outputs["code"] if "passed" in r["code"]]
        report["methods"]["code"]["verified"] = len(checked)
        report["methods"]["code"]["passed"] = sum(c["passed"] for c in checked)
    new_tokens = sum(s["new_tokens"] for s in teacher_stats.values())
    seconds = sum(s["seconds"] for s in teacher_stats.values())
    report["new_tokens"] = new_tokens
    report["tokens_per_s"] = new_tokens / seconds if seconds else 0.0
    return outputs, report, synthesis
