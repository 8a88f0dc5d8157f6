"""The package's shape: no import cycle of any kind, layers that hold, no example code in the wheel."""

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


def _nodes(
    tree: ast.AST, *, type_checking: bool = False, module_level: bool = False
) -> list[ast.AST]:
    """Every node of *tree* that runs: none under ``if TYPE_CHECKING:`` unless *type_checking*
    (imports a type checker reads), none in a function or lambda body if *module_level* (what
    runs when the module is imported)."""
    found: list[ast.AST] = []
    todo = [tree]
    while todo:
        node = todo.pop()
        found.append(node)
        if module_level and isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            # Decorators and defaults run at import; the body runs when called.
            todo.extend(node.decorator_list if not isinstance(node, ast.Lambda) else [])
            todo.append(node.args)
            continue
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            todo.extend(node.body if type_checking else [])
            todo.extend(node.orelse)
            continue
        todo.extend(ast.iter_child_nodes(node))
    return found


def _imports(
    name: str, path: Path, *, type_checking: bool = False, module_level: bool = False
) -> set[str]:
    """Every module *name* imports when it runs, at module level or in functions, by full name.

    With *type_checking*, the imports under ``if TYPE_CHECKING:`` too; with *module_level*,
    only what runs when the module is imported (not the imports inside functions).
    """
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in _nodes(tree, type_checking=type_checking, module_level=module_level):
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


def _with_packages(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """*graph* with the edges that importing a module adds: ``a.b.c`` runs ``a/__init__`` and
    ``a/b/__init__`` first (the packages of the importer itself are loaded already)."""
    out: dict[str, set[str]] = {}
    for importer, imported in graph.items():
        parents = {
            ".".join(target.split(".")[:i])
            for target in imported
            for i in range(2, target.count(".") + 1)
        }
        out[importer] = imported | {
            p for p in parents & graph.keys() if p != importer and not importer.startswith(p + ".")
        }
    return out


def _graph(
    *, type_checking: bool = False, packages: bool = False, module_level: bool = False
) -> dict[str, set[str]]:
    """The package's modules and what each imports of it (see :func:`_imports` for the flags;
    with *packages*, also the package ``__init__`` each import runs first)."""
    modules = _modules()
    graph = {
        name: _imports(name, path, type_checking=type_checking, module_level=module_level)
        & modules.keys() - {name}
        for name, path in modules.items()
    }
    return _with_packages(graph) if packages else graph


def _loaded_by(graph: dict[str, set[str]], start: str) -> set[str]:
    """Every module importing *start* loads through *graph* (*start* included).

    A module's own packages are loaded before it (``from .. import x`` names the top
    package, whose ``__init__`` is the public surface and loads everything): not followed.
    """
    seen: set[str] = set()
    todo = [start]
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo.extend(t for t in graph.get(name, ()) if not name.startswith(t + "."))
    return seen


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


def test_imports_for_the_type_checker_only_are_followed_when_asked(tmp_path: Path) -> None:
    module = tmp_path / "fold.py"
    module.write_text(
        "from typing import TYPE_CHECKING\n"
        "import math\n"
        "if TYPE_CHECKING:\n"
        "    from .._engine.plan import StormPlan\n"
        "else:\n"
        "    from .._engine.live import Live\n"
        "class Fold:\n"
        "    from .records import Recorder\n"
        "    def later(self):\n"
        "        from .._cli import load_app\n"
        "go = lambda: __import__('pytest')\n",
        encoding="utf-8",
    )
    typed = _imports("p._metrics.fold", module, type_checking=True)
    assert {"p._engine.plan", "p._engine.live", "p._metrics.records", "p._cli"} <= typed
    at_import = _imports("p._metrics.fold", module, module_level=True)
    assert {"math", "p._engine.live", "p._metrics.records"} <= at_import
    assert not [name for name in at_import if "_cli" in name or "plan" in name]


def test_importing_a_module_runs_the_packages_above_it() -> None:
    # p.a.x imports p.b.y, so p.b's __init__ runs first; it imports p.b.z, which imports
    # p.a.x: a cycle the import statements alone do not show.
    graph = {
        "p": set(),
        "p.a": set(),
        "p.a.x": {"p.b.y"},
        "p.b": {"p.b.z"},
        "p.b.y": set(),
        "p.b.z": {"p.a.x", "p.a"},
    }
    assert _cycle(graph) is None
    with_packages = _with_packages(graph)
    assert with_packages["p.a.x"] == {"p.b.y", "p.b"}
    # A module's own packages are loaded before it: no edge, and none to the top package.
    assert with_packages["p.b.z"] == {"p.a.x", "p.a"}
    assert with_packages["p.b"] == {"p.b.z"}
    assert _cycle(with_packages) == ["p.a.x", "p.b", "p.b.z", "p.a.x"]


def test_the_package_has_no_import_cycle() -> None:
    # Of any kind: through imports inside functions, imports for the type checker only, and
    # the package __init__ an import runs first.
    graph = _graph(type_checking=True, packages=True)
    assert f"{PACKAGE}._cli" in graph
    assert f"{PACKAGE}._metrics.records" in graph[f"{PACKAGE}._metrics"]
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


#: Packages that measure, and the plain result types they fill in; the words of their notes
#: and warnings are functions of :data:`WORDING_HOME`, and none of them loads ``_report``.
MEASURING = (
    "_engine",
    "_metrics",
    "_drivers",
    "_probes",
    "_simio",
    "_servers",
    "_locust",
    "_model",
)
#: The one module below the report that words remarks: the sentences a measurement attaches
#: to its result, each a function of the figures.
WORDING_HOME = f"{PACKAGE}._model.remarks"
_REMARK_LISTS = {"notes", "warnings"}
#: The one module below the report that may load pytest when imported: the public warning
#: class is a ``pytest.PytestWarning``.
PYTEST_HOME = f"{PACKAGE}._errors"


def _is_measuring(name: str) -> bool:
    return name.split(".")[1:2] != [] and name.split(".")[1] in MEASURING


def test_measuring_modules_do_not_load_the_report() -> None:
    # Directly, or through anything they import when they run (in functions too), the
    # package __init__ of each import included.
    graph = _graph(packages=True)
    measuring = sorted(name for name in graph if _is_measuring(name))
    assert f"{PACKAGE}._engine.storm" in measuring
    offenders = {
        name: sorted(loaded)
        for name in measuring
        if (loaded := {m for m in _loaded_by(graph, name) if m.startswith(f"{PACKAGE}._report")})
    }
    assert not offenders, f"measuring modules that load _report: {offenders}"


def test_measuring_modules_load_pytest_only_through_the_errors() -> None:
    # What runs when a measuring module is imported: its module-level imports, and theirs.
    graph = _graph(packages=True, module_level=True)
    modules = _modules()
    assert "pytest" in _imports(PYTEST_HOME, modules[PYTEST_HOME], module_level=True)
    offenders: dict[str, list[str]] = {}
    for name in sorted(n for n in graph if _is_measuring(n)):
        for loaded in _loaded_by({**graph, PYTEST_HOME: set()}, name) - {PYTEST_HOME}:
            found = _imports(loaded, modules[loaded], module_level=True)
            if {m.split(".")[0] for m in found} & {"pytest", "_pytest"}:
                offenders.setdefault(name, []).append(loaded)
    assert not offenders, f"measuring modules that load pytest when imported: {offenders}"


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
    modules = _modules()
    assert WORDING_HOME in modules
    offenders = {
        name: lines
        for name, path in modules.items()
        if _is_measuring(name) and name != WORDING_HOME
        if (lines := _written_remarks(path.read_text(encoding="utf-8")))
    }
    assert f"{PACKAGE}._engine.storm" in modules
    assert not offenders, (
        "notes or warnings worded in a measuring module (give the sentence a function in "
        f"{WORDING_HOME} and pass it the figures): {offenders}"
    )


def test_the_wording_home_only_words() -> None:
    # The remarks module imports nothing of the package, so a measuring module that needs a
    # sentence loads no more than the sentence.
    path = _modules()[WORDING_HOME]
    imported = _imports(WORDING_HOME, path, type_checking=True)
    assert not [name for name in imported if name.split(".")[0] == PACKAGE]
    assert not _written_remarks(path.read_text(encoding="utf-8"))


#: What the plain result types of ``_model`` still borrow from outside it besides the errors,
#: each a step to remove (the list must shrink, never grow): the probes' HDR percentile
#: helper, which merging the loop lags of a server's workers reads its p50 and p99 with.
MODEL_BORROWS = {
    f"{PACKAGE}._probes",
    f"{PACKAGE}._probes._common",
}


def test_the_model_imports_only_the_errors_and_what_it_still_borrows() -> None:
    graph = _graph(type_checking=True, packages=True)
    model = f"{PACKAGE}._model"
    imported = {
        target
        for name, targets in graph.items()
        if name == model or name.startswith(model + ".")
        for target in targets
        if target != model and not target.startswith(model + ".")
    }
    assert f"{model}.result" in graph
    assert imported <= MODEL_BORROWS | {f"{PACKAGE}._errors"}, sorted(imported - MODEL_BORROWS)
    gone = MODEL_BORROWS - imported
    assert not gone, f"no longer borrowed (remove from MODEL_BORROWS): {sorted(gone)}"


#: The layers of ``docs/architecture.md``, top first, by the first name under the package:
#: a module imports its own layer or those below it, never one above.
LAYERS: tuple[tuple[str, frozenset[str]], ...] = (
    (
        "faces",
        frozenset(
            {
                "plugin",
                "_plugin_report",
                "_fixture",
                "_api",
                "_cli",
                "_capacity",
                "_compare",
                "_baseline",
                "_options",
                "_session",
            }
        ),
    ),
    ("reports", frozenset({"_report"})),
    (
        "measuring",
        frozenset({"_engine", "_drivers", "_locust", "_servers", "_probes", "_simio", "_metrics"}),
    ),
    (
        "shared",
        frozenset(
            {
                "_params",
                "_spec",
                "_budget",
                "_workload",
                "_checks",
                "_apps",
                "_tasks",
                "_clock",
                "_optional",
                "_fidelity",
                "_headers",
            }
        ),
    ),
    ("model", frozenset({"_model"})),
    ("base", frozenset({"_errors", "_version"})),
)
#: Imports that still run up the layers, as (importer, imported); each is a defect to remove
#: and the list must shrink, never grow.
KNOWN_UPWARD_IMPORTS: set[tuple[str, str]] = set()


def _layer(name: str) -> int | None:
    """The index of *name*'s layer in :data:`LAYERS` (-1: the public surface on top)."""
    parts = name.split(".")
    if len(parts) == 1:
        return -1
    return next((i for i, (_, tops) in enumerate(LAYERS) if parts[1] in tops), None)


def test_imports_run_down_the_layers() -> None:
    graph = _graph(type_checking=True, packages=True)
    unplaced = sorted(name for name in graph if _layer(name) is None)
    assert not unplaced, f"modules in no layer of LAYERS (and docs/architecture.md): {unplaced}"
    model = f"{PACKAGE}._model"
    upward = {
        (importer, imported)
        for importer, targets in graph.items()
        for imported in targets
        # A module's own packages are loaded before it (``from .. import x``).
        if not importer.startswith(imported + ".")
        if (_layer(imported) or 0) < (_layer(importer) or 0)
        # The model's borrowings are listed apart (MODEL_BORROWS).
        if not (importer.startswith(model + ".") and imported in MODEL_BORROWS)
    }
    assert upward <= KNOWN_UPWARD_IMPORTS, (
        f"imports up the layers: {sorted(upward - KNOWN_UPWARD_IMPORTS)}"
    )
    gone = KNOWN_UPWARD_IMPORTS - upward
    assert not gone, f"no longer imported (remove from KNOWN_UPWARD_IMPORTS): {sorted(gone)}"


#: Clocks a module reads to time something; the report words figures and times nothing.
_TIMING_CLOCKS = {"perf_counter", "perf_counter_ns", "process_time", "thread_time"}


def _timings(name: str, path: Path) -> list[int]:
    """Lines where a module reads a timing clock (0: it imports asyncio, to run a loop)."""
    found = [0] if "asyncio" in _imports(name, path) else []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        called = node.attr if isinstance(node, ast.Attribute) else getattr(node, "id", None)
        if isinstance(node, ast.Attribute | ast.Name) and called in _TIMING_CLOCKS:
            found.append(node.lineno)
    return sorted(set(found))


def test_the_report_measures_nothing() -> None:
    # Machine measurement (how late this machine's sleeps wake) lives in _probes.noise.
    modules = _modules()
    assert _timings(f"{PACKAGE}._probes.noise", modules[f"{PACKAGE}._probes.noise"])
    offenders = {
        name: lines
        for name, path in modules.items()
        if name.startswith(f"{PACKAGE}._report")
        if (lines := _timings(name, path))
    }
    assert not offenders, f"report modules that time something: {offenders}"


def test_the_report_loads_pytest_only_through_the_errors() -> None:
    # Its pytest side (options, the session object and its hooks) is _plugin_report, beside
    # plugin.py: the reports serve the command line and the API without pytest too.
    graph = {**_graph(packages=True), PYTEST_HOME: set()}
    modules = _modules()
    report = sorted(name for name in graph if name.startswith(f"{PACKAGE}._report"))
    assert f"{PACKAGE}._report._terminal" in report
    offenders: dict[str, list[str]] = {}
    for name in report:
        for loaded in sorted(_loaded_by(graph, name) - {PYTEST_HOME}):
            if {m.split(".")[0] for m in _imports(loaded, modules[loaded])} & {"pytest", "_pytest"}:
                offenders.setdefault(name, []).append(loaded)
    assert not offenders, f"report modules that load pytest: {offenders}"


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
    assert f"{PACKAGE}._report._blocking_text" in seen
    loaded = sorted(name for name in seen if name.startswith(f"{PACKAGE}._engine"))
    assert not loaded, f"_report loads the engine: {loaded}"


#: The one percentile of a sorted list (the rank the HDR histograms take).
PERCENTILE_HOME = f"{PACKAGE}._metrics.percentile"
_RANK_NAMES = {"q", "quantile", "fraction", "percentile"}


def _is_rank_factor(node: ast.expr) -> bool:
    if isinstance(node, ast.Constant):
        return isinstance(node.value, float) and 0 < node.value < 1
    return isinstance(node, ast.Name) and node.id in _RANK_NAMES


def _is_count(node: ast.expr) -> bool:
    """``len(xs)``, ``count``, ``n``, ``self.n``, or arithmetic on one (``len(xs) - 1``)."""
    if isinstance(node, ast.Call):
        return isinstance(node.func, ast.Name) and node.func.id == "len"
    if isinstance(node, ast.Name | ast.Attribute):
        return (node.id if isinstance(node, ast.Name) else node.attr) in {"count", "n"}
    if isinstance(node, ast.BinOp):
        return _is_count(node.left) or _is_count(node.right)
    return False


#: Calls that turn a product into a rank (a drawn rank, ``round(n·q + noise)``, is a
#: resampling, not a percentile).
_TO_RANK = {"int", "ceil", "floor"}


def _hand_ranks(source: str) -> list[int]:
    """Lines that compute a rank in a list by hand: ``xs[int(0.99 * (n - 1))]``,
    ``math.ceil(q * len(xs))``."""
    found: list[int] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Subscript):
            places = [node.slice]
        elif isinstance(node, ast.Call):
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            places = list(node.args) if called in _TO_RANK else []
        else:
            continue
        for place in places:
            for inner in ast.walk(place):
                if isinstance(inner, ast.BinOp) and isinstance(inner.op, ast.Mult):
                    sides = (inner.left, inner.right)
                    if any(map(_is_rank_factor, sides)) and any(map(_is_count, sides)):
                        found.append(inner.lineno)
    return sorted(set(found))


def test_the_rank_check_finds_percentiles_taken_by_hand() -> None:
    taken = (
        "values[int(0.99 * (count - 1))]\n"  # 1
        "ordered[max(0, math.ceil(quantile * len(ordered)) - 1)]\n"  # 2
        "ordered[min(len(ordered) - 1, max(0, int(q * len(ordered))))]\n"  # 3
        "index = max(0, math.ceil(fraction * len(ordered)) - 1)\n"  # 4
        "tail[int(len(tail) * 0.5)]\n"  # 5
        "return self.at_rank(math.ceil(self.n * q))\n"  # 6
    )
    assert _hand_ranks(taken) == [1, 2, 3, 4, 5, 6]
    fine = (
        "quantile(values, 0.99)\n"
        "ordered[(len(ordered) - 1) // 2]\n"
        "values[-1] * 0.5\n"
        "rows[i * 2]\n"
        "width = 0.5 * total\n"
        "k = round(n * q + rng.gauss(0.0, 1.0) * math.sqrt(n * q * (1.0 - q)))\n"
    )
    assert _hand_ranks(fine) == []


def test_percentiles_of_a_list_come_from_one_function() -> None:
    modules = _modules()
    offenders = {
        name: lines
        for name, path in modules.items()
        if name != PERCENTILE_HOME
        if (lines := _hand_ranks(path.read_text(encoding="utf-8")))
    }
    assert not offenders, (
        f"a percentile taken by hand (use {PERCENTILE_HOME}.quantile, the rank the HDR "
        f"histograms take): {offenders}"
    )
    assert _hand_ranks(modules[PERCENTILE_HOME].read_text(encoding="utf-8"))
    assert _hand_ranks(modules[PERCENTILE_HOME].read_text(encoding="utf-8"))


# -- functions a reader can hold in view -------------------------------------------------------

#: The longest a function may be without a reason.
LONGEST = 80
#: Files whose long functions are being moved elsewhere (each with why it is exempt here).
LONG_EXEMPT = {
    "_report/_baseline.py": "the saved-baseline comparison moves to a package of its own",
}


def _long_functions(source: str, limit: int = LONGEST) -> list[tuple[str, int, int]]:
    """``(name, line, length)`` of each function longer than *limit* lines without a comment
    block right above it (or above its decorators) that holds ``# long: <reason>``."""
    lines = source.splitlines()
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        length = (node.end_lineno or node.lineno) - node.lineno + 1
        if length <= limit:
            continue
        above = min([node.lineno, *(d.lineno for d in node.decorator_list)]) - 2
        reason = False
        while above >= 0 and lines[above].strip().startswith("#"):
            text = lines[above].strip().removeprefix("#").strip()
            reason = reason or (text.startswith("long:") and len(text) > len("long:") + 10)
            above -= 1
        if not reason:
            found.append((node.name, node.lineno, length))
    return found


def test_the_long_function_check_wants_a_reason() -> None:
    body = "\n".join(f"    x{i} = {i}" for i in range(81))
    bare = f"def f():\n{body}\n"
    assert _long_functions(bare) == [("f", 1, 82)]
    assert _long_functions(f"# long: one table of eighty rows, read in order\n{bare}") == []
    assert _long_functions(f"# long:\n{bare}") == [("f", 2, 82)]  # a reason, not a bare mark
    decorated = f"# long: one table of eighty rows, read in order\n# more\n@dec\n{bare}"
    assert _long_functions(decorated) == []
    assert _long_functions(f"# long: one table of eighty rows\n\n{bare}") == [("f", 3, 82)]
    eighty = "\n".join(f"    x{i} = {i}" for i in range(79))
    assert _long_functions(f"def g():\n{eighty}\n") == []  # 80 lines: within


def test_no_function_is_over_80_lines_without_a_reason() -> None:
    long = [
        f"{path.relative_to(SRC / PACKAGE)}:{line} {name} ({length} lines)"
        for path in sorted((SRC / PACKAGE).rglob("*.py"))
        if path.relative_to(SRC / PACKAGE).as_posix() not in LONG_EXEMPT
        for name, line, length in _long_functions(path.read_text(encoding="utf-8"))
    ]
    assert long == [], "split these, or say why not in a '# long: <reason>' comment above them"
