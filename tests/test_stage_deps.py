"""dvc.yaml: every stage declares, as a dep, each pipeline module its command imports.

A module a stage runs but does not declare would not make `dvc repro` rerun the stage when the
module changes: stale artifacts that look current. Imports are read from the source (`ast`),
function-level ones included, transitively from the stage's `python -m` module.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
# Modules that cannot change what a stage computes: the package marker, atomic writes, error
# formatting, and params.yaml loading (a change there that mattered would change params.yaml,
# which DVC tracks through each stage's params).
INFRASTRUCTURE = {"pipeline/__init__.py", "pipeline/atomic.py", "pipeline/errors.py",
                  "pipeline/params.py"}


def _source(module: str) -> Path | None:
    path = ROOT / module.replace(".", "/")
    for candidate in (path.with_suffix(".py"), path / "__init__.py"):
        if candidate.exists():
            return candidate
    return None


def _imported(path: Path, package: str) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")[:len(package.split(".")) - node.level + 1]
                module = ".".join(parts + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            if module.split(".")[0] != "pipeline":
                continue
            found.add(module)
            found.update(f"{module}.{a.name}" for a in node.names
                         if _source(f"{module}.{a.name}"))
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "pipeline")
    return found


def _closure(module: str) -> set[str]:
    seen, todo = set(), [module]
    while todo:
        current = todo.pop()
        path = _source(current)
        if current in seen or path is None:
            continue
        seen.add(current)
        package = current if path.name == "__init__.py" else current.rsplit(".", 1)[0]
        todo.extend(_imported(path, package))
    return {str(_source(m).relative_to(ROOT)) for m in seen}


def _stages():
    for name, stage in yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"].items():
        body = stage.get("do", stage)
        yield name, body["cmd"].split("-m ", 1)[1].split()[0], body.get("deps", [])


@pytest.mark.parametrize("name,module,deps",
                         [pytest.param(*stage, id=stage[0]) for stage in _stages()])
def test_stage_declares_every_pipeline_module_it_imports(name, module, deps):
    modules = _closure(module)
    assert f"{module.replace('.', '/')}.py" in modules
    missing = sorted(m for m in modules - INFRASTRUCTURE
                     if not any(m == d or m.startswith(d.rstrip("/") + "/") for d in deps))
    assert not missing, f"dvc.yaml stage '{name}' runs {missing} but does not list them as deps"
