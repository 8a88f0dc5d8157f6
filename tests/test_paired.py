"""The paired control/experiment mode: statistics, verdicts, wording, reports, and real sessions."""

from __future__ import annotations

import html
import json
import math
import random
import subprocess
from pathlib import Path

import pytest

from pytest_concurrency._compare.paired import (
    Child,
    Children,
    PairedOutcome,
    could_settle,
    live_children,
    run_paired,
)
from pytest_concurrency._compare.spec import ChildSpec
from pytest_concurrency._compare.stats import (
    MIN_PAIRS,
    PairedChange,
    paired_change,
    projected_half_width,
    signed_rank_cdf,
)
from pytest_concurrency._compare.verdict import (
    LINE_LIMIT,
    judge,
    parse_thresholds,
    storm_verdict,
    verdict_line,
)
from pytest_concurrency._errors import ConfigError
from pytest_concurrency._model.extras import Comparison, ContentionFigures
from pytest_concurrency._model.result import StormResult
from pytest_concurrency._report import _json
from pytest_concurrency._report._markdown import SummaryRow, markdown_summary
from pytest_concurrency._report._schema import first_problem
from tests.test_report import make_result

pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestAssertRewriteWarning")

THRESHOLDS = parse_thresholds("p99:10%,rps:10%", origin="--concurrency-compare-fail")


# -- statistics ---------------------------------------------------------------------------


def test_signed_rank_null_distribution_is_exact() -> None:
    # T+ is the sum of the ranks with a positive sign: n = 5, only the empty set sums to 0;
    # n = 6, the sets {}, {1}, {2} sum to at most 2; n = 7, {}, {1}, {2}, {3}, {1, 2} to 3.
    assert signed_rank_cdf(5, 0) == 1 / 32
    assert signed_rank_cdf(6, 2) == 3 / 64
    assert signed_rank_cdf(7, 3) == 5 / 128
    assert signed_rank_cdf(4, 10) == 1.0
    # Symmetric: P(T+ <= t) = P(T+ >= n(n+1)/2 - t).
    for n in (5, 8, 11):
        top = n * (n + 1) // 2
        for t in range(top):
            assert math.isclose(signed_rank_cdf(n, t), 1 - signed_rank_cdf(n, top - t - 1))


def test_too_few_pairs_settle_nothing() -> None:
    change = paired_change([1.0] * (MIN_PAIRS - 1), [2.0] * (MIN_PAIRS - 1))
    assert change is not None
    assert change.ratio == pytest.approx(2.0)
    assert (change.low, change.high) == (0.0, math.inf)
    assert judge(THRESHOLDS[0], change).verdict == "inconclusive"


def test_interval_of_six_pairs_spans_their_ratios() -> None:
    control = [100.0, 100.0, 100.0, 100.0, 100.0, 100.0]
    experiment = [118.0, 121.0, 120.0, 125.0, 119.0, 122.0]
    change = paired_change(control, experiment)
    assert change is not None
    assert change.confidence == pytest.approx(1 - 2 / 64)
    assert change.low == pytest.approx(1.18)
    assert change.high == pytest.approx(1.25)
    assert change.ratio == pytest.approx(1.205, abs=0.01)


def test_identical_rounds_are_never_regressed() -> None:
    rng = random.Random(7)
    for n in range(MIN_PAIRS, 16):
        same = [rng.lognormvariate(0, 0.3) for _ in range(n)]
        for threshold in THRESHOLDS:
            verdict = judge(threshold, paired_change(same, list(same))).verdict
            assert verdict == "unchanged"


@pytest.mark.parametrize("noise", [0.02, 0.1, 0.5])
def test_noise_alone_is_rarely_regressed_and_never_beyond_the_interval_error(
    noise: float,
) -> None:
    # The same code under the machine's noise (a drift shared by the pair, and each
    # side's own): "regressed" needs the whole 95 % interval past the threshold, so it
    # is at most the interval's one-sided error, 2.5 %, and far rarer with small noise.
    rng = random.Random(int(noise * 1000))
    runs = 2000
    regressed = 0
    for _ in range(runs):
        n = rng.randint(MIN_PAIRS, 12)
        drift = [rng.lognormvariate(0, 0.3) for _ in range(n)]
        control = [d * rng.lognormvariate(0, noise) for d in drift]
        experiment = [d * rng.lognormvariate(0, noise) for d in drift]
        regressed += judge(THRESHOLDS[1], paired_change(control, experiment)).verdict == "regressed"
    assert regressed <= runs * 0.025
    if noise <= 0.1:
        assert regressed == 0


def test_a_doubled_cpu_time_is_always_regressed() -> None:
    rng = random.Random(11)
    cpu = parse_thresholds("p99:10%", origin="x")[0]
    assert cpu.figure == "cpu"
    assert cpu.amount == 10.0
    for _ in range(500):
        n = rng.randint(MIN_PAIRS, 12)
        drift = [rng.lognormvariate(0, 0.3) for _ in range(n)]
        control = [1000 * d * rng.lognormvariate(0, 0.05) for d in drift]
        experiment = [2000 * d * rng.lognormvariate(0, 0.05) for d in drift]
        assert judge(cpu, paired_change(control, experiment)).verdict == "regressed"
        # Throughput halves: worse, whatever its direction.
        rps = next(t for t in THRESHOLDS if t.figure == "rps")
        assert judge(rps, paired_change(experiment, control)).verdict == "regressed"


def test_unmeasured_pairs_are_left_out() -> None:
    change = paired_change([1.0, math.nan, 0.0, 1.0], [1.1, 1.0, 1.0, math.nan])
    assert change is not None
    assert change.pairs == 1
    assert paired_change([math.nan], [1.0]) is None
    assert judge(THRESHOLDS[0], None).verdict == "unmeasured"


def _inconclusive(ratio: float, low: float, high: float) -> object:
    change = PairedChange(6, ratio, low, high, 0.97, 100.0, 100.0 * ratio)
    found = judge(THRESHOLDS[1], change)  # p99:10%
    assert found.verdict == "inconclusive"
    return found


def test_rounds_stop_when_the_noise_cannot_settle_within_the_cap() -> None:
    # An interval of ±15 % around no change halves by four times the pairs: inside 10 %.
    narrowing = _inconclusive(1.0, 0.85, 1.15)
    assert could_settle(narrowing, 6, 24)  # type: ignore[arg-type]
    assert not could_settle(narrowing, 6, 8)  # type: ignore[arg-type]
    # A change right at the threshold never settles, however many pairs.
    assert not could_settle(_inconclusive(1.1, 0.9, 1.3), 6, 600)  # type: ignore[arg-type]
    # Throughput: worse is lower.
    rps = judge(THRESHOLDS[2], PairedChange(6, 0.7, 0.5, 0.95, 0.97, 100.0, 70.0))
    assert rps.verdict == "inconclusive"
    assert could_settle(rps, 6, 60)


# -- thresholds and wording ---------------------------------------------------------------


def test_thresholds_add_cpu_at_the_tightest_relative_amount() -> None:
    found = parse_thresholds("rps:5%,p99:10%,mean:3ms", origin="--concurrency-compare-fail")
    assert [(t.figure, t.amount, t.relative) for t in found] == [
        ("cpu", 5.0, True),
        ("p99", 10.0, True),
        ("mean", 3.0, False),
        ("rps", 5.0, True),
    ]
    own = parse_thresholds("cpu:20%,blocking:50%", origin="o")
    assert [(t.figure, t.amount) for t in own] == [("cpu", 20.0), ("blocking", 50.0)]


@pytest.mark.parametrize(
    ("expr", "message"),
    [
        ("cpu:5ms", r"o='cpu:5ms': cpu is judged relative to the control: write cpu:N%"),
        ("cpu:lots%", r"'lots%' for cpu is not an amount"),
        ("p99:lots", r"'lots' for p99 is not an amount"),
    ],
)
def test_bad_thresholds_name_the_item(expr: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_thresholds(expr, origin="o")


def _verdicts(ratio: float, n: int = 6) -> list:  # type: ignore[type-arg]
    rng = random.Random(3)
    control = [100 * rng.lognormvariate(0, 0.01) for _ in range(n)]
    experiment = [c * ratio for c in control]
    return [judge(t, paired_change(control, experiment)) for t in THRESHOLDS]


def test_verdict_line_is_one_short_line() -> None:
    line = verdict_line(
        _verdicts(2.0), against="control main (1a2b3c4d5)", pairs=6, ended="settled"
    )
    assert line.startswith("regressed vs control main (1a2b3c4d5): cpu +100.0% [")
    assert line.endswith("; 6 pairs, settled")
    assert len(line) <= LINE_LIMIT
    long = verdict_line(
        _verdicts(1.0) * 6, against="control " + "x" * 120, pairs=6, ended="time cap 8.0 s"
    )
    assert len(long) <= LINE_LIMIT
    assert storm_verdict(_verdicts(1.0)) == "unchanged"


def _outcome(ratio: float) -> PairedOutcome:
    return PairedOutcome("control main (1a2b3c4d5)", _verdicts(ratio), 6, "settled", 4.2, "ABBAAB")


def test_comparison_block_validates_against_the_schema() -> None:
    from tests.test_report import three_storms, validate

    records = three_storms()
    block = {**_outcome(2.0).to_dict(), "fails": True}
    records[0][1].comparison = Comparison.from_dict(block)  # type: ignore[union-attr]
    doc = _json.session_document(records, machine=_json.machine_info())
    json.loads(json.dumps(doc, allow_nan=False))
    assert validate(doc, _json.JSON_SCHEMA, _json.JSON_SCHEMA) == []
    assert first_problem(doc) is None
    storm = doc["storms"][0]
    assert storm["comparison"]["verdict"] == "regressed"
    assert storm["comparison"]["figures"][0]["figure"] == "cpu"
    assert "comparison" not in storm["extras"]
    storm["comparison"]["pairs"] = -1
    assert any("comparison" in e for e in validate(doc, _json.JSON_SCHEMA, _json.JSON_SCHEMA))
    assert first_problem(doc) is not None


MARKDOWN = """\
### pytest-storm: storms vs control main (1a2b3c4d5)

1 regressed, 1 inconclusive, 1 unchanged

| verdict | test | storm | change |
|---|---|---|---|
| ❌ regressed | `tests/test_api.py::test_cpu` | GET /cpu | cpu +21.4% [+15.2%, +27.9%] >+10.0%; 6 pairs, settled |
| ❔ inconclusive | `tests/test_api.py::test_io` | GET /io | p99 +3.0% [−9.0%, +16.0%] (noise); 12 pairs, time cap 8.0 s |
| ✅ unchanged | `tests/test_api.py::test_a\\|b` | GET /a | cpu −0.4% [−1.9%, +1.1%]; 5 pairs, settled |
"""


def test_markdown_summary_verbatim() -> None:
    rows = [
        SummaryRow(
            "unchanged", "tests/test_api.py::test_a|b", "GET /a",
            "cpu −0.4% [−1.9%, +1.1%]; 5 pairs, settled",
        ),
        SummaryRow(
            "regressed", "tests/test_api.py::test_cpu", "GET /cpu",
            "cpu +21.4% [+15.2%, +27.9%] >+10.0%; 6 pairs, settled",
        ),
        SummaryRow(
            "inconclusive", "tests/test_api.py::test_io", "GET /io",
            "p99 +3.0% [−9.0%, +16.0%] (noise); 12 pairs, time cap 8.0 s",
        ),
    ]  # fmt: skip
    assert markdown_summary("pytest-storm: storms vs control main (1a2b3c4d5)", rows) == MARKDOWN


# -- real sessions ------------------------------------------------------------------------

APP = """
import time

MS = {ms}


def burn(ms):
    end = time.thread_time() + ms / 1000
    while time.thread_time() < end:
        pass


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    burn(MS)
    await send({{"type": "http.response.start", "status": 200, "headers": []}})
    await send({{"type": "http.response.body", "body": b"ok"}})
"""

TEST = """
import pytest
from cpu_app import app

@pytest.mark.concurrency(users=2, duration=1.0)
def test_cpu(storm):
    storm(app, "GET", "/")
"""

CLOSURE_TEST = """
def test_closure(storm):
    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    storm(app, "GET", "/", users=1, duration=0.5)
"""


@pytest.fixture
def session(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")
    return pytester


def _run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.runpytest("-p", "pytest_concurrency.plugin", "-p", "no:cacheprovider", *args)


def _control(pytester: pytest.Pytester, ms: float) -> None:
    (pytester.path / "control").mkdir()
    (pytester.path / "control" / "cpu_app.py").write_text(APP.format(ms=ms), encoding="utf-8")


def test_a_closure_is_an_error_before_any_load(session: pytest.Pytester) -> None:
    _control(session, 0.5)
    session.makepyfile(test_closure=CLOSURE_TEST)
    result = _run(session, "--concurrency-control=control")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "*ConfigError: --concurrency-control: the app <function test_closure.<locals>.app "
            "at *> cannot be imported by name, so the control cannot have its own version of "
            "it (a closure or an app built inside the test?)*"
        ]
    )
    result.stdout.no_fnmatch_line("*storms*=*")
    assert live_children() == []


def test_a_control_without_the_app_is_an_error_before_any_load(
    session: pytest.Pytester,
) -> None:
    (session.path / "control").mkdir()
    (session.path / "control" / "other.py").write_text("", encoding="utf-8")
    session.makepyfile(cpu_app=APP.format(ms=0.5), test_cpu=TEST)
    result = _run(session, "--concurrency-control=control")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "*ConfigError: --concurrency-control: the control 'control control' cannot import "
            "the app 'cpu_app:app': ConfigError: app='cpu_app:app' (from argument app): "
            "importing cpu_app failed: ModuleNotFoundError: No module named 'cpu_app'*"
        ]
    )
    result.stdout.no_fnmatch_line("*storms*=*")
    assert live_children() == []


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--concurrency-control=no-such-ref"],
            "ERROR: --concurrency-control='no-such-ref' (from command-line option "
            "--concurrency-control) is not a directory, and * is not in a git repository "
            "where it could be a ref",
        ),
        (
            ["--concurrency-control=control", "--concurrency-control-time=0"],
            "ERROR: --concurrency-control-time='0' (from command-line option "
            "--concurrency-control-time) must be a number of seconds greater than 0",
        ),
        (
            ["--concurrency-control=control", "--concurrency-control-order=interleaved"],
            "ERROR: --concurrency-control-order='interleaved' (from command-line option "
            "--concurrency-control-order) must be one of alternate, duet",
        ),
        (
            ["--concurrency-control=control", "--concurrency-compare-fail=cpu:5ms"],
            "ERROR: --concurrency-compare-fail='cpu:5ms': cpu is judged relative to the "
            "control: write cpu:N% (got '5ms')",
        ),
    ],
)
def test_bad_options_are_usage_errors(
    session: pytest.Pytester, args: list[str], message: str
) -> None:
    _control(session, 0.5)
    session.makepyfile(cpu_app=APP.format(ms=0.5), test_cpu=TEST)
    result = _run(session, *args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([message])


@pytest.mark.timing
def test_identical_code_passes_and_a_doubled_cpu_fails(session: pytest.Pytester) -> None:
    _control(session, 1.0)
    session.makepyfile(cpu_app=APP.format(ms=1.0), test_cpu=TEST)
    args = ["--concurrency-control=control", "--concurrency-compare-fail=p99:10%,rps:10%"]
    same = _run(session, *args, "--concurrency-json=same.json")
    same.assert_outcomes(passed=1)
    storm = json.loads((session.path / "same.json").read_text())["storms"][0]
    assert storm["comparison"]["verdict"] != "regressed"
    assert storm["comparison"]["pairs"] >= MIN_PAIRS
    assert live_children() == []

    session.makepyfile(cpu_app=APP.format(ms=2.0))
    slower = _run(session, *args, "--concurrency-markdown=summary.md")
    slower.assert_outcomes(failed=1)
    slower.stdout.fnmatch_lines(
        [
            "*storm GET / regressed: regressed vs control control: cpu +*",
            "*cpu: control * µs, experiment * µs (medians); threshold cpu:10%*",
            "*FAIL vs control*regressed: cpu +*",
        ]
    )
    summary = (session.path / "summary.md").read_text(encoding="utf-8")
    assert "| ❌ regressed | `test_cpu.py::test_cpu` | GET / | cpu +" in summary
    assert live_children() == []


def _git(cwd: Path, *args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=cwd, check=True, capture_output=True, text=True
    ).stdout


@pytest.mark.timing
def test_a_git_ref_is_checked_out_and_removed(session: pytest.Pytester) -> None:
    repo = session.path
    session.makepyfile(cpu_app=APP.format(ms=0.5), test_cpu=TEST)
    _git(repo, "init", "-q")
    _git(repo, "-c", "user.name=t", "-c", "user.email=t@t.invalid", "add", ".")
    _git(repo, "-c", "user.name=t", "-c", "user.email=t@t.invalid", "commit", "-qm", "control")
    result = _run(session, "--concurrency-control=HEAD", "--concurrency-json=out.json")
    result.assert_outcomes(passed=1)
    storm = json.loads((repo / "out.json").read_text())["storms"][0]
    assert storm["comparison"]["against"].startswith("control HEAD (")
    assert len(_git(repo, "worktree", "list").splitlines()) == 1


ASYNC_TEST = """
import pytest
from cpu_app import app

@pytest.fixture
def anyio_backend():
    return "asyncio"

@pytest.mark.anyio
async def test_async(storm):
    result = await storm.arun(app, "GET", "/", users=2, duration=0.5)
    assert result.extras["comparison"]["pairs"] >= 6
"""


@pytest.mark.timing
class _FakeChild:
    """A control or experiment process that answers at once, logging what it was asked."""

    def __init__(self, role: str, log: list[str]) -> None:
        self.role, self.log, self.alive = role, log, True

    def plan(self, spec: object) -> None:
        pass

    def receive(self, timeout: float) -> tuple[str, None]:
        return ("ready", None)

    def round(self, timeout: float) -> StormResult:
        self.start_round()
        return self.finish_round(timeout)

    def start_round(self) -> None:
        self.log.append(f"start {self.role}")

    def finish_round(self, timeout: float) -> StormResult:
        self.log.append(f"end {self.role}")
        result = make_result([10.0] * 50)
        result.cpu_contention = ContentionFigures(run_s=0.05)
        return result

    def stop(self) -> None:
        self.alive = False


class _FakeChildren(Children):
    def __init__(self, log: list[str]) -> None:
        super().__init__()
        self.log = log

    def get(self, role: str, spec: ChildSpec) -> Child:
        return _FakeChild(role, self.log)  # type: ignore[return-value]


@pytest.mark.parametrize("duet", [False, True])
def test_duet_starts_both_rounds_of_a_pair_before_either_ends(duet: bool) -> None:
    log: list[str] = []
    spec = ChildSpec(app="app:app", method="GET", path="/", requests=None, layers=[],
                     scale=None, sys_path=[])  # fmt: skip
    outcome = run_paired(
        _FakeChildren(log), spec, spec, thresholds=THRESHOLDS, against="control x",
        budget=60.0, option="--concurrency-control", round_timeout=5.0, duet=duet,
    )  # fmt: skip
    assert outcome.ended == "settled"
    pairs = outcome.pairs
    rounds = log[4:]  # after the two warm-up rounds
    if duet:
        first = ["start control", "start experiment", "end control", "end experiment"]
        second = ["start experiment", "start control", "end experiment", "end control"]
        assert outcome.order == "[AB]" * pairs
        assert any("rounds ran in duet" in note for note in outcome.notes)
    else:
        first = ["start control", "end control", "start experiment", "end experiment"]
        second = ["start experiment", "end experiment", "start control", "end control"]
        assert outcome.order == "".join("AB" if i % 2 == 0 else "BA" for i in range(pairs))
        assert not any("duet" in note for note in outcome.notes)
    assert rounds == [*first, *second] * (pairs // 2) + first * (pairs % 2)


def test_arun_runs_paired_too(session: pytest.Pytester) -> None:
    _control(session, 0.5)
    session.makepyfile(cpu_app=APP.format(ms=0.5), test_async=ASYNC_TEST)
    result = _run(session, "-p", "anyio", "--concurrency-control=control")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*vs control*", "*test_async.py::test_async*GET /*pass*"])
    assert live_children() == []


# The socket to the process stays open in a holder that outlives the parent, as it does
# mid-round: only the parent-death watch can end the process then.
KILLED_PARENT = """
import subprocess, sys, time
from pytest_concurrency._compare.paired import Child
child = Child("control")
holder = subprocess.Popen(["sleep", "30"], pass_fds=(child.conn.fileno(),))
print(child.process.pid, holder.pid, flush=True)
time.sleep(60)
"""


def test_processes_end_when_their_parent_is_killed() -> None:
    import contextlib
    import os
    import signal
    import sys
    import time

    parent = subprocess.Popen(
        [sys.executable, "-c", KILLED_PARENT], stdout=subprocess.PIPE, text=True
    )
    try:
        assert parent.stdout is not None
        pid, holder = (int(x) for x in parent.stdout.readline().split())
        os.kill(pid, 0)  # running
        parent.send_signal(signal.SIGKILL)
        parent.wait(10)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            with open(f"/proc/{pid}/stat") as fh:
                if fh.read().split()[2] == "Z":  # ended, not yet reaped by init
                    break
            time.sleep(0.05)
        else:
            os.kill(pid, signal.SIGKILL)
            raise AssertionError(f"process {pid} outlived its killed parent")
    finally:
        with contextlib.suppress(NameError, ProcessLookupError):
            os.kill(holder, signal.SIGKILL)
        if parent.poll() is None:
            parent.kill()
            parent.wait()
        if parent.stdout is not None:
            parent.stdout.close()


SERVER_TEST = """
from cpu_app import app

def test_server(storm):
    storm(app, "GET", "/", users=1, duration=0.5, server="uvicorn")
"""


def test_a_real_server_storm_is_an_error_before_any_load(session: pytest.Pytester) -> None:
    pytest.importorskip("uvicorn")
    _control(session, 0.5)
    session.makepyfile(cpu_app=APP.format(ms=0.5), test_server=SERVER_TEST)
    result = _run(session, "--concurrency-control=control")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "*ConfigError: --concurrency-control: a paired storm runs in-process with the "
            "native engine; this one has server='uvicorn' (from keyword argument) and "
            "engine='native' (from default)"
        ]
    )
    assert live_children() == []


BASELINE_TEST = """
from cpu_app import app

def test_cpu(storm):
    storm(app, "GET", "/", users=2, duration=0.3)
"""


def test_markdown_summary_of_a_saved_baseline_compare(session: pytest.Pytester) -> None:
    session.makepyfile(cpu_app=APP.format(ms=0.2), test_cpu=BASELINE_TEST)
    _run(session, "--concurrency-save=main").assert_outcomes(passed=1)
    result = _run(
        session,
        "--concurrency-compare=main",
        "--concurrency-compare-fail=p99:1000%",
        "--concurrency-markdown=out/summary.md",
    )
    result.assert_outcomes(passed=1)
    lines = (session.path / "out" / "summary.md").read_text(encoding="utf-8").splitlines()
    assert lines[:2] == ["### pytest-storm: storms vs baseline main", ""]
    assert lines[4:6] == ["| verdict | test | storm | change |", "|---|---|---|---|"]
    assert lines[6].startswith("| ")
    assert "| `test_cpu.py::test_cpu` | GET / | p99 " in lines[6]
    assert len(lines) == 7


LONG_TEST = """
from cpu_app import app

def test_long(storm):
    storm(app, "GET", "/", users=2, duration=60)
"""


def _children_of(parent: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if ppid == parent and b"pytest_concurrency._compare.child" in cmdline:
            found.append(int(entry.name))
    return found


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def test_ctrl_c_stops_both_processes_and_removes_the_worktree(tmp_path: Path) -> None:
    import os
    import signal
    import sys
    import time

    (tmp_path / "cpu_app.py").write_text(APP.format(ms=0.2), encoding="utf-8")
    (tmp_path / "test_long.py").write_text(LONG_TEST, encoding="utf-8")
    _git(tmp_path, "init", "-q")
    _git(tmp_path, "-c", "user.name=t", "-c", "user.email=t@t.invalid", "add", ".")
    _git(tmp_path, "-c", "user.name=t", "-c", "user.email=t@t.invalid", "commit", "-qm", "c")
    src = Path(__file__).resolve().parent.parent / "src"
    env = {**os.environ, "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1", "PYTHONPATH": str(src)}
    command = [sys.executable, "-m", "pytest", "-p", "pytest_concurrency.plugin"]
    command += ["-p", "no:cacheprovider", "-q", "--concurrency-control=HEAD"]
    with subprocess.Popen(
        command, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    ) as session:
        try:
            deadline = time.monotonic() + 60
            pids: list[int] = []
            while len(pids) < 2 and time.monotonic() < deadline:
                time.sleep(0.2)
                pids = _children_of(session.pid)
            assert len(pids) == 2, "the control and experiment processes did not start"
            assert len(_git(tmp_path, "worktree", "list").splitlines()) == 2
            time.sleep(1.0)  # into the rounds
            session.send_signal(signal.SIGINT)
            assert session.wait(timeout=30) == pytest.ExitCode.INTERRUPTED
        finally:
            if session.poll() is None:
                session.kill()
    assert not [pid for pid in pids if _alive(pid)]
    assert len(_git(tmp_path, "worktree", "list").splitlines()) == 1


IO_APP = """
import asyncio

async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    await asyncio.sleep(0.02)
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})
"""

IO_TEST = """
from io_app import app

def test_io(storm):
    storm(app, "GET", "/", users=2, duration=0.5)
"""


def test_cpu_of_an_idle_storm_is_judged_only_when_named(session: pytest.Pytester) -> None:
    (session.path / "control").mkdir()
    (session.path / "control" / "io_app.py").write_text(IO_APP, encoding="utf-8")
    session.makepyfile(io_app=IO_APP, test_io=IO_TEST)
    base = ["--concurrency-control=control", "--concurrency-json=out.json"]
    _run(session, *base, "--concurrency-compare-fail=p99:50%").assert_outcomes(passed=1)
    block = json.loads((session.path / "out.json").read_text())["storms"][0]["comparison"]
    assert [f["figure"] for f in block["figures"]] == ["p99"]
    assert block["notes"][0].startswith("CPU per request not judged: the storm's threads ran ")
    _run(session, *base, "--concurrency-compare-fail=p99:50%,cpu:500%").assert_outcomes(passed=1)
    block = json.loads((session.path / "out.json").read_text())["storms"][0]["comparison"]
    assert [f["figure"] for f in block["figures"]] == ["cpu", "p99"]
    assert block["notes"] == []


# -- the HTML card: the verdict is in every artifact -----------------------------------------

BLOCK = {
    "mode": "paired",
    "against": "control main (1a2b3c4d5)",
    "verdict": "regressed",
    "line": "regressed vs control main (1a2b3c4d5): cpu +21.4% [+15.2%, +27.9%] >+10.0%, "
    "p99 +3.0% [−9.0%, +16.0%] (noise); 8 pairs, noise too wide to settle within 12.0 s",
    "pairs": 8,
    "ended": "noise too wide to settle within 12.0 s",
    "seconds": 9.84,
    "order": "ABBAABBAABBAABBA",
    "fails": True,
    "notes": ["a note on the comparison"],
    "figures": [
        {
            "figure": "cpu",
            "unit": "µs",
            "stable": True,
            "threshold": "cpu:10%",
            "verdict": "regressed",
            "change": {
                "pairs": 8, "ratio": 1.214, "low": 1.152, "high": 1.279, "confidence": 0.9609,
                "control": 1002.5, "experiment": 1217.0,
            },
        },
        {
            "figure": "p99",
            "unit": "ms",
            "stable": False,
            "threshold": "p99:10%",
            "verdict": "inconclusive",
            "change": {
                "pairs": 8, "ratio": 1.03, "low": 0.91, "high": 1.16, "confidence": 0.9609,
                "control": 40.0, "experiment": 41.2,
            },
        },
    ],
}  # fmt: skip

CARD_ROWS = [
    "<tr><td>cpu</td><td class='num'>1,002.5 µs</td><td class='num'>1,217 µs</td>"
    "<td class='num'>+21.4%</td><td class='num'>[+15.2%, +27.9%] at 96%</td><td>cpu:10%</td>"
    "<td class='bad'>regressed</td></tr>",
    "<tr><td>p99</td><td class='num'>40 ms</td><td class='num'>41.2 ms</td>"
    "<td class='num'>+3.0%</td><td class='num'>[−9.0%, +16.0%] at 96%</td><td>p99:10%</td>"
    "<td>inconclusive: its interval straddles the threshold, and more pairs within "
    "the time budget could not narrow it enough</td></tr>",
]


def test_the_html_card_shows_each_figure_of_the_paired_comparison() -> None:
    from pytest_concurrency._report._html import comparison_card

    card = comparison_card(BLOCK)
    for row in CARD_ROWS:
        assert row in card
    assert "vs control main (1a2b3c4d5): <span class='bad'>regressed</span>" in card
    assert "8 pairs of rounds in the order ABBAABBAABBAABBA (A control, B experiment)" in card
    assert "<li>a note on the comparison</li>" in card


def test_a_paired_verdict_is_in_every_artifact() -> None:
    pytest.importorskip("plotly")
    from pytest_concurrency._compare.session import paired_rows
    from pytest_concurrency._report._html import render_html
    from pytest_concurrency._report._records import as_records
    from pytest_concurrency._report._terminal import storms_table
    from tests.test_report import make_result

    result = make_result([5.0 + i % 7 for i in range(400)])
    result.comparison = Comparison.from_dict(BLOCK)
    rows = [("tests/test_api.py::test_cpu", result)]
    # The terminal: the storms table's verdict and "vs control" columns.
    table = "\n".join(storms_table(rows))
    assert "FAIL vs control" in table
    assert "regressed: cpu +21.4%" in table
    # The JSON: the comparison block of the storm, read back as it was written.
    doc = json.loads(json.dumps(_json.session_document(rows, machine={"host": "h"})))
    assert doc["storms"][0]["comparison"]["verdict"] == "regressed"
    # The Markdown summary, from the live storm and from the document read back.
    for records in (as_records(rows), as_records([(s["nodeid"], s) for s in doc["storms"]])):
        (row,) = paired_rows(records)
        assert (row.verdict, row.change) == ("regressed", BLOCK["line"].partition(": ")[2])
    # The HTML: a failed storm, the summary's columns and the card.
    page = render_html(rows)
    assert "<span class='bad'>✗</span></h2>" in page
    assert (
        "<span class='bad'>FAIL vs control</span></td><td class='bad'>regressed: cpu +21.4%" in page
    )
    for row in CARD_ROWS:
        assert row in page


def test_a_saved_baseline_passes_identical_code_and_fails_a_doubled_cpu(
    session: pytest.Pytester,
) -> None:
    session.makepyfile(cpu_app=APP.format(ms=1.0), test_cpu=TEST)
    _run(session, "--concurrency-save=main").assert_outcomes(passed=1)
    args = ["--concurrency-compare=main", "--concurrency-compare-fail=p99_ms:10%,rps:10%"]
    same = _run(session, *args)
    same.assert_outcomes(passed=1)
    assert "regressed:" not in same.stdout.str()

    session.makepyfile(cpu_app=APP.format(ms=2.0))
    slower = _run(session, *args, "--concurrency-markdown=summary.md")
    slower.assert_outcomes(failed=1)
    slower.stdout.fnmatch_lines(["*regressed against baseline 'main'*", "*cpu grew from *µs to *"])
    summary = (session.path / "summary.md").read_text(encoding="utf-8")
    assert "| ❌ regressed | `test_cpu.py::test_cpu` | GET / |" in summary


def test_a_saved_baseline_verdict_is_in_every_artifact(session: pytest.Pytester) -> None:
    pytest.importorskip("plotly")
    session.makepyfile(cpu_app=APP.format(ms=1.0), test_cpu=TEST)
    _run(session, "--concurrency-save=main").assert_outcomes(passed=1)
    session.makepyfile(cpu_app=APP.format(ms=2.0))
    slower = _run(
        session,
        "--concurrency-compare=main",
        "--concurrency-compare-fail=p99_ms:10%,rps:10%",
        "--concurrency-json=out.json",
        "--concurrency-html=out.html",
        "--concurrency-markdown=summary.md",
    )
    slower.assert_outcomes(failed=1)
    # The JSON: the storm's comparison block, against the saved baseline, fits the schema.
    from tests.test_report import validate

    doc = json.loads((session.path / "out.json").read_text(encoding="utf-8"))
    assert validate(doc, _json.JSON_SCHEMA, _json.JSON_SCHEMA) == []
    assert first_problem(doc) is None
    block = doc["storms"][0]["comparison"]
    assert (block["mode"], block["against"], block["verdict"], block["fails"]) == (
        "saved",
        "baseline main",
        "regressed",
        True,
    )
    judged = {f["figure"]: f for f in block["figures"] if f["verdict"] is not None}
    assert judged["cpu"]["verdict"] == "regressed"
    assert judged["cpu"]["change"]["ratio"] > 1.5
    # The terminal: the same verdict and line (one of at most 160 characters), and the
    # storm's row of the storms table says the test failed on it.
    assert block["line"].startswith("regressed vs baseline main: cpu +")
    assert len(block["line"]) <= 160
    lines = slower.stdout.lines
    assert lines[lines.index("test_cpu.py::test_cpu · GET /") + 1] == "  " + block["line"]
    slower.stdout.fnmatch_lines(["test_cpu.py::test_cpu*FAIL vs baseline*regressed: cpu +*"])
    assert "vs control" not in slower.stdout.str()
    # The Markdown summary.
    summary = (session.path / "summary.md").read_text(encoding="utf-8")
    assert "| ❌ regressed | `test_cpu.py::test_cpu` | GET / |" in summary
    # The HTML: a failed storm, the summary's columns and the card with the same line.
    page = (session.path / "out.html").read_text(encoding="utf-8")
    assert "<span class='bad'>✗</span></h2>" in page
    assert "<th>vs baseline</th>" in page
    assert "<span class='bad'>FAIL vs baseline</span></td><td class='bad'>regressed: cpu +" in page
    assert "<h3>vs baseline main: <span class='bad'>regressed</span></h3>" in page
    assert f"<p class='muted'>{html.escape(block['line'])}</p>" in page
    # A baseline saved by a comparing session keeps no verdict of its own.
    _run(session, "--concurrency-compare=main", "--concurrency-save=main")
    saved = json.loads((session.path / ".storms" / "main.json").read_text(encoding="utf-8"))
    assert all("comparison" not in storm for storm in saved["storms"])


def test_a_saved_comparison_block_is_checked_by_the_schema() -> None:
    from tests.test_report import three_storms, validate

    doc = _json.session_document(three_storms(), machine=_json.machine_info())
    block = {"mode": "saved", "against": "baseline main", "verdict": "regressed", "line": ""}
    doc["storms"][0]["comparison"] = {**block, "figures": []}
    assert validate(doc, _json.JSON_SCHEMA, _json.JSON_SCHEMA) == []
    assert first_problem(doc) is None
    doc["storms"][0]["comparison"] = block  # no figures
    assert validate(doc, _json.JSON_SCHEMA, _json.JSON_SCHEMA) != []
    assert first_problem(doc) is not None


def test_the_spread_of_few_pairs_predicts_a_settling_the_extremes_hide() -> None:
    # Six pairs around +14 %, one of them low: the exact interval spans the extremes
    # (+7 % … +17 %) and, narrowed as 1/sqrt(n), would still straddle 10 % at 12 pairs;
    # the pairs' spread says the interval on 12 pairs clears it.
    control = [100.0] * 6
    experiment = [113.0, 114.0, 115.0, 113.5, 114.5, 107.0]
    change = paired_change(control, experiment)
    assert change is not None
    found = judge(THRESHOLDS[1], change)
    assert found.verdict == "inconclusive"
    logs = sorted(math.log(e / 100.0) for e in experiment)
    mid = (logs[2] + logs[3]) / 2
    deviations = sorted(abs(x - mid) for x in logs)
    assert change.spread == pytest.approx(1.4826 * (deviations[2] + deviations[3]) / 2)
    shrunk_only = PairedChange(6, change.ratio, change.low, change.high, 0.97, 100.0, 114.0)
    assert not could_settle(judge(THRESHOLDS[1], shrunk_only), 6, 12)
    assert could_settle(found, 6, 12)
    # No spread can settle a change sitting on its threshold.
    at = paired_change(control, [110.0, 111.0, 109.0, 110.5, 109.5, 110.0])
    assert at is not None
    assert not could_settle(judge(THRESHOLDS[1], at), 6, 600)


def test_the_projected_interval_narrows_as_the_square_root_of_the_pairs() -> None:
    assert projected_half_width(0.1, 24) == pytest.approx(projected_half_width(0.1, 6) / 2)
    # Normal noise: 1.96 · σ · sqrt(π / 3n).
    expected = 1.96 * 0.03 * math.sqrt(math.pi / 36)
    assert projected_half_width(0.03, 12) == pytest.approx(expected, rel=1e-3)


def test_pairs_mostly_alike_with_one_far_off_do_not_promise_an_interval_of_no_width() -> None:
    # Five pairs alike and one 40 % off: the median deviation is 0, the spread is not.
    change = paired_change([100.0] * 6, [108.0] * 5 + [150.0])
    assert change is not None
    assert change.spread > 0.1
    found = judge(THRESHOLDS[1], change)
    assert found.verdict == "inconclusive"
    assert not could_settle(found, 6, 12)
