"""The layout's rules, read from the source with `ast`: no import cycle, keys only where wiring is."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SERVER = ROOT / "server"

# The composition root and the HTTP layer: the only modules that may read the application's keys.
WIRING = ("server.app", "server.contexts", "server.keys", "server.chat_call")
WIRING_PACKAGES = ("server.routes", "server.middleware")
# The simulator is an application of its own, with its own keys module.
KEY_MODULES = ("server.keys", "server.simulator.keys")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(path): path for path in sorted(SERVER.rglob("*.py"))}


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The server modules `name` imports, at any depth of its tree (so under TYPE_CHECKING too)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            # `from . import x` imports the submodule x when there is one.
            found.update(f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names)
    return {module for module in found if module in known and module != name}


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    known = set(modules)
    return {name: _imports(name, path, known) for name, path in modules.items()}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle in `graph` as the list of modules on it, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(module: str) -> list[str] | None:
        state[module] = 1
        path.append(module)
        for target in sorted(graph[module]):
            if state.get(target) == 1:
                return [*path[path.index(target) :], target]
            if target not in state and (cycle := visit(target)) is not None:
                return cycle
        path.pop()
        state[module] = 2
        return None

    for module in sorted(graph):
        if module not in state and (cycle := visit(module)) is not None:
            return cycle
    return None


def _is_wiring(module: str) -> bool:
    return module in WIRING or any(module == p or module.startswith(p + ".") for p in WIRING_PACKAGES)


def test_the_import_graph_sees_relative_imports() -> None:
    graph = _graph()

    assert "server.keys" in graph["server.app"]
    assert "server.streams.registry" in graph["server.streams.reader"]


def test_server_has_no_import_cycle_not_even_a_type_only_one() -> None:
    assert _cycle(_graph()) is None


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_domain_modules_do_not_import_the_keys() -> None:
    offenders = sorted(name for name, imports in _graph().items() if "server.keys" in imports and not _is_wiring(name))

    assert offenders == []


def test_every_app_and_request_key_is_made_in_a_keys_module() -> None:
    makers = {"AppKey", "RequestKey"}
    offenders = []
    for name, path in _modules().items():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Call):
                func = node.func.value if isinstance(node.func, ast.Subscript) else node.func
                called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
                if called in makers and name not in KEY_MODULES:
                    offenders.append(f"{name}:{node.lineno}")

    assert offenders == []
