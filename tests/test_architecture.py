"""The package's shape, from its source (ast): no import cycles, no upward imports, nothing in
the library importing the command-line edge, modules of reviewable size, a thin edge."""

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PKG = REPO / "insideout_jax"
LOWER = {"render": ("train", "fitting", "internal", "pipeline", "stacks", "reporting")}
MAX_MODULE_LINES = 450
MAX_EDGE_LINES = 900


def _modules() -> dict:
    mods = {}
    for f in PKG.rglob("*.py"):
        parts = list(f.relative_to(REPO).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        mods[".".join(parts)] = f
    return mods


def import_graph(mods: dict) -> dict:
    """module → set of imported modules (every import statement, also inside functions)."""

    def resolve(name):
        while name and name not in mods:
            name = name.rsplit(".", 1)[0] if "." in name else ""
        return name

    graph = {}
    for m, f in mods.items():
        edges = set()
        for node in ast.walk(ast.parse(f.read_text(), str(f))):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in mods else node.module
                         for a in node.names]
            for n in names:
                if n.startswith("experiments"):
                    edges.add(n)
                elif n.startswith("insideout_jax") and resolve(n) not in ("", m):
                    edges.add(resolve(n))
        graph[m] = edges
    return graph


def find_cycle(graph: dict) -> list | None:
    """One cycle of the graph (a list of modules) or None (iterative depth-first search)."""
    state, parent = {}, {}
    for root in graph:
        if root in state:
            continue
        stack = [(root, iter(sorted(graph[root])))]
        state[root] = 1
        while stack:
            node, it = stack[-1]
            nxt = next(it, None)
            if nxt is None:
                state[node] = 2
                stack.pop()
            elif nxt in graph and state.get(nxt) == 1:
                cyc, cur = [nxt], node
                while cur != nxt:
                    cyc.append(cur)
                    cur = parent[cur]
                return cyc[::-1]
            elif nxt in graph and nxt not in state:
                state[nxt], parent[nxt] = 1, node
                stack.append((nxt, iter(sorted(graph[nxt]))))
    return None


def test_the_cycle_finder_finds_cycles():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) is not None
    assert sorted(find_cycle({"a": {"b"}, "b": {"a"}, "c": set()})) == ["a", "b"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_no_import_cycles():
    graph = import_graph(_modules())
    assert len(graph) > 50
    assert find_cycle(graph) is None, " → ".join(find_cycle(graph))


def test_no_upward_imports_and_no_edge_imports():
    graph = import_graph(_modules())
    bad = []
    for m, edges in graph.items():
        for e in edges:
            if e.startswith("experiments"):
                bad.append(f"{m} imports {e}")
            for low, uppers in LOWER.items():
                if m.startswith(f"insideout_jax.{low}") and any(
                        e.startswith(f"insideout_jax.{u}") for u in uppers):
                    bad.append(f"{m} imports {e}")
    assert not bad, bad


def test_modules_are_of_reviewable_size():
    sizes = {str(f.relative_to(REPO)): len(f.read_text().splitlines()) for f in _modules().values()}
    big = {f: n for f, n in sizes.items() if n > MAX_MODULE_LINES}
    assert not big, big


def test_the_edge_is_thin():
    files = sorted((REPO / "experiments").glob("*.py"))
    total = sum(len(f.read_text().splitlines()) for f in files)
    assert total < MAX_EDGE_LINES, {f.name: len(f.read_text().splitlines()) for f in files}
