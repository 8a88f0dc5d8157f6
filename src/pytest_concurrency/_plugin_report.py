"""Report options (``--concurrency-json`` and friends) and the session object that acts on them.

Each option wins over its ini twin (resolved by :func:`pytest_concurrency._options.setting`).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from ._baseline.compare import COMPARE_ROUNDS, Comparison, compare, judgements, machine_warning
from ._baseline.noise import machine_load
from ._baseline.store import DEFAULT_DIRECTORY, baseline_path, load, load_document, save_merged
from ._baseline.thresholds import Threshold, parse_compare_fail, with_cpu
from ._baseline.wording import (
    VERDICTS,
    comparison_table,
    judgement_head,
    judgement_interval,
    judgement_line,
    saved_block,
    short_line,
)
from ._errors import ConfigError
from ._model.result import StormResult
from ._options import Setting, add_string_options, scale, setting
from ._params import Layer
from ._report._csv import csv_paths, write_csv
from ._report._json import ensure_writable, machine_info, session_document, write_json
from ._report._records import StormRecord, as_records
from ._report._terminal import noise_figures, noise_statement, storm_notes, storms_table
from ._session import STORMS_KEY
from ._spec.table import warn_old_threshold_names

__all__ = ["OPTIONS", "STORM_JSON_PROPERTY", "ReportSession", "add_options", "compare_layers"]

#: Key of the ``user_properties`` entry that carries a storm from an xdist worker.
STORM_JSON_PROPERTY = "storm.json"

#: name -> (metavar, help); option ``--concurrency-NAME``, ini ``concurrency_NAME``.
OPTIONS: dict[str, tuple[str, str]] = {
    "json": (
        "PATH",
        "write every storm of the session (figures, timeline, HDR histograms) as JSON to PATH",
    ),
    "html": (
        "PATH",
        "write a self-contained HTML report with charts to PATH "
        "(needs plotly: pip install 'pytest-storm[html]')",
    ),
    "csv": (
        "PREFIX",
        "write Locust-style CSV files: PREFIX_stats.csv (per storm and endpoint) and "
        "PREFIX_stats_history.csv (per storm per second)",
    ),
    "save": ("NAME", "save this session's storms as the baseline NAME in the storage directory"),
    "compare": ("NAME", "compare this session's storms with the saved baseline NAME"),
    "compare_fail": (
        "EXPR",
        "fail a storm's test when it regressed against the --concurrency-compare baseline "
        "beyond EXPR, such as p99_ms:10%,rps:5%,mean_ms:5ms (N% relative, Nms absolute)",
    ),
    "storage": ("DIR", f"directory of saved baselines (default {DEFAULT_DIRECTORY})"),
}

_SAVE_REPLACE_HELP = (
    "with --concurrency-save, replace the saved baseline instead of merging this session's "
    "storms into it (by default storms that did not run, under --lf or -k, are kept)"
)


def add_options(parser: pytest.Parser) -> None:
    """Add the report options and their ini twins to the ``concurrency`` group."""
    add_string_options(parser, OPTIONS)
    group = parser.getgroup("concurrency")
    group.addoption(
        "--concurrency-save-replace",
        dest="concurrency_save_replace",
        action="store_true",
        default=None,
        help=_SAVE_REPLACE_HELP,
    )
    parser.addini("concurrency_save_replace", _SAVE_REPLACE_HELP, type="bool", default=False)


def compare_layers(config: pytest.Config) -> list[Layer]:
    """``rounds=3`` for a storm whose comparison with a saved baseline can fail its test
    (lowest precedence); the terminal summary says so.

    A single round has no spread to judge a difference against; a storm (marker or
    keyword) that sets ``rounds`` keeps its own. Saving a baseline alone runs what the
    user asked for.
    """
    report = config.pluginmanager.get_plugin("concurrency-report")
    if not isinstance(report, ReportSession) or not report.thresholds:
        return []
    label = report.compare_fail_label or "--concurrency-compare-fail"
    report.rounds_added = label
    return [Layer(f"default of {label}", {"rounds": COMPARE_ROUNDS})]


def _scale(config: pytest.Config) -> float | None:
    # A bad factor already failed every storm's test at setup; the report just leaves it out.
    try:
        found = scale(config)
    except ConfigError:
        return None
    return found[0] if found is not None else None


def _ini(config: pytest.Config, name: str) -> Any:
    try:
        return config.getini(name)
    except ValueError:  # not registered
        return None


def _is_worker(config: pytest.Config) -> bool:
    return hasattr(config, "workerinput")


class ReportSession:
    """Writes the JSON and HTML reports, saves and compares baselines, gathers xdist storms.

    Registered by the plugin as ``concurrency-report``. Every option is checked when it
    is built, so a bad value is a usage error before any storm is fired.
    """

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.is_worker = _is_worker(config)
        self._transported: list[StormRecord] = []
        self._workers_with_storms: set[str] = set()
        self._final: list[StormRecord] | None = None
        self._written: list[str] = []
        self._problems: list[str] = []
        self._notes: list[str] = []
        self._machine_cache: dict[str, Any] | None = None
        self._compared: dict[tuple[str, str, int], Comparison] = {}
        self.json = setting(config, "json")
        self.html = setting(config, "html")
        self.csv = setting(config, "csv")
        self.save_as = setting(config, "save")
        self.compare_with = setting(config, "compare")
        storage = setting(config, "storage")
        self.storage = (
            storage.path() if storage else (config.invocation_params.dir / DEFAULT_DIRECTORY)
        )
        self.baseline: dict[str, Any] | None = None
        self.thresholds: list[Threshold] = []
        self.compare_fail_label = ""
        #: The option that added rounds to this session's storms ('' while none did).
        self.rounds_added = ""
        self.save_replace = bool(config.getoption("concurrency_save_replace", None)) or bool(
            _ini(config, "concurrency_save_replace")
        )
        try:
            self._check()
        except ConfigError as exc:
            raise pytest.UsageError(str(exc)) from None

    def _check(self) -> None:
        if self.save_as is not None:
            self._check_save(self.save_as)
        if (
            self.html is not None
            and not self.is_worker
            and importlib.util.find_spec("plotly") is None
        ):
            raise ConfigError(
                f"{self.html.label}={self.html.value!r} needs plotly, which is not installed: "
                "pip install 'pytest-storm[html]'"
            )
        fail = setting(self.config, "compare_fail")
        # Under --concurrency-control the thresholds are the paired comparison's.
        if fail is not None and setting(self.config, "control") is None:
            warn_old_threshold_names(str(fail.value), fail.label)
            self.thresholds = with_cpu(parse_compare_fail(str(fail.value), origin=fail.label))
            self.compare_fail_label = fail.label
            if self.compare_with is None:
                raise ConfigError(
                    f"{fail.label}={fail.value!r} needs a baseline to compare with: "
                    "add --concurrency-compare=NAME"
                )
        if self.compare_with is not None:
            self.baseline = load(str(self.compare_with.value), self.storage)
        if not self.is_worker:
            self._check_writable()

    def _check_save(self, save_as: Setting) -> None:
        """A baseline that could not be saved when the session ends is a usage error now."""
        path = baseline_path(str(save_as.value), self.storage, option=save_as.label)
        if self.save_replace or not path.is_file():
            return
        # Merged into at the end of the session: a file that cannot be merged would be
        # found only after every test had run. (It is read again, under its lock, then.)
        try:
            load_document(path, option=f"{save_as.label}={save_as.value!r}")
        except ConfigError as exc:
            hint = (
                ""
                if "--concurrency-save-replace" in str(exc)
                else " (--concurrency-save-replace replaces it)"
            )
            raise ConfigError(f"{exc}; no test was run{hint}") from None

    def _check_writable(self) -> None:
        """A report asked for that cannot be written is a usage error before any storm runs."""
        targets: list[tuple[Setting, Path]] = []
        for report in (self.json, self.html):
            if report is not None:
                targets.append((report, report.path()))
        if self.csv is not None:
            targets.extend((self.csv, path) for path in csv_paths(self.csv.path()))
        if self.save_as is not None:
            targets.append((self.save_as, baseline_path(str(self.save_as.value), self.storage)))
        for report, path in targets:
            try:
                ensure_writable(path)
            except OSError as exc:
                raise ConfigError(
                    f"{report.label}={report.value!r} (from {report.origin}): cannot write "
                    f"{path}: {exc.strerror or exc}"
                ) from None

    # -- pytest hooks ------------------------------------------------------------------

    def _xdist_controller(self) -> bool:
        return not self.is_worker and self.config.pluginmanager.hasplugin("dsession")

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        """On an xdist controller, collect the storms a worker attached to a test's report."""
        if report.when != "teardown" or not self._xdist_controller():
            return
        # The teardown report carries every property the test set, in setup, call or
        # teardown, exactly once.
        kept: list[tuple[str, object]] = []
        index = 0
        for key, value in report.user_properties:
            if key != STORM_JSON_PROPERTY:
                kept.append((key, value))
                continue
            # The worker runs this version: its storm reads back whole, so the reports see
            # the same result (the event loop's blocking sites among it) as without xdist.
            result = StormResult.from_dict(json.loads(str(value)))
            self._transported.append(StormRecord.from_result(report.nodeid, index, result))
            index += 1
            self._workers_with_storms.add(str(getattr(report, "worker_id", "")))
        # The encoded histograms are a transport, not figures: keep them out of JUnit XML.
        report.user_properties[:] = kept

    def session_records(self) -> list[StormRecord]:
        """This session's storms: from the workers under xdist, else from the plugin's store."""
        if self._final is not None:
            return self._final
        if self._transported or self._xdist_controller():
            return list(self._transported)
        store = self.config.stash.get(STORMS_KEY, None)
        return as_records(store.rows) if store is not None else []

    def _machine_now(self) -> dict[str, Any]:
        if self._machine_cache is None:
            self._machine_cache = machine_info()
        return self._machine_cache

    def _machine(self, with_noise: bool) -> dict[str, Any]:
        machine = dict(self._machine_now())
        if with_noise:
            machine["noise"] = noise_figures()
        # Read as the session ends, as a saved baseline's is: a report compared later has it.
        load = machine_load()
        if load is not None:
            machine["load"] = load
        return machine

    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        """Write the JSON and HTML reports and save the baseline (controller only)."""
        if self.is_worker:
            return
        records = self._final = self.session_records()
        if self.json is None and self.html is None and self.csv is None and self.save_as is None:
            return
        machine = self._machine(with_noise=bool(records))
        doc = session_document(records, machine=machine, scaled=_scale(self.config))
        # The reports carry the baseline's verdicts; a baseline saved from this session does not.
        reported = self.with_saved_blocks(records)
        if self.json is not None:
            shown = (
                doc
                if reported is records
                else session_document(reported, machine=machine, scaled=doc["scaled"])
            )
            self._attempt("JSON report", self.json, lambda p: write_json(p, shown))
        if self.html is not None:
            from ._report._html import write_html

            title = f"pytest-storm report: {self.config.rootpath.name}"
            self._attempt(
                "HTML report",
                self.html,
                lambda p: write_html(p, reported, title=title, machine=machine),
            )
        if self.csv is not None:
            self._attempt(
                "CSV files",
                self.csv,
                lambda p: write_csv(p, records)[0].with_name(p.name + "_stats*.csv"),
            )
        if self.save_as is not None:
            name = str(self.save_as.value)
            label = self.save_as.label
            self._attempt(
                f"baseline {name!r}", self.save_as, lambda _: self._save(name, doc, label)
            )
        if self._problems and session.exitstatus == pytest.ExitCode.OK:
            # A report that was asked for and not written fails the run, whatever the tests did.
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def saved_comparisons(self, records: Sequence[StormRecord]) -> list[Comparison]:
        """*records* against the saved baseline, each storm compared once: the test's own
        verdict, the terminal, the Markdown summary and the JSON and HTML reports state the
        same one."""
        assert self.baseline is not None
        # (The noise depends on the machine's load as it is read: compared twice, a verdict
        # near its threshold could differ between the test and a report of one session.)
        missing = [r for r in records if r.key not in self._compared]
        if missing:
            found = compare(missing, self.baseline, noise_for=self._judged())
            self._compared.update(zip((r.key for r in missing), found, strict=True))
        return [self._compared[r.key] for r in records]

    def with_saved_blocks(self, records: list[StormRecord]) -> list[StormRecord]:
        """*records* with each storm's ``comparison`` block against the saved baseline (the
        same list when this session compares with none)."""
        if self.baseline is None or self.compare_with is None or not records:
            return records
        name = str(self.compare_with.value)
        warning = machine_warning(self.baseline, self._machine_now())
        blocks = {
            (c.nodeid, c.label, c.index): saved_block(
                c,
                self.thresholds,
                against=f"baseline {name}",
                saved=str(self.baseline.get("created", "?")),
                fails=bool(self.thresholds),
                notes=[warning] if warning else [],
            )
            for c in self.saved_comparisons(records)
        }
        return [
            dataclasses.replace(r, data={**r.data, "comparison": blocks[r.key]})
            if r.key in blocks
            else r
            for r in records
        ]

    def _save(self, name: str, doc: dict[str, Any], option: str) -> Path:
        written, kept = save_merged(
            name, doc, self.storage, replace=self.save_replace, option=option
        )
        if kept:
            self._notes.append(
                f"baseline {name!r}: kept {kept} storm{'s' if kept != 1 else ''} of the saved "
                "baseline that did not run this session (--concurrency-save-replace replaces "
                "the whole file)"
            )
        return written

    def _attempt(self, what: str, setting: Setting, write: Callable[[Path], Path]) -> None:
        target = setting.path()
        try:
            written = write(target)
        except (OSError, ConfigError) as exc:
            # An INTERNALERROR would hide the test outcomes; say what failed instead.
            self._problems.append(
                f"could not write the {what} ({setting.label}={setting.value!r}, {target}): "
                f"{exc}; the run fails because this report was asked for"
            )
        else:
            self._written.append(f"{what} written to {written}")

    @pytest.hookimpl(trylast=True)
    def pytest_terminal_summary(
        self, terminalreporter: Any, exitstatus: int, config: pytest.Config
    ) -> None:
        """Baseline comparison, files written and the machine's noise (never fails the run)."""
        if self.is_worker:
            return
        records = self.session_records()
        tr = terminalreporter
        if self._transported:
            tr.section("storms")
            for line in storms_table(self.with_saved_blocks(records)):
                tr.write_line(line)
        # Under the storms table (the plugin's, or the one above under xdist).
        for line in storm_notes(records):
            tr.write_line(line)
        if self._transported:
            workers = len(getattr(config.option, "tx", None) or []) or len(
                self._workers_with_storms
            )
            tr.write_line(
                f"storms ran on {workers} pytest-xdist workers in parallel: they shared the CPU "
                "with each other and with other tests, so their latency is inflated; run the "
                "storm tests with -n 0 when their figures are gated",
                yellow=True,
            )
        if self.rounds_added and records:
            tr.write_line(
                f"storms ran {COMPARE_ROUNDS} rounds each unless they set rounds: "
                f"{self.rounds_added} judges them on the spread of their rounds"
            )
        compared = self.baseline is not None and self.compare_with is not None
        if self.baseline is not None and self.compare_with is not None:
            self._write_comparison(tr, records, str(self.compare_with.value), self.baseline)
        for line in self._written:
            tr.write_line(line)
        for line in self._notes:
            tr.write_line(line)
        for line in self._problems:
            tr.write_line(line, red=True)
        if records and not compared:  # (the comparison says it under its table)
            tr.write_line(noise_statement())

    def _write_comparison(
        self, tr: Any, records: list[StormRecord], name: str, baseline: dict[str, Any]
    ) -> None:
        tr.section(f"storms compared with baseline {name} (saved {baseline.get('created', '?')})")
        warning = machine_warning(baseline, self._machine_now())
        if warning:
            tr.write_line(warning, yellow=True)
        comparisons = self.saved_comparisons(records)
        if not comparisons:
            tr.write_line("no storms ran in this session")
            return
        for line in comparison_table(comparisons).splitlines():
            tr.write_line(line)
        tr.write_line(noise_statement())
        within = 0
        name_of = f"baseline {name}"
        colour = {"regressed": "red", "inconclusive": "yellow", "improved": "green"}
        for c in comparisons:
            title = f"{c.nodeid} · {c.label}" + (f" [{c.index}]" if c.index else "")
            found = judgements(c, self.thresholds)
            shown = [j for j in found if j.verdict != "unchanged"]
            within += len(found) - len(shown)
            if not shown:
                continue
            verdict = min((j.verdict for j in shown), key=VERDICTS.index)
            tr.write_line(title)
            tr.write_line("  " + short_line(c, found, against=name_of), **{colour[verdict]: True})
            for j in shown:
                tr.write_line(f"    {judgement_line(j)}")
        if within:
            tr.write_line(
                f"{within} compared figure{'s' if within != 1 else ''} within "
                f"{'their thresholds' if within != 1 else 'its threshold'}, noise included"
            )

    def _judged(self) -> set[str]:
        return {t.figure for t in self.thresholds}

    # -- called by the plugin -----------------------------------------------------------

    def check_regression(self, nodeid: str, index: int, result: StormResult) -> str | None:
        """The failure message when this storm regressed beyond ``--concurrency-compare-fail``."""
        if self.baseline is None or not self.thresholds or self.compare_with is None:
            return None
        record = StormRecord.from_result(nodeid, index, result)
        # Compared afresh (a rerun of the test has the same key): this verdict is the one
        # its reports then state.
        self._compared.pop(record.key, None)
        (comparison,) = self.saved_comparisons([record])
        lines = []
        for j in judgements(comparison, self.thresholds):
            if j.verdict == "regressed":
                lines.append(judgement_head(j))
                if j.has_noise:
                    lines.append(f"  {judgement_interval(j)}: all of it past the threshold")
        if not lines:
            return None
        name = str(self.compare_with.value)
        path = baseline_path(name, self.storage)
        message = [
            f"storm {result.label} regressed against baseline {name!r} "
            f"({path}, saved {self.baseline.get('created', '?')}):",
            *(f"  {line}" for line in lines),
        ]
        warning = machine_warning(self.baseline, self._machine_now())
        if warning:
            message.append(f"  note: {warning}")
        message.append(f"  {noise_statement()}")
        return "\n".join(message)
