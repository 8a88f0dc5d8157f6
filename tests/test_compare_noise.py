"""Baseline comparison judged against its own noise; baselines checked, merged and replaced."""

from __future__ import annotations

import json
import math
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from pytest_concurrency import ConfigError, StormResult
from pytest_concurrency._baseline import compare as judged_against
from pytest_concurrency._baseline import noise, store, wording
from pytest_concurrency._baseline import thresholds as compare_fail
from pytest_concurrency._baseline.wording import judgement_line
from pytest_concurrency._model.extras import ContentionFigures, SimulatedWaits
from pytest_concurrency._report import _json

from .test_report import make_result
from .test_report_plugin import ONE, TESTS, Run
from .test_report_plugin import run as shared_run

NODE = "t.py::test_a"


def latencies(seed: int, scale: float = 1.0, n: int = 2000) -> list[float]:
    """Lognormal latencies around 10 ms with a tail, seeded: the same seed, the same list."""
    rng = random.Random(seed)
    return [scale * rng.lognormvariate(2.3, 0.4) for _ in range(n)]


def with_rounds(result: StormResult, p99s: list[float], rps: list[float]) -> StormResult:
    result.rounds = [
        {"p50": p99 / 2, "p99": p99, "max": p99 * 1.2, "rps": r, "error_rate": 0.0}
        for p99, r in zip(p99s, rps, strict=True)
    ]
    return result


def judged(
    baseline: StormResult,
    current: StormResult,
    expr: str,
    *,
    load_then: dict[str, float] | None = None,
    load_now: dict[str, float] | None = None,
    session_noise: float | None = None,
) -> list[judged_against.Judgement]:
    thresholds = compare_fail.parse_compare_fail(expr)
    machine: dict[str, Any] = {"host": "h"}
    if load_then is not None:
        machine["load"] = load_then
    doc = _json.session_document([(NODE, baseline)], machine=machine)
    # Through JSON, as a saved baseline is read back.
    doc = json.loads(json.dumps(doc))
    (comparison,) = judged_against.compare(
        # Not this machine's load: the verdicts must not depend on who else is running.
        [(NODE, current)],
        doc,
        noise_for={t.figure for t in thresholds},
        load=load_now if load_now is not None else {},
        session_noise=session_noise,
    )
    return judged_against.judgements(comparison, thresholds)


def loads(one: float, five: float | None = None, fifteen: float | None = None) -> dict[str, float]:
    """Load averages of a 2-core machine."""
    return {
        "1m": one,
        "5m": one if five is None else five,
        "15m": one if fifteen is None else fifteen,
        "cores": 2.0,
    }


def simulated(result: StormResult, wait_ms: float) -> StormResult:
    """*result* with one simulated wait of *wait_ms* per request (all but its CPU time)."""
    kind = {"count": result.requests, "requested_p50_ms": wait_ms, "requested_p99_ms": wait_ms}
    result.simulated_waits = SimulatedWaits.from_dict({"async": kind, "blocking": {"count": 0}})
    return result


ALL = "p50:0%,p90:0%,p99:0%,p999:0%,max:0%,mean:0%,rps:0%"


@pytest.mark.parametrize("seed", range(5))
def test_identical_histograms_are_never_regressed(seed: int) -> None:
    same = latencies(seed)
    verdicts = {j.figure: j.verdict for j in judged(make_result(same), make_result(same), ALL)}
    assert "regressed" not in verdicts.values()
    # At a 0% threshold any noise straddles it; at 5% the median of 2,000 requests holds —
    # within a session. Between sessions a CPU-bound storm moves more on its own: without
    # saved sessions to say how much, the default spread leaves it inconclusive.
    assert verdicts["p50"] == "inconclusive"
    (p50,) = judged(make_result(same), make_result(same), "p50:5%", session_noise=0.0)
    assert p50.verdict == "unchanged"
    (p50,) = judged(make_result(same), make_result(same), "p50:5%")
    assert p50.verdict == "inconclusive"


@pytest.mark.parametrize("seed", range(5))
def test_identical_rounds_are_never_regressed(seed: int) -> None:
    rng = random.Random(seed)
    p99s = [rng.uniform(20, 40) for _ in range(3)]
    rps = [rng.uniform(800, 1200) for _ in range(3)]
    base = with_rounds(make_result(latencies(seed)), p99s, rps)
    now = with_rounds(make_result(latencies(seed)), p99s, rps)
    assert all(j.verdict != "regressed" for j in judged(base, now, "p99:0%,rps:0%,max:0%"))


@pytest.mark.parametrize("seed", range(5))
def test_a_two_fold_slowdown_is_always_regressed(seed: int) -> None:
    base = make_result(latencies(seed))
    slow = make_result(latencies(seed + 100, scale=2.0), throughput=base.throughput / 2)
    found = {j.figure: j for j in judged(base, slow, "p50:10%,p99:10%,mean:10%,max:10%")}
    assert {f: j.verdict for f, j in found.items()} == {
        **dict.fromkeys(("p50", "p99", "mean"), "regressed"),
        # The slowest request of one round bounds nothing: the next round's may be anywhere.
        "max": "inconclusive",
    }
    assert "cannot bound max from above" in judgement_line(found["max"])
    assert found["p99"].has_noise  # judged against the latencies' own spread
    # With rounds on both sides, a doubling is past any doubt: under the default spread
    # between sessions when the rounds agree within ±5%, and within one session's noise
    # (the sessions' spread known to be small) even with rounds ±15%.
    base = with_rounds(make_result(latencies(seed)), [28.5, 30, 31.5], [950, 1000, 1050])
    slow = with_rounds(make_result(latencies(seed + 100, scale=2.0)), [57, 60, 63], [475, 500, 525])
    slow.throughput = base.throughput / 2
    verdicts = {j.figure: j.verdict for j in judged(base, slow, "p99:10%,rps:10%")}
    assert verdicts == {"p99": "regressed", "rps": "regressed"}
    base = with_rounds(make_result(latencies(seed)), [26, 30, 34], [850, 1000, 1150])
    slow = with_rounds(make_result(latencies(seed + 100, scale=2.0)), [52, 60, 68], [425, 500, 575])
    slow.throughput = base.throughput / 2
    verdicts = {
        j.figure: j.verdict for j in judged(base, slow, "p99:10%,rps:10%", session_noise=0.1)
    }
    assert verdicts == {"p99": "regressed", "rps": "regressed"}


def test_noise_wider_than_the_threshold_is_inconclusive_and_says_what_would_settle_it() -> None:
    base = with_rounds(make_result(latencies(1)), [20, 30, 45], [1000, 1000, 1000])
    now = with_rounds(make_result(latencies(1)), [22, 34, 50], [1000, 1000, 1000])
    now.latency = type(now.latency)(**{**now.latency.__dict__, "p99": base.latency.p99 * 1.13})
    (p99,) = judged(base, now, "p99:10%", session_noise=0.0)  # the rounds' noise alone

    assert p99.verdict == "inconclusive"
    assert p99.low < p99.allowed < p99.high
    line = _baseline_line(p99)
    assert "inconclusive — the noise (±" in line
    assert "is wider than the margin to the threshold" in line
    assert "over 3 rounds each" in line
    assert ("rounds (rounds=" in line) or ("sits on the threshold" in line)
    assert "regressed" not in line


def _baseline_line(j: judged_against.Judgement) -> str:
    from pytest_concurrency._baseline.wording import judgement_line

    return judgement_line(j)


def test_a_clear_improvement_is_improved() -> None:
    base = make_result(latencies(3, scale=2.0))
    fast = make_result(latencies(4))
    (p50,) = judged(base, fast, "p50:10%")
    assert p50.verdict == "improved"
    assert _baseline_line(p50).endswith("improved beyond its noise")


def test_one_round_in_the_baseline_borrows_the_spread_of_the_rounds_now() -> None:
    base = make_result(latencies(5))
    now = with_rounds(make_result(latencies(5)), [25, 30, 36], [900, 1000, 1100])
    (p99,) = judged(base, now, "p99:5%")
    assert p99.has_noise
    assert p99.delta.noise is not None
    assert (p99.delta.noise.rounds_now, p99.delta.noise.rounds_then) == (3, 1)
    assert p99.verdict != "regressed"


# -- the machine's load between sessions -------------------------------------------------

#: The last flake run's extremes: load average 2.8 in one session, 5.2 in the next.
CALM, BUSY = loads(2.8), loads(5.2)


def test_a_cpu_bound_throughput_that_fell_with_the_load_is_inconclusive_not_regressed() -> None:
    # Rounds agree within ±5% in each session; between them the machine's load went from
    # 2.8 to 5.2 on 2 cores, and a storm with no simulated waits lost a third of its rps.
    base = with_rounds(make_result(latencies(7)), [30, 31, 32], [950, 1000, 1050])
    now = with_rounds(make_result(latencies(7)), [30, 31, 32], [620, 650, 680])
    now.throughput = 650.0
    base.throughput = 1000.0

    (rps,) = judged(base, now, "rps:5%", load_then=CALM, load_now=BUSY)
    assert rps.verdict == "inconclusive"
    assert rps.delta.noise is not None
    assert rps.delta.noise.load_swing == pytest.approx(5.2 / 2)
    assert rps.settle_rounds is None  # more rounds share the same load
    # On a machine with cores to spare in both sessions, the same drop is past any doubt.
    idle = loads(1.5, 1.0, 0.5)
    (steady,) = judged(base, now, "rps:5%", load_then=idle, load_now=idle, session_noise=0.0)
    assert steady.verdict == "regressed"
    # So it is without a load on record (the rounds alone).
    (unknown,) = judged(base, now, "rps:5%", session_noise=0.0)
    assert unknown.verdict == "regressed"


def test_a_load_swing_spares_the_waits_an_io_bound_storm_spends_off_the_cpu() -> None:
    # 9 ms of each 10 ms request is a simulated wait: a halved throughput is the code's,
    # whatever the load did to the remaining millisecond.
    base = with_rounds(make_result([10.0] * 500), [10, 10, 10], [950, 1000, 1050])
    now = with_rounds(make_result([10.0] * 500), [20, 20, 20], [475, 500, 525])
    base.throughput, now.throughput = 1000.0, 500.0
    base, now = simulated(base, 9.0), simulated(now, 9.0)
    (rps,) = judged(base, now, "rps:10%", load_then=CALM, load_now=BUSY)
    assert rps.verdict == "regressed"


@pytest.mark.parametrize("seed", range(5))
def test_identical_rounds_under_a_swinging_load_are_never_regressed(seed: int) -> None:
    rng = random.Random(seed)
    rps = [rng.uniform(800, 1200) for _ in range(3)]
    base = with_rounds(make_result(latencies(seed)), [30, 30, 30], rps)
    now = with_rounds(make_result(latencies(seed)), [30, 30, 30], rps)
    for then, load_now in ((CALM, BUSY), (BUSY, CALM), (loads(0.5), loads(9.0))):
        (j,) = judged(base, now, "rps:0%", load_then=then, load_now=load_now)
        assert j.verdict != "regressed"


def test_a_latency_that_grew_with_the_load_is_inconclusive_not_regressed() -> None:
    base = with_rounds(make_result(latencies(8)), [20, 21, 22], [1000, 1000, 1000])
    now = with_rounds(make_result(latencies(8, scale=1.7)), [34, 36, 38], [1000, 1000, 1000])
    (p99,) = judged(base, now, "p99:10%", load_then=CALM, load_now=BUSY)
    assert p99.verdict == "inconclusive"
    (steady,) = judged(
        base, now, "p99:10%", load_then=loads(1.0), load_now=loads(1.0), session_noise=0.0
    )
    assert steady.verdict == "regressed"


def test_a_two_fold_slowdown_is_regressed_when_the_load_held_still() -> None:
    base = with_rounds(make_result(latencies(1)), [26, 30, 34], [850, 1000, 1150])
    slow = with_rounds(make_result(latencies(101, scale=2.0)), [52, 60, 68], [425, 500, 575])
    base.throughput, slow.throughput = 1000.0, 500.0
    # An idle machine (fewer runnable threads than cores) gives a whole core each time.
    idle = (loads(0.4, 1.1, 1.9), loads(1.2, 0.8, 0.3))
    (rps,) = judged(base, slow, "rps:10%", load_then=idle[0], load_now=idle[1], session_noise=0.0)
    assert rps.delta.noise is not None
    assert rps.delta.noise.load_swing == 1.0
    assert rps.verdict == "regressed"


def test_load_swing_is_the_spread_of_the_cpu_each_session_could_have_had() -> None:
    assert noise.load_swing(None, None) == 1.0
    assert noise.load_swing(loads(1.0), loads(2.0)) == 1.0  # nothing competed
    # Any of the three averages: a storm lasts seconds.
    assert noise.load_swing(None, loads(2.0, 8.0, 4.0)) == pytest.approx(4.0)
    assert noise.load_swing(CALM, BUSY) == pytest.approx(5.2 / 2)
    assert noise.load_swing({"1m": 3.0}, None) == 1.0  # no cores: no share known


# -- the CPU contention each storm measured -------------------------------------------------


def contended(result: StormResult, *slowdowns: float) -> StormResult:
    """*result* whose rounds (or single round) waited for a CPU: (run + wait) / run each."""
    for entry, slowdown in zip(result.rounds, slowdowns, strict=False):
        entry["cpu_slowdown"] = slowdown
    run = 1.0
    result.cpu_contention = ContentionFigures(run_s=run, wait_s=run * (slowdowns[0] - 1))
    return result


def test_a_storm_that_waited_longer_for_a_cpu_is_inconclusive_not_regressed() -> None:
    # The baseline's threads waited 10% of their ready time, this session's 50%: a CPU-bound
    # storm with its latency 2.5× is what the machine did, not (provably) the code.
    base = contended(
        with_rounds(make_result(latencies(8)), [20, 21, 22], [1000] * 3), 1.1, 1.12, 1.1
    )
    now = contended(
        with_rounds(make_result(latencies(8, scale=2.5)), [50, 52, 55], [400] * 3), 2.0, 2.1, 2.0
    )
    (p99,) = judged(base, now, "p99:10%", load_then=loads(0.2), load_now=loads(0.2))
    assert p99.verdict == "inconclusive"
    assert p99.delta.noise is not None
    assert p99.delta.noise.contention == pytest.approx((1.1, 2.0))
    assert p99.settle_rounds is None
    line = judgement_line(p99)
    assert "wait for a CPU (9% of its ready time in the baseline, 50% now)" in line
    assert "more rounds in one session do not settle" in line
    # Measured, it overrides the load averages: the same storms under equal contention are
    # a regression whatever the load averages claimed.
    same = contended(now, 1.1, 1.12, 1.1)
    (steady,) = judged(base, same, "p99:10%", load_then=CALM, load_now=BUSY)
    assert steady.verdict == "regressed"


def test_contention_explains_a_change_only_in_the_direction_the_machine_moved() -> None:
    # The baseline waited for a CPU and this session did not: a slower figure now cannot be
    # blamed on the machine, and a two-fold slowdown stays a regression.
    base = contended(
        with_rounds(make_result(latencies(1)), [26, 30, 34], [850, 1000, 1150]), 2.0, 2.0, 2.0
    )
    slow = contended(
        with_rounds(make_result(latencies(101, scale=2.0)), [52, 60, 68], [425, 500, 575]),
        1.1,
        1.1,
        1.1,
    )
    base.throughput, slow.throughput = 1000.0, 500.0
    (rps,) = judged(base, slow, "rps:10%", session_noise=0.0)  # the machine's term alone
    assert rps.verdict == "regressed"
    # A gain over a baseline that waited for a CPU may be the machine's: not "improved".
    slow_then = contended(slow, 2.0, 2.0, 2.0)
    fast_now = contended(base, 1.1, 1.1, 1.1)
    (gain,) = judged(slow_then, fast_now, "rps:10%")
    assert gain.verdict == "inconclusive"


def test_contention_spares_the_waits_an_io_bound_storm_spends_off_the_cpu() -> None:
    base = with_rounds(make_result([10.0] * 500), [10, 10, 10], [950, 1000, 1050])
    now = with_rounds(make_result([10.0] * 500), [20, 20, 20], [475, 500, 525])
    base.throughput, now.throughput = 1000.0, 500.0
    base = contended(simulated(base, 9.0), 1.1, 1.1, 1.1)
    now = contended(simulated(now, 9.0), 1.6, 1.6, 1.6)
    (rps,) = judged(base, now, "rps:10%")
    assert rps.verdict == "regressed"


@pytest.mark.parametrize("seed", range(5))
def test_identical_rounds_under_any_contention_are_never_regressed(seed: int) -> None:
    rng = random.Random(seed)
    rps = [rng.uniform(800, 1200) for _ in range(3)]
    base = with_rounds(make_result(latencies(seed)), [30, 30, 30], rps)
    now = with_rounds(make_result(latencies(seed)), [30, 30, 30], rps)
    for then, later in ((1.1, 2.0), (2.0, 1.1), (1.0, 4.0)):
        (j,) = judged(
            contended(base, then, then, then), contended(now, later, later, later), "rps:0%"
        )
        assert j.verdict != "regressed"


def test_cpu_slowdown_is_the_median_over_rounds_else_the_single_round() -> None:
    result = with_rounds(make_result(latencies(2)), [10, 11, 12], [1, 1, 1])
    result = contended(result, 1.5, 1.1, 3.0)
    data = json.loads(json.dumps(_json.session_document([(NODE, result)], machine={})))["storms"][0]
    assert noise.cpu_slowdown(data) == pytest.approx(1.5)
    data["rounds"] = []
    assert noise.cpu_slowdown(data) == pytest.approx(1.5)  # the extras: run 1 s, wait 0.5 s
    data["extras"] = {}
    assert noise.cpu_slowdown(data) is None


def test_cpu_share_is_the_time_per_request_outside_simulated_waits() -> None:
    plain = make_result([10.0] * 100)
    data = _json.session_document([(NODE, plain)], machine={})["storms"][0]
    assert noise.cpu_share(data) == 1.0
    waited = simulated(make_result([10.0] * 100), 8.0)
    data = _json.session_document([(NODE, waited)], machine={})["storms"][0]
    assert noise.cpu_share(data) == pytest.approx(0.2, abs=0.01)


def test_a_saved_baseline_records_the_load_it_was_measured_under(tmp_path: Path) -> None:
    doc = _json.session_document([(NODE, make_result([1.0] * 10))], machine={"host": "h"})
    path = store.save("main", doc, tmp_path)
    load = store.load("main", tmp_path)["machine"]["load"]
    assert path == tmp_path / "main.json"
    assert set(load) == {"1m", "5m", "15m", "cores"}
    assert load["cores"] >= 1


# -- corrupt baselines --------------------------------------------------------------------


def _good_doc() -> dict[str, Any]:
    doc = _json.session_document([(NODE, make_result([1.0, 2.0, 3.0]))], machine={"host": "h"})
    parsed: dict[str, Any] = json.loads(json.dumps(doc))
    return parsed


@pytest.mark.parametrize(
    ("write", "message"),
    [
        (lambda doc: json.dumps({**doc, "storms": [1, "two"]}), r"storms\[\d\] is an? "),
        (
            lambda doc: json.dumps({**doc, "storms": {"a": 1}}),
            r"storms is an object, expected a list",
        ),
        (lambda doc: "[" * 100_000 + "]" * 100_000, r"nests|not a pytest-storm session document"),
        (
            lambda doc: json.dumps(
                {**doc, "storms": [{**doc["storms"][0], "params": _nested(200)}]}
            ),
            r"nests more than 64 levels deep",
        ),
        (lambda doc: "{not json", r"is not valid JSON"),
        (lambda doc: json.dumps([1, 2]), r"not a pytest-storm session document"),
        (
            lambda doc: json.dumps({**doc, "storms": [{**doc["storms"][0], "latency": []}]}),
            r"storms\[0\]\.latency is a list, expected an object",
        ),
    ],
)
def test_a_corrupt_baseline_is_a_clear_error_naming_the_file(
    tmp_path: Path, write: Callable[[dict[str, Any]], str], message: str
) -> None:
    path = tmp_path / "main.json"
    path.write_text(write(_good_doc()), encoding="utf-8")
    with pytest.raises(ConfigError, match=message) as raised:
        store.load("main", tmp_path)
    assert str(path) in str(raised.value)
    assert "--concurrency-compare='main'" in str(raised.value)


def _nested(levels: int) -> Any:
    value: Any = 1
    for _ in range(levels):
        value = {"a": value}
    return value


def test_a_valid_baseline_loads(tmp_path: Path) -> None:
    (tmp_path / "main.json").write_text(json.dumps(_good_doc()), encoding="utf-8")
    assert len(store.load("main", tmp_path)["storms"]) == 1


def _with_figure(doc: dict[str, Any], where: tuple[str, ...], value: Any) -> dict[str, Any]:
    storm = json.loads(json.dumps(doc["storms"][0]))
    target = storm
    for step in where[:-1]:
        target = target[step]
    target[where[-1]] = value
    return {**doc, "storms": [storm]}


@pytest.mark.parametrize(
    ("where", "value", "message"),
    [
        (("latency", "p99"), math.nan, r"storms\[0\]\.latency\.p99 is nan, not a finite number"),
        (("latency", "p99"), math.inf, r"storms\[0\]\.latency\.p99 is inf, not a finite number"),
        (("latency", "p99"), None, r"p99 is null \(not measured\)"),
        (("latency", "p50"), -3.0, r"p50 is -3\.0, below 0"),
        (("throughput",), None, r"rps is null \(not measured\)"),
        (("throughput",), -math.inf, r"throughput is -inf, not a finite number"),
        (("error_rate",), math.nan, r"error_rate is nan, not a finite number"),
    ],
)
def test_a_baseline_figure_that_would_switch_the_gate_off_is_an_error(
    tmp_path: Path, where: tuple[str, ...], value: Any, message: str
) -> None:
    # json.dumps writes NaN and Infinity as Python reads them back: a hand-edited file.
    path = tmp_path / "main.json"
    path.write_text(json.dumps(_with_figure(_good_doc(), where, value)), encoding="utf-8")
    with pytest.raises(ConfigError, match=message) as raised:
        store.load("main", tmp_path)
    text = str(raised.value)
    assert str(path) in text
    assert f"storm {NODE} · GET /items/1" in text


def test_a_nine_fold_regression_is_not_let_through_by_a_null_baseline(tmp_path: Path) -> None:
    doc = _json.session_document([(NODE, make_result([10.0] * 200))], machine={"host": "h"})
    slower = [(NODE, make_result([90.0] * 200))]
    thresholds = compare_fail.parse_compare_fail("p99:10%")
    (comparison,) = judged_against.compare(slower, json.loads(json.dumps(doc)), load={})
    assert wording.regressions([comparison], thresholds)
    # With the baseline's p99 made null, a comparison has no verdict on p99 and the 9x
    # slower run would pass: reading such a baseline is an error instead.
    path = tmp_path / "main.json"
    path.write_text(json.dumps(_with_figure(doc, ("latency", "p99"), None)), encoding="utf-8")
    with pytest.raises(ConfigError, match=r"p99 is null"):
        store.load("main", tmp_path)


def test_a_run_cannot_save_a_baseline_that_disables_its_gate(tmp_path: Path) -> None:
    store.save(
        "main", _json.session_document([(NODE, make_result([10.0] * 50))], machine={}), tmp_path
    )
    before = (tmp_path / "main.json").read_text(encoding="utf-8")
    nothing = make_result([10.0] * 50)
    nothing.latency = type(nothing.latency)()  # nothing measured: every figure NaN
    nothing.throughput = math.nan
    doc = _json.session_document([(NODE, nothing)], machine={})
    with pytest.raises(ConfigError) as raised:
        store.save("main", doc, tmp_path)
    text = str(raised.value)
    assert f"--concurrency-save='main': storm {NODE} · GET /items/1 cannot be saved" in text
    assert "p99 is null (not measured)" in text
    assert "rps is null (not measured)" in text
    assert (tmp_path / "main.json").read_text(encoding="utf-8") == before
    with pytest.raises(ConfigError, match=r"p99 is null"):
        store.save("main", doc, tmp_path / "fresh", replace=True)
    assert not (tmp_path / "fresh" / "main.json").exists()


def test_a_json_report_never_holds_nan_or_infinity(tmp_path: Path) -> None:
    result = make_result([1.0, 2.0])
    result.throughput = math.inf
    result.unknown_extras["odd"] = [math.nan, -math.inf]
    path = _json.write_json(
        tmp_path / "r.json", _json.session_document([(NODE, result)], machine={})
    )
    text = path.read_text(encoding="utf-8")
    assert "NaN" not in text
    assert "Infinity" not in text
    storm = json.loads(text)["storms"][0]
    assert storm["throughput"] is None
    assert storm["extras"]["odd"] == [None, None]
    # ... and a report read as a baseline does not let the null through.
    (tmp_path / "main.json").write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError, match=r"rps is null"):
        store.load("main", tmp_path)


# -- saving merges by storm ---------------------------------------------------------------


def test_save_merges_by_storm_unless_told_to_replace(tmp_path: Path) -> None:
    storms = [(f"t.py::test_{i}", make_result([float(i + 1)] * 10)) for i in range(3)]
    store.save("main", _json.session_document(storms, machine={}), tmp_path)
    again = [("t.py::test_1", make_result([9.0] * 10))]
    store.save("main", _json.session_document(again, machine={}), tmp_path)

    saved = json.loads((tmp_path / "main.json").read_text())
    by_node = {s["nodeid"]: s["latency"]["p50"] for s in saved["storms"]}
    assert set(by_node) == {"t.py::test_0", "t.py::test_1", "t.py::test_2"}
    assert by_node["t.py::test_1"] == pytest.approx(9.0, rel=0.01)

    store.save("main", _json.session_document(again, machine={}), tmp_path, replace=True)
    saved = json.loads((tmp_path / "main.json").read_text())
    assert [s["nodeid"] for s in saved["storms"]] == ["t.py::test_1"]


def test_save_over_a_corrupt_baseline_is_an_error_not_a_loss(tmp_path: Path) -> None:
    (tmp_path / "main.json").write_text('{"schema_version": 1, "storms": 3}', encoding="utf-8")
    doc = _json.session_document([(NODE, make_result([1.0]))], machine={})
    with pytest.raises(ConfigError, match=r"--concurrency-save='main': baseline .*main\.json"):
        store.save("main", doc, tmp_path)
    store.save("main", doc, tmp_path, replace=True)
    assert len(store.load("main", tmp_path)["storms"]) == 1


# -- in a pytest session ------------------------------------------------------------------

# The session fixture of the reporting tests: pytester with only this plugin loaded.
run = shared_run


@pytest.mark.filterwarnings("ignore::pytest.PytestAssertRewriteWarning")
def test_a_partial_session_merges_into_the_saved_baseline(
    pytester: pytest.Pytester, run: Run
) -> None:
    pytester.makepyfile(test_storms=TESTS)
    run("--concurrency-save=main").assert_outcomes(passed=2)
    partial = run("--concurrency-save=main", "-k", "test_one")
    partial.assert_outcomes(passed=1, deselected=1)
    partial.stdout.fnmatch_lines(["baseline 'main': kept 2 storms of the saved baseline*"])
    saved = json.loads((pytester.path / ".storms" / "main.json").read_text())
    assert len(saved["storms"]) == 3

    run("--concurrency-save=main", "--concurrency-save-replace", "-k", "test_one")
    saved = json.loads((pytester.path / ".storms" / "main.json").read_text())
    assert [s["label"] for s in saved["storms"]] == ["GET /one"]


@pytest.mark.filterwarnings("ignore::pytest.PytestAssertRewriteWarning")
def test_a_corrupt_baseline_is_a_usage_error_in_a_session(
    pytester: pytest.Pytester, run: Run
) -> None:
    pytester.makepyfile(test_storms=ONE)
    storage = pytester.path / ".storms"
    storage.mkdir()
    (storage / "main.json").write_text('{"schema_version": 1, "storms": [[]]}', encoding="utf-8")
    result = run("--concurrency-compare=main")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: --concurrency-compare='main': baseline *main.json*"])
    assert "INTERNALERROR" not in result.stdout.str() + result.stderr.str()


@pytest.mark.filterwarnings("ignore::pytest.PytestAssertRewriteWarning")
def test_compare_fail_runs_three_rounds_unless_the_storm_sets_rounds(
    pytester: pytest.Pytester, run: Run
) -> None:
    pytester.makepyfile(
        test_storms=ONE
        + """

import pytest

@pytest.mark.concurrency(rounds=1)
def test_own_rounds(storm):
    storm(sleepy_wsgi, "GET", "/own", users=4, workers=4, requests=20)
"""
    )
    run("--concurrency-save=main").assert_outcomes(passed=2)
    result = run(
        "--concurrency-compare=main",
        "--concurrency-compare-fail=p50:200%",
        "--concurrency-json=out.json",
    )
    result.assert_outcomes(passed=2)
    storms = {s["label"]: s for s in json.loads((pytester.path / "out.json").read_text())["storms"]}
    assert len(storms["GET /one"]["rounds"]) == 3
    assert storms["GET /own"]["rounds"] == []
    # The verdict of each figure depends on this run's noise: a change well inside the 200 %
    # threshold reads "within" when its interval spans zero and "improved" when it does not.
    result.stdout.fnmatch_lines(["*timer noise on this machine*"])
    result.stdout.re_match_lines([r".*(within (its|their) thresholds?|improved beyond its noise)"])


# -- between sessions: the default spread, then the storm's own saved sessions --------------


def saved_sessions(tmp_path: Path, results: list[StormResult]) -> dict[str, Any]:
    """The baseline document after saving one session per result (merged, as --save does)."""
    for result in results:
        # No load averages (a document that states its own keeps them): the verdicts must
        # not depend on who else is running while the test saves.
        doc = _json.session_document([(NODE, result)], machine={"host": "h", "load": {}})
        store.save("main", doc, tmp_path)
    return store.load("main", tmp_path)


def test_a_baseline_keeps_the_last_sessions_of_each_storm(tmp_path: Path) -> None:
    results = [
        with_rounds(make_result(latencies(i)), [30 + i, 31 + i, 40 + i], [1000, 900 + i, 980])
        for i in range(3)
    ]
    doc = saved_sessions(tmp_path, results)
    (storm,) = doc["storms"]
    sessions = storm["sessions"]
    assert len(sessions) == 3
    # The medians over each session's rounds: what the next session is compared with.
    assert [s["p99"] for s in sessions] == [31, 32, 33]
    assert [s["rps"] for s in sessions] == [980, 980, 980]
    assert all(s["cpu_share"] == 1.0 for s in sessions)
    # Replacing the baseline starts its history again.
    doc = _json.session_document([(NODE, results[0])], machine={"host": "h"})
    store.save("main", doc, tmp_path, replace=True)
    assert len(store.load("main", tmp_path)["storms"][0]["sessions"]) == 1
    # At most HISTORY sessions are kept, the newest last.
    many = saved_sessions(tmp_path, [results[i % 3] for i in range(noise.HISTORY + 4)])
    assert len(many["storms"][0]["sessions"]) == noise.HISTORY


def history_judged(
    tmp_path: Path, spread: float, change: float, expr: str = "p99:10%"
) -> judged_against.Judgement:
    """Five saved sessions whose p99 varied by ±*spread*, then one *change* times slower."""

    def session(seed: int, p99: float) -> StormResult:
        result = with_rounds(
            make_result(latencies(seed)), [p99 * 0.98, p99, p99 * 1.02], [1000] * 3
        )
        result.latency = type(result.latency)(**{**result.latency.__dict__, "p99": p99})
        return result

    # The newest session in the middle of the others: the baseline's own figure is typical.
    steps = (-1, -0.5, 0.5, 1, 0)
    doc = saved_sessions(tmp_path, [session(i, 30 * (1 + spread * k)) for i, k in enumerate(steps)])
    now = session(9, 30 * change)
    (comparison,) = judged_against.compare([(NODE, now)], doc, noise_for={"p99"}, load={})
    (j,) = judged_against.judgements(comparison, compare_fail.parse_compare_fail(expr))
    return j


def test_steady_saved_sessions_judge_a_cpu_bound_storm_tightly(tmp_path: Path) -> None:
    # Five sessions within ±0.5% of each other: a CPU-bound storm 2% slower is within a 10%
    # threshold, one 30% slower regressed — where one saved session leaves both inconclusive.
    within = history_judged(tmp_path / "a", 0.005, 1.02)
    assert within.verdict == "unchanged"
    assert within.delta.noise is not None
    assert within.delta.noise.history == 5
    assert "the spread of its 5 saved sessions" in judgement_line(within)
    assert history_judged(tmp_path / "b", 0.005, 1.3).verdict == "regressed"
    base = with_rounds(make_result(latencies(1)), [29.4, 30, 30.6], [1000] * 3)
    now = with_rounds(make_result(latencies(1)), [30.3, 30.9, 31.5], [1000] * 3)
    (alone,) = judged(base, now, "p99:10%")
    assert alone.verdict == "inconclusive"
    assert "the default until the baseline holds 3 saved sessions" in judgement_line(alone)


def test_sessions_that_moved_widely_leave_a_like_change_inconclusive(tmp_path: Path) -> None:
    # Five sessions ±30% apart on unchanged code: a 40% slower session is not a regression.
    assert history_judged(tmp_path, 0.3, 1.4).verdict == "inconclusive"


def counted(result: StormResult, requests: int) -> StormResult:
    """*result* of a closed model that completed *requests* in its window."""
    result.requests, result.model = requests, "closed"
    return result


def test_a_closed_models_throughput_is_a_count_and_counts_are_noisy() -> None:
    # Seven requests in a round, rounds agreeing: 8 against 5 completions is not a regression.
    base = with_rounds(counted(make_result(latencies(1)), 8), [900, 950, 1000], [26.7] * 3)
    now = with_rounds(counted(make_result(latencies(1)), 5), [900, 950, 1000], [16.7] * 3)
    base.throughput, now.throughput = 26.7, 16.7
    (rps,) = judged(base, now, "rps:5%", session_noise=0.0)
    assert rps.verdict == "inconclusive"
    # One round each (no rounds to show a spread): the count alone says how well it is known.
    base = counted(make_result(latencies(2)), 96)
    now = counted(make_result(latencies(2)), 91)
    base.throughput, now.throughput = 240.0, 227.5
    (rps,) = judged(base, now, "rps:5%", session_noise=0.0)
    assert rps.verdict == "inconclusive"
    assert rps.delta.noise is not None
    assert rps.delta.noise.source == "requests"
    assert "from the count of requests" in judgement_line(rps)
    half = counted(make_result(latencies(2)), 48)
    half.throughput = 120.0
    (rps,) = judged(base, half, "rps:5%", session_noise=0.0)
    assert rps.verdict == "regressed"


def test_the_p99_of_a_few_requests_is_not_judged_from_one_round() -> None:
    base = make_result(latencies(1, n=37))
    slow = make_result(latencies(1, scale=1.3, n=37))
    (p99,) = judged(base, slow, "p99:10%")
    # Of 37 requests the p99 is the slowest; the next round's may be anywhere above it.
    assert p99.verdict == "inconclusive"
    assert "cannot bound p99 from above (299 or more would)" in judgement_line(p99)
    assert "rounds=3" in judgement_line(p99)
    (p50,) = judged(base, slow, "p50:10%", session_noise=0.0)
    assert p50.verdict == "regressed"  # the median of 37 is bounded


def test_a_short_window_moves_by_a_scheduler_slice_at_each_end() -> None:
    base = with_rounds(make_result(latencies(3)), [30, 30, 30], [2600, 2640, 2700])
    now = with_rounds(make_result(latencies(3)), [30, 30, 30], [1700, 1730, 1760])
    base.throughput, now.throughput = 2640.0, 1730.0
    for result in (base, now):
        result.duration = 0.018  # 50 requests in 18 ms
    (rps,) = judged(base, now, "rps:5%", session_noise=0.0)
    assert rps.verdict == "inconclusive"
    assert rps.delta.noise is not None
    assert rps.delta.noise.jitter == pytest.approx(1 + 0.012 / 0.018)
    assert "a short window (a scheduler slice lost at each end moves it ±67%)" in judgement_line(
        rps
    )
    for result in (base, now):
        result.duration = 2.0
    (rps,) = judged(base, now, "rps:5%", session_noise=0.0)
    assert rps.verdict == "regressed"


def test_a_storm_busy_a_few_percent_of_its_window_is_judged_tightly() -> None:
    # Its threads ran or waited to run for 20 ms of a 1 s window: the rest was I/O, which no
    # change of CPU stretches, so the default spread between sessions hardly touches it.
    base = with_rounds(make_result(latencies(4)), [50, 51, 52], [100] * 3)
    now = with_rounds(make_result(latencies(4)), [51, 52, 53], [100] * 3)
    for result in (base, now):
        result.duration = 1.0
        result.cpu_contention = ContentionFigures(run_s=0.018, wait_s=0.002)
    assert noise.cpu_share(
        json.loads(json.dumps(_json.session_document([(NODE, base)], machine={})))["storms"][0]
    ) == pytest.approx(0.02)
    (p99,) = judged(base, now, "p99:10%")
    assert p99.verdict == "unchanged"
    # Busy the whole window, the same change is left to the sessions' spread.
    for result in (base, now):
        result.cpu_contention = ContentionFigures(run_s=0.9, wait_s=0.1)
    (p99,) = judged(base, now, "p99:10%")
    assert p99.verdict == "inconclusive"


def test_three_saved_sessions_never_make_a_doubling_harder_to_catch(tmp_path: Path) -> None:
    # Three sessions ±10% apart: a 99% prediction interval on 2 degrees of freedom spans
    # ×3 either way. Saving more sessions must not turn a gate that catches a doubling into
    # one that cannot fail: history narrows the default spread between sessions, never
    # widens it.
    def session(seed: int, p99: float) -> StormResult:
        result = with_rounds(
            make_result(latencies(seed)), [p99 * 0.98, p99, p99 * 1.02], [1000] * 3
        )
        result.latency = type(result.latency)(**{**result.latency.__dict__, "p99": p99})
        return result

    doc = saved_sessions(
        tmp_path, [session(i, 30 * (1 + 0.1 * k)) for i, k in enumerate((-1, 1, 0))]
    )
    (comparison,) = judged_against.compare(
        [(NODE, session(9, 60.0))], doc, noise_for={"p99"}, load={}
    )
    (j,) = judged_against.judgements(comparison, compare_fail.parse_compare_fail("p99:10%"))
    assert j.delta.noise is not None
    assert j.delta.noise.history == 3
    assert j.verdict == "regressed"
    # One saved session of the same storm catches it too.
    one = saved_sessions(tmp_path / "one", [session(0, 30.0)])
    (comparison,) = judged_against.compare(
        [(NODE, session(9, 60.0))], one, noise_for={"p99"}, load={}
    )
    (j,) = judged_against.judgements(comparison, compare_fail.parse_compare_fail("p99:10%"))
    assert j.verdict == "regressed"


# -- CPU time per request: the figure a busy machine moves least ----------------------------


def on_cpu(result: StormResult, run_s: float, *rounds_us: float) -> StormResult:
    """*result* whose threads ran *run_s* in its window (and, per round, *rounds_us* µs per
    request), having waited for a CPU as long again."""
    result.cpu_contention = ContentionFigures(run_s=run_s, wait_s=run_s)
    for entry, us in zip(result.rounds, rounds_us, strict=True):
        entry["cpu"] = us
    return result


def cpu_judged(
    baseline: StormResult, current: StormResult, expr: str, **loads_kw: Any
) -> dict[str, str]:
    thresholds = compare_fail.with_cpu(compare_fail.parse_compare_fail(expr))
    machine: dict[str, Any] = {"host": "h", "load": loads_kw.get("load_then", {})}
    doc = json.loads(json.dumps(_json.session_document([(NODE, baseline)], machine=machine)))
    (comparison,) = judged_against.compare(
        [(NODE, current)],
        doc,
        noise_for={t.figure for t in thresholds},
        load=loads_kw.get("load_now", {}),
    )
    return {j.figure: j.verdict for j in judged_against.judgements(comparison, thresholds)}


@pytest.mark.parametrize("seed", range(5))
def test_a_doubled_cpu_time_is_regressed_when_the_wall_clock_cannot_tell(seed: int) -> None:
    # The baseline saved in one round on a calm machine; now three rounds on a busy one,
    # where wall-clock figures moved with the load: CPU per request (500 µs then, 1,000 µs
    # now, rounds within ±6 %) still says the code got slower.
    rng = random.Random(seed)
    base = on_cpu(make_result(latencies(seed)), 1.0)
    p99s = [rng.uniform(40, 80) for _ in range(3)]
    now = with_rounds(make_result(latencies(seed + 100, scale=1.5)), p99s, [700, 800, 900])
    now = on_cpu(now, 2.0, *(1000 * rng.uniform(0.94, 1.06) for _ in range(3)))
    verdicts = cpu_judged(base, now, "p99:10%,rps:10%", load_then=CALM, load_now=BUSY)
    assert verdicts["cpu"] == "regressed"
    # Unchanged code, its CPU per request within ±6 % between the sessions: never regressed.
    same = with_rounds(make_result(latencies(seed + 200, scale=1.5)), p99s, [700, 800, 900])
    same = on_cpu(same, 1.0, *(500 * rng.uniform(0.94, 1.06) for _ in range(3)))
    assert cpu_judged(base, same, "p99:10%,rps:10%", load_then=CALM, load_now=BUSY)["cpu"] in (
        "unchanged",
        "inconclusive",
    )


def test_cpu_of_an_idle_storm_is_judged_only_when_named() -> None:
    # Threads busy 10 % and 15 % of the window: CPU per request is mostly the harness's
    # fixed costs.
    base = on_cpu(make_result(latencies(1)), 0.2)
    now = on_cpu(make_result(latencies(1)), 0.3)
    assert "cpu" not in cpu_judged(base, now, "p99:10%")
    assert cpu_judged(base, now, "p99:10%,cpu:10%")["cpu"] == "regressed"


def test_cpu_is_judged_relative_to_the_baseline() -> None:
    with pytest.raises(ConfigError, match=r"cpu \(CPU time per request\) is judged relative"):
        compare_fail.parse_compare_fail("cpu:5ms")
    assert compare_fail.parse_compare_fail("cpu:5%") == [compare_fail.Threshold("cpu", 5.0, True)]
    implied = compare_fail.with_cpu(compare_fail.parse_compare_fail("p99:20%,rps:5%"))
    assert [(t.figure, t.amount, t.implied) for t in implied][-1] == ("cpu", 5.0, True)


def test_the_verdict_line_is_one_short_line_worst_first() -> None:
    from pytest_concurrency._baseline.wording import LINE_LIMIT, short_line

    base = with_rounds(make_result(latencies(1)), [20, 30, 45], [1000, 1000, 1000])
    now = with_rounds(make_result(latencies(1)), [22, 34, 50], [1000, 1000, 1000])
    now.latency = type(now.latency)(**{**now.latency.__dict__, "p99": base.latency.p99 * 3})
    thresholds = compare_fail.parse_compare_fail("p50:10%,p99:10%,max:10%,rps:5%")
    doc = json.loads(json.dumps(_json.session_document([(NODE, base)], machine={"host": "h"})))
    (comparison,) = judged_against.compare(
        [(NODE, now)], doc, noise_for={t.figure for t in thresholds}, load={}, session_noise=0.0
    )
    found = judged_against.judgements(comparison, thresholds)
    line = short_line(comparison, found, against="baseline main")
    assert len(line) <= LINE_LIMIT
    verdicts = {j.figure: j.verdict for j in found}
    assert verdicts["p99"] == "regressed"
    # The regression leads, with its interval and what it is past; the rest follow, or
    # an ellipsis when they do not fit.
    assert line.startswith("regressed vs baseline main: p99 +200.0% [+")
    assert "] >+10%" in line
    assert line.endswith("; 3 rounds now")
    # No storm in the baseline, no threshold: said in a few words.
    (new,) = judged_against.compare([("other::test", now)], doc, load={})
    assert short_line(new, [], against="baseline main") == "new: not in baseline main"
