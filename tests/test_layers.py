"""The project's import graph keeps its layers (docs/ARCHITECTURE.md, "Layers") and has no
import cycles.

Every ``.py`` file of the checkout is parsed with ``ast``; every import counts, also one inside
a function or under ``if TYPE_CHECKING``, and so does ``importlib.import_module("name")`` /
``__import__("name")`` with a literal name. A module may import modules of its own layer and of
the layers below it, never one above; :data:`FORBIDDEN` adds the rules the order alone does not
give. The helpers are checked on small synthetic trees first, so these tests can fail.
"""

from __future__ import annotations

import ast
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# Top to bottom. A module belongs to the first layer one of whose names is the module or a
# package above it. dnnlib (EDM's utility package: EasyDict, the CLIs' failure line, the paper
# option machinery) is the lowest layer and imports nothing of the project; torch_utils
# (persistence, distributed, files) may use dnnlib and nothing above it, in particular no
# training module: network classes reach the loader through the entry-point group
# padis.networks (torch_utils.persistence); odlstuff (CT geometry) may use both; training
# (networks, data, loop) sits above them, and inverse (reconstruction) above training because
# a prior needs the network classes; at the top the command-line entry points, benchmarks and
# data scripts, and above everything the tests.
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("tests", ("tests",)),
    ("clis", ("train", "inverse_nodist", "generate", "benchmarks", "datasets")),
    ("inverse", ("inverse",)),
    ("training", ("training",)),
    ("odlstuff", ("odlstuff",)),
    ("torch_utils", ("torch_utils",)),
    ("dnnlib", ("dnnlib",)),
)

# (importer, imported, why): imports the layer order permits but the architecture does not.
# Names match the module or any module below it.
FORBIDDEN: tuple[tuple[str, str, str], ...] = (
    ("train", "inverse", "the training CLI needs nothing of reconstruction"),
    ("inverse", "training.training_loop", "reconstruction uses the networks, never the training loop"),
    ("benchmarks", "inverse.demo", "benchmarks import library modules, never the demo"),
)
# The command-line scripts are entry points: only the tests import them.
ENTRY_SCRIPTS = ("train", "inverse_nodist", "generate")

# Import cycles that exist and are known; each entry is exactly one strongly connected set of
# modules, with the reason it is still there. Any other cycle fails, and so does an entry
# whose cycle is gone (delete it then).
ALLOWED_CYCLES: dict[frozenset[str], str] = {}

SKIP_DIRS = {"__pycache__", "venv", "node_modules"}  # anywhere (and every hidden directory, .venv too)
ROOT_SKIP_DIRS = {"runs", "data", "out", "build"}  # run outputs and data at the checkout's root


# ----------------------------------------------------------------------------------------
# The graph


def project_modules(root: Path) -> dict[str, Path]:
    """Dotted module name -> file of every .py file under ``root`` (hidden and output
    directories skipped); a package's ``__init__.py`` is the package's name."""
    modules = {}
    for top, dirs, files in os.walk(root):
        rel = Path(top).relative_to(root)
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d not in SKIP_DIRS
                         and not (rel == Path() and d in ROOT_SKIP_DIRS))
        for f in sorted(files):
            if f.endswith(".py"):
                parts = [*rel.parts, f[:-3]]
                if parts[-1] == "__init__":
                    parts = parts[:-1]
                if parts:
                    modules[".".join(parts)] = Path(top) / f
    return modules


def _known(name: str, modules: dict[str, Path]) -> str | None:
    """The deepest project module that ``name`` (a module or ``module.attribute``) lies in."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def _resolve(name: str, file: Path, root: Path, modules: dict[str, Path]) -> str | None:
    """The project module an absolute import of ``name`` in ``file`` reaches: a script outside
    a package sees its own directory first (it is sys.path[0]), then the checkout's root."""
    folder = file.parent
    if folder != root and not (folder / "__init__.py").exists():
        prefix = ".".join(folder.relative_to(root).parts)
        if f"{prefix}.{name.partition('.')[0]}" in modules:
            return _known(f"{prefix}.{name}", modules)
    return _known(name, modules)


def _imported_names(tree: ast.AST, package: str) -> list[tuple[str, int, bool]]:
    """(name, line, relative) of every import in ``tree``: for ``from X import a`` the names
    ``X.a`` (a submodule or an attribute of X); ``package`` resolves relative imports."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(a.name, node.lineno, False) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".") if package else []
                base = base[:len(base) - (node.level - 1)]
                module = ".".join([*base, *([node.module] if node.module else [])])
            else:
                module = node.module or ""
            found += [(f"{module}.{a.name}" if a.name != "*" else module, node.lineno, bool(node.level))
                      for a in node.names]
        elif (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)
              and isinstance(node.args[0].value, str)
              and (getattr(node.func, "attr", None) == "import_module"
                   or getattr(node.func, "id", None) in ("import_module", "__import__"))):
            found.append((node.args[0].value, node.lineno, False))
    return found


def import_edges(root: Path, modules: dict[str, Path]) -> dict[str, list[tuple[str, int]]]:
    """Module -> [(project module it imports, line)], each once; imports of itself left out."""
    edges = {}
    for name, file in modules.items():
        tree = ast.parse(file.read_text(encoding="utf-8"), str(file))
        package = name if file.name == "__init__.py" else name.rpartition(".")[0]
        out = []
        for imported, line, relative in _imported_names(tree, package):
            target = _known(imported, modules) if relative else _resolve(imported, file, root, modules)
            if target is not None and target != name:
                out.append((target, line))
        edges[name] = list(dict.fromkeys(out))  # one entry per imported module and line
    return edges


def _under(module: str, name: str) -> bool:
    return module == name or module.startswith(name + ".")


def layer_of(module: str) -> int | None:
    """Index in :data:`LAYERS` (0 = top) of ``module``'s layer; None: no layer."""
    for i, (_, names) in enumerate(LAYERS):
        if any(_under(module, n) for n in names):
            return i
    return None


def layer_violations(edges: dict[str, list[tuple[str, int]]], modules: dict[str, Path], root: Path) -> list[str]:
    """One line per import that runs up the layers, is :data:`FORBIDDEN` or reaches one of the
    :data:`ENTRY_SCRIPTS` from outside the tests."""
    problems = []
    for module, targets in sorted(edges.items()):
        where = modules[module].relative_to(root)
        for target, line in targets:
            low, high = layer_of(module), layer_of(target)
            if low is not None and high is not None and high < low:
                problems.append(f"{where}:{line}: {module} (layer {LAYERS[low][0]}) imports {target} "
                                f"(layer {LAYERS[high][0]}, above it)")
            for importer, imported, why in FORBIDDEN:
                if _under(module, importer) and _under(target, imported):
                    problems.append(f"{where}:{line}: {module} imports {target}: {why}")
            if target in ENTRY_SCRIPTS and not _under(module, "tests"):
                problems.append(f"{where}:{line}: {module} imports {target}: a CLI script is an entry point, "
                                "imported by the tests only")
    return problems


def import_cycles(edges: dict[str, list[tuple[str, int]]]) -> list[frozenset[str]]:
    """The strongly connected sets of more than one module (Tarjan's algorithm): each set is
    one import cycle, or several that share modules."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w, _ in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.add(w)
                if w == v:
                    break
            if len(group) > 1:
                found.append(frozenset(group))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def describe_cycle(group: frozenset[str], edges: dict[str, list[tuple[str, int]]], modules: dict[str, Path],
                   root: Path) -> str:
    arrows = [f"{a} -> {b} ({modules[a].relative_to(root)}:{line})"
              for a in sorted(group) for b, line in sorted(set(edges[a])) if b in group]
    return f"import cycle {sorted(group)}: " + "; ".join(arrows)


# ----------------------------------------------------------------------------------------
# The checks on small trees: each kind of problem is found


def _tree(root: Path, files: dict[str, str]) -> tuple[dict[str, Path], dict[str, list[tuple[str, int]]]]:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    modules = project_modules(root)
    return modules, import_edges(root, modules)


def test_an_import_up_the_layers_inside_a_function_is_found(tmp_path):
    modules, edges = _tree(tmp_path, {
        "training/__init__.py": "",
        "training/networks.py": "from torch_utils import persistence\n",
        "torch_utils/__init__.py": "",
        "torch_utils/persistence.py": "import os\n\ndef load():\n    import training.networks\n",
        "torch_utils/convert.py": "from . import persistence\nfrom .persistence import load\n",
        "torch_utils/plugins.py": "import importlib\nimportlib.import_module('training.networks')\n",
    })
    problems = layer_violations(edges, modules, tmp_path)
    assert problems == [
        "torch_utils/persistence.py:4: torch_utils.persistence (layer torch_utils) imports training.networks "
        "(layer training, above it)",
        "torch_utils/plugins.py:2: torch_utils.plugins (layer torch_utils) imports training.networks "
        "(layer training, above it)"]
    assert sorted(edges["torch_utils.convert"]) == [("torch_utils.persistence", 1), ("torch_utils.persistence", 2)]
    assert import_cycles(edges) == [frozenset({"training.networks", "torch_utils.persistence"})]


def test_forbidden_imports_and_script_directories(tmp_path):
    modules, edges = _tree(tmp_path, {
        "train.py": "from inverse.paper_cli import TRAIN_OPTIONS, given\nfrom training import loop\n",
        "inverse/__init__.py": "",
        "inverse/paper_cli.py": "",
        "training/__init__.py": "",
        "training/loop.py": "",
        "benchmarks/shifts.py": "",
        "benchmarks/bench.py": "import shifts\nimport generate\n",
        "generate.py": "",
    })
    assert edges["benchmarks.bench"] == [("benchmarks.shifts", 1), ("generate", 2)]
    assert edges["train"] == [("inverse.paper_cli", 1), ("training.loop", 2)]
    assert layer_violations(edges, modules, tmp_path) == [
        "benchmarks/bench.py:2: benchmarks.bench imports generate: a CLI script is an entry point, imported by "
        "the tests only",
        "train.py:1: train imports inverse.paper_cli: the training CLI needs nothing of reconstruction"]
    assert import_cycles(edges) == []


def test_a_cycle_of_three_is_one_group(tmp_path):
    _, edges = _tree(tmp_path, {"inverse/__init__.py": "", "inverse/a.py": "from inverse import b\n",
                                "inverse/b.py": "import inverse.c\n",
                                "inverse/c.py": "def f():\n    from .a import x\n",
                                "inverse/d.py": "import inverse.a\n"})
    assert import_cycles(edges) == [frozenset({"inverse.a", "inverse.b", "inverse.c"})]


# ----------------------------------------------------------------------------------------
# The checks on the project


@pytest.fixture(scope="module")
def graph():
    modules = project_modules(REPO)
    return modules, import_edges(REPO, modules)


def test_every_module_has_a_layer(graph):
    modules, _ = graph
    assert {"torch_utils.persistence", "training.networks", "inverse.prior", "train", "tests.test_layers"} <= set(modules)
    missing = sorted(m for m in modules if layer_of(m) is None)
    assert not missing, f"modules in no layer of tests/test_layers.py LAYERS: {missing}"


def test_no_import_runs_up_the_layers(graph):
    modules, edges = graph
    problems = layer_violations(edges, modules, REPO)
    assert not problems, "\n".join(problems)


def test_no_import_cycles(graph):
    modules, edges = graph
    cycles = import_cycles(edges)
    new = [describe_cycle(c, edges, modules, REPO) for c in cycles if c not in ALLOWED_CYCLES]
    assert not new, "\n".join(new)
    gone = [sorted(c) for c in ALLOWED_CYCLES if c not in cycles]
    assert not gone, f"allowed cycles that no longer exist, delete them from ALLOWED_CYCLES: {gone}"
