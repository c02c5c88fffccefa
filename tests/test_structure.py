"""The package's shape: no import cycle inside stride_core, and each layer imports only the layers below it.

Layers, bottom up (stride_core/<layer>/): method < store < runs < audits < cli < bench. `errors` and the
package root are below all of them. The deprecated one-release aliases at the top level (stride_core/pipeline.py
and the like) import their target by name at run time and are not part of the graph. Every import counts,
the ones inside functions too: a lazy import is still a dependency.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "stride_core"
LAYERS = ["method", "store", "runs", "audits", "cli", "bench"]
BASE = {"stride_core", "stride_core.errors"}  # importable from every layer
# third-party packages the method layer may use: torch / numpy and their file formats, progress bars
METHOD_THIRD_PARTY = {"torch", "numpy", "safetensors", "tqdm"}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in PACKAGE.rglob("*.py")}


def imports_of(name: str, path: Path, known: set[str]) -> tuple[set[str], set[str]]:
    """(stride_core modules, top-level third-party / stdlib names) that `path` imports anywhere in its body."""
    is_pkg = path.name == "__init__.py"
    inside, outside = set(), set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            for a in node.names:
                (inside if a.name.startswith("stride_core") else outside).add(a.name if a.name.startswith("stride_core") else a.name.split(".")[0])
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_pkg else name.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if not target.startswith("stride_core"):
                if target != "__future__":
                    outside.add(target.split(".")[0])
                continue
            for a in node.names:  # `from . import jobs` imports the module stride_core.jobs
                inside.add(f"{target}.{a.name}" if f"{target}.{a.name}" in known else target)
    return {m for m in inside if m in known and m != name}, outside


def is_alias(path: Path) -> bool:
    return path.parent == PACKAGE and "sys.modules[__name__] = _target" in path.read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    known = modules()
    return {n: imports_of(n, p, set(known))[0] for n, p in known.items() if not is_alias(p)}


def layer_of(name: str) -> str | None:
    parts = name.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in LAYERS else None


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    state: dict[str, int] = {}  # 1 on the stack, 2 finished
    stack: list[str] = []

    def visit(v):
        state[v] = 1
        stack.append(v)
        for w in sorted(graph.get(v, ())):
            if state.get(w) == 1:
                return stack[stack.index(w):] + [w]
            if w not in state and (c := visit(w)):
                return c
        stack.pop()
        state[v] = 2
        return None

    for v in sorted(graph):
        if v not in state and (c := visit(v)):
            return c
    return None


def test_no_import_cycle(graph):
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_every_module_lives_in_a_layer(graph):
    loose = sorted(n for n in graph if layer_of(n) is None and n not in BASE)
    assert not loose, f"modules outside the layers {LAYERS}: {loose}"


def test_layers_import_only_downward(graph):
    bad = []
    for name, targets in graph.items():
        layer = layer_of(name)
        if layer is None:
            continue
        allowed = set(LAYERS[: LAYERS.index(layer) + 1])
        for t in targets:
            if t not in BASE and layer_of(t) not in allowed:
                bad.append(f"{name} -> {t}")
    assert not bad, "imports from a higher layer:\n" + "\n".join(sorted(bad))


def test_method_layer_is_torch_and_numpy_only():
    known = modules()
    stdlib = set(sys.stdlib_module_names)
    bad = []
    for name, path in known.items():
        if layer_of(name) != "method":
            continue
        _, outside = imports_of(name, path, set(known))
        bad += [f"{name} imports {m}" for m in sorted(outside - stdlib - METHOD_THIRD_PARTY)]
    assert not bad, "\n".join(bad)


def test_the_checker_sees_a_planted_cycle_and_an_upward_import():
    """The checks above can fail: a cycle and a method -> cli edge planted in a copy of the graph are found."""
    g = {"stride_core.method.a": {"stride_core.method.b"}, "stride_core.method.b": {"stride_core.method.a"}}
    assert find_cycle(g) == ["stride_core.method.a", "stride_core.method.b", "stride_core.method.a"]
    assert find_cycle({"stride_core.method.a": {"stride_core.method.b"}, "stride_core.method.b": set()}) is None
    assert layer_of("stride_core.cli.commands") == "cli" and LAYERS.index("cli") > LAYERS.index("method")


def test_the_old_paths_are_aliases_of_the_new_modules():
    import importlib
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        old = importlib.import_module("stride_core.pipeline")
    from stride_core.runs import pipeline

    assert old is pipeline and hasattr(old, "index") and hasattr(old, "attribute")
