"""The engine's import structure: no module imports one that imports it back, and its light modules stay light.

Every `import` statement counts, wherever it stands (module level, inside a function, under
`if TYPE_CHECKING:`): a lazy import only hides a cycle, it does not remove it. `from pkg import name`
is an edge to `pkg.name` when that is a module, else to `pkg`. Importing a submodule also runs its
parent package's `__init__`; those implicit edges are left out, because every package here either
exports lazily (PEP 562, its imports inside `__getattr__`) or is a registry whose submodules never
import the package itself, which the graph does check.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import srserve.engine

ENGINE_DIR = Path(srserve.engine.__file__).parent
PACKAGE = "srserve.engine"

# Modules that the serving side and the workload layer import for their types and checks: they must
# not pull torch or diffusers in (a request parse or a pool's config check should not cost seconds).
LIGHT_MODULES = ("srserve.engine.request", "srserve.engine.parallel.config", "srserve.engine.config")
HEAVY = ("torch", "diffusers", "transformers")


def _module_name(path: Path) -> str:
    parts = path.relative_to(ENGINE_DIR.parent.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def engine_modules() -> dict[str, Path]:
    return {_module_name(path): path for path in sorted(ENGINE_DIR.rglob("*.py"))}


def _resolve(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".")
    base = base if is_package else base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, node.module] if node.module else base)


def imports_of(module: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The engine modules that `module` imports anywhere in its text."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            source = _resolve(node, module, path.name == "__init__.py")
            for alias in node.names:
                sub = f"{source}.{alias.name}"
                found.add(sub if sub in modules else source)
    return {name for name in found if name in modules and name != module}


def import_graph() -> dict[str, set[str]]:
    modules = engine_modules()
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as a path (first module repeated at the end), or None."""
    done: set[str] = set()
    stack: list[str] = []
    on_stack: set[str] = set()

    def visit(node: str) -> list[str] | None:
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph[node]):
            if target in on_stack:
                return [*stack[stack.index(target) :], target]
            if target not in done and (cycle := visit(target)):
                return cycle
        stack.pop()
        on_stack.discard(node)
        done.add(node)
        return None

    for start in sorted(graph):
        if start not in done and (cycle := visit(start)):
            return cycle
    return None


def test_graph_sees_every_kind_of_import() -> None:
    """The graph reads function-level, TYPE_CHECKING and relative imports, and `from pkg import module`."""
    graph = import_graph()
    assert "srserve.engine.models.components" in graph["srserve.engine.engine"]  # from ...models import components
    assert "srserve.engine.engine" in graph[PACKAGE]  # inside the package's lazy __getattr__
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_engine_import_graph_has_no_cycle() -> None:
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle in the engine: " + " -> ".join(cycle or [])


def test_engine_imports_are_all_visible() -> None:
    """No import_module/__import__: an import the graph cannot read could hide a cycle."""
    hidden = [
        f"{name}:{node.lineno}"
        for name, path in engine_modules().items()
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Attribute | ast.Name)
        and (node.attr if isinstance(node, ast.Attribute) else node.id) in ("import_module", "__import__")
    ]
    assert not hidden, f"dynamic imports in the engine: {hidden}"


def import_chain(stderr: str, target: str) -> list[str]:
    """From `python -X importtime` output: the modules whose import brought `target` in, outermost first."""
    entries = []
    for line in stderr.splitlines():
        if line.startswith("import time:") and not line.rstrip().endswith("imported package"):
            name = line.split("|")[-1]
            entries.append((len(name) - len(name.lstrip()), name.strip()))
    found = [i for i, (_, name) in enumerate(entries) if name == target]
    if not found:
        return []
    depth, chain = entries[found[0]][0], [target]
    for indent, name in entries[found[0] + 1 :]:  # a module is listed after the imports it made, less indented
        if indent < depth:
            depth = indent
            chain.append(name)
    return chain[::-1]


@pytest.mark.parametrize("module", LIGHT_MODULES)
def test_light_module_imports_no_torch(module: str) -> None:
    """Checked in a fresh interpreter (this test process already holds torch); a failure names the import chain."""
    code = f"import sys, {module}; print(' '.join(m for m in HEAVY if m in sys.modules))".replace("HEAVY", repr(HEAVY))
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    heavy = result.stdout.split()
    chains = [" -> ".join(import_chain(result.stderr, name)) for name in heavy]
    assert not heavy, f"importing {module} imports {', '.join(heavy)}: " + "; ".join(chains)
