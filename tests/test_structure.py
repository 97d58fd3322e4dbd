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
