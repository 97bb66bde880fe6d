"""The stage table's code dependencies against the import graph: a module a stage can import (at the top of a
file or inside a function) is a dependency of that stage, infrastructure, or declared untracked."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from viper.cli import STAGES as COMMANDS
from viper.stages import COMMON_CODE, INFRASTRUCTURE, STAGES, UNTRACKED

ROOT = Path(__file__).resolve().parents[1]


def module_file(name: str) -> Path | None:
    path = ROOT / Path(*name.split("."))
    if (path / "__init__.py").exists():
        return path / "__init__.py"
    return path.with_suffix(".py") if path.with_suffix(".py").exists() else None


def viper_imports(path: Path) -> set[str]:
    """Every ``viper`` module ``path`` imports anywhere (relative imports resolved; ``from a import b`` also
    yields ``a.b``, which is a module when b is one)."""
    package = path.relative_to(ROOT).parent.parts
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            parts = list(package[: len(package) - node.level + 1]) if node.level else []
            base = ".".join(parts + ([node.module] if node.module else []))
            found |= {base} | {f"{base}.{alias.name}" for alias in node.names}
    return {name for name in found if name.split(".")[0] == "viper"}


def import_closure(module: str) -> set[str]:
    """Repository paths of every viper file reachable from ``module`` (package ``__init__`` files included)."""
    seen: set[Path] = set()
    todo = [module]
    while todo:
        name = todo.pop()
        path = module_file(name)
        if path is None or path in seen:
            continue
        seen.add(path)
        parts = name.split(".")
        todo += [".".join(parts[:i]) for i in range(1, len(parts))] + sorted(viper_imports(path))
    return {path.relative_to(ROOT).as_posix() for path in seen}


def docstring_only(path: str) -> bool:
    body = ast.parse((ROOT / path).read_text()).body
    return all(isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) for node in body)


def covered(path: str, entries) -> bool:
    return any(path == entry or path.startswith(entry.rstrip("/") + "/") for entry in entries)


@pytest.mark.parametrize("stage", STAGES, ids=lambda s: s.name)
def test_every_module_a_stage_can_import_is_a_dependency_infrastructure_or_declared_untracked(stage):
    allowed = (*stage.code, *COMMON_CODE, *INFRASTRUCTURE, *UNTRACKED.get(stage.name, ()))
    reachable = import_closure(COMMANDS[stage.command].module)
    assert COMMANDS[stage.command].module.replace(".", "/") + ".py" in reachable
    missing = sorted(p for p in reachable if not covered(p, allowed) and not docstring_only(p))
    assert not missing, (
        f"{stage.name}: add to its code in viper/stages.py (or to UNTRACKED, with the reason): {missing}"
    )


def test_declared_dependencies_exist():
    for stage in STAGES:
        for entry in (*stage.code, *UNTRACKED.get(stage.name, ())):
            assert (ROOT / entry).exists(), f"{stage.name}: {entry} does not exist"
