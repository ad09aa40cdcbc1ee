"""The house stays acyclic: no import circle in `justgrpo_trl/` or `benchmarks/`, counting every import statement.

The graph is read from the source, not from `sys.modules`, so that imports inside functions and under
`TYPE_CHECKING` count as much as the ones at the top of a module. Edge rule: one edge `m -> n` per imported name;
for `from P import X`, `n` is `P.X` when that is a module of the tree, else `P`; the `__init__` of the packages above
`n`, which Python runs first, is not an edge. The analyser is checked first on a synthetic package holding one circle
per import kind, and on the commit before the circles were removed, where it must find the three circles it had.
"""

import ast
import subprocess
import tarfile
from io import BytesIO
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# Import roots: the repository (the `justgrpo_trl` package) and `benchmarks/` (its scripts put it on `sys.path`
# and import `justgrpo_bench` from there).
SOURCE_ROOTS = {"justgrpo_trl": REPO, "benchmarks": REPO / "benchmarks"}
# The last commit with the circles that the house issue measured (decoding/cached_decoding, config/estimators,
# benchmarks' baselines/workload/phases).
CIRCULAR_COMMIT = "f0baa51a611f0db2f365cf48b4a1725df47b69ad"


def module_files(root: Path, top: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every `.py` file under `top`, named relative to the import root `root`."""
    modules = {}
    for path in sorted(top.rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


def import_edges(modules: dict[str, Path]) -> dict[str, set[str]]:
    """`m -> {n}` over every import statement of every module (any depth, any block), limited to `modules`."""
    edges: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
            targets = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base_parts = package.split(".") if package else []
                    base_parts = base_parts[: len(base_parts) - (node.level - 1)]
                    base = ".".join([*base_parts, *([node.module] if node.module else [])])
                else:
                    base = node.module
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            edges[name].update(target for target in targets if target in modules)
    return edges


def circles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with a cycle (Tarjan), each sorted, the list sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for succ in sorted(edges[node]):
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1 or node in edges[node]:
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return sorted(found)


def tree_circles(repo: Path) -> list[list[str]]:
    modules = {}
    for top, root in SOURCE_ROOTS.items():
        modules.update(module_files(repo / root.relative_to(REPO), repo / top))
    return circles(import_edges(modules))


def write(root: Path, files: dict[str, str]) -> None:
    for relative, text in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")


def test_analyser_reports_one_circle_per_import_kind(tmp_path):
    write(
        tmp_path,
        {
            "pkg/__init__.py": "",
            # relative, one level
            "pkg/rel_a.py": "from .rel_b import thing\n",
            "pkg/rel_b.py": "from . import rel_a\n",
            # relative, two levels, into a subpackage and back
            "pkg/sub/__init__.py": "",
            "pkg/sub/deep.py": "from ..up import value\n",
            "pkg/up.py": "from .sub.deep import other\n",
            # absolute `import a.b`
            "pkg/abs_a.py": "import pkg.abs_b\n",
            "pkg/abs_b.py": "import pkg.abs_a as alias\n",
            # function-level
            "pkg/fn_a.py": "def f():\n    from pkg.fn_b import g\n    return g\n",
            "pkg/fn_b.py": "from pkg import fn_a\n",
            # TYPE_CHECKING
            "pkg/tc_a.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .tc_b import B\n",
            "pkg/tc_b.py": "from .tc_a import A\n",
            # a package's __init__ imported through `from P import X` (X not a module) closes a circle
            "pkg/init_pkg/__init__.py": "from .member import NAME\n",
            "pkg/init_pkg/member.py": "NAME = 1\n",
            "pkg/init_user.py": "from pkg.init_pkg import NAME\n",
            "pkg/init_pkg/back.py": "",
            # no circle: `import pkg.acyclic.leaf` does not count an edge to `pkg.acyclic`'s __init__
            "pkg/acyclic/__init__.py": "import pkg.acyclic_user\n",
            "pkg/acyclic/leaf.py": "",
            "pkg/acyclic_user.py": "import pkg.acyclic.leaf\nfrom pkg.acyclic import leaf\n",
        },
    )
    write(tmp_path, {"pkg/init_pkg/member.py": "NAME = 1\nfrom pkg import init_user\n"})
    found = circles(import_edges(module_files(tmp_path, tmp_path / "pkg")))
    assert found == [
        ["pkg.abs_a", "pkg.abs_b"],
        ["pkg.fn_a", "pkg.fn_b"],
        ["pkg.init_pkg", "pkg.init_pkg.member", "pkg.init_user"],
        ["pkg.rel_a", "pkg.rel_b"],
        ["pkg.sub.deep", "pkg.up"],
        ["pkg.tc_a", "pkg.tc_b"],
    ]


def test_analyser_finds_the_three_circles_of_the_circular_commit(tmp_path):
    try:
        archive = subprocess.run(
            ["git", "-C", str(REPO), "archive", CIRCULAR_COMMIT, "justgrpo_trl", "benchmarks"],
            capture_output=True,
            check=True,
        ).stdout
    except (subprocess.CalledProcessError, FileNotFoundError) as error:  # e.g. a shallow clone or an sdist
        pytest.skip(f"commit {CIRCULAR_COMMIT[:7]} is not in this checkout's history: {error}")
    with tarfile.open(fileobj=BytesIO(archive)) as tar:
        tar.extractall(tmp_path, filter="data")
    found = tree_circles(tmp_path)
    assert found == [
        ["justgrpo_bench.baselines", "justgrpo_bench.phases", "justgrpo_bench.workload"],
        ["justgrpo_trl.cached_decoding", "justgrpo_trl.decoding"],
        [
            "justgrpo_trl.config",
            "justgrpo_trl.estimators",
            "justgrpo_trl.estimators.agrpo",
            "justgrpo_trl.estimators.ar_exact",
            "justgrpo_trl.estimators.base",
            "justgrpo_trl.estimators.diffu_grpo",
            "justgrpo_trl.estimators.scoring",
        ],
    ]


def test_the_house_has_no_import_circle():
    assert tree_circles(REPO) == []
