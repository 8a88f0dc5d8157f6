"""Waits are charged to the request that waited, across the threads it hands work to."""

from __future__ import annotations

import asyncio

import anyio.to_thread

from pytest_concurrency._probes.attribution import charge, current, ledger


def test_a_wait_is_charged_only_inside_an_open_ledger() -> None:
    charge("pool", "nowhere", 1.0)  # no request: nothing to charge, nothing raised
    assert current() is None
    with ledger() as book:
        charge("pool", "sqlalchemy", 0.25)
        charge("upstream", "GET http://model/generate", 0.05)
        charge("pool", "sqlalchemy", 0.0)  # no wait, no entry
    assert current() is None
    assert book.waits == [
        ("pool", "sqlalchemy", 0.25),
        ("upstream", "GET http://model/generate", 0.05),
    ]
    assert book.total("pool") == 0.25
    assert book.total() == 0.3


def test_concurrent_requests_keep_their_own_waits_and_threads_charge_their_request() -> None:
    async def request(n: int) -> list[tuple[str, str, float]]:
        with ledger() as book:
            await asyncio.sleep(0)
            await anyio.to_thread.run_sync(charge, "pool", f"p{n}", float(n))
            await asyncio.to_thread(charge, "connect", f"c{n}", 0.5)
            return book.waits

    async def main() -> list[list[tuple[str, str, float]]]:
        return list(await asyncio.gather(*(request(n) for n in (1, 2, 3))))

    assert asyncio.run(main()) == [
        [("pool", f"p{n}", float(n)), ("connect", f"c{n}", 0.5)] for n in (1, 2, 3)
    ]
