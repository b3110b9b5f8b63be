"""The layout's rules, checked on the source: no import cycle (function-level imports
included), no folder over 12 modules, no module named like a standard-library module, the
service talks to the engine only through its facade, and the engine sends HTTP only through
its maintained client (aiohttp), never through hand-written framing."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("engine", "service", "config")
MAX_MODULES_PER_FOLDER = 12


def modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (REPO / package).rglob("*.py"):
            parts = list(path.relative_to(REPO).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join(parts)] = path
    return found


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """Every project module `name` imports, at any depth of its code (TYPE_CHECKING-only
    imports excluded: they never run)."""
    tree = ast.parse(path.read_text(), str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped.update(id(n) for sub in node.body for n in ast.walk(sub))
    targets: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            targets.add(base)
            targets.update(f"{base}.{alias.name}" for alias in node.names)
    found = set()
    for target in targets:
        while target and target not in known:
            target = target.rpartition(".")[0]
        if target and target != name:
            found.add(target)
    return found


def graph() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods)
    edges = {name: imports_of(name, path, known) for name, path in mods.items()}
    # A package's facade that only loads names lazily (engine/__init__.py) imports nothing at
    # import time; importing `engine.x` runs `engine/__init__` but that adds no edge back.
    return {name: {t for t in targets if not name.startswith(t + ".")} for name, targets in edges.items()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    found, state, stack = [], {}, []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                found.append(stack[stack.index(nxt) :] + [nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node)
    return found


def test_no_import_cycle_anywhere():
    assert cycles(graph()) == []


def test_the_cycle_finder_finds_cycles():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c", "a"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_folder_holds_more_than_12_modules():
    crowded = {}
    for package in PACKAGES:
        for folder in [REPO / package, *[p for p in (REPO / package).rglob("*") if p.is_dir()]]:
            count = len([p for p in folder.glob("*.py") if p.name != "__init__.py"])
            if count > MAX_MODULES_PER_FOLDER:
                crowded[str(folder.relative_to(REPO))] = count
    assert crowded == {}


def test_no_module_shadows_the_standard_library():
    stdlib = set(sys.stdlib_module_names)
    shadows = [name for name in modules() if name.rpartition(".")[2] in stdlib]
    assert shadows == []


def test_the_service_uses_the_engine_only_through_its_facade():
    edges = graph()
    reaching_in = {
        name: sorted(t for t in targets if t.startswith("engine."))
        for name, targets in edges.items()
        if name.startswith("service")
    }
    assert {k: v for k, v in reaching_in.items() if v} == {}


def test_the_engine_sends_http_only_through_aiohttp():
    raw = {"socket", "http.client", "urllib3", "requests.adapters"}
    offenders = {}
    for name, path in modules().items():
        if not name.startswith(("engine.fetch", "engine.run")):
            continue
        tree = ast.parse(path.read_text())
        used = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
        used |= {node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
        bad = sorted(u for u in used if u in raw or u.startswith("urllib3."))
        if bad:
            offenders[name] = bad
    assert offenders == {}
    client = (REPO / "engine" / "fetch" / "client.py").read_text()
    assert "aiohttp.ClientSession" in client or "ClientSession(" in client
