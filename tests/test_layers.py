"""The import contract: layers import one way (corpus <- attribution <- training <- augment <- pipelines <- CLI),
no module imports another in a cycle, and nothing imports the five folders by their bare names."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FOLDERS = {"curate": "curate", "attribution": "curate.attribution", "training": "curate.training",
           "augment": "curate.augment", "pipelines": "curate.pipelines"}
LAYERS = ["corpus", "attribution", "training", "augment", "pipelines", "cli"]
BARE = {"attribution", "training", "augment", "pipelines"}


def module_files(root: Path = ROOT) -> dict[str, Path]:
    """Installed module name -> source file, for every module of the package."""
    out: dict[str, Path] = {}
    for folder, package in FOLDERS.items():
        for path in sorted((root / folder).rglob("*.py")):
            parts = list(path.relative_to(root / folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join([package, *parts])] = path
    return out


def layer_of(module: str) -> str:
    parts = module.split(".")
    if parts[0] != "curate":
        raise ValueError(module)
    if len(parts) == 1:
        return "corpus"
    if parts[1] in ("cli", "commands"):
        return "cli"
    if parts[1] in BARE:
        return parts[1]
    return "corpus"


def imports_of(path: Path, module: str) -> list[tuple[str, int]]:
    """(imported curate module, line) of every import in the file, lazy ones inside functions included."""
    tree = ast.parse(path.read_text(), str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: list[tuple[str, int]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            found.append((name, node.lineno))
            # `from curate.x import y` may name a submodule y
            found += [(f"{name}.{a.name}", node.lineno) for a in node.names]
    return found


def graph(root: Path = ROOT) -> tuple[dict[str, set[str]], list[str]]:
    files = module_files(root)
    edges: dict[str, set[str]] = {m: set() for m in files}
    bare: list[str] = []
    for module, path in files.items():
        for name, line in imports_of(path, module):
            where = f"{path.relative_to(root)}:{line}"
            if name.split(".")[0] in BARE and not any(b.startswith(where + " ") for b in bare):
                bare.append(f"{where} imports {name}")
            if name in files and name != module:
                edges[module].add(name)
    return edges, bare


def test_no_bare_top_level_imports():
    """The folders are imported as curate.attribution etc., never by their generic names."""
    _, bare = graph()
    assert bare == []


def test_layers_import_one_way():
    edges, _ = graph()
    rank = {name: i for i, name in enumerate(LAYERS)}
    upward = [
        f"{a} ({layer_of(a)}) -> {b} ({layer_of(b)})"
        for a, targets in sorted(edges.items())
        for b in sorted(targets)
        if rank[layer_of(b)] > rank[layer_of(a)]
    ]
    assert upward == []


def test_no_import_cycles():
    edges, _ = graph()
    # a package's __init__ importing its own submodules is not a cycle of behaviour; skip parent->child edges
    cycles: list[str] = []
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges[node]):
            if nxt.startswith(node + "."):
                continue
            if state.get(nxt) == 1:
                cycles.append(" -> ".join(stack[stack.index(nxt):] + [nxt]))
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node)
    assert cycles == []


@pytest.mark.parametrize("module,expected", [
    ("curate.corpus", "corpus"), ("curate.cli", "cli"), ("curate.commands.score", "cli"),
    ("curate.attribution.ekfac", "attribution"), ("curate.pipelines.score_run", "pipelines"),
])
def test_layer_names(module, expected):
    assert layer_of(module) == expected


def test_contract_sees_a_violation(tmp_path):
    """The checker itself catches an upward import and a cycle (so a passing contract means something)."""
    for folder in FOLDERS:
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "__init__.py").write_text("")
    (tmp_path / "curate" / "low.py").write_text("from curate.pipelines.high import x\n")
    (tmp_path / "pipelines" / "high.py").write_text("import curate.low\n")
    (tmp_path / "training" / "bare.py").write_text("from attribution import y\n")
    edges, bare = graph(tmp_path)
    assert edges["curate.low"] == {"curate.pipelines.high"}
    assert edges["curate.pipelines.high"] == {"curate.low"}
    assert bare == ["training/bare.py:1 imports attribution"]
