"""Which request a latency proxy charges: the app's connection to it is known by its local
port, and a new connection from a port an earlier one used starts with no request of its own.

Listeners on 127.0.0.1 stand in for two proxies; nothing else is reached.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from pytest_concurrency._probes.attribution import ledger
from pytest_concurrency._simio.egress import EgressGuard, request_on


@pytest.fixture
def listeners() -> Iterator[list[socket.socket]]:
    made = []
    for _ in range(2):
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(4)
        made.append(listener)
    yield made
    for listener in made:
        listener.close()


def _connect_from(port: int, to: tuple[str, int]) -> socket.socket:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.connect(to)
    return sock


def test_a_new_connection_from_a_reused_port_is_no_earlier_requests(
    listeners: list[socket.socket],
) -> None:
    first, second = (listener.getsockname() for listener in listeners)
    redirect = {("db-a.invalid", 5432): first, ("db-b.invalid", 5432): second}
    with EgressGuard(redirect=redirect):
        with ledger() as earlier:
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.connect(first)
            port = sock.getsockname()[1]
            sock.sendall(b"ping")
        assert request_on(port) is earlier
        served, _ = listeners[0].accept()
        served.close()  # the proxy's side closes first: the app's port is free again
        sock.close()
        # A later connection from the same port, to the other proxy, by no request yet:
        # what the proxy delays on it before it sends is not the earlier request's wait.
        again = _connect_from(port, second)
        try:
            assert request_on(port) is None
            with ledger() as later:
                again.sendall(b"ping")
            assert request_on(port) is later
        finally:
            again.close()
