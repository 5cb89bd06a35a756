"""House rules that hold for the whole library: no import cycles, no imports of the workflow,
entry points only in ``stackgan/cli/``, no function over 80 lines."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LIBRARY = ROOT / "stackgan"


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, known: set[str]) -> set[str]:
    """Library modules ``path`` imports anywhere (module level or inside functions)."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
        out |= {n for n in names if n in known}
    return out


def import_graph() -> dict[str, set[str]]:
    files = {_module_name(p): p for p in LIBRARY.rglob("*.py")}
    known = set(files)
    return {m: _imports(p, known) - {m} for m, p in files.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a module path, or None (iterative three-colour DFS)."""
    colour = dict.fromkeys(graph, 0)  # 0 new, 1 on the stack, 2 done
    for start in sorted(graph):
        if colour[start]:
            continue
        stack = [(start, iter(sorted(graph[start])))]
        colour[start] = 1
        while stack:
            node, children = stack[-1]
            child = next(children, None)
            if child is None:
                colour[node] = 2
                stack.pop()
            elif colour[child] == 1:
                path = [n for n, _ in stack]
                return [*path[path.index(child) :], child]
            elif colour[child] == 0:
                colour[child] = 1
                stack.append((child, iter(sorted(graph[child]))))
    return None


def test_cycle_finder_finds_a_planted_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert find_cycle(graph) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_library_has_no_import_cycle_even_through_function_level_imports():
    graph = import_graph()
    assert "stackgan.evaluation" in graph and "stackgan.evaluation.attributes.model" in graph
    assert find_cycle(graph) is None


def test_library_never_imports_the_workflow():
    offenders = []
    for path in LIBRARY.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            mods = []
            if isinstance(node, ast.Import):
                mods = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                mods = [node.module]
            offenders += [
                f"{path.name}: {m}" for m in mods if m.split(".")[0] in ("pipeline", "snakemake")
            ]
    assert not offenders


def _library_modules_outside_cli() -> list[Path]:
    return [p for p in LIBRARY.rglob("*.py") if "cli" not in p.relative_to(LIBRARY).parts[:1]]


def test_only_cli_modules_define_main_or_build_parsers():
    offenders = []
    for path in _library_modules_outside_cli():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        rel = path.relative_to(ROOT)
        offenders += [
            f"{rel}: def main"
            for node in tree.body
            if isinstance(node, ast.FunctionDef) and node.name == "main"
        ]
        for node in ast.walk(tree):
            if isinstance(node, ast.Import) and any(a.name == "argparse" for a in node.names):
                offenders.append(f"{rel}: import argparse")
            elif isinstance(node, ast.ImportFrom) and node.module == "argparse":
                offenders.append(f"{rel}: from argparse")
    assert offenders == []


def test_no_library_function_is_longer_than_80_lines():
    long = []
    for path in LIBRARY.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = node.end_lineno - node.lineno + 1  # type: ignore[operator]
                if lines > 80:
                    long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({lines})")
    assert long == []


def test_every_command_has_its_module_in_the_cli_package_and_a_help_page(capsys):
    from stackgan.cli import COMMANDS

    for name, (module_name, _) in COMMANDS.items():
        assert module_name == f"stackgan.cli.{name.replace('-', '_')}", name
        module = importlib.import_module(module_name)
        with pytest.raises(SystemExit) as exit_:
            module.main(["--help"], prog=f"stackgan {name}")
        assert exit_.value.code == 0, name
        out = capsys.readouterr().out
        assert out.startswith(f"usage: stackgan {name}"), (name, out[:200])
