"""mo_rl's import graph: no circle between files, no import from a lower layer to a higher one.

Every import counts, at any depth: a function-level import is what hides a circle from Python. The layer order is
the README's (Layout, "Import layers"): bottom first, names on one line are peers that import nothing of each other.
A file may import its own folder's files (no circle) and anything on a lower line. The checker is plain ``ast``
over the files, so it also runs on a fake tree (the last tests), which shows it can fail.
"""

from __future__ import annotations

import ast
import re
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PKG = "mo_rl"


def module_names(root: Path) -> dict[str, Path]:
    """{dotted module name: file} of every ``.py`` file under ``root / PKG`` (a package is its ``__init__.py``)."""
    out = {}
    for path in sorted((root / PKG).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def _owner(name: str, modules: dict) -> str | None:
    """The module a dotted name lives in: the longest prefix that is one of ``modules``."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def _targets(node: ast.AST, module: str, is_package: bool, modules: dict) -> list[str]:
    """The mo_rl modules one import statement reads. ``from p import x`` is an edge to ``p.x`` when that is a
    module (a submodule), else to ``p``; relative imports are resolved against the importing file's package."""
    if isinstance(node, ast.Import):
        return [_owner(a.name, modules) for a in node.names]
    base = node.module or ""
    if node.level:
        package = module.split(".") if is_package else module.split(".")[:-1]
        base = ".".join(package[:len(package) - node.level + 1] + ([base] if base else []))
    return [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else _owner(base, modules) for a in node.names]


def import_edges(root: Path) -> list[tuple[str, str, int]]:
    """(importer, imported, line) for every import of a mo_rl module by another, module level or not."""
    modules = module_names(root)
    edges = set()
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                for target in _targets(node, name, path.name == "__init__.py", modules):
                    if target is not None and target.split(".")[0] == PKG and target != name:
                        edges.add((name, target, node.lineno))
    return sorted(edges)


def cycles(edges) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm, iterative), each sorted."""
    graph: dict[str, set[str]] = {}
    for a, b, _ in edges:
        graph.setdefault(a, set()).add(b)
        graph.setdefault(b, set())
    index, low, stack, on_stack, found = {}, {}, [], set(), []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start), on_stack.add(start)
        while work:
            v, children = work[-1]
            w = next(children, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w), on_stack.add(w)
                    work.append((w, iter(sorted(graph[w]))))
                elif w in on_stack:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while not comp or comp[-1] != v:
                    comp.append(stack.pop())
                    on_stack.discard(comp[-1])
                if len(comp) > 1:
                    found.append(sorted(comp))
    return found


def unit(module: str) -> str | None:
    """What a layer names: the top-level file or folder of mo_rl a module is in (None: the package root)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def violations(edges, layers: list[list[str]]) -> list[str]:
    """Each import that reaches a higher layer or a peer on its own layer, naming both modules and the line."""
    rank = {name: i for i, names in enumerate(layers) for name in names}
    bad = []
    for a, b, line in edges:
        ua, ub = unit(a), unit(b)
        if ua == ub or ub is None:  # within one folder (cycles are checked apart), or the root (imports nothing)
            continue
        if rank[ub] > rank[ua]:
            bad.append(f"{a} (line {line}) imports {b}: {ua!r} is below {ub!r}")
        elif rank[ub] == rank[ua]:
            bad.append(f"{a} (line {line}) imports {b}: {ua!r} and {ub!r} are peers on one layer")
    return bad


def readme_layers(text: str) -> list[list[str]]:
    """The names on each line of the block after "Import layers" in the README's Layout section, bottom first."""
    layout = text.split("\n## Layout", 1)[1].split("\n## ", 1)[0]
    block = layout.split("Import layers", 1)[1].split("```", 2)[1]
    layers = []
    for line in block.strip("\n").splitlines():
        m = re.match(r"^(\w+(?:, \w+)*)(?: {2,}\S.*)?$", line)
        assert m, f"README layer line {line!r} is not 'name, name  description'"
        layers.append(m.group(1).split(", "))
    return layers


LAYERS = readme_layers((ROOT / "README.md").read_text(encoding="utf-8"))


def test_the_readme_layers_place_every_part_of_mo_rl_once():
    units = {unit(m) for m in module_names(ROOT)} - {None}
    listed = [name for names in LAYERS for name in names]
    assert sorted(listed) == sorted(set(listed)), "a name is on two README layer lines"
    assert set(listed) == units, f"not in the README's layers: {units - set(listed)}; not in mo_rl/: " \
                                 f"{set(listed) - units}"


def test_the_package_root_imports_nothing_of_mo_rl():
    assert not [e for e in import_edges(ROOT) if e[0] == PKG]  # so it needs no layer, and any file may read it


def test_no_import_circle_between_files():
    found = cycles(import_edges(ROOT))
    assert not found, "import circles: " + "; ".join(" <-> ".join(c) for c in found)


def test_no_import_reaches_a_higher_layer_or_a_peer():
    bad = violations(import_edges(ROOT), LAYERS)
    assert not bad, "imports against the README's layers:\n" + "\n".join(bad)


def test_compare_and_what_it_reads_import_nothing_of_training():
    samplers = {"mo_rl.analysis.evaluate", "mo_rl.analysis.diagnose"}  # these two sample through the pipeline
    reads = [(a, b, line) for a, b, line in import_edges(ROOT) if a.startswith("mo_rl.analysis.")
             and a not in samplers and unit(b) in {"train", "pipeline", "rollout", "models"}]
    assert not reads, reads


def _tree(root: Path, files: dict[str, str]) -> Path:
    for rel, src in files.items():
        path = root / PKG / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(src))
    return root


def test_the_checker_finds_a_hidden_circle_an_upward_import_and_a_peer_import(tmp_path):
    root = _tree(tmp_path, {
        "__init__.py": "",
        "low.py": "def f():\n    from mo_rl.high import g  # function level: hidden from Python\n",
        "high.py": "import mo_rl.low\n",
        "side.py": "from mo_rl import low\n",
        "pkg/__init__.py": "from . import sub\n",
        "pkg/sub.py": "from .other import x\n",
        "pkg/other.py": "from mo_rl.pkg import sub\nx = 1\n",
    })
    edges = import_edges(root)
    assert ("mo_rl.low", "mo_rl.high", 2) in edges  # the function-level import
    assert ("mo_rl.side", "mo_rl.low", 1) in edges  # ``from mo_rl import low``: the submodule, not the root
    assert ("mo_rl.pkg", "mo_rl.pkg.sub", 1) in edges and ("mo_rl.pkg.sub", "mo_rl.pkg.other", 1) in edges
    assert cycles(edges) == [["mo_rl.high", "mo_rl.low"], ["mo_rl.pkg.other", "mo_rl.pkg.sub"]]
    bad = violations(edges, [["low", "side"], ["high"], ["pkg"]])
    assert bad == ["mo_rl.low (line 2) imports mo_rl.high: 'low' is below 'high'",
                   "mo_rl.side (line 1) imports mo_rl.low: 'side' and 'low' are peers on one layer"]


def test_the_checker_on_a_hand_built_graph():
    edges = [("mo_rl.a.x", "mo_rl.b", 3), ("mo_rl.b", "mo_rl.c", 4), ("mo_rl.c", "mo_rl.a.x", 9),
             ("mo_rl.d", "mo_rl.b", 1)]
    assert cycles(edges) == [["mo_rl.a.x", "mo_rl.b", "mo_rl.c"]]
    assert violations(edges, [["c"], ["a", "b"], ["d"]]) == [
        "mo_rl.a.x (line 3) imports mo_rl.b: 'a' and 'b' are peers on one layer",
        "mo_rl.c (line 9) imports mo_rl.a.x: 'c' is below 'a'"]
