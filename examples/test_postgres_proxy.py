"""What a production database's network hop does to an endpoint, measured on a local one.

A local PostgreSQL answers in a fraction of a millisecond; the one in production is a
network hop away. ``upstream.proxy`` puts a latency proxy in front of it, and the app keeps
its own ``DATABASE_URL``: during the storm its connections to the database go through the
proxy. The model: every round trip the request makes on its connection waits the proxy's
latency once, so adding 20 ms moves the median by 20 ms × the round trips per request,
which the proxy counts (one chunk from the database per round trip).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

pytest.importorskip("sqlalchemy")
pytest.importorskip("asyncpg")

from pytest_concurrency import Upstream, run_storm

ADDED_MS = 20.0
REQUESTS = 200
#: The timer's overshoot and a loaded 2-core machine's scheduling, per round trip.
SLACK_PER_TRIP_MS = 3.0


@pytest.fixture(scope="module")
def database_url(monkeypatch_module: pytest.MonkeyPatch) -> Iterator[str]:
    """A throwaway PostgreSQL on loopback (the test suite's), as the app's DATABASE_URL."""
    from tests._postgres import PostgresCluster, unavailable

    why = unavailable()
    if why is not None:
        pytest.skip(why)
    cluster = PostgresCluster.start()
    try:
        url = cluster.url.replace("postgresql://", "postgresql+asyncpg://", 1)
        monkeypatch_module.setenv("DATABASE_URL", url)
        yield url
    finally:
        cluster.stop()


@pytest.fixture(scope="module")
def monkeypatch_module() -> Iterator[pytest.MonkeyPatch]:
    with pytest.MonkeyPatch.context() as patch:
        yield patch


def _storm(url: str, latency: float | None) -> tuple[Any, dict[str, Any]]:
    from examples.fastapi_postgres_app import app

    host_port = url.split("@", 1)[1].split("/", 1)[0]
    with Upstream() as upstream:
        upstream.proxy(host_port, name="postgres", latency=latency)
        result = run_storm(app, "GET", "/items/7", users=4, requests=REQUESTS)
    return result, result.upstream["postgres"]


def test_twenty_ms_on_the_wire_moves_p50_by_twenty_ms_per_round_trip(database_url: str) -> None:
    base, base_proxy = _storm(database_url, None)
    slow, slow_proxy = _storm(database_url, ADDED_MS)
    assert base.status_counts == slow.status_counts == {200: REQUESTS}
    # Round trips per request, counted by the proxy: answers from the database per request
    # (the few connections' handshakes add a fraction of one).
    trips = slow_proxy["chunks_down_in_storm"] / REQUESTS
    # Latency on the wire changes when the bytes arrive, not how many exchanges there are.
    assert base_proxy["chunks_down_in_storm"] == pytest.approx(
        slow_proxy["chunks_down_in_storm"], rel=0.05
    )
    model_ms = round(trips) * ADDED_MS
    moved = slow.latency.p50 - base.latency.p50
    assert model_ms - 2 <= moved <= model_ms + round(trips) * SLACK_PER_TRIP_MS, (trips, moved)
