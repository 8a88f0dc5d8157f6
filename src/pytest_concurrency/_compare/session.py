"""The paired mode in a pytest session: its options, the control it checks out once, and the
storms it runs against control and experiment.

Registered by the plugin as ``concurrency-control``. Options are checked when it is
built (a usage error before any storm); the control's worktree is removed when the
session ends, whatever ended it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import pytest

from .._baseline.compare import judgements
from .._baseline.wording import storm_verdict
from .._engine.plan import StormPlan
from .._errors import ConfigError
from .._model.extras import Comparison
from .._model.result import StormResult
from .._options import Setting, add_string_options, setting
from .._params import Layer
from .._plugin_report import ReportSession
from .._report._markdown import SummaryRow, markdown_summary, write_markdown
from .._report._records import as_records, comparison_of
from .._session import STORMS_KEY
from .._spec.table import warn_old_threshold_names
from .control import Control, control_path, experiment_path, module_root
from .paired import (
    Children,
    PairedOutcome,
    check_sendable,
    default_budget,
    round_layer,
    run_paired,
)
from .spec import ChildSpec
from .verdict import DEFAULT_THRESHOLDS, parse_thresholds

__all__ = ["OPTIONS", "ControlSession", "add_options"]

#: name -> (metavar, help); option ``--concurrency-NAME``, ini ``concurrency_NAME``.
OPTIONS: dict[str, tuple[str, str]] = {
    "control": (
        "REF|PATH",
        "run every storm also against a control (a git ref, checked out into a temporary "
        "worktree, or a directory) in alternating rounds, and judge the paired change; "
        "--concurrency-compare-fail fails a storm's test on a regression",
    ),
    "control_time": (
        "SECONDS",
        "most seconds of paired rounds per storm under --concurrency-control "
        "(default: 4 times the storm's duration); at least 6 pairs always run",
    ),
    "control_order": (
        "alternate|duet",
        "how the paired rounds run under --concurrency-control: alternate (default; one "
        "after the other, A B, B A, …, each alone on the machine) or duet (both at once: "
        "half the time, a neighbour's burst falls on both, but each shares the machine)",
    ),
    "markdown": (
        "PATH",
        "append a Markdown summary of the comparisons (control or baseline), regressions "
        "first, to PATH ($GITHUB_STEP_SUMMARY works)",
    ),
}

#: The Markdown summary's line when the session compared nothing.
NOTHING_COMPARED = (
    "this session had no comparison to summarise; run it with --concurrency-compare=NAME "
    "(a baseline saved by --concurrency-save=NAME) or --concurrency-control=REF"
)

#: Values of ``--concurrency-control-order``.
ORDERS = ("alternate", "duet")

#: Extra seconds a round may take beyond its own length before the storm fails.
_ROUND_GRACE = 120.0


def add_options(parser: pytest.Parser) -> None:
    """Add the paired-mode options and their ini twins to the ``concurrency`` group."""
    add_string_options(parser, OPTIONS)


def _seconds(found: Setting) -> float:
    try:
        value = float(found.value)
    except (TypeError, ValueError):
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise ConfigError(
            f"{found.label}={found.value!r} (from {found.origin}) must be a number of seconds "
            "greater than 0"
        )
    return value


class ControlSession:
    """Runs storms paired against the control, and writes the Markdown summary."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.control: Control | None = None
        self.budget: float | None = None
        self.duet = False
        self.thresholds = parse_thresholds(DEFAULT_THRESHOLDS, origin="default")
        #: Whether the thresholds name CPU per request (else it is judged only when it means
        #: something: a storm whose threads were busy).
        self.cpu_named = False
        self.failing = False
        self.markdown = setting(config, "markdown")
        self.children = Children()
        try:
            self._check()
        except ConfigError as exc:
            raise pytest.UsageError(str(exc)) from None

    def _check(self) -> None:
        found = setting(self.config, "control")
        time = setting(self.config, "control_time")
        if time is not None:
            self.budget = _seconds(time)
        order = setting(self.config, "control_order")
        if order is not None:
            if order.value not in ORDERS:
                raise ConfigError(
                    f"{order.label}={order.value!r} (from {order.origin}) must be one of "
                    f"{', '.join(ORDERS)}"
                )
            self.duet = order.value == "duet"
        if found is None:
            return
        if setting(self.config, "compare") is not None:
            raise ConfigError(
                f"{found.label}={found.value!r} and --concurrency-compare both compare this "
                "session's storms: choose the control or the saved baseline"
            )
        self.control = Control(
            str(found.value),
            origin=found.origin,
            label=found.label,
            base=found.base,
            rootdir=self.config.rootpath,
        )
        fail = setting(self.config, "compare_fail")
        if fail is not None:
            warn_old_threshold_names(str(fail.value), fail.label)
            self.thresholds = parse_thresholds(str(fail.value), origin=fail.label)
            self.cpu_named = any(
                item.partition(":")[0].strip() == "cpu" for item in str(fail.value).split(",")
            )
            self.failing = True

    @property
    def active(self) -> bool:
        """True when storms run paired (and this process is not an xdist controller)."""
        return self.control is not None

    def pytest_unconfigure(self, config: pytest.Config) -> None:
        """Stop the control and experiment processes; remove the control's worktree."""
        self.children.close()
        if self.control is not None:
            self.control.close()

    # -- a storm ------------------------------------------------------------------------

    def run(
        self,
        plan: StormPlan,
        app: Any,
        method: str | None,
        path: str | None,
        requests: Any,
        layers: Sequence[Layer],
        scale: tuple[float, str] | None,
    ) -> StormResult:
        """Run *plan*'s storm against control and experiment; the experiment's median round,
        with the comparison in ``result.comparison`` (and a note)."""
        assert self.control is not None
        option = self.control.option
        if plan.config.server != "inprocess" or plan.config.engine != "native":
            # A server process imports the app by name from its own sys.path: it would not
            # see the control's tree.
            raise ConfigError(
                f"{option}: a paired storm runs in-process with the native engine; this one "
                f"has server={plan.config.server!r} (from {plan.config.origin_of('server')}) "
                f"and engine={plan.config.engine!r} (from {plan.config.origin_of('engine')})"
            )
        spec = _import_path(app, option)
        tree = self.control.tree()
        root = module_root(spec, option)
        top = round_layer(plan, scale)
        common = dict(
            app=spec,
            method=method,
            path=path,
            requests=requests,
            layers=[top, *layers],
            scale=scale,
        )
        control = ChildSpec(**common, sys_path=control_path(tree, root, option, spec))
        experiment = ChildSpec(**common, sys_path=experiment_path(root))
        check_sendable(control, option)
        budget = self.budget if self.budget is not None else default_budget(plan)
        seconds = (plan.config.duration or 0) + plan.config.warmup + plan.config.timeout_ms / 1000
        outcome = run_paired(
            self.children,
            control,
            experiment,
            thresholds=self.thresholds,
            against=f"control {tree.label}",
            budget=budget,
            option=option,
            round_timeout=seconds + _ROUND_GRACE,
            cpu_named=self.cpu_named,
            duet=self.duet,
        )
        return _attach(outcome, self.failing)

    def regression(self, result: StormResult) -> str | None:
        """The failure message when this storm regressed against the control and
        ``--concurrency-compare-fail`` was given."""
        block = result.comparison
        if not self.failing or block is None or not block.regressed:
            return None
        lines = [f"storm {result.label} regressed: {block.line}"]
        for figure in block.figures:
            if figure["verdict"] == "regressed":
                change = figure["change"]
                lines.append(
                    f"  {figure['figure']}: control {change['control']:.6g} {figure['unit']}, "
                    f"experiment {change['experiment']:.6g} {figure['unit']} (medians); "
                    f"threshold {figure['threshold']}; "
                    f"{change['confidence']:.0%} interval of the ratio "
                    f"{change['low']:.3f}…{change['high']:.3f} over {change['pairs']} pairs"
                )
        lines.append(f"  rounds in order (A control, B experiment): {block.order}")
        return "\n".join(lines)

    # -- the Markdown summary ----------------------------------------------------------

    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        """Append the Markdown summary when ``--concurrency-markdown`` asks for one."""
        if self.markdown is None or hasattr(self.config, "workerinput"):
            return
        report = self.config.pluginmanager.get_plugin("concurrency-report")
        if isinstance(report, ReportSession):
            records = report.session_records()
        else:
            store = self.config.stash.get(STORMS_KEY, None)
            records = as_records(store.rows) if store is not None else []
        why_none = ""
        if self.control is not None:
            title = f"pytest-storm: storms vs control {self.control.describe}"
            rows = paired_rows(records)
        elif isinstance(report, ReportSession) and report.baseline is not None:
            name = str(report.compare_with.value) if report.compare_with else "?"
            title = f"pytest-storm: storms vs baseline {name}"
            rows = baseline_rows(report, records)
        else:
            # Asked for and never written would look like a CI step that found nothing.
            title, rows = "pytest-storm: storms", []
            why_none = NOTHING_COMPARED
        target = self.markdown.path()
        reporter = self.config.pluginmanager.get_plugin("terminalreporter")
        try:
            write_markdown(target, markdown_summary(title, rows, why_none=why_none))
        except OSError as exc:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED
            if reporter is not None:
                reporter.write_line(
                    f"could not write the Markdown summary ({self.markdown.label}, {target}): "
                    f"{exc}",
                    red=True,
                )
            return
        if why_none and reporter is not None:
            reporter.write_line(f"Markdown summary ({self.markdown.label}, {target}): {why_none}")


def _import_path(app: Any, option: str) -> str:
    """``module:attr`` of *app*, by which the control finds its own version of it."""
    from .._apps import _module_attribute

    if isinstance(app, str) and ":" in app:
        return app
    found = _module_attribute(app)
    module = found.partition(":")[0] if found else ""
    if found is None or module == "__main__":
        raise ConfigError(
            f"{option}: the app {app!r} cannot be imported by name, so the control cannot "
            "have its own version of it (a closure or an app built inside the test?): give "
            "the app as a module-level variable or as an import string 'module:attr'"
        )
    return found


def _attach(outcome: PairedOutcome, failing: bool) -> StormResult:
    result = outcome.chosen()
    result.comparison = Comparison.from_dict({**outcome.to_dict(), "fails": failing})
    result.notes.append(outcome.line)
    result.notes.extend(outcome.notes)
    result.rounds = [
        {"p50": r.latency.p50, "p99": r.latency.p99, "max": r.latency.max, "rps": r.throughput}
        for r in outcome.experiment
    ]
    return result


def paired_rows(records: Sequence[Any]) -> list[SummaryRow]:
    """A summary row per storm that carries a paired comparison."""
    rows = []
    for record in records:
        block = comparison_of(record.data)
        if block is not None:
            line = str(block.get("line", ""))
            change = line.partition(": ")[2] or line
            rows.append(SummaryRow(str(block.get("verdict")), record.nodeid, record.label, change))
    return rows


def baseline_rows(report: ReportSession, records: Sequence[Any]) -> list[SummaryRow]:
    """A summary row per storm compared with the saved baseline."""
    rows = []
    for c in report.saved_comparisons(records):
        storm = c.label + (f" [{c.index}]" if c.index else "")
        if c.deltas is None:
            rows.append(SummaryRow("new", c.nodeid, storm, "not in the baseline"))
            continue
        found = judgements(c, report.thresholds)
        if found:
            parts = [f"{j.delta.figure} {_relative(j.delta.relative)}" for j in found]
        else:
            parts = [
                f"{f} {_relative(c.deltas[f].relative)}" for f in ("p99", "rps") if f in c.deltas
            ]
        rows.append(SummaryRow(storm_verdict(c, found), c.nodeid, storm, ", ".join(parts)))
    return rows


def _relative(value: float) -> str:
    if not math.isfinite(value):
        return "n/a"
    return f"{value * 100:+.1f}%".replace("-", "−")
