"""``pytest-storm``: ad hoc storms, side-by-side comparisons and the framework demo.

    pytest-storm run examples/fastapi_app.py:app --path /io --users 200
    pytest-storm compare examples/fastapi_app.py:app examples/flask_app.py:app --path /io --users 200
    pytest-storm demo

It uses the same engine, budgets and tables as the pytest plugin.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import platform
import sys
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ._api import warn_about
from ._budget import format_number, verdict_table
from ._errors import ConcurrencyWarning, ConfigError, StormError
from ._params import BUDGET_NAMES, Layer
from ._result import StormResult
from ._storm import plan_storm, run_plan

__all__ = ["load_app", "main"]


def load_app(spec: str) -> Any:
    """Import ``module:attr`` or ``path/to/file.py:attr`` and return the app object."""
    target, sep, attr = spec.rpartition(":")
    if not sep or not target or not attr:
        raise ConfigError(
            f"app={spec!r} (from the command line) must look like MODULE:APP or path/to/file.py:APP"
        )
    if target.endswith(".py") or os.sep in target:
        path = Path(target).resolve()
        if not path.exists():
            raise ConfigError(f"app={spec!r} (from the command line): no file {path}")
        # Import as a module of its package when it is one, so relative imports work.
        root = path.parent
        parts = [path.stem]
        while (root / "__init__.py").exists():
            parts.insert(0, root.name)
            root = root.parent
        sys.path.insert(0, str(root))
        module = importlib.import_module(".".join(parts))
    else:
        sys.path.insert(0, os.getcwd())
        module = importlib.import_module(target)
    obj: Any = module
    for name in attr.split("."):
        try:
            obj = getattr(obj, name)
        except AttributeError:
            raise ConfigError(
                f"app={spec!r} (from the command line): {module.__name__} has no {attr!r}"
            ) from None
    return obj


def _budget(text: str) -> tuple[str, float]:
    name, sep, value = text.partition("=")
    if not sep or name not in BUDGET_NAMES:
        raise argparse.ArgumentTypeError(
            f"--budget {text!r}: expected NAME=VALUE with NAME one of {', '.join(BUDGET_NAMES)}"
        )
    try:
        return name, float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--budget {text!r}: {value!r} is not a number") from None


def _add_storm_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--method", default="GET")
    parser.add_argument("--path", default="/")
    parser.add_argument("--users", type=int)
    parser.add_argument("--duration", type=float)
    parser.add_argument("--requests", type=int)
    parser.add_argument("--warmup", type=float)
    parser.add_argument("--think-ms", type=float, dest="think_ms")
    parser.add_argument("--timeout-ms", type=float, dest="timeout_ms")
    parser.add_argument("--workers", type=int, help="WSGI worker processes of the server model")
    parser.add_argument("--threads", type=int, help="threads per WSGI worker")
    parser.add_argument("--budget", type=_budget, action="append", default=[], metavar="NAME=VALUE")
    parser.add_argument("--json", metavar="PATH", help="write the results as JSON")


def _params(args: argparse.Namespace) -> dict[str, Any]:
    names = (
        "users",
        "duration",
        "requests",
        "warmup",
        "think_ms",
        "timeout_ms",
        "workers",
        "threads",
    )
    params = {name: getattr(args, name) for name in names if getattr(args, name) is not None}
    params.update(dict(args.budget))
    return params


def _storm(app_spec: str, args: argparse.Namespace) -> StormResult:
    app = load_app(app_spec)
    plan = plan_storm(app, args.method, args.path, layers=[Layer("command line", _params(args))])
    plan.app_name = app_spec
    return run_plan(plan)


def side_by_side(results: Sequence[StormResult]) -> str:
    """One column per storm, one row per figure."""
    rows: list[tuple[str, ...]] = [("", *[r.app for r in results])]

    def row(name: str, values: Sequence[str]) -> None:
        rows.append((name, *values))

    row("kind", [f"{r.interface}, {r.server}" for r in results])
    row("storm", [f"{r.label}, {r.users:,} users" for r in results])
    row("requests", [f"{r.requests:,}" for r in results])
    row("rps", [format_number(r.throughput) for r in results])
    for pct in ("p50", "p90", "p99", "max"):
        row(f"{pct} ms", [format_number(getattr(r.latency, pct)) for r in results])
    row("errors", [f"{r.error_rate:.1%}" for r in results])
    row("saturation", [f"{r.saturation:.0%}" if r.saturation is not None else "-" for r in results])
    row(
        "verdict",
        [
            "pass" if r.passed else "FAIL " + ",".join(v.name for v in r.failed_verdicts)
            for r in results
        ],
    )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(
            cell.ljust(widths[i]) if i == 0 else cell.rjust(widths[i]) for i, cell in enumerate(r)
        ).rstrip()
        for r in rows
    )


def _write_json(
    path: str, results: Sequence[StormResult], extra: dict[str, Any] | None = None
) -> None:
    doc = {"machine": machine_line(), "storms": [r.to_dict() for r in results], **(extra or {})}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(doc, indent=2), encoding="utf-8")


def machine_line() -> str:
    """Python, OS and core count of this machine, for reports."""
    return (
        f"{platform.python_implementation()} {platform.python_version()} on {platform.system()} "
        f"{platform.machine()}, {os.cpu_count()} cores"
    )


def _cmd_run(args: argparse.Namespace) -> int:
    result = _storm(args.app, args)
    warn_about(result)
    print(verdict_table(result, indent=""))
    print(side_by_side([result]))
    if args.json:
        _write_json(args.json, [result])
    return 0 if result.passed else 1


def _cmd_compare(args: argparse.Namespace) -> int:
    results = []
    for spec in args.apps:
        results.append(_storm(spec, args))
        warn_about(results[-1])
    print(side_by_side(results))
    if args.json:
        _write_json(args.json, results)
    return 0 if all(r.passed for r in results) else 1


@dataclass(frozen=True)
class Scenario:
    """One row of the demo: an app, an endpoint and the storm that shows its behaviour."""

    framework: str
    app: str
    path: str
    params: dict[str, Any]
    expect: str


def demo_scenarios(scale: float) -> list[Scenario]:
    """The demo's storms: the same waiting endpoint across frameworks, then the mistake."""
    d = max(0.5, 2.0 * scale)
    io_users = 200
    return [
        Scenario(
            "Starlette",
            "examples/starlette_app.py:app",
            "/io",
            {"users": io_users, "duration": d},
            "async: ≈ users / 50 ms",
        ),
        Scenario(
            "FastAPI",
            "examples/fastapi_app.py:app",
            "/io",
            {"users": io_users, "duration": d},
            "async: ≈ users / 50 ms",
        ),
        Scenario(
            "FastAPI def",
            "examples/fastapi_app.py:app",
            "/sync-io",
            {"users": io_users, "duration": d},
            "40 threads: ≈ 40 / 50 ms",
        ),
        Scenario(
            "Flask",
            "examples/flask_app.py:app",
            "/io",
            {"users": io_users, "duration": d, "workers": 8},
            "8 workers: ≈ 8 / 50 ms",
        ),
        Scenario(
            "Django WSGI",
            "examples/django_app.py:wsgi_app",
            "/io",
            {"users": io_users, "duration": d, "workers": 8},
            "8 workers: ≈ 8 / 50 ms",
        ),
        Scenario(
            "Django ASGI",
            "examples/django_app.py:asgi_app",
            "/async-io",
            {"users": io_users, "duration": d},
            "async view",
        ),
        Scenario(
            "Starlette",
            "examples/starlette_app.py:app",
            "/blocking-in-async",
            {"users": 50, "duration": d, "warmup": 1.0},
            "loop blocked: ≈ 1 / 50 ms",
        ),
        Scenario(
            "FastAPI",
            "examples/fastapi_app.py:app",
            "/blocking-in-async",
            {"users": 50, "duration": d, "warmup": 1.0},
            "loop blocked: ≈ 1 / 50 ms",
        ),
    ]


def _cmd_demo(args: argparse.Namespace) -> int:
    scenarios = demo_scenarios(args.scale)
    rows: list[tuple[Scenario, StormResult]] = []
    print(f"pytest-storm demo — {machine_line()}; each endpoint waits 50 ms on I/O")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConcurrencyWarning)
        for scenario in scenarios:
            app = load_app(scenario.app)
            plan = plan_storm(app, "GET", scenario.path, layers=[Layer("demo", scenario.params)])
            plan.app_name = scenario.app
            print(
                f"  storming {scenario.framework} {scenario.path} ({scenario.params['users']} users) …",
                flush=True,
            )
            result = run_plan(plan)
            warn_about(result)
            rows.append((scenario, result))
    table = demo_table(rows)
    print()
    print(table)
    notes = sorted({str(w.message) for w in caught})
    for note in notes:
        print(f"note: {note}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    markdown = [
        f"# pytest-storm demo, {stamp}",
        "",
        f"Machine: {machine_line()}.",
        "",
        "```",
        table,
        "```",
        "",
    ]
    markdown += [f"- {note}" for note in notes]
    (out / "demo.md").write_text("\n".join(markdown) + "\n", encoding="utf-8")
    _write_json(str(out / "demo.json"), [r for _, r in rows], {"date": stamp})
    print(f"\nwrote {out / 'demo.md'} and {out / 'demo.json'}")
    return 0


def demo_table(rows: Sequence[tuple[Scenario, StormResult]]) -> str:
    """The demo's comparison: framework, endpoint, server model, figures and the model's expectation."""
    header = (
        "framework",
        "endpoint",
        "served by",
        "users",
        "rps",
        "p50 ms",
        "p99 ms",
        "queue p99 ms",
        "expected",
    )
    table: list[tuple[str, ...]] = [header]
    for scenario, r in rows:
        queue = format_number(r.queue_wait.p99) if r.queue_wait is not None else "-"
        table.append(
            (
                scenario.framework,
                scenario.path,
                f"{r.interface}, {r.server}",
                f"{r.users:,}",
                format_number(round(r.throughput)),
                format_number(r.latency.p50),
                format_number(r.latency.p99),
                queue,
                scenario.expect,
            )
        )
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    numeric = {3, 4, 5, 6, 7}
    return "\n".join(
        "  ".join(
            c.rjust(widths[i]) if i in numeric else c.ljust(widths[i]) for i, c in enumerate(row)
        ).rstrip()
        for row in table
    )


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``pytest-storm``."""
    parser = argparse.ArgumentParser(
        prog="pytest-storm", description=__doc__.splitlines()[0] if __doc__ else None
    )
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="storm one app and print its figures")
    run.add_argument("app", help="MODULE:APP or path/to/file.py:APP")
    _add_storm_options(run)
    run.set_defaults(func=_cmd_run)
    compare = sub.add_parser("compare", help="storm several apps the same way, side by side")
    compare.add_argument("apps", nargs="+", help="MODULE:APP or path/to/file.py:APP")
    _add_storm_options(compare)
    compare.set_defaults(func=_cmd_compare)
    demo = sub.add_parser(
        "demo", help="compare the framework examples (run from the repository root)"
    )
    demo.add_argument(
        "--scale", type=float, default=1.0, help="scale storm durations (default 1.0)"
    )
    demo.add_argument("--out", default="reports", help="directory for demo.md and demo.json")
    demo.set_defaults(func=_cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``pytest-storm`` command."""
    args = build_parser().parse_args(argv)
    try:
        code: int = args.func(args)
    except (ConfigError, StormError) as exc:
        print(f"pytest-storm: {exc}", file=sys.stderr)
        return 2
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
