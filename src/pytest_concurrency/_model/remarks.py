"""The words of the notes and warnings a storm puts on its result as it runs.

The engine, the metrics and the Locust reader measure; each remark they make is one
function here that takes the figures and returns the sentence, so the wording lives in one
place and the measuring code carries data only. This module imports nothing of the package:
a measuring module that needs a sentence loads no report (sentences that combine several
results live in ``_report``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = [
    "LOCUST_NOTES",
    "abandoned_warning",
    "client_bound_warning",
    "client_share_warning",
    "contention_note",
    "contention_summary",
    "dropped_arrivals_warning",
    "gil_note",
    "harness_bound_remark",
    "idle_shards_note",
    "is_contention_note",
    "knee_note",
    "locust_no_status_warning",
    "rounds_note",
    "scale_note",
    "server_probes_missing_warning",
    "server_probes_not_applicable",
    "server_probes_note",
    "shared_loop_warning",
    "short_window_warning",
    "uncalled_routes_warning",
    "undeclared_upstream_warning",
    "unmatched_messages_note",
    "virtual_clock_notes",
    "virtual_uncharged_warning",
]

#: Undeclared upstream hosts named in a warning; the rest are counted only.
_HOSTS_SHOWN = 5

#: What Locust's figures cannot give, said on every result read back from it.
LOCUST_NOTES = (
    "Locust rounds each response time before counting it (locust.stats.bucket_response_time, "
    "Python's round(), half to even): to whole ms below 100 ms, to 10 ms from 100 ms, to 100 ms "
    "from 1 s, to 1 s from 10 s (about 2 significant digits); percentiles, min and max carry that "
    "rounding, the mean is exact; a request under 0.5 ms counts as 0 ms",
    "Locust paces each user on its own (closed model: a user sends its next request when the "
    "previous one returned and its wait_time passed); there is no open model, and latency "
    "counts from when a request was sent, not from when it was intended, so a stalled server "
    "also stalls the users and coordinated omission hides part of the stall",
    "Locust keeps no time to first byte, queue wait or worker saturation, and its timeline "
    "holds requests and failures per second without per-second percentiles",
)


def gil_note(busy: float) -> str:
    """A WSGI round that kept the process near a full core waited for the interpreter lock."""
    return (
        f"the process used {busy:.0%} of a core during the storm: "
        "Python threads share one interpreter lock, so latency includes waiting for it"
    )


#: From this share of a saturated loop on, the load generator, not the app, is what is
#: CPU-bound (the share at which the engine makes the remark a warning).
_HARNESS_BOUND = 0.5


def harness_bound_remark(loop_busy: float, harness_share: float, cost_us: float) -> str:
    """How much of a saturated event loop the load generator itself took, and what that means.

    Only when the load generator took most of it may a server of its own do better: when
    the app's own work kept the loop busy, it would keep a server's loop just as busy.
    """
    head = (
        f"the event loop shared by the app and the load generator was busy "
        f"{loop_busy:.0%} of the storm; the load generator itself took ≈{harness_share:.0%} "
        f"of that (≈{cost_us:.0f} µs per request): "
    )
    if harness_share >= _HARNESS_BOUND:
        return head + (
            "latency includes queueing for the CPU, so the app may do better than this on a "
            "server of its own"
        )
    return head + "the rest was the app's own work, which a server of its own would not remove"


def shared_loop_warning(busy: float) -> str:
    """A WebSocket round whose loop, shared with the load generator, was near saturation."""
    return (
        f"the event loop shared by the app and the load generator was busy {busy:.0%} of "
        "the storm: latency includes queueing for the CPU (how much of it the load "
        "generator took is not measured for WebSocket storms; server= runs the app on a "
        "server of its own)"
    )


def unmatched_messages_note(count: int, example: str | bytes | None) -> str:
    """Server messages a WebSocket round trip waited past: not its answer."""
    shown = example[:60] if example is not None else None
    return (
        f"{count:,} messages from the server answered no message that waited (not its echo, "
        f"nor what expect= accepts), for example {shown!r}: they were counted as unmatched "
        "and did not end a round trip"
    )


def client_bound_warning(client_cpu: float, server_cpu: float) -> str:
    """The load generator, not the server it loads, may have set the pace."""
    return (
        f"the load generator used {client_cpu:.0%} of a core while the server "
        f"used {server_cpu:.0%}: the client may be the bottleneck, not the server "
        "(spread the users over processes=)"
    )


def client_share_warning(client_cpu: float, server_cpu: float, cores: int, share: float) -> str:
    """Client and server shared a busy machine: the client's CPU was the server's loss."""
    low = share / (1 - share) if share < 1 else float("inf")
    return (
        f"the load generator used {client_cpu:.2f} of the machine's {cores} "
        f"core{'s' if cores != 1 else ''} while the server used {server_cpu:.2f}: together "
        f"they kept the machine busy, so the client's {share:.0%} of that CPU was taken from "
        f"the server, whose throughput may read up to {low:.0%} low (give the server cores "
        "of its own, or fewer users per client process)"
    )


def rounds_note(aggregate: str, p99s: Sequence[float], rps: Sequence[float]) -> str:
    """The spread of a storm's rounds (one p99 and one throughput each) and which one was judged."""
    return (
        f"{len(p99s)} rounds, judged on the {aggregate} one: p99 "
        f"{min(p99s):.1f}–{max(p99s):.1f} ms, {min(rps):,.0f}–{max(rps):,.0f} rps"
    )


def scale_note(scale: float) -> str:
    """The load was scaled from the command line while the budgets were not."""
    return f"load scaled ×{scale:g} for a quick run (--concurrency-scale); budgets unchanged"


def knee_note(
    second: int, target: float | None, open_model: bool, p99_ms: float, calm_p99_ms: float
) -> str:
    """Where p99 broke as the load rose, against its value at low load."""
    load = f"{target:,.0f} {'rps' if open_model else 'users'}" if target is not None else "?"
    return (
        f"knee: p99 broke at ≈{load} (second {second}: {p99_ms:,.1f} ms against "
        f"{calm_p99_ms:,.1f} ms at low load)"
    )


def dropped_arrivals_warning(dropped: int, max_in_flight: int) -> str:
    """Open-model arrivals that found the in-flight cap reached and were not sent."""
    return (
        f"{dropped:,} arrivals dropped: in_flight_cap={max_in_flight:,} requests "
        "were already in flight"
    )


def undeclared_upstream_warning(calls: int, hosts: Sequence[str]) -> str:
    """The app called hosts no simulated upstream declared (the first few are named)."""
    return (
        f"the app made {calls:,} call(s) to undeclared upstream hosts "
        f"({', '.join(hosts[:_HOSTS_SHOWN])}): declare them with upstream.route(...)"
    )


def uncalled_routes_warning(
    routes: Sequence[str], failed: int, errors: Sequence[tuple[str, int]]
) -> str:
    """Declared routes never called in a storm whose requests failed: the app's calls missed them."""
    listed = ", ".join(routes[:_HOSTS_SHOWN]) + (" …" if len(routes) > _HOSTS_SHOWN else "")
    seen = "; ".join(f"{kind} ×{count:,}" for kind, count in errors[:_HOSTS_SHOWN])
    return (
        f"upstream route{'s' if len(routes) > 1 else ''} {listed} declared but never called, "
        f"while {failed:,} request(s) failed ({seen or 'no error recorded'}): the app's calls "
        "did not reach the simulated upstream: a call must match a route's scheme, host, port "
        "and path prefix (httpx and httpx2 are answered in-process, other clients through the "
        "storm's loopback server)"
    )


def idle_shards_note(processes: int, shards: int) -> str:
    """Fewer shards ran than processes were asked for, since the load did not need them."""
    return f"processes={processes} but only {shards} shard(s) had load to carry"


def shard_proxy_note(processes: int, proxies: Sequence[str]) -> str:
    """Requests sent from forked shards crossed latency proxies that run in the parent
    process: their delays could not be charged to those requests."""
    listed = ", ".join(proxies)
    return (
        f"processes={processes}: the delays of latency prox{'ies' if len(proxies) > 1 else 'y'} "
        f"{listed} on requests sent from the shards appear only in the proxy's totals "
        "(result.upstream), not in the per-request breakdown"
    )


def virtual_clock_notes(charge_floor_ms: float) -> list[str]:
    """What a round on the virtual clock charged to the clock and what it could not measure."""
    return [
        "virtual time: waits cost no wall time; the app's own work was charged to the "
        f"clock in steps of {charge_floor_ms:g} ms or more, the load generator's never",
        "event-loop lag and thread pools were not measured: a virtual loop never lags "
        "and refuses threads",
    ]


def virtual_uncharged_warning(uncharged_ms: float, charge_floor_ms: float, share: float) -> str:
    """The app's work left off the virtual clock was large enough to flatter the figures."""
    return (
        f"clock='virtual' left {uncharged_ms:,.0f} ms of the app's own work "
        f"uncharged (steps under {charge_floor_ms:g} ms each), {share:.0%} of a core "
        "over the storm: a real server would queue for the CPU, so these figures are "
        "optimistic; compare with clock='wall'"
    )


def short_window_warning(window_s: float, round_s: float, users: int, throughput: float) -> str:
    """A closed-model window shorter than one round of its users saw only the start-up."""
    shown = f"≈{round_s:,.2f} s" if math.isfinite(round_s) else "longer than the storm"
    return (
        f"the measured window ({window_s:.2f} s) is shorter than one round of users "
        f"({shown}: {users:,} users / {throughput:,.1f} rps): the figures describe "
        "a start-up transient; lengthen duration or warmup"
    )


def locust_no_status_warning(user_class: str) -> str:
    """A locustfile that counts no status codes leaves the status table empty."""
    return (
        "Locust reported no status codes: the locustfile does not count them "
        f"(the generated {user_class} file does)"
    )


def abandoned_warning(count: int, grace_s: float) -> str:
    """Why some of the app's tasks were abandoned, and what the app should do instead."""
    return (
        f"{count:,} app task{'' if count == 1 else 's'} went on after being cancelled (the app caught "
        f"CancelledError and carried on) and {'was' if count == 1 else 'were'} abandoned "
        f"{grace_s:g} s later, as a server would kill its worker: a handler must let "
        "CancelledError propagate (re-raise it after cleaning up), or a server leaks "
        "the task and its connection"
    )


def unused_server_model_note(name: str, value: int, origin: str) -> str:
    """Why ``workers``/``threads`` changed nothing in an in-process ASGI storm."""
    return (
        f"{name}={value} (from {origin}) was not applied: an ASGI app in-process runs on one "
        "event loop whatever the count (workers and threads are a WSGI server's pool); for "
        "more loops use processes=N, or a real server: server='uvicorn' with workers=N"
    )


def virtual_unserved_warning(refused: Sequence[Mapping[str, Any]]) -> str:
    """Why calls to declared hosts were refused on the virtual clock."""
    first = refused[0]
    calls = sum(int(r.get("count") or 0) for r in refused)
    hosts = ", ".join(sorted({str(r.get("host")) for r in refused}))
    return (
        f"clock='virtual' answers declared upstream routes for httpx and httpx2 only, "
        f"in-process: {calls:,} call(s) to {hosts} from {first.get('client')} at "
        f"{first.get('site')} were refused, because other clients reach declared routes "
        "through the storm's loopback server, which runs on the wall clock and is not "
        "started under virtual time; run this storm with clock='wall', or call the upstream "
        "with httpx or httpx2"
    )


def server_probes_note(where: str) -> str:
    """Where the loop and thread-pool figures of a real-server storm were measured."""
    return f"event-loop lag and thread pools measured {where}"


def server_probes_missing_warning(where: str, reason: str) -> str:
    """Why the probes inside a real server sent back no figures."""
    return (
        f"event-loop lag and thread pools not measured {where}: {reason}; "
        "budgets on them fail as not measured"
    )


def server_probes_not_applicable(server: str) -> str:
    """Why a WSGI app behind a real server has no loop or thread-pool figures."""
    return (
        f"the event-loop and thread-pool probes do not apply: {server} runs a "
        "WSGI app on the server's own worker processes and threads, with no event loop to "
        "watch and none of the thread pools the probe knows"
    )


_CONTENTION_HEAD = "the storm's threads waited for a CPU "
_CONTENTION_WHY = (
    "other threads had the machine's cores — other processes', or the storm's own when it "
    "runs more threads than there are cores — so figures that depend on CPU read worse "
    "than the cores alone would give"
)


def contention_note(wait_share: float, wait_s: float) -> str:
    """The share of its CPU demand the machine left a storm waiting for."""
    return (
        f"{_CONTENTION_HEAD}{wait_share:.0%} of the time they were ready to "
        f"run ({wait_s:.2f} s over the round, Linux schedstat): {_CONTENTION_WHY}"
    )


def is_contention_note(note: str) -> bool:
    """True for a note made by :func:`contention_note` (said once per session in a summary)."""
    return note.startswith(_CONTENTION_HEAD)


def contention_summary(storms: int, shares: Sequence[float]) -> str:
    """The contention notes of several storms as one line (each keeps its own on its result)."""
    spread = ""
    if shares:
        low, high = min(shares), max(shares)
        spread = f"{low:.0%} " if f"{low:.0%}" == f"{high:.0%}" else f"{low:.0%}–{high:.0%} "
    return (
        f"the threads of {storms} storms waited for a CPU {spread}of the time they were "
        f"ready to run (Linux schedstat; each storm's figure is in its notes): {_CONTENTION_WHY}"
    )
