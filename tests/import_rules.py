"""The package's import rules, read from its source (every import statement, including those
under TYPE_CHECKING and inside functions): the folders are layers, each importing only itself
and the folders below it; the lower layers never import Ray or MLflow; nothing imports the
scripts; and no module is part of an import circle."""
from __future__ import annotations

import ast
from pathlib import Path

# bottom first: a folder may import only itself and the folders before it
LAYERS = ("core", "data", "nets", "config", "training", "methods", "stages", "tracking", "cluster",
          "reporting", "experiment", "sweeps", "cli")
NO_CLUSTER_OR_TRACKING = ("core", "data", "nets", "config", "training", "methods", "stages")
CLUSTER_AND_TRACKING = ("ray", "mlflow")
SCRIPTS = ("experiments", "bench", "tests")


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, root: Path, modules: set[str]) -> list[tuple[int, str]]:
    """(line, imported module) for every import statement of one file; names imported from a
    package that are its submodules count as imports of those submodules."""
    name = module_name(path, root)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                found.append((node.lineno, sub if sub in modules else target))
    return found


def graph(root: Path) -> dict[str, list[tuple[int, str]]]:
    """Module -> its imports, for every module of the package at `root`."""
    files = {module_name(p, root): p for p in sorted(root.rglob("*.py"))}
    return {name: imports(path, root, set(files)) for name, path in files.items()}


def layer_of(module: str, package: str) -> str | None:
    parts = module.split(".")
    return parts[1] if parts[0] == package and len(parts) > 1 else None


def violations(root: Path) -> list[str]:
    """One line per import that breaks a layer rule."""
    package, edges, found = root.name, graph(root), []
    for module, targets in edges.items():
        here = layer_of(module, package)
        if module != package and len(module.split(".")) == 2 and here not in LAYERS:
            found.append(f"{module}: a module outside the layer folders")
        for line, target in targets:
            top = target.split(".")[0]
            there = layer_of(target, package)
            if top in SCRIPTS:
                found.append(f"{module}:{line} imports the script folder {top}")
            elif top in CLUSTER_AND_TRACKING and here in NO_CLUSTER_OR_TRACKING:
                found.append(f"{module}:{line} imports {target}, but {here}/ never imports Ray or MLflow")
            elif top == package and here in LAYERS and there in LAYERS \
                    and LAYERS.index(there) > LAYERS.index(here):
                found.append(f"{module}:{line} imports {target}: {here}/ may not import {there}/ (above it)")
    return found


def circles(root: Path) -> list[list[str]]:
    """Strongly connected sets of more than one module (Tarjan), or a module importing itself."""
    package = root.name
    edges = {m: sorted({t for _, t in ts if t.split(".")[0] == package and t in graph_keys})
             for graph_keys in [set(graph(root))] for m, ts in graph(root).items()}
    index, low, stack, on_stack, found, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]; counter[0] += 1
        stack.append(v); on_stack.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w); low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            members = []
            while True:
                w = stack.pop(); on_stack.discard(w); members.append(w)
                if w == v:
                    break
            if len(members) > 1 or v in edges[v]:
                found.append(sorted(members))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found
