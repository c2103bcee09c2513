"""Every repo module a stage loads is covered by that stage's `deps:` in dvc.yaml.

DVC re-runs a stage only when one of its deps changed; a module the stage imports but does not
list is a change DVC never sees, and the cache then serves results of code that no longer exists.
The imports are read from the code itself (every `import` statement, also those inside functions),
followed from `python -m stages.<name>` through every repo module they reach.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("tunelab", "stages")


def module_file(name: str) -> Path | None:
    """The repo file a dotted module name loads, or None for a module outside the repo."""
    if name.split(".")[0] not in PACKAGES:
        return None
    path = REPO.joinpath(*name.split("."))
    if path.with_suffix(".py").is_file():
        return path.with_suffix(".py")
    if (path / "__init__.py").is_file():
        return path / "__init__.py"
    return None


def imported_names(path: Path) -> set[str]:
    """Every module `path` imports, with the packages on the way (importing a.b.c runs a and a.b)."""
    names = set()
    package = ".".join(path.relative_to(REPO).with_suffix("").parts[:-1])
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # a relative import
                base = ".".join([*package.split(".")[: len(package.split(".")) - node.level + 1], base]).strip(".")
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)  # `from pkg import module`
    with_parents = set()
    for name in names:
        parts = name.split(".")
        with_parents.update(".".join(parts[:i]) for i in range(1, len(parts) + 1))
    return with_parents


def reached_files(module: str) -> set[Path]:
    """The repo files `python -m module` loads, followed through every import."""
    start = module_file(module)
    assert start is not None, f"{module} is not a repo module"
    seen, todo = set(), [start, *filter(None, (module_file(p) for p in _parents(module)))]
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        todo.extend(f for f in map(module_file, imported_names(path)) if f is not None)
    return seen


def _parents(module: str) -> list[str]:
    parts = module.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def holds_no_code(path: Path) -> bool:
    """A package's __init__.py with only a docstring: loading it cannot change what a stage computes."""
    body = ast.parse(path.read_text()).body
    return path.name == "__init__.py" and all(
        isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) for node in body)


def stage_modules() -> dict[str, tuple[str, list[str]]]:
    """Each dvc.yaml stage's `python -m` module and its deps."""
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    found = {}
    for name, stage in stages.items():
        match = re.search(r"python -m ([\w.]+)", stage["cmd"])
        assert match, f"stage {name}: its cmd does not run `python -m stages.<name>`"
        found[name] = (match.group(1), stage.get("deps", []))
    return found


def uncovered(files: set[Path], deps: list[str]) -> list[str]:
    """The files no dep (a file, or a folder holding it) covers."""
    dep_paths = [REPO / dep for dep in deps]
    return sorted(str(f.relative_to(REPO)) for f in files
                  if not holds_no_code(f) and not any(f == d or d in f.parents for d in dep_paths))


STAGES = stage_modules()


def test_every_stage_is_read():
    assert len(STAGES) == 17, sorted(STAGES)
    assert all(module.startswith("stages.") for module, _ in STAGES.values())


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_stage_deps_cover_every_module_it_loads(stage):
    module, deps = STAGES[stage]
    files = reached_files(module)
    assert REPO / (module.replace(".", "/") + ".py") in files
    missing = uncovered(files, deps)
    assert not missing, (f"dvc.yaml stage {stage} loads {', '.join(missing)} but its deps do not list them "
                         "(nor a folder holding them): add them, or DVC serves stale results when they change")


def test_every_stage_runs_after_the_params_check():
    """The params stage checks every value first: each other stage depends on its output."""
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    assert stages["params"]["params"] == [{"params.yaml": None}]
    assert [name for name, stage in stages.items() if name != "params"
            and "reports/params.json" not in stage["deps"]] == []


def test_the_import_reader_follows_imports_inside_functions(tmp_path):
    """The reader sees an import made inside a function body, where a lazy import usually sits."""
    names = imported_names(REPO / "tunelab" / "eval" / "evaluate.py")
    assert "tunelab.train.compress" in names  # imported inside variants_to_run only


# ---------------------------------------------------------------- the layers

# Lowest first: a module may import its own layer and those before it, never one after it.
LAYERS = ("tunelab.core", "tunelab.sandbox", "tunelab.tasks", "tunelab.synth", "tunelab.train", "tunelab.eval",
          "tunelab.track", "stages")


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """Each repo module and the repo modules it imports (package __init__ files included)."""
    files = [path for package in PACKAGES for path in sorted((REPO / package).rglob("*.py"))]
    assert len(files) > 60, len(files)  # the whole library and every stage, not a corner of it
    return {module_name(path): {module_name(f) for f in map(module_file, imported_names(path))
                                if f is not None and f != path}
            for path in files}


def layer(module: str) -> int | None:
    return next((n for n, name in enumerate(LAYERS) if module == name or module.startswith(name + ".")), None)


def import_circle(graph: dict[str, set[str]]) -> list[str] | None:
    """One chain of imports that leads back to where it started, or None."""
    state: dict[str, str] = {}
    path: list[str] = []

    def visit(module: str) -> list[str] | None:
        state[module] = "open"
        path.append(module)
        for imported in sorted(graph.get(module, ())):
            if state.get(imported) == "open":
                return path[path.index(imported):] + [imported]
            if imported not in state and (found := visit(imported)):
                return found
        state[module] = "done"
        path.pop()
        return None

    return next(filter(None, (visit(m) for m in sorted(graph) if m not in state)), None)


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    return sorted(f"{module} -> {imported}" for module, imports in graph.items() for imported in imports
                  if None not in (layer(module), layer(imported)) and layer(imported) > layer(module))


def test_every_module_imports_only_its_own_layer_and_lower_ones():
    graph = import_graph()
    assert [module for module in graph if layer(module) is None] == ["tunelab"]  # every other one has a layer
    upward = upward_imports(graph)
    assert not upward, f"imports from a lower layer to a higher one ({' < '.join(LAYERS)}): {upward}"
    assert upward_imports({"tunelab.core.io": {"tunelab.eval.stats"}}) == ["tunelab.core.io -> tunelab.eval.stats"]


def test_no_import_circle():
    assert import_circle(import_graph()) is None
    assert import_circle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]  # the finder finds one
