"""Architecture guard: import arrows point down the layers, and no import circles.

    benchmark  >  report  >  runner  >  methods  >  models  >  data  >  core  >  configs, slurm

A module may import its own package or any lower layer. `core` is the leaf of the code; `configs/` and
`slurm/` only hold data files, so anyone may import them and they import nothing of the project.
Imports are read with `ast` (never executed), counting deferred imports inside functions too: that is how
cycles were hidden before. Imports under `if TYPE_CHECKING:` never run, so they are ignored.
"""
from __future__ import annotations

import ast
from pathlib import Path
from typing import NamedTuple

ROOT = Path(__file__).resolve().parents[1]
# layer rank: higher may import lower; the same package may import itself
LAYERS = {"benchmark": 6, "report": 5, "runner": 4, "methods": 3, "models": 2, "data": 1, "core": 0,
          "configs": -1, "slurm": -1}
SKIP_DIRS = {"tests", "bench", "build", ".git", "__pycache__"}


class Edge(NamedTuple):
    source: str   # importing module, e.g. "runner.train"
    file: str     # its path relative to the root, e.g. "runner/train.py"
    line: int
    target: str   # imported project module, e.g. "runner.folder" or "models" (the __init__)


def project_modules(root: Path) -> dict[str, Path]:
    """Module name -> file for every project module under `root` (a package's `__init__.py` is `pkg`)."""
    modules = {}
    for top in LAYERS:
        candidates = [root / f"{top}.py"] + sorted((root / top).rglob("*.py"))
        for path in candidates:
            rel = path.relative_to(root)
            if not path.is_file() or SKIP_DIRS & set(rel.parts[:-1]):
                continue
            parts = list(rel.with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join(parts)] = path
    return modules


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _import_nodes(node: ast.AST):
    """Every Import/ImportFrom under `node`, at any depth (deferred imports too), skipping `if TYPE_CHECKING:`."""
    if isinstance(node, (ast.Import, ast.ImportFrom)):
        yield node
    elif isinstance(node, ast.If) and _is_type_checking(node.test):
        for stmt in node.orelse:
            yield from _import_nodes(stmt)
    else:
        for child in ast.iter_child_nodes(node):
            yield from _import_nodes(child)


def collect_imports(root: Path) -> list[Edge]:
    """All project imports of the tree at `root`, resolved to absolute module names."""
    modules = project_modules(root)

    def existing(name: str) -> str:
        """`import a.b.c` lands on the deepest module that exists (a name that exists nowhere stays as is)."""
        parts = name.split(".")
        for n in range(len(parts), 0, -1):
            if ".".join(parts[:n]) in modules:
                return ".".join(parts[:n])
        return name

    found = []
    for module, path in modules.items():
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        rel = path.relative_to(root).as_posix()
        for node in _import_nodes(ast.parse(path.read_text(encoding="utf-8"), filename=rel)):
            targets = []
            if isinstance(node, ast.Import):
                targets = [existing(alias.name) for alias in node.names]
            else:
                base = node.module or ""
                if node.level:   # relative: `from .x import y`, `from . import x`, `from ..x import y`
                    anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                    base = f"{anchor}.{base}" if base else anchor
                for alias in node.names:   # `from pkg import sub` imports pkg.sub when that file exists
                    sub = f"{base}.{alias.name}".lstrip(".")
                    targets.append(sub if sub in modules else existing(base))
            found += [Edge(module, rel, node.lineno, t) for t in targets if t.split(".")[0] in LAYERS]
    return found


def check_layers(imports: list[Edge]) -> list[str]:
    """One message per import that goes up a layer (or out of a data-only package)."""
    errors = []
    for imp in imports:
        src, dst = imp.source.split(".")[0], imp.target.split(".")[0]
        if src == dst or LAYERS[dst] < LAYERS[src]:
            continue
        if LAYERS[src] < 0:
            why = f"{src} only holds data files and may not import the project's {dst}"
        elif src == "core":
            why = f"core is the leaf and may not import {dst}"
        else:
            why = f"{src} may not import {dst} (a higher layer)"
        errors.append(f"{imp.file}:{imp.line} imports {imp.target}: {why}")
    return sorted(errors)


def find_cycles(imports: list[Edge]) -> list[str]:
    """One message per import circle: a strongly connected component of >1 module, or a self-import.

    The graph has ~100 modules, so plain reachability (A and B share a component iff each reaches the other)
    is fast enough and easier to read than Tarjan's algorithm."""
    graph: dict[str, set[str]] = {}
    for imp in imports:
        graph.setdefault(imp.source, set()).add(imp.target)

    def reachable(start: str) -> set[str]:
        seen, todo = set(), list(graph.get(start, ()))
        while todo:
            node = todo.pop()
            if node not in seen:
                seen.add(node)
                todo += graph.get(node, ())
        return seen

    reach = {node: reachable(node) for node in graph}
    components = {frozenset(m for m in reach[node] if node in reach.get(m, ()))
                  for node in graph if node in reach[node]}   # nodes on a circle, grouped by circle
    errors = []
    for component in components:
        edges = sorted({(i.file, i.line, i.target) for i in imports
                        if i.source in component and i.target in component})
        errors.append(f"import cycle between {', '.join(sorted(component))}:"
                      + "".join(f"\n    {file}:{line} imports {target}" for file, line, target in edges))
    return sorted(errors)


def _write(root: Path, files: dict[str, str]) -> Path:
    """Write a synthetic tree of {relative path: source} under `root`."""
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


def test_real_tree_has_no_upward_import_and_no_cycle():
    """The checkout itself: every violation is listed at once, with file and line."""
    imports = collect_imports(ROOT)
    assert len(imports) > 50, "the checker found almost no imports: is it scanning the right tree?"
    errors = check_layers(imports) + find_cycles(imports)
    assert not errors, f"{len(errors)} layering problem(s):\n" + "\n".join(errors)


def test_checker_reports_each_synthetic_violation_and_only_those(tmp_path):
    """An upward deferred import, a leaf importing data, and a runner cycle hidden behind a deferred import.
    The legal imports around them (re-exports, relative, `from . import x`, TYPE_CHECKING) must stay silent."""
    root = _write(tmp_path, {
        "core/__init__.py": "", "core/x.py": "import os\nimport data\n",
        "data/__init__.py": "from .load import load\nfrom . import load as _load\n",
        "data/load.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import runner\n"
                        "import core\ndef load():\n    pass\n",
        "methods/__init__.py": "", "methods/a.py": "from data.load import load\ndef f():\n"
                                                 "    import runner.train\n",
        "runner/__init__.py": "from .a import f\nfrom . import b\n", "runner/train.py": "import methods\n",
        "runner/a.py": "from . import b\ndef f():\n    pass\n",
        "runner/b.py": "import torch\ndef g():\n    from .a import f\n",
        "report/__init__.py": "", "report/tables.py": "import runner.a\n",
        "report/sub/__init__.py": "", "report/sub/m.py": "from ..tables import t\nfrom .. import tables\n",
        "benchmark.py": "import report.sub.m\nfrom runner import f\n",
    })
    imports = collect_imports(root)
    assert {("methods.a", "methods/a.py", 1, "data.load"), ("report.sub.m", "report/sub/m.py", 2, "report.tables"),
            ("runner", "runner/__init__.py", 2, "runner.b")} <= set(imports)   # relative imports resolve
    assert check_layers(imports) == [
        "core/x.py:2 imports data: core is the leaf and may not import data",
        "methods/a.py:3 imports runner.train: methods may not import runner (a higher layer)",
    ]
    assert find_cycles(imports) == [
        "import cycle between runner.a, runner.b:\n    runner/a.py:1 imports runner.b\n"
        "    runner/b.py:3 imports runner.a"]


def test_package_init_cycle_only_when_the_submodule_imports_the_package_itself(tmp_path):
    """`pkg/__init__` re-exporting `pkg.a` is fine while `a` imports siblings (`from . import b`);
    once `a` takes a name from the package itself (`from pkg import B`), Python really has a cycle."""
    files = {"models/__init__.py": "from .a import A\nfrom .b import B\n",
             "models/a.py": "from . import b\nA = b\n", "models/b.py": "B = 1\n"}
    assert find_cycles(collect_imports(_write(tmp_path / "ok", files))) == []
    files["models/a.py"] = "from models import B\nA = B\n"
    assert find_cycles(collect_imports(_write(tmp_path / "bad", files))) == [
        "import cycle between models, models.a:\n    models/__init__.py:1 imports models.a\n"
        "    models/a.py:1 imports models"]
    files["models/b.py"] = "import models.b\n"   # a module importing itself is a (one-module) cycle too
    assert "import cycle between models.b:\n    models/b.py:1 imports models.b" in find_cycles(
        collect_imports(_write(tmp_path / "self", files)))
