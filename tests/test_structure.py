"""The package's shape, read from the source (ast; nothing is imported, so no torch):

- no import cycles between rbr_rlhf's modules (imports inside functions count: they run too; imports
  under ``if TYPE_CHECKING:`` do not),
- library modules never import a command-line module (``*/cli.py``, ``rbr_rlhf/cli.py``),
- no module imports a private (underscore) name from another package of rbr_rlhf.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "rbr_rlhf"


def module_name(path: Path) -> str:
    parts = ["rbr_rlhf", *path.relative_to(ROOT).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def imports(name: str, path: Path, known: dict[str, Path]) -> list[tuple[str, str | None]]:
    """(imported module, imported name or None) for every import in the file."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = []
    tree = ast.parse(path.read_text())
    typing_only = {id(n) for block in ast.walk(tree) if isinstance(block, ast.If) and "TYPE_CHECKING" in ast.unparse(block.test)
                   for stmt in block.body for n in ast.walk(stmt)}  # annotations only: never run
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            out += [(a.name, None) for a in node.names if a.name.startswith("rbr_rlhf")]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if not target.startswith("rbr_rlhf"):
                continue
            for a in node.names:
                sub = f"{target}.{a.name}"
                out.append((sub, None) if sub in known else (target, a.name))
    return [(m, n) for m, n in out if m in known]


def graph() -> tuple[dict[str, set[str]], dict[str, list[tuple[str, str | None]]]]:
    known = modules()
    raw = {m: imports(m, p, known) for m, p in known.items()}
    return {m: {t for t, _ in edges if t != m} for m, edges in raw.items()}, raw


def is_cli(module: str) -> bool:
    return module == "rbr_rlhf.cli" or module.endswith(".cli")


def subpackage(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and (ROOT / parts[1]).is_dir()) else parts[-1]


def find_cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycles():
    edges, _ = graph()
    assert find_cycles(edges) == []


def test_library_modules_do_not_import_cli_modules():
    edges, _ = graph()
    # The command registry (rbr_rlhf/cli.py) and the CLI modules may import each other; nothing else may.
    bad = sorted(f"{m} -> {t}" for m, ts in edges.items() if not is_cli(m) for t in ts if is_cli(t))
    assert bad == []


def test_no_private_names_across_packages():
    _, raw = graph()
    bad = sorted(f"{m} imports {n} from {t}" for m, edges in raw.items() for t, n in edges
                 if n and n.startswith("_") and not n.startswith("__") and subpackage(m) != subpackage(t))
    assert bad == []


def test_the_checker_sees_a_cycle_and_a_private_import():
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    edges, raw = graph()
    assert "rbr_rlhf.ppo.trainer" in edges["rbr_rlhf.ppo.run"]  # lazy imports inside functions are seen
    assert subpackage("rbr_rlhf.ppo.trainer") == "ppo" and subpackage("rbr_rlhf.data") == "data"


def defined_names(path: Path) -> set[str]:
    """Names a module defines at its top level (functions, classes, assignments, imports)."""
    names: set[str] = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names |= {n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)}
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names |= {(a.asname or a.name).split(".")[0] for a in node.names}
        elif isinstance(node, (ast.If, ast.Try)):
            names |= {n.name for n in ast.walk(node) if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
            names |= {(a.asname or a.name).split(".")[0] for n in ast.walk(node)
                      if isinstance(n, (ast.Import, ast.ImportFrom)) for a in n.names}
    return names


def test_scripts_benchmarks_and_tests_import_names_that_exist():
    """Code outside the package (benchmarks, scripts, tests) imports rbr_rlhf names that still exist, even
    inside functions that only a slow run reaches (a module split once broke two benchmarks that way)."""
    known = modules()
    repo = ROOT.parent
    files = [p for d in ("benchmarks", "scripts", "tests") for p in sorted((repo / d).rglob("*.py"))]
    missing = []
    for f in files:
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.ImportFrom) and not node.level and (node.module or "").startswith("rbr_rlhf"):
                if node.module not in known:
                    missing.append(f"{f.relative_to(repo)}:{node.lineno}: no module {node.module}")
                    continue
                have = defined_names(known[node.module])
                for a in node.names:
                    if a.name != "*" and a.name not in have and f"{node.module}.{a.name}" not in known:
                        missing.append(f"{f.relative_to(repo)}:{node.lineno}: {node.module} has no {a.name}")
    assert files and not missing, "\n".join(missing)
