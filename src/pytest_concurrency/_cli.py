"""``pytest-storm``: ad hoc storms, side-by-side comparisons, capacity searches and the demo.

    pytest-storm run examples/fastapi_app.py:app --path /io --users 200
    pytest-storm compare examples/fastapi_app.py:app examples/flask_app.py:app --path /io
    pytest-storm capacity examples/flask_app.py:app --method POST --path /llm \\
        --body-json '{"prompt": "hi"}' --upstream 'http://model-server/generate=lognormal:80:200' \\
        --upstream-json '{"text": "Hello!", "tokens": 3}' --users 50 --budget p99_ms=500
    pytest-storm demo [--quick]

It uses the same engine, budgets and tables as the pytest plugin. Every storm runs with
an in-process upstream installed: the app's own httpx calls are answered by the
``--upstream`` routes, and a call to any other host fails inside the app instead of
reaching the network.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import subprocess
import sys
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ._api import plan_capacity, run_capacity
from ._apps import load_app as _load_app
from ._engine.plan import plan_storm
from ._engine.storm import run_plan
from ._errors import ConcurrencyWarning, ConfigError, StormError
from ._fidelity import line_up
from ._model.remarks import contention_summary, is_contention_note
from ._model.result import StormResult
from ._params import BUDGET_NAMES, Layer, budget_limit, resolve
from ._report._csv import csv_paths, write_csv
from ._report._fidelity import fidelity_table
from ._report._json import ensure_writable, machine_info
from ._report._json import write_json as _write_json
from ._report._text import failure_lines, format_number, side_by_side, verdict_table
from ._report._text import machine_line as describe_machine
from ._simio import (
    Latency,
    Upstream,
    as_latency,
    constant,
    exponential,
    lognormal,
    normal,
    uniform,
)
from ._spec.table import PARAMS, Param
from ._workload import Request, split_requests

__all__ = ["build_parser", "load_app", "machine_line", "main", "side_by_side"]

#: Exit status for bad input (argparse's own, so every usage error looks the same).
USAGE_ERROR = 2
#: Exit status after Ctrl-C (128 + SIGINT), as shells report it.
INTERRUPTED = 130


def load_app(spec: str) -> Any:
    """Import ``module:attr`` or ``path/to/file.py:attr`` and return the app object."""
    return _load_app(spec, origin="the command line", search_cwd=True)


# -- option parsing --------------------------------------------------------------------------


def cli_params() -> list[Param]:
    """The parameters with a flag ``--NAME`` (their rows in ``_spec.table``)."""
    return [row for row in PARAMS.values() if row.cli is not None]


def _budget(text: str) -> tuple[str, float]:
    name, sep, value = text.partition("=")
    if not sep or name not in BUDGET_NAMES:
        raise argparse.ArgumentTypeError(
            f"{text!r}: expected NAME=VALUE with NAME one of {', '.join(BUDGET_NAMES)}"
        )
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: {value!r} is not a number") from None
    try:
        return name, budget_limit(name, number, f"--budget {text}")
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _worker_range(text: str) -> list[int]:
    """``8``, ``1-64`` or ``1,2,4,8`` as a list of worker counts."""
    try:
        counts: list[int] = []
        for part in text.split(","):
            low, dash, high = part.strip().partition("-")
            counts += range(int(low), int(high) + 1) if dash else [int(low)]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r}: expected a count (8), a range (1-64) or a list (1,2,4,8)"
        ) from None
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: worker counts must be at least 1")
    return counts


_DISTRIBUTIONS = {
    "constant": (constant, 1),
    "uniform": (uniform, 2),
    "normal": (normal, 2),
    "lognormal": (lognormal, 2),
    "exponential": (exponential, 1),
}


def _latency(text: str) -> Latency:
    name, _, rest = text.partition(":")
    if name not in _DISTRIBUTIONS:
        try:
            value: float | str = float(text)
        except ValueError:
            value = text
        try:
            # As in Python: a bare number below 1 is refused, a number with its unit is not.
            return as_latency(value)
        except ConfigError as exc:
            detail = str(exc) if isinstance(value, float) else "expected milliseconds (80)"
            raise argparse.ArgumentTypeError(
                f"latency {text!r}: {detail}, a number with its unit ('0.05s') or "
                f"{'|'.join(_DISTRIBUTIONS)}:MS[:MS], e.g. lognormal:80:200"
            ) from None
    make, count = _DISTRIBUTIONS[name]
    try:
        values = [float(v) for v in rest.split(":")] if rest else []
    except ValueError:
        values = []
    if len(values) != count:
        raise argparse.ArgumentTypeError(f"latency {text!r}: {name} takes {count} number(s) of ms")
    try:
        made: Latency = make(*values)  # type: ignore[operator]
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(f"latency {text!r}: {exc}") from None
    return made


def _header(text: str) -> tuple[str, str]:
    name, sep, value = text.partition(":")
    if not sep or not name.strip():
        raise argparse.ArgumentTypeError(f"{text!r}: expected 'Name: value'")
    return name.strip(), value.strip()


def _upstream(text: str) -> tuple[str, Latency]:
    url, sep, latency = text.rpartition("=")
    if not sep or not url.startswith(("http://", "https://")):
        raise argparse.ArgumentTypeError(
            f"{text!r}: expected URL=LATENCY, e.g. http://model-server/generate=lognormal:80:200"
        )
    return url, _latency(latency)


def _json_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"{text!r} is not JSON: {exc}") from None


def _add_storm_options(parser: argparse.ArgumentParser, *, workers: bool = True) -> None:
    parser.add_argument("--method", default="GET")
    parser.add_argument("--path", default="/")
    parser.add_argument("--body-json", type=_json_value, dest="body_json", metavar="JSON")
    parser.add_argument(
        "--header",
        type=_header,
        action="append",
        default=[],
        metavar="'NAME: VALUE'",
        help="a request header (repeat for more)",
    )
    for row in cli_params():
        if row.name == "workers" and not workers:
            continue
        flag = row.cli
        assert flag is not None
        parser.add_argument(
            "--" + row.name.replace("_", "-"),
            dest=row.name,
            type=flag.type,
            help=flag.help,
            choices=flag.choices,
            metavar=flag.metavar,
            action="append" if flag.repeat else "store",
            default=[] if flag.repeat else None,
        )
    parser.add_argument("--budget", type=_budget, action="append", default=[], metavar="NAME=VALUE")
    parser.add_argument(
        "--upstream",
        type=_upstream,
        action="append",
        default=[],
        metavar="URL=LATENCY",
        help="answer the app's httpx calls to URL after LATENCY (80, lognormal:80:200, …)",
    )
    parser.add_argument(
        "--upstream-json",
        type=_json_value,
        dest="upstream_json",
        default={},
        metavar="JSON",
        help="body every --upstream route answers with (default {})",
    )
    parser.add_argument("--json", metavar="PATH", help="write the results as JSON")
    parser.add_argument(
        "--html",
        metavar="PATH",
        help="write a self-contained HTML report (needs pip install 'pytest-storm[html]')",
    )
    parser.add_argument(
        "--csv",
        metavar="PREFIX",
        help="write Locust-style PREFIX_stats.csv and PREFIX_stats_history.csv",
    )


def _params(args: argparse.Namespace, *, workers: bool = True) -> dict[str, Any]:
    rows = [row for row in cli_params() if workers or row.name != "workers"]
    # A capacity search sets the worker count itself (its --workers lists candidates).
    params = {row.name: getattr(args, row.name, None) for row in rows}
    for row in rows:
        if row.cli is not None and row.cli.repeat:
            # A repeated flag's values join as one comma-separated value (none: not set).
            params[row.name] = ",".join(params[row.name] or []) or None
    params = {name: value for name, value in params.items() if value is not None}
    if args.body_json is not None:
        params["json"] = args.body_json
    if args.header:
        params["headers"] = dict(args.header)
    params.update(dict(args.budget))
    return params


@contextmanager
def _upstreams(args: argparse.Namespace) -> Iterator[Upstream]:
    with Upstream() as upstream:
        for url, latency in args.upstream:
            upstream.route(url, latency=latency, json=args.upstream_json)
        yield upstream


def _storm(app_spec: str, args: argparse.Namespace, server: str | None = None) -> StormResult:
    params = _params(args)
    if server is not None:
        params["server"] = server
    app: Any = load_app(app_spec)
    if params.get("server", "inprocess") != "inprocess":
        # A real server is handed the name, unchanged: its process loads it with the same
        # loader (a path/to/file.py:APP spec included).
        app = app_spec
    plan = plan_storm(app, args.method, args.path, layers=[Layer("command line", params)])
    return run_plan(dataclasses.replace(plan, app_name=app_spec))


def _notes(results: Sequence[StormResult], *, in_table: bool = False) -> None:
    """Print each storm's warnings and notes once, on stderr, in the command line's words.

    *in_table*: the verdict table printed for the storm already says what failed (any
    failed request fails a storm without an error budget, under ``max_error_rate``).
    """
    seen: set[str] = set()
    # The machine kept storms waiting for a CPU: one line for all of them (see storm_notes).
    contended = [n for r in results for n in r.notes if is_contention_note(n)]
    if len(contended) > 1:
        shares = [r.cpu_contention.wait_share if r.cpu_contention else None for r in results]
        known = [x for x in shares if x is not None]
        print(f"note: {contention_summary(len(contended), known)}", file=sys.stderr)
    for result in results:
        notes = [n for n in result.notes if len(contended) < 2 or not is_contention_note(n)]
        messages = [*result.warnings, *(f"note: {n}" for n in notes)]
        if result.failed and not in_table:
            messages.extend(failure_lines(result.to_dict(histograms=False)))
        for message in messages:
            hint = (
                " (on the command line: --upstream URL=LATENCY)"
                if "upstream.route" in message
                else ""
            )
            line = f"note: {result.app}: {message}{hint}"
            if line not in seen:
                seen.add(line)
                print(line, file=sys.stderr)


def _storms_doc(results: Sequence[StormResult]) -> dict[str, Any]:
    return {"machine": machine_info(), "storms": [r.to_dict() for r in results]}


def machine_line() -> str:
    """Python, OS and core count of this machine, for reports."""
    return describe_machine(machine_info())


# -- commands ----------------------------------------------------------------------------------


def _check_reports(args: argparse.Namespace) -> None:
    """Every report file asked for must be writable before any storm is fired."""
    if getattr(args, "html", None) and importlib.util.find_spec("plotly") is None:
        raise ConfigError(
            f"--html {args.html!r} needs plotly, which is not installed: "
            "pip install 'pytest-storm[html]'"
        )
    targets = [
        (f"--{name} {getattr(args, name)!r}", getattr(args, name)) for name in ("json", "html")
    ]
    if getattr(args, "csv", None):
        targets += [(f"--csv {args.csv!r}", path) for path in csv_paths(args.csv)]
    for option, path in targets:
        if not path:
            continue
        try:
            ensure_writable(path)
        except OSError as exc:
            raise ConfigError(
                f"{option} (from the command line): cannot write {Path(path).resolve()}: "
                f"{exc.strerror or exc}"
            ) from None


def _write_reports(args: argparse.Namespace, results: Sequence[StormResult]) -> None:
    rows = [(str(r.app), r) for r in results]
    if args.html:
        from ._report._html import write_html

        write_html(args.html, rows, title="pytest-storm report", machine=machine_info())
    if args.csv:
        write_csv(args.csv, rows)


def _cmd_run(args: argparse.Namespace) -> int:
    _check_reports(args)
    with _upstreams(args):
        result = _storm(args.app, args)
    # The table shows the storm's failures; its warnings and notes go to stderr, once.
    _notes([result], in_table=True)
    print(verdict_table(result, indent="", remarks=False))
    print(side_by_side([result]))
    if args.json:
        _write_json(args.json, _storms_doc([result]))
    _write_reports(args, [result])
    return 0 if result.passed else 1


def _cmd_compare(args: argparse.Namespace) -> int:
    _check_reports(args)
    results: list[StormResult] = []
    servers = [s.strip() for s in args.server.split(",")] if args.server else [None]
    fidelities = []
    try:
        with _upstreams(args):
            for spec in args.apps:
                by_server: dict[str, StormResult] = {}
                for server in servers:
                    result = _storm(spec, args, server)
                    results.append(result)
                    by_server[server or "inprocess"] = result
                if len(by_server) > 1 and "inprocess" in by_server:
                    fidelities.append((spec, line_up(by_server)))
    except KeyboardInterrupt:
        if results:
            # What the finished storms measured is still worth seeing.
            print(side_by_side(results))
        raise
    _notes(results)
    print(side_by_side(results))
    for spec, fidelity in fidelities:
        print(f"\n{spec}: in-process against real servers")
        print(fidelity_table(fidelity))
    if args.json:
        _write_json(args.json, _storms_doc(results))
    _write_reports(args, results)
    return 0 if all(r.passed for r in results) else 1


def _cmd_capacity(args: argparse.Namespace) -> int:
    _check_reports(args)
    app: Any = load_app(args.app)
    mix, params = split_requests(None, _params(args, workers=False))
    if params.get("server", "inprocess") != "inprocess":
        app = args.app  # handed to the server unchanged, as for run
    plan = plan_capacity(
        app, args.method, args.path, mix, args.workers, [Layer("command line", params)]
    )
    plan = dataclasses.replace(plan, base=dataclasses.replace(plan.base, app_name=args.app))
    print(
        f"capacity of {args.app} {plan.base.label}: smallest of {len(plan.candidates)} worker "
        "count(s) that meets "
        + ", ".join(f"{k}={format_number(v)}" for k, v in plan.budgets.items()),
        flush=True,
    )
    tried: list[StormResult] = []
    try:
        with _upstreams(args):
            found = run_capacity(plan, on_trial=tried.append)
    except KeyboardInterrupt:
        if tried:
            # What the finished storms measured is still worth seeing, as in compare.
            print(side_by_side(tried))
        raise
    _notes(list(found.results.values()))
    print(found.table())
    if args.json:
        _write_json(args.json, {"machine": machine_info(), "capacity": found.to_dict()})
    _write_reports(args, list(found.results.values()))
    return 0 if found.best is not None else 1


def _cmd_locust(args: argparse.Namespace) -> int:
    """Write the storm as a locustfile; with --host, run it with Locust and judge the budgets."""
    from ._engine.storm import judge_budgets
    from ._locust import build_locustfile, locust_available, read_back, run_locust

    params = _params(args)
    # Every flag is validated by its row of the parameter table, as for any other storm.
    config = resolve([Layer("command line", params)])
    request = Request(
        method=args.method,
        path=args.path,
        headers=dict(args.header) if args.header else None,
        json=args.body_json,
    )
    request.validate("command line")
    locustfile = build_locustfile(
        [request],
        users=config.users if "users" in params else 10,
        duration=config.duration if "duration" in params and config.duration else 10.0,
        think_ms=config.think_ms if "think_ms" in params else None,
        stages=config.stages,
        timeout_ms=config.timeout_ms if "timeout_ms" in params else None,
        origin="command line",
    )
    path = locustfile.write(args.out)
    print(f"wrote {path} (a plain locustfile: {', '.join(locustfile.endpoints)})")
    print(f"  one machine:  locust -f {path} --headless --host URL --processes N")
    print(f"  many:         locust -f {path} --headless --host URL --master --expect-workers N")
    print(f"  each worker:  locust -f {path} --worker --master-host MASTER_HOST")
    if not args.host:
        return 0
    if not locust_available():
        raise ConfigError(
            "--host runs Locust, which is not installed: pip install 'pytest-storm[locust]'"
        )
    run = run_locust(
        locustfile,
        args.host,
        processes=args.processes_run,
        expect_workers_from_elsewhere=args.expect_workers,
    )
    result = read_back(run, label=request.label)
    # Judged as any storm (engine="locust" among them): a failed request fails a storm
    # that set no error budget.
    result.budgets = dict(args.budget)
    result.verdicts = judge_budgets(result, result.budgets)
    _notes([result], in_table=True)
    print(verdict_table(result, indent="", remarks=False))
    print(side_by_side([result]))
    return 0 if result.passed else 1


def _cmd_demo(args: argparse.Namespace) -> int:
    # The demo is the repository's examples/claims package, not part of the wheel. A fresh
    # interpreter in the checkout runs the checkout's examples, whatever this one imported.
    root = Path.cwd()
    if not (root / "examples" / "claims" / "__main__.py").is_file():
        raise ConfigError(
            f"the demo lives in the repository's examples/claims (it is not installed with "
            f"pytest-storm), and {root} has no examples/claims: run `pytest-storm demo` from "
            "the repository root, or `python -m examples.claims` there"
        )
    argv = [sys.executable, "-m", "examples.claims", "--out", args.out]
    argv += ["--quick"] if args.quick else []
    return subprocess.run(argv, cwd=root, check=False).returncode


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
    compare = sub.add_parser(
        "compare",
        help="storm several apps (or one app under several --server) the same way, side by side",
    )
    compare.add_argument("apps", nargs="+", help="MODULE:APP or path/to/file.py:APP")
    _add_storm_options(compare)
    compare.set_defaults(func=_cmd_compare)
    locust = sub.add_parser(
        "locust",
        help="write the storm as a locustfile for many machines; with --host, run it with Locust",
    )
    _add_storm_options(locust)
    locust.add_argument(
        "--out", default="storm_locustfile.py", help="where to write the locustfile"
    )
    locust.add_argument("--host", help="run it now against this server (a URL it can reach)")
    locust.add_argument(
        "--workers-here",
        dest="processes_run",
        type=int,
        default=0,
        help="with --host: local Locust workers (0: one process, no master)",
    )
    locust.add_argument(
        "--expect-workers",
        action="store_true",
        help="with --host: a master that waits for --workers-here workers from other machines",
    )
    locust.set_defaults(func=_cmd_locust)
    cap = sub.add_parser(
        "capacity", help="smallest WSGI worker count that meets the budgets (bisection)"
    )
    cap.add_argument("app", help="MODULE:APP or path/to/file.py:APP")
    _add_storm_options(cap, workers=False)
    cap.add_argument(
        "--workers",
        type=_worker_range,
        default=_worker_range("1-64"),
        help="candidate worker counts: 1-64 (default), 8, or 1,2,4,8",
    )
    cap.set_defaults(func=_cmd_capacity)
    demo = sub.add_parser(
        "demo",
        help="measure popular framework claims on the examples (run from the repository root)",
    )
    demo.add_argument(
        "--quick", action="store_true", help="smaller scales and shorter storms (under a minute)"
    )
    demo.add_argument("--out", default="reports", help="directory for claims.md and claims.json")
    demo.set_defaults(func=_cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``pytest-storm`` command; returns the exit status."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # argparse has printed the usage error (or --help)
        return exc.code if isinstance(exc.code, int) else USAGE_ERROR
    try:
        with warnings.catch_warnings():
            # The storms' caveats are printed as notes in the command line's words.
            warnings.simplefilter("ignore", ConcurrencyWarning)
            code: int = args.func(args)
    except (ConfigError, StormError) as exc:
        print(f"pytest-storm: {exc}", file=sys.stderr)
        return USAGE_ERROR if isinstance(exc, ConfigError) else 1
    except KeyboardInterrupt:
        # The engine has stopped its users, threads and patches on the way out.
        print(
            f"pytest-storm {args.command}: interrupted (Ctrl-C) before the storm finished; "
            "nothing more was measured",
            file=sys.stderr,
        )
        return INTERRUPTED
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
