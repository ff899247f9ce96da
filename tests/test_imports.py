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
    """(importing file, imported file, line) for every import of a mo_rl file by another, module level or not;
    files as paths from ``root`` (``mo_rl/train/loop.py``)."""
    modules = module_names(root)
    rel = {name: path.relative_to(root).as_posix() for name, path in modules.items()}
    edges = set()
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                for target in _targets(node, name, path.name == "__init__.py", modules):
                    if target is not None and target.split(".")[0] == PKG and target != name:
                        edges.add((rel[name], rel[target], node.lineno))
    return sorted(edges)


def cycles(edges) -> list[list[str]]:
    """The strongly connected components of more than one file (Tarjan's algorithm), each sorted."""
    graph: dict[str, list[str]] = {}
    for a, b, _ in edges:
        graph.setdefault(a, []).append(b)
        graph.setdefault(b, [])
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(set(graph[v])):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:  # v is the root of a component: everything above it on the stack
            comp = stack[stack.index(v):]
            del stack[stack.index(v):]
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def unit(file: str) -> str | None:
    """What a layer names: the top-level file or folder of mo_rl a file is in (None: ``mo_rl/__init__.py``)."""
    top = file.split("/")[1].removesuffix(".py")
    return None if top == "__init__" else top


def violations(edges, layers: list[list[str]]) -> list[str]:
    """Each import that reaches a higher layer or a peer on its own layer, naming both files and the line."""
    rank = {name: i for i, names in enumerate(layers) for name in names}
    rank[None] = -1  # the package root: below everything (it must import nothing)
    bad = []
    for a, b, line in edges:
        ua, ub = unit(a), unit(b)
        if ua == ub or ub is None:  # within one folder (cycles are checked apart), or the root (imports nothing)
            continue
        if rank[ub] > rank[ua]:
            bad.append(f"{a}:{line} imports {b}: {ua!r} is below {ub!r}")
        elif rank[ub] == rank[ua]:
            bad.append(f"{a}:{line} imports {b}: {ua!r} and {ub!r} are peers on one layer")
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
    units = {unit(p.relative_to(ROOT).as_posix()) for p in module_names(ROOT).values()} - {None}
    listed = [name for names in LAYERS for name in names]
    assert sorted(listed) == sorted(set(listed)), "a name is on two README layer lines"
    assert set(listed) == units, f"not in the README's layers: {units - set(listed)}; not in mo_rl/: " \
                                 f"{set(listed) - units}"


def test_the_package_root_imports_nothing_of_mo_rl():
    assert not [e for e in import_edges(ROOT) if e[0] == f"{PKG}/__init__.py"]  # so it needs no layer


def test_no_import_circle_between_files():
    found = cycles(import_edges(ROOT))
    assert not found, "import circles: " + "; ".join(" <-> ".join(c) for c in found)


def test_no_import_reaches_a_higher_layer_or_a_peer():
    bad = violations(import_edges(ROOT), LAYERS)
    assert not bad, "imports against the README's layers:\n" + "\n".join(bad)


def test_compare_and_what_it_reads_import_nothing_of_training():
    samplers = {"mo_rl/analysis/evaluate.py", "mo_rl/analysis/diagnose.py"}  # these two sample through the pipeline
    reads = [(a, b, line) for a, b, line in import_edges(ROOT) if a.startswith("mo_rl/analysis/")
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
    assert ("mo_rl/low.py", "mo_rl/high.py", 2) in edges  # the function-level import
    assert ("mo_rl/side.py", "mo_rl/low.py", 1) in edges  # ``from mo_rl import low``: the submodule, not the root
    assert ("mo_rl/pkg/__init__.py", "mo_rl/pkg/sub.py", 1) in edges  # relative imports
    assert ("mo_rl/pkg/sub.py", "mo_rl/pkg/other.py", 1) in edges
    assert cycles(edges) == [["mo_rl/high.py", "mo_rl/low.py"], ["mo_rl/pkg/other.py", "mo_rl/pkg/sub.py"]]
    bad = violations(edges, [["low", "side"], ["high"], ["pkg"]])
    assert bad == ["mo_rl/low.py:2 imports mo_rl/high.py: 'low' is below 'high'",
                   "mo_rl/side.py:1 imports mo_rl/low.py: 'side' and 'low' are peers on one layer"]


def test_the_checker_on_a_hand_built_graph():
    edges = [("mo_rl/a/x.py", "mo_rl/b.py", 3), ("mo_rl/b.py", "mo_rl/c.py", 4), ("mo_rl/c.py", "mo_rl/a/x.py", 9),
             ("mo_rl/d.py", "mo_rl/b.py", 1), ("mo_rl/d.py", "mo_rl/__init__.py", 2)]
    assert cycles(edges) == [["mo_rl/a/x.py", "mo_rl/b.py", "mo_rl/c.py"]]
    assert violations(edges, [["c"], ["a", "b"], ["d"]]) == [
        "mo_rl/a/x.py:3 imports mo_rl/b.py: 'a' and 'b' are peers on one layer",
        "mo_rl/c.py:9 imports mo_rl/a/x.py: 'c' is below 'a'"]
