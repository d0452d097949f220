"""The layer order of docs/architecture.md, enforced: a module imports only its own layer and the layers
below it (function-level and TYPE_CHECKING imports included), so no back-arrow can creep in."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# layer -> the layers it may import (besides itself). Keep in step with docs/architecture.md.
ALLOWED: dict[str, set[str]] = {
    "srserve.engine": set(),
    "srserve.workload": {"srserve.engine"},
    "srserve.serving.proto": set(),
    "srserve.serving.control": {"srserve.engine", "srserve.workload"},
    "srserve.serving.config": {"srserve.engine", "srserve.workload", "srserve.serving.control"},
    "srserve.serving.ops": {"srserve.engine", "srserve.workload", "srserve.serving.control", "srserve.serving.config"},
}
_SERVING_CORE = set(ALLOWED) - {"srserve.serving.proto"}
ALLOWED |= {
    "srserve.serving.pools": _SERVING_CORE,
    "srserve.serving.ingress": _SERVING_CORE,
    "srserve.serving.api": _SERVING_CORE | {"srserve.serving.ingress", "srserve.serving.proto"},
}
_SERVING = set(ALLOWED)
ALLOWED |= {
    "srserve.serving.app": _SERVING,
    "srserve.serving.launcher": _SERVING | {"srserve.serving.app"},
    "srserve.client": {"srserve.serving.proto"},
    "srserve.planner": {"srserve.engine", "srserve.workload", "srserve.serving.control", "srserve.serving.config"},
    "srserve.analysis": {"srserve.workload"},
}
ALLOWED |= {
    "srserve.profiling": {"srserve.engine", "srserve.workload", "srserve.planner"},
    "srserve.loadgen": _SERVING
    | {
        "srserve.serving.app",
        "srserve.serving.launcher",
        "srserve.client",
        "srserve.planner",
        "srserve.profiling",
        "srserve.analysis",
    },
}
ALLOWED["srserve.cli"] = set(ALLOWED)
ALLOWED["srserve"] = set()  # the package root re-exports nothing


def layer_of(module: str) -> str:
    """The longest layer name that is `module` or a package above it."""
    matches = [name for name in ALLOWED if module == name or module.startswith(name + ".")]
    if not matches:
        raise AssertionError(f"{module} is in no layer: add it to docs/architecture.md and tests/test_layers.py")
    return max(matches, key=len)


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path, root: Path = ROOT) -> list[tuple[int, str]]:
    """(line, absolute module) of every srserve import in the file, wherever it stands."""
    module = module_name(path, root)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            # `from pkg import submodule` names a module too: judge by the most specific one that exists
            out += [(node.lineno, _deepest(root, target, alias.name)) for alias in node.names]
    return sorted({(line, name) for line, name in out if name == "srserve" or name.startswith("srserve.")})


def _deepest(root: Path, target: str, name: str) -> str:
    candidate = f"{target}.{name}"
    path = root.joinpath(*candidate.split("."))
    return candidate if path.with_suffix(".py").exists() or (path / "__init__.py").exists() else target


def back_arrows(root: Path = ROOT) -> list[str]:
    found = []
    for path in sorted((root / "srserve").rglob("*.py")):
        if "_pb2" in path.name:
            continue
        source = layer_of(module_name(path, root))
        for line, target in imports_of(path, root):
            dest = layer_of(target)
            if dest != source and dest not in ALLOWED[source]:
                found.append(f"{path.relative_to(root)}:{line}: {source} imports {target} ({dest})")
    return found


def test_no_import_goes_against_the_layer_order() -> None:
    arrows = back_arrows()
    assert not arrows, "imports against docs/architecture.md's layer order:\n" + "\n".join(arrows)


def test_the_check_sees_lazy_and_relative_imports(tmp_path: Path) -> None:
    """The checker itself: an import inside a function and a relative import are both found."""
    for package in ("srserve", "srserve/engine", "srserve/serving", "srserve/serving/control"):
        (tmp_path / package).mkdir(parents=True, exist_ok=True)
        (tmp_path / package / "__init__.py").write_text("")
    (tmp_path / "srserve/serving/control/jobs.py").write_text("")
    (tmp_path / "srserve/serving/ingress.py").write_text("")
    probe = "def f():\n    from srserve.serving.control import jobs\n    from ..serving import ingress\n"
    (tmp_path / "srserve/engine/probe.py").write_text(probe)
    found = back_arrows(tmp_path)
    assert len(found) == 2 and "srserve.serving.control.jobs" in found[0] and "srserve.serving.ingress" in found[1]


@pytest.mark.parametrize("layer", sorted(ALLOWED))
def test_every_layer_exists(layer: str) -> None:
    path = ROOT.joinpath(*layer.split("."))
    assert path.with_suffix(".py").exists() or (path / "__init__.py").exists(), f"{layer} is documented but absent"
