"""The house rules of the code base (issue 21), checked on the source: tabs talk to Studio only, and no package
imports another in a circle."""
from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "neat_studio"


def _module(path: Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _imports(path: Path, top_level_only: bool) -> set[str]:
    """Modules of neat_studio that `path` imports (absolute names); only module-level statements when asked."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    me = _module(path).split(".")
    package = me if path.name == "__init__.py" else me[:-1]
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    out = set()
    for n in nodes:
        if isinstance(n, ast.ImportFrom):
            base = package[:len(package) - (n.level - 1)] if n.level else []
            mod = ".".join(base + ([n.module] if n.module else []))
            if not mod.startswith("neat_studio"):
                continue
            for a in n.names:  # `from . import metrics` names a module
                cand = f"{mod}.{a.name}"
                out.add(cand if (PKG.parent / cand.replace(".", "/")).with_suffix(".py").exists()
                        or (PKG.parent / cand.replace(".", "/")).is_dir() else mod)
        elif isinstance(n, ast.Import):
            out |= {a.name for a in n.names if a.name.startswith("neat_studio")}
    return out


def test_ui_talks_to_studio_not_to_the_store():
    offenders = []
    for f in sorted((PKG / "ui").glob("*.py")):
        text = f.read_text(encoding="utf-8")
        if any(m == "neat_studio.store" or m.startswith("neat_studio.store.") for m in _imports(f, False)):
            offenders.append(f"{f.name}: imports the store")
        if ".store." in text:
            offenders.append(f"{f.name}: calls the store directly")
    assert not offenders, offenders


def test_no_import_circle_between_modules():
    """Module-level imports form no cycle (a function-level import that breaks a cycle still counts: the trainer
    must not import the DPO baseline back from a module that imports the trainer)."""
    graph = {}
    for f in PKG.rglob("*.py"):
        graph[_module(f)] = {m for m in _imports(f, False) if m != _module(f)}

    def resolve(m):  # `neat_studio.store` (a package) -> its __init__
        return m if m in graph else None

    seen, stack, cycles = set(), [], []

    def visit(m):
        if m in stack:
            cycles.append(stack[stack.index(m):] + [m])
            return
        if m in seen:
            return
        seen.add(m)
        stack.append(m)
        for d in sorted(graph.get(m, ())):
            r = resolve(d)
            if r and not (r.startswith(m + ".") or m.startswith(r + ".")):  # a package and its own parts
                visit(r)
        stack.pop()

    for m in sorted(graph):
        visit(m)
    assert not cycles, cycles[:5]


def test_no_module_over_600_lines():
    """Rooms by concept (issue 21): every module of the package stays at most 600 lines; a longer one is split
    along its own concepts."""
    long = {}
    for f in sorted(PKG.rglob("*.py")):
        n = len(f.read_text(encoding="utf-8").splitlines())
        if n > 600:
            long[str(f.relative_to(PKG.parent))] = n
    assert not long, long


def test_tab_build_functions_only_lay_out():
    """Every UI tab's build() only lays out components and binds events: at most 120 lines, and no handler defined
    inside it (handlers are methods of the tab's class (common.Tab); their logic is Studio's)."""
    bad = {}
    for f in sorted((PKG / "ui").glob("*.py")):
        tree = ast.parse(f.read_text(encoding="utf-8"))
        for build in (n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "build"):
            n_lines = build.end_lineno - build.lineno + 1
            nested = [n.name for n in ast.walk(build) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))
                      and n is not build]
            if n_lines > 120 or nested:
                bad[f.name] = (n_lines, nested)
    assert len(list((PKG / "ui").glob("*.py"))) >= 8
    assert not bad, bad
