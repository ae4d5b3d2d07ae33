"""The package's layout: no import cycle, and no module imports another's private name.

Every ``import`` counts, at module level or inside a function (a lazy import is still a
dependency: it only moves the cycle to run time).
"""

import ast
from pathlib import Path

import nst_jax

PACKAGE = Path(nst_jax.__file__).resolve().parent


def _modules() -> dict[str, Path]:
    """Module name -> file, for nst_jax and its installed converters."""
    from nst_jax import converters

    found = {}
    for root, prefix in ((PACKAGE, "nst_jax"), (Path(converters.__file__).resolve().parent, "nst_jax.converters")):
        for path in root.glob("*.py"):
            found[prefix if path.stem == "__init__" else f"{prefix}.{path.stem}"] = path
    return found


def _imports(name: str, path: Path, modules: dict[str, Path]) -> list[tuple[str, str, int]]:
    """(imported module, imported name or '', line) for every import of the package in one file."""
    package = name if path.stem == "__init__" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(alias.name, "", node.lineno) for alias in node.names if alias.name.startswith("nst_jax")]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{base}.{node.module}" if node.module else base
            else:
                base = node.module or ""
            if not base.startswith("nst_jax"):
                continue
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                found.append((submodule, "", node.lineno) if submodule in modules else (base, alias.name, node.lineno))
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {
        name: {target for target, _, _ in _imports(name, path, modules) if target in modules and target != name}
        for name, path in modules.items()
    }


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_cycle_finder_finds_a_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert _cycles(graph) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_the_walk_sees_lazy_imports():
    graph = _graph()
    assert "nst_jax.transfer" in graph["nst_jax.runner"]  # imported inside a function only
    assert "nst_jax.memory" in graph["nst_jax.commands"]


def test_no_import_cycle():
    assert _cycles(_graph()) == []


def test_no_module_imports_another_modules_private_name():
    modules = _modules()
    private = [
        f"{name} line {line}: {target}.{imported}"
        for name, path in modules.items()
        for target, imported, line in _imports(name, path, modules)
        if imported.startswith("_") and not imported.startswith("__") and target != name
    ]
    assert private == []


def test_every_class_named_in_a_public_signature_or_docstring_is_exported():
    """A user who reads ``Raises: MemoryLimitError`` or ``-> SweepPlan`` can import it from ``nst_jax``."""
    import inspect
    import re
    import sys

    ours = {
        name: value
        for module_name, module in list(sys.modules.items())
        if module_name.startswith("nst_jax")
        for name, value in vars(module).items()
        if inspect.isclass(value) and getattr(value, "__module__", "").startswith("nst_jax") and name[0] != "_"
    }
    assert {"SweepPlan", "MemoryLimitError", "Interrupted", "CheckpointError"} <= set(nst_jax.__all__)
    missing = set()
    for name in nst_jax.__all__:
        value = getattr(nst_jax, name)
        if not callable(value):
            continue
        texts = [inspect.getdoc(value) or ""]
        try:
            texts.append(str(inspect.signature(value)))
        except (TypeError, ValueError):
            pass
        for text in texts:
            missing |= {(name, word) for word in re.findall(r"\b[A-Z]\w+\b", text) if word in ours}
    assert {(name, word) for name, word in missing if word not in nst_jax.__all__} == set()


# Old module names kept for one release, each a shim that warns (issue 26, goal 5).
DEPRECATED_MODULES = {"stylize": "transfer", "sweep": "sweeps"}


def test_no_exported_name_shadows_a_module():
    """No ``nst_jax.X`` is both a function and a module, but the deprecated shims (the functions keep the names)."""
    shadowing = {name for name in nst_jax.__all__ if (PACKAGE / f"{name}.py").exists()}
    assert shadowing == set(DEPRECATED_MODULES)


def test_old_module_names_still_import_with_a_warning():
    import importlib

    import pytest

    for old, new in DEPRECATED_MODULES.items():
        module = importlib.import_module(f"nst_jax.{new}")
        with pytest.warns(DeprecationWarning, match=rf"nst_jax\.{old} is now nst_jax\.{new}: import check_"):
            moved = importlib.import_module(f"nst_jax.{old}").check_network
        assert moved is module.check_network
        assert getattr(nst_jax, old) is getattr(module, old)  # the function, even after importing the old module
