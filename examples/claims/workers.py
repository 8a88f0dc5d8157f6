"""Claim 1: 50 users on an LLM endpoint — async FastAPI needs about 8× fewer workers than Flask."""

from __future__ import annotations

from examples.fastapi_app import MODEL_URL
from pytest_concurrency import CapacityResult, Request, Upstream, capacity, lognormal

from .base import HOLDS, NOT_HERE, PARTLY, ClaimRow, Demo, Judgement, format_number, rounded

__all__ = [
    "CLAIMED_WORKER_RATIO",
    "LLM_BUDGET_FACTOR",
    "LLM_USERS",
    "MODEL_P50_MS",
    "MODEL_P99_MS",
    "MODEL_URL",
    "RATIO_HOLDS_SHARE",
    "RATIO_PARTLY_MIN",
    "judge_worker_ratio",
    "run",
]

#: A worker ratio of at least this share of the claimed one holds ("about 8×")…
RATIO_HOLDS_SHARE = 0.75
#: …and a ratio of at least this still shows the direction of the claim (holds partly).
RATIO_PARTLY_MIN = 2.0
CLAIMED_WORKER_RATIO = 8.0

#: The model server behind /llm: the articles' 800 ms median / 2 s tail, scaled down 10×.
MODEL_P50_MS = 80.0
MODEL_P99_MS = 200.0
#: Budget of the capacity search, as a multiple of the model's own p99.
LLM_BUDGET_FACTOR = 2.5
LLM_USERS = 50


def judge_worker_ratio(
    async_workers: int | None,
    sync_workers: int | None,
    *,
    claimed: float = CLAIMED_WORKER_RATIO,
    largest: int = 64,
) -> Judgement:
    """Does the sync app need about *claimed* times the async app's workers?"""
    if async_workers is None:
        return Judgement(NOT_HERE, f"the async app met no budget even with {largest} workers")
    if sync_workers is None:
        ratio = (largest + 1) / async_workers
        bound = f"more than {largest} workers (> {ratio:.0f}×)"
    else:
        ratio = sync_workers / async_workers
        bound = f"{ratio:.1f}×"
    need = claimed * RATIO_HOLDS_SHARE
    if ratio >= need:
        return Judgement(
            HOLDS,
            f"sync needed {bound} the async workers; the claim (≈ {claimed:g}×) holds from "
            f"{need:g}×",
        )
    if ratio >= RATIO_PARTLY_MIN:
        return Judgement(
            PARTLY,
            f"sync needed {bound} the async workers: more, as claimed, but under the "
            f"{need:g}× that ≈ {claimed:g}× allows",
        )
    return Judgement(
        NOT_HERE, f"sync needed only {bound} the async workers (< {RATIO_PARTLY_MIN:g}×)"
    )


def run(demo: Demo) -> ClaimRow:
    """Search the smallest worker count of FastAPI and Flask that meets the budget."""
    s = demo.settings
    budget = LLM_BUDGET_FACTOR * MODEL_P99_MS
    prompt = Request("POST", "/llm", json={"prompt": "Say hello", "max_tokens": 16})
    found: dict[str, CapacityResult] = {}
    with Upstream() as upstream:
        upstream.route(
            MODEL_URL,
            latency=lognormal(p50_ms=MODEL_P50_MS, p99_ms=MODEL_P99_MS),
            json={"text": "Hello!", "tokens": 3},
            seed=1,
        )
        for framework in ("FastAPI", "Flask"):
            demo.progress(f"  claim 1: capacity of {framework} POST /llm, {LLM_USERS} users")
            found[framework] = result = capacity(
                demo.app(framework),
                requests=[prompt],
                users=LLM_USERS,
                duration=s.duration,
                warmup=s.warmup,
                p99_ms=budget,
                max_error_rate=0,
                workers=s.capacity_workers,
                seed=1,
            )
            for workers, storm in sorted(result.results.items()):
                demo.keep("1", f"{framework} ({workers} w.)", storm)
    largest = s.capacity_workers[-1]
    fast, flask = found["FastAPI"], found["Flask"]
    judgement = judge_worker_ratio(fast.best, flask.best, largest=largest)
    figures = [_capacity_line(name, found[name]) for name in ("FastAPI", "Flask")]
    if fast.best and flask.best:
        figures.append(f"ratio {flask.best / fast.best:.1f}×")
    mean_ms = lognormal(p50_ms=MODEL_P50_MS, p99_ms=MODEL_P99_MS).mean_ms
    notes = [
        "a worker count is not a property of a framework: by Little's law W sync workers "
        f"give {LLM_USERS} users a mean latency of {LLM_USERS} × "
        f"{format_number(mean_ms)} ms (the model's mean) / W, so a mean under "
        f"{format_number(budget)} ms already takes ≥ {LLM_USERS * mean_ms / budget:.1f} "
        "workers and the p99 more; the ratio follows the budget and the user count",
    ]
    if fast.best == 1:
        notes.append(
            "the async app's one worker is one event loop; in-process, more ASGI workers "
            "would share the same core"
        )
    return ClaimRow(
        "1",
        "50 concurrent users on an LLM endpoint: async FastAPI needs about 8× fewer "
        "workers than sync Flask",
        "FastAPI vs Flask articles on serving LLM endpoints",
        f"POST /llm → model server lognormal p50 {MODEL_P50_MS:g} / p99 {MODEL_P99_MS:g} ms "
        f"(the articles' 800 ms / 2 s ÷ 10); {LLM_USERS} users; budget p99 ≤ "
        f"{budget:g} ms (= {LLM_BUDGET_FACTOR:g} × the model's p99) and no errors; "
        f"smallest worker count of {s.capacity_workers[0]}–{largest} (capacity search)",
        figures,
        judgement,
        notes,
        {name: found[name].to_dict() for name in found} | {"budget_p99_ms": budget},
    )


def _capacity_line(name: str, found: CapacityResult) -> str:
    if found.best is None:
        last = found.tried[-1] if found.tried else None
        tail = f" (p99 {format_number(last.p99)} ms at {last.workers})" if last else ""
        return f"{name}: no worker count met the budget{tail}"
    best = found.trial(found.best)
    text = f"{name}: {found.best} worker{'s' if found.best != 1 else ''}"
    if best is not None:
        text += f" (p99 {format_number(best.p99)} ms, {rounded(best.throughput)} rps)"
    below = [t for t in found.tried if t.workers < found.best]
    if below:
        near = below[-1]
        text += f"; {near.workers} gave p99 {format_number(near.p99)} ms"
    return text + f" — {found.storms} storm{'s' if found.storms != 1 else ''}"
