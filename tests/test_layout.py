"""The package's shape: no import cycle inside it, and no example code in the wheel."""

from __future__ import annotations

import ast
import subprocess
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SRC = REPO / "src"
PACKAGE = "pytest_concurrency"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted((SRC / PACKAGE).rglob("*.py"))}


def _runtime_nodes(tree: ast.AST) -> list[ast.AST]:
    """Every node of *tree* but those under ``if TYPE_CHECKING:`` (imports a type checker reads)."""
    found: list[ast.AST] = []
    todo = [tree]
    while todo:
        node = todo.pop()
        found.append(node)
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            todo.extend(node.orelse)
            continue
        todo.extend(ast.iter_child_nodes(node))
    return found


def _imports(name: str, path: Path) -> set[str]:
    """Every module *name* imports when it runs, at module level or in functions, by full name."""
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in _runtime_nodes(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".")
                # A package's own module counts as one level; a module's package is its parent.
                base = base[: len(base) - node.level + (1 if is_package else 0)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found.add(module)
            # `from . import x` and `from .pkg import mod` may name modules, not attributes.
            found.update(f"{module}.{alias.name}" for alias in node.names)
    return found


#: Known cycles, each closed by one import inside a function, as (importer, imported) of
#: that import. Each is a defect to remove; the list must shrink, never grow.
KNOWN_LAZY_EDGES: set[tuple[str, str]] = set()


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path) & modules.keys() - {name} for name, path in modules.items()}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of *graph* as a path that ends where it starts, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in sorted(graph[node]):
            # A package imported by its own submodule is loaded already: not a cycle.
            if node.startswith(target + "."):
                continue
            if state.get(target) == 1:
                return [*path[path.index(target) :], target]
            if target not in state and (found := visit(target)):
                return found
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start)):
            return found
    return None


def test_cycle_finder_finds_a_cycle_through_a_lazy_import() -> None:
    graph = {
        "p": set(),
        "p._cli": {"p._claims"},
        "p._claims": {"p._api", "p._cli"},
        "p._api": set(),
    }
    assert _cycle(graph) == ["p._claims", "p._cli", "p._claims"]
    graph["p._claims"].discard("p._cli")
    assert _cycle(graph) is None


def test_imports_for_the_type_checker_only_are_not_followed(tmp_path: Path) -> None:
    module = tmp_path / "fold.py"
    module.write_text(
        "from typing import TYPE_CHECKING\n"
        "from .records import Recorder\n"
        "if TYPE_CHECKING:\n"
        "    from .._engine.plan import StormPlan\n"
        "def later():\n"
        "    from .._cli import load_app\n",
        encoding="utf-8",
    )
    found = _imports("p._metrics.fold", module)
    assert {"p._metrics.records", "p._cli", "p._cli.load_app"} <= found
    assert not [name for name in found if "_engine" in name]


def test_the_package_has_no_import_cycle() -> None:
    graph = _graph()
    assert f"{PACKAGE}._cli" in graph
    assert f"{PACKAGE}._report._terminal" in graph[f"{PACKAGE}._report"]
    for importer, imported in KNOWN_LAZY_EDGES:
        # Still there (remove it from the list once it is gone), and still what closes a cycle.
        assert imported in graph[importer], f"{importer} no longer imports {imported}"
        assert _cycle({**graph, importer: graph[importer] - {imported}}) != _cycle(graph)
        graph[importer] = graph[importer] - {imported}
    cycle = _cycle(graph)
    assert cycle is None, "import cycle: " + " → ".join(cycle or [])


def test_every_module_imports_first_in_a_fresh_interpreter() -> None:
    # Each module is imported with no module of the package loaded yet, so an import that
    # only works in a lucky order fails here.
    script = (
        "import importlib, sys\n"
        f"for name in {sorted(_modules())!r}:\n"
        f"    for loaded in [m for m in sys.modules if m.split('.')[0] == {PACKAGE!r}]:\n"
        "        del sys.modules[loaded]\n"
        "    importlib.import_module(name)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        env={"PYTHONPATH": str(SRC), "PATH": ""},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr


def test_the_wheel_holds_no_example_code() -> None:
    config = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    packages = config["tool"]["hatch"]["build"]["targets"]["wheel"]["packages"]
    assert packages == [f"src/{PACKAGE}"]
    shipped = [p.relative_to(SRC).as_posix() for p in (SRC / PACKAGE).rglob("*.py")]
    assert f"{PACKAGE}/_version.py" in shipped
    assert not [p for p in shipped if "claims" in p or "examples" in p]
    importers = {
        name
        for name, path in _modules().items()
        for imported in _imports(name, path)
        if imported.split(".")[0] == "examples"
    }
    assert not importers, f"modules of the wheel import the repository's examples: {importers}"


#: Packages that measure; the words of their notes and warnings live in ``_report``.
MEASURING = ("_engine", "_metrics", "_drivers", "_probes", "_simio", "_servers", "_locust")
_REMARK_LISTS = {"notes", "warnings"}


def _is_text(node: ast.expr) -> bool:
    """A sentence written in place: a string literal, an f-string, or one built from them."""
    if isinstance(node, ast.Constant):
        return isinstance(node.value, str)
    if isinstance(node, ast.JoinedStr):
        return True
    if isinstance(node, ast.BinOp):
        return _is_text(node.left) or _is_text(node.right)
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
        return node.func.attr in {"format", "join"} and _is_text(node.func.value)
    if isinstance(node, ast.IfExp):
        return _is_text(node.body) or _is_text(node.orelse)
    return False


def _holds_text(node: ast.expr) -> bool:
    if isinstance(node, ast.List | ast.Tuple | ast.Set):
        return any(_is_text(item) for item in node.elts)
    if isinstance(node, ast.ListComp | ast.GeneratorExp):
        return _is_text(node.elt)
    return _is_text(node)


def _is_remark_list(node: ast.expr) -> bool:
    """``x.notes``, ``x.warnings``, a local ``notes``/``warnings``, or a choice between them."""
    if isinstance(node, ast.Attribute):
        return node.attr in _REMARK_LISTS
    if isinstance(node, ast.Name):
        return node.id in _REMARK_LISTS
    if isinstance(node, ast.IfExp):
        return _is_remark_list(node.body) or _is_remark_list(node.orelse)
    return False


def _put_in_remarks(node: ast.AST) -> ast.expr | None:
    """What *node* puts into a list of notes or warnings (one item or several), if anything."""
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
        if _is_remark_list(node.func.value) and node.args:
            method = node.func.attr
            if method in {"append", "extend"}:
                return node.args[0]
            if method == "insert" and len(node.args) > 1:
                return node.args[1]
    elif isinstance(node, ast.Assign | ast.AugAssign | ast.AnnAssign):
        targets = node.targets if isinstance(node, ast.Assign) else [node.target]
        if any(_is_remark_list(target) for target in targets):
            return node.value
    elif isinstance(node, ast.keyword) and node.arg in _REMARK_LISTS:
        return node.value
    return None


def _written_remarks(source: str) -> list[int]:
    """Lines where *source* puts a sentence of its own into a result's notes or warnings."""
    found: list[int] = []
    for node in ast.walk(ast.parse(source)):
        values = [_put_in_remarks(node)]
        if isinstance(node, ast.Dict):
            values = [
                value
                for key, value in zip(node.keys, node.values, strict=True)
                if isinstance(key, ast.Constant) and key.value in _REMARK_LISTS
            ]
        found.extend(v.lineno for v in values if v is not None and _holds_text(v))
    return sorted(found)


def test_the_remark_check_finds_sentences_written_into_notes_and_warnings() -> None:
    written = (
        "result.notes.append('the loop was busy')\n"  # 1
        "result.warnings.append(f'{n:,} arrivals dropped')\n"  # 2
        "(result.warnings if bad else result.notes).append(f'busy {b:.0%}')\n"  # 3
        "chosen.notes.extend(['a', f'b {x}'])\n"  # 4
        "warnings.append('over ' + str(x))\n"  # 5
        "result.notes += [f'{x} rounds']\n"  # 6
        "StormResult(warnings=[f'{x}'])\n"  # 7
        "note = {'notes': [f'steps of {x:g} ms']}\n"  # 8
        "result.warnings.insert(0, 'first {}'.format(x))\n"  # 9
    )
    assert _written_remarks(written) == list(range(1, 10))
    worded = (
        "result.notes.append(gil_note(busy))\n"
        "result.warnings.extend(LOCUST_NOTES)\n"
        "result.warnings.extend(output.warnings)\n"
        "warnings.append(abandoned_warning(count, grace))\n"
        "note = {'notes': virtual_clock_notes(floor)}\n"
        "labels.append('p99')\n"
        "warnings.warn('deprecated', stacklevel=2)\n"
    )
    assert _written_remarks(worded) == []


def test_measuring_modules_leave_the_wording_of_remarks_to_the_report() -> None:
    offenders = {
        name: lines
        for name, path in _modules().items()
        if name.split(".")[1:2] and name.split(".")[1] in MEASURING
        if (lines := _written_remarks(path.read_text(encoding="utf-8")))
    }
    assert f"{PACKAGE}._engine.storm" in _modules()
    assert not offenders, (
        "notes or warnings worded in a measuring module (give the sentence a function in "
        f"_report/_remarks.py and pass it the figures): {offenders}"
    )


def test_the_report_does_not_load_the_engine() -> None:
    # Importing a module runs its subpackages' __init__ first: follow those edges too (the
    # top package's own __init__ is the public surface, which loads everything).
    graph = _graph()
    modules = set(graph)
    todo = [name for name in modules if name.startswith(f"{PACKAGE}._report")]
    seen: set[str] = set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        parents = {".".join(name.split(".")[:i]) for i in range(2, name.count(".") + 1)}
        todo.extend(graph[name] | (parents & modules))
    assert f"{PACKAGE}._report._remarks" in seen
    loaded = sorted(name for name in seen if name.startswith(f"{PACKAGE}._engine"))
    assert not loaded, f"_report loads the engine: {loaded}"
