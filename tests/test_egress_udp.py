"""Datagrams off the machine are refused like connections: ``sendto``, ``sendmsg``, ``connect``
on UDP sockets and datagram endpoints.

Only names under ``.invalid`` and TEST-NET documentation addresses are aimed at, and only
through spies standing in for the underlying calls: a spy records, calls through for
loopback and refuses anything else, so no datagram can leave the machine even if the
guard let one through.
"""

from __future__ import annotations

import asyncio
import importlib
import socket
from typing import Any

import pytest

from pytest_concurrency._simio.egress import EgressGuard, EgressRefused, is_loopback

OFF_MACHINE = [
    ("192.0.2.7", 53),  # TEST-NET-1
    ("198.51.100.1", 53),  # TEST-NET-2
    ("203.0.113.5", 514),  # TEST-NET-3
    ("2001:db8::1", 53),  # IPv6 documentation range
    ("metrics.example.invalid", 8125),
]


class DatagramSpy:
    """Stands in for ``socket.socket.sendto``, ``sendmsg`` and ``connect``: records every
    address, calls through for loopback only, refuses the rest without sending."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.seen: list[Any] = []
        real_sendto = socket.socket.sendto
        real_sendmsg = socket.socket.sendmsg
        real_connect = socket.socket.connect

        def through(address: Any) -> bool:
            self.seen.append(address)
            return isinstance(address, tuple) and is_loopback(str(address[0]))

        def sendto(sock: socket.socket, data: Any, *args: Any) -> Any:
            if not through(args[-1]):
                raise ConnectionRefusedError("spy: nothing is sent off the machine")
            return real_sendto(sock, data, *args)

        def sendmsg(sock: socket.socket, buffers: Any, *args: Any) -> Any:
            address = args[2] if len(args) > 2 else None
            if address is not None and not through(address):
                raise ConnectionRefusedError("spy: nothing is sent off the machine")
            return real_sendmsg(sock, buffers, *args)

        def connect(sock: socket.socket, address: Any) -> Any:
            if not through(address):
                raise ConnectionRefusedError("spy: nothing is sent off the machine")
            return real_connect(sock, address)

        def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
            self.seen.append(host)
            raise socket.gaierror(socket.EAI_NONAME, "spy: no lookups")

        monkeypatch.setattr(socket.socket, "sendto", sendto)
        monkeypatch.setattr(socket.socket, "sendmsg", sendmsg)
        monkeypatch.setattr(socket.socket, "connect", connect)
        monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)

    @property
    def off_machine(self) -> list[Any]:
        return [a for a in self.seen if not (isinstance(a, tuple) and is_loopback(str(a[0])))]


@pytest.fixture
def spy(monkeypatch: pytest.MonkeyPatch) -> DatagramSpy:
    return DatagramSpy(monkeypatch)


def _udp(address: tuple[str, int]) -> socket.socket:
    family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
    return socket.socket(family, socket.SOCK_DGRAM)


@pytest.mark.parametrize("address", OFF_MACHINE, ids=[a[0] for a in OFF_MACHINE])
def test_datagrams_off_the_machine_are_refused_before_the_send(
    address: tuple[str, int], spy: DatagramSpy
) -> None:
    with EgressGuard() as guard, _udp(address) as sock:
        for send in (
            lambda: sock.sendto(b"x", address),
            lambda: sock.sendto(b"x", 0, address),
            lambda: sock.sendmsg([b"x"], [], 0, address),
            lambda: sock.connect(address),
        ):
            with pytest.raises(EgressRefused) as info:
                send()
            assert info.value.host == address[0]
            assert info.value.port == str(address[1])
    assert spy.seen == []
    assert guard.refused == 4


def test_datagrams_to_loopback_and_allowed_hosts_go_through(spy: DatagramSpy) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as receiver:
        receiver.bind(("127.0.0.1", 0))
        receiver.settimeout(5)
        here = receiver.getsockname()
        with EgressGuard(["192.0.2.7"]) as guard, _udp(here) as sock:
            sock.sendto(b"one", here)
            sock.sendmsg([b"two"], [], 0, here)
            # Opened on purpose: the guard lets it by, and the spy (not the network) refuses.
            with pytest.raises(ConnectionRefusedError) as info:
                sock.sendto(b"x", ("192.0.2.7", 53))
            assert not isinstance(info.value, EgressRefused)
            assert {receiver.recv(16), receiver.recv(16)} == {b"one", b"two"}
    assert guard.refused == 0
    assert spy.off_machine == [("192.0.2.7", 53)]


def test_an_asyncio_datagram_transport_is_refused(spy: DatagramSpy) -> None:
    errors: list[Exception] = []

    class Protocol(asyncio.DatagramProtocol):
        def error_received(self, exc: Exception) -> None:
            errors.append(exc)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(Protocol, local_addr=("127.0.0.1", 0))
        try:
            transport.sendto(b"x", ("192.0.2.7", 53))
        finally:
            transport.close()
        with pytest.raises(EgressRefused):
            await loop.create_datagram_endpoint(Protocol, remote_addr=("198.51.100.1", 53))

    with EgressGuard():
        asyncio.run(main())
    (error,) = errors  # a transport reports a failed send to its protocol
    assert isinstance(error, EgressRefused)
    assert error.host == "192.0.2.7"
    assert spy.off_machine == []


def test_a_uvloop_datagram_endpoint_is_refused(
    spy: DatagramSpy, monkeypatch: pytest.MonkeyPatch
) -> None:
    uvloop: Any = pytest.importorskip("uvloop")
    asked: list[Any] = []
    real = uvloop.Loop.create_datagram_endpoint

    async def endpoint(
        loop: Any, factory: Any, local_addr: Any = None, remote_addr: Any = None, **kw: Any
    ) -> Any:
        # libuv sends without ``socket``: this spy stands in for it, and sends nothing.
        asked.append(remote_addr)
        if remote_addr is not None and not is_loopback(str(remote_addr[0])):
            raise ConnectionRefusedError("spy: nothing is sent off the machine")
        return await real(loop, factory, local_addr, remote_addr, **kw)

    monkeypatch.setattr(uvloop.Loop, "create_datagram_endpoint", endpoint)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        with pytest.raises(EgressRefused):
            await loop.create_datagram_endpoint(
                asyncio.DatagramProtocol, remote_addr=("203.0.113.5", 514)
            )

    with EgressGuard():
        loop = uvloop.new_event_loop()
        try:
            loop.run_until_complete(main())
        finally:
            loop.close()
    assert asked == []


def test_the_datagram_patches_come_off(spy: DatagramSpy) -> None:
    before = (socket.socket.sendto, socket.socket.sendmsg)
    with pytest.raises(KeyboardInterrupt), EgressGuard():
        raise KeyboardInterrupt
    assert (socket.socket.sendto, socket.socket.sendmsg) == before
    uvloop = importlib.util.find_spec("uvloop")
    assert uvloop is None or "create_datagram_endpoint" not in vars(
        importlib.import_module("uvloop").Loop
    )
