"""Refuse every connection that would leave the machine while a storm runs.

pytest-socket's model: the functions every client meets on its way out are replaced for
the storm's duration, and a destination that is not loopback (127.0.0.0/8, ``::1``,
``localhost``) or a host the user opened with ``allow_hosts=`` is refused *before* any
name is looked up or any packet sent. Guarded are name resolution (``socket.getaddrinfo``,
``gethostbyname``, ``gethostbyname_ex``; ``socket.create_connection`` goes through them),
``socket.socket.connect`` and ``connect_ex`` (a name given to ``connect`` is resolved by
the C library, so it is checked there too), ``sendto`` and ``sendmsg`` with an address
(UDP: a datagram needs no connection; asyncio's datagram transports send through them, and
uvloop's ``create_datagram_endpoint`` is checked for its ``remote_addr``), the event loop's ``getaddrinfo`` (asyncio runs
``socket.getaddrinfo`` on its default executor, where the caller's stack is gone: the
loop's method is checked first, on the caller's stack) and uvloop's resolving methods,
which never reach ``socket``, and aiohttp's resolvers (``AsyncResolver`` asks c-ares
directly). The error, :class:`EgressRefused`, is a ``ConnectionRefusedError``, so every
client fails the call as it would fail a refused connection; it names the host, the port,
the client library and the app's own line that made the call, read from the stack.

What runs in C below Python is out of reach: a C library's own sockets and name lookups
(libpq resolving a database host, c-ares in a driver other than aiohttp's resolver, a Rust
or Go extension's client) never meet these functions, so a host they reach is neither
refused nor counted; give such services loopback addresses (or a latency proxy) in tests.

Every refusal is counted by host, port, client and call site, so a storm can report and
fail on them. The patches go through the probes' patch registry and come off on every
exit path; a guard in place when a shard forks stays in place in the shard.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import importlib
import importlib.util
import ipaddress
import json
import os
import socket
import ssl
import sys
import tempfile
import threading
import weakref
from collections.abc import Callable, Collection, Iterable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from types import FrameType, TracebackType
from typing import Any

from .._optional import installed
from .._probes.attribution import Ledger, current
from .._probes.patches import Patch, remove_all, wrap

__all__ = [
    "EgressGuard",
    "EgressRefused",
    "Refusal",
    "anonymous_log",
    "direct_connections",
    "is_loopback",
    "loopback_serves",
    "read_log",
    "request_on",
    "tally",
]

#: Top-level packages of HTTP clients, with the name a report gives them.
_CLIENTS = {
    "httpx": "httpx",
    "httpcore": "httpx",
    "httpx2": "httpx2",
    "httpcore2": "httpx2",
    "aiohttp": "aiohttp",
    "aiohappyeyeballs": "aiohttp",
    "aiodns": "aiohttp",
    "requests": "requests",
    "urllib3": "urllib3",
    "openai": "openai",
    "anthropic": "anthropic",
    "urllib": "urllib",
    "http": "http.client",
}
#: Packages that sit between an app and its client without being either.
_PLUMBING = frozenset(
    {"pytest_concurrency", "anyio", "sniffio", "uvloop", "truststore", "idna", "certifi"}
    | {"yarl", "multidict", "pycares", "asgiref", "_pytest", "pluggy"}
)
_STDLIB = frozenset(sys.stdlib_module_names)
#: Servers that run the app: below the app on any stack, so a frame of theirs met before
#: the app's is the bottom of a task the client started (uvloop runs tasks from C, with no
#: ``asyncio.events`` frame between).
_SERVERS = frozenset({"uvicorn", "hypercorn", "granian", "gunicorn"})
_LOCALHOST = frozenset({"localhost", "localhost."})


@functools.lru_cache(maxsize=1024)
def is_loopback(host: str) -> bool:
    """True for ``localhost`` and IP literals in 127.0.0.0/8 or ``::1`` (IPv4-mapped too).

    Kept per host name: a client that reconnects per request asks about one host each time.
    """
    name = host.strip("[]").split("%", 1)[0].lower()
    if name in _LOCALHOST:
        return True
    try:
        address = ipaddress.ip_address(name)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


def _normal(host: str) -> str:
    return host.strip("[]").split("%", 1)[0].rstrip(".").lower()


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(_normal(host))
    except ValueError:
        return False
    return True


@dataclass(frozen=True)
class Refusal:
    """One refused destination and who asked for it: the key refusals are counted by."""

    host: str
    port: str
    client: str
    site: str

    def to_dict(self, count: int) -> dict[str, Any]:
        """The refusal and how many times it happened, as plain data."""
        return {
            "host": self.host,
            "port": self.port,
            "client": self.client,
            "site": self.site,
            "count": count,
        }


class EgressRefused(ConnectionRefusedError):
    """A connection that would have left the machine during a storm, refused before it was made."""

    def __init__(self, refusal: Refusal, *, declared: bool, allowed: Collection[str]) -> None:
        self.host = refusal.host
        self.port = refusal.port
        self.client = refusal.client
        self.site = refusal.site
        target = f"{refusal.host}:{refusal.port}" if refusal.port else refusal.host
        opened = f" and the allowed hosts ({', '.join(allowed)})" if allowed else ""
        if declared:
            advice = (
                f"{refusal.host!r} is declared on the upstream, but this call cannot be "
                "answered: httpx and httpx2 are answered in-process, other clients over "
                "loopback for http:// routes and for https:// routes when trustme is installed "
                "(the clients extra), in the storm's own process and its shards; "
                f'open the host on purpose with allow_hosts=["{refusal.host}"]'
            )
        else:
            advice = (
                "declare it with upstream.route(...) (httpx, httpx2) or open it on purpose "
                f'with allow_hosts=["{refusal.host}"]'
            )
        super().__init__(
            f"egress refused: {refusal.client} at {refusal.site} tried to reach {target}; "
            f"during a storm nothing leaves the machine (only loopback{opened}), so no name "
            f"was looked up and no connection made; {advice}"
        )
        # As a refused connection reads; aiohttp shows strerror, not the message.
        self.errno = errno.ECONNREFUSED
        self.strerror = self.args[0]
        self._made = (refusal, declared, tuple(allowed))

    def __reduce__(self) -> tuple[Any, ...]:
        # Keeps the message and the names when the error crosses a process boundary.
        return (_rebuild, self._made)


def _rebuild(refusal: Refusal, declared: bool, allowed: tuple[str, ...]) -> EgressRefused:
    return EgressRefused(refusal, declared=declared, allowed=allowed)


def _top(frame: FrameType) -> str:
    name = frame.f_globals.get("__name__")
    return name.partition(".")[0] if isinstance(name, str) else ""


def _client_of(frame: FrameType) -> str | None:
    name = frame.f_globals.get("__name__")
    if not isinstance(name, str):
        return None
    top = name.partition(".")[0]
    if top == "http" and name != "http.client":
        return None
    if top == "urllib" and name != "urllib.request":
        return None
    return _CLIENTS.get(top)


#: Where the app entered a client whose work goes on in tasks of its own (aiohttp resolves
#: names in a task it starts): tasks inherit the context, so a refusal there can still name
#: the app's line.
_ORIGIN: ContextVar[str | None] = ContextVar("pytest_storm_egress_origin", default=None)


#: Per aiohttp call: whether a refusal was counted in its context (a name lookup shared by
#: concurrent calls runs, and is refused, in the task of the first one only).
_COUNTED: ContextVar[list[bool] | None] = ContextVar("pytest_storm_egress_counted", default=None)


def _refusal_in(exc: BaseException) -> Refusal | None:
    """The refusal behind a client's error (its cause, context or ``os_error``), if any."""
    seen: set[int] = set()
    stack: list[BaseException | None] = [exc]
    while stack:
        current = stack.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, EgressRefused):
            return current._made[0]
        os_error = getattr(current, "os_error", None)
        stack += [
            current.__cause__,
            current.__context__,
            os_error if isinstance(os_error, BaseException) else None,
        ]
    return None


#: Modules of this package whose frames sit inside a client's own calls (a pool probe's or
#: the upstream's wrapper of a transport): walked through, as the client's frames are.
_INSIDE_CLIENTS = ("pytest_concurrency._probes.", "pytest_concurrency._simio.")


def _harness(frame: FrameType) -> bool:
    """A frame of this package that runs the storm, below the app (not one wrapping a
    client's call above it)."""
    name = frame.f_globals.get("__name__")
    return (
        isinstance(name, str)
        and name.startswith("pytest_concurrency.")
        and not name.startswith(_INSIDE_CLIENTS)
    )


def _caller(frame: FrameType | None) -> tuple[str, str]:
    """(client library, app's call site) from the stack above a guarded call."""
    outer: str | None = None
    inner: str | None = None
    site: str | None = None
    while frame is not None:
        client = _client_of(frame)
        if client is not None:
            inner = inner or client
            outer = client
        elif (
            _harness(frame)
            or frame.f_globals.get("__name__") == "asyncio.events"
            or _top(frame) in _SERVERS
        ):
            # The storm or a server below the app, or the loop running a task: the app's
            # frame is not on this stack (a task the client started).
            break
        else:
            top = _top(frame)
            if top and top not in _STDLIB and top not in _PLUMBING and top not in _CLIENTS:
                code = frame.f_code
                site = f"{code.co_filename}:{frame.f_lineno} in {code.co_name}"
                break
        frame = frame.f_back
    if site is None:
        site = _ORIGIN.get() or (
            f"an unknown call site (thread {threading.current_thread().name!r})"
        )
    if outer is None:
        return "a raw socket", site
    return (outer if inner == outer else f"{outer} ({inner})"), site


#: Longest call site written to a log: one line stays one atomic append.
_LOGGED_SITE = 1000


def anonymous_log() -> int:
    """An append-only file with no name, for processes forked with it open (shards): its
    descriptor. Nothing is left on disk, whatever ends the storm."""
    import fcntl  # POSIX only, as forked shards are

    fd, path = tempfile.mkstemp(prefix="pytest-storm-egress-", suffix=".jsonl")
    os.unlink(path)
    fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | os.O_APPEND)
    return fd


def _append(log: str | int, refusal: Refusal) -> None:
    line = json.dumps(
        [refusal.host, refusal.port, refusal.client, refusal.site[:_LOGGED_SITE]],
        ensure_ascii=True,
    )
    data = (line + "\n").encode("ascii")
    if isinstance(log, int):
        with contextlib.suppress(OSError):  # the storm is over: the refusal still stands
            os.write(log, data)
        return
    try:
        fd = os.open(log, os.O_WRONLY | os.O_APPEND)
    except OSError:
        return  # the storm is over and its log gone: the refusal itself still stands
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def read_log(log: str | int, offset: int = 0) -> tuple[list[Refusal], int]:
    """The refusals other processes appended to *log* (a path or a descriptor) from
    *offset*, and the offset after them."""
    try:
        if isinstance(log, int):
            chunks: list[bytes] = []
            at = offset
            while chunk := os.pread(log, 1 << 16, at):
                chunks.append(chunk)
                at += len(chunk)
            data = b"".join(chunks)
        else:
            with open(log, "rb") as file:
                file.seek(offset)
                data = file.read()
    except OSError:
        return [], offset
    end = data.rfind(b"\n") + 1  # a line still being written waits for the next read
    refusals = []
    for line in data[:end].splitlines():
        try:
            host, port, client, site = json.loads(line)
        except (ValueError, TypeError):
            continue
        refusals.append(Refusal(str(host), str(port), str(client), str(site)))
    return refusals, offset + end


def tally(counts: dict[Refusal, int]) -> list[dict[str, Any]]:
    """Refusals with their counts as plain data, most frequent first."""
    ordered = sorted(counts.items(), key=lambda item: (-item[1], item[0].host, item[0].site))
    return [refusal.to_dict(count) for refusal, count in ordered]


def _port(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _host_port(address: Any) -> tuple[str, Any] | None:
    """(host, port) of an AF_INET/AF_INET6 address; None for any other kind of address."""
    if isinstance(address, tuple) and len(address) >= 2:
        host = address[0]
        if isinstance(host, bytes):
            host = host.decode("ascii", "replace")
        if isinstance(host, str):
            return host, address[1]
    return None


_ACTIVE: list[EgressGuard] = []
_THREAD = threading.local()
#: The app's sockets connected to a latency proxy, each with its local port (the port the
#: proxy sees the connection come from).
_PROXIED: weakref.WeakKeyDictionary[socket.socket, int] = weakref.WeakKeyDictionary()
#: Local port of a proxied connection -> the request that last sent on it: the one waiting
#: for what the proxy delays next (a pooled connection serves one request at a time).
_SENDERS: dict[int, Ledger | None] = {}


def request_on(port: int) -> Ledger | None:
    """The ledger of the request that last sent on the app's connection from *port* to a
    latency proxy (None when none is known)."""
    return _SENDERS.get(port)


def _mark_proxied(sock: socket.socket) -> None:
    with contextlib.suppress(OSError, TypeError, IndexError):
        port = int(sock.getsockname()[1])
        _PROXIED[sock] = port
        # A new connection: no request has sent on it yet, whatever an earlier connection
        # from the same port (closed since) was last sent for.
        _SENDERS.pop(port, None)


def direct_connections() -> None:
    """Connections made from this thread go where they are aimed: a latency proxy's own
    connections to its target are not turned back into the proxy."""
    _THREAD.direct = True


def loopback_serves(host: Any, scheme: str = "http") -> bool:
    """Whether a guard in place sends *host*'s *scheme* (http or https) to a loopback upstream."""
    if scheme == "https":
        return any(guard._serves_tls(host) for guard in _ACTIVE)
    return any(guard._serves(host) for guard in _ACTIVE)


class EgressGuard:
    """Refuses non-loopback destinations while installed; a context manager.

    ``allow_hosts`` opens host names, IP addresses and networks on purpose (the addresses an
    allowed name resolves to are opened with it); ``declared`` gives the host names of the
    simulated upstream, named as such in the error.
    """

    def __init__(
        self,
        allow_hosts: Iterable[str] = (),
        *,
        declared: Callable[[], Collection[str]] | None = None,
        log: str | int | None = None,
        log_here: bool = False,
        serve: Collection[str] = (),
        serve_port: int | None = None,
        alias: str = "127.77.0.1",
        redirect: Mapping[tuple[str, int], tuple[str, int]] | None = None,
        serve_tls: Collection[str] = (),
        serve_tls_port: int | None = None,
        tls_ports: Collection[int] = (443,),
        tls_ca: str | None = None,
    ) -> None:
        self.allow_hosts = tuple(allow_hosts)
        # Refusals made in another process (a forked shard; a server's process when
        # log_here) are appended to the log file, where the storm's process reads them.
        self.log = log
        self._log_here = log_here
        self._pid = os.getpid()
        self._names = {_normal(h) for h in self.allow_hosts if "/" not in h and not _is_ip(h)}
        self._networks = [
            ipaddress.ip_network(_normal(h) if "/" not in h else h, strict=False)
            for h in self.allow_hosts
            if "/" in h or _is_ip(h)
        ]
        self._resolved: set[str] = set()
        self._declared = declared
        # Hosts answered by a loopback server: they resolve to ``alias``, and a connection
        # to ``alias`` goes to 127.0.0.1:serve_port instead.
        self._served = (
            frozenset(_normal(h) for h in serve) if serve_port is not None else frozenset()
        )
        self.alias = alias
        self._serve_port = serve_port
        # Hosts of https:// routes answered by the loopback server's TLS port: they resolve
        # to the alias too, a connection to the alias at one of ``tls_ports`` goes to the TLS
        # port, and a client's TLS context trusts ``tls_ca`` on its way to one of them.
        self._served_tls = (
            frozenset(_normal(h) for h in serve_tls)
            if serve_tls_port is not None and tls_ca is not None
            else frozenset()
        )
        self._served = self._served | self._served_tls
        self._serve_tls_port = serve_tls_port
        self._tls_ports = frozenset(int(p) for p in tls_ports)
        self._tls_ca = tls_ca
        self._trusting: weakref.WeakSet[ssl.SSLContext] = weakref.WeakSet()
        # Targets of latency proxies: a connection to one goes to its proxy instead.
        self._redirects = {(_normal(h), int(p)): to for (h, p), to in (redirect or {}).items()}
        self._proxies = {(_normal(h), int(p)) for h, p in self._redirects.values()}
        self._lock = threading.Lock()
        self._counts: dict[Refusal, int] = {}
        self._patches: tuple[Patch, ...] = ()

    # -- the rule

    def allows(self, host: str | None) -> bool:
        """Whether a connection to *host* may be made (None: the local wildcard)."""
        if host is None or host == "":
            return True
        if is_loopback(host):
            return True
        name = _normal(host)
        if name in self._names or name in self._resolved:
            return True
        if self._networks:
            try:
                address = ipaddress.ip_address(name)
            except ValueError:
                return False
            return any(address in network for network in self._networks)
        return False

    def _check(self, host: Any, port: Any, frame: FrameType | None) -> None:
        if isinstance(host, bytes):
            host = host.decode("ascii", "replace")
        if host is None or not isinstance(host, str) or self.allows(host):
            return
        client, site = _caller(frame)
        refusal = Refusal(_normal(host) or host, "" if port is None else str(port), client, site)
        self._count(refusal)
        counted = _COUNTED.get()
        if counted is not None:
            counted[0] = True
        declared = self._declared() if self._declared is not None else ()
        raise EgressRefused(refusal, declared=refusal.host in declared, allowed=self.allow_hosts)

    def _count(self, refusal: Refusal) -> None:
        if self.log is not None and (self._log_here or os.getpid() != self._pid):
            _append(self.log, refusal)
        else:
            with self._lock:
                self._counts[refusal] = self._counts.get(refusal, 0) + 1

    def serve(self, host: str) -> None:
        """Send *host* to the loopback server too (an http:// route declared while the guard
        is in place); a no-op for a guard that sends no host to one."""
        if self._serve_port is None:
            return
        with self._lock:
            # A new set, never one changed in place: lookups on other threads read it unlocked.
            self._served = self._served | {_normal(host)}

    def _serves(self, host: Any) -> bool:
        if not self._served:
            return False
        if isinstance(host, bytes):
            host = host.decode("ascii", "replace")
        return isinstance(host, str) and _normal(host) in self._served

    def _serves_tls(self, host: Any) -> bool:
        if not self._served_tls:
            return False
        if isinstance(host, bytes):
            host = host.decode("ascii", "replace")
        return isinstance(host, str) and _normal(host) in self._served_tls

    def _trust(self, context: ssl.SSLContext, server_side: bool, hostname: Any) -> None:
        """Load the session CA into a client context about to meet a served https host."""
        if (
            server_side
            or self._tls_ca is None
            or context.verify_mode == ssl.CERT_NONE
            or not self._serves_tls(hostname)
        ):
            return
        with self._lock:
            if context in self._trusting:
                return
            context.load_verify_locations(cadata=self._tls_ca)
            self._trusting.add(context)

    def _alias(self, port: Any, family: Any = 0, type: Any = 0, *args: Any, **kw: Any) -> Any:
        """``getaddrinfo``'s answer for a served host: the alias, at the port asked for."""
        socktype = type or socket.SOCK_STREAM
        if isinstance(port, bytes):
            port = port.decode("ascii")
        if isinstance(port, str):
            port = int(port) if port.isdigit() else socket.getservbyname(port)
        proto = socket.IPPROTO_TCP if socktype == socket.SOCK_STREAM else socket.IPPROTO_UDP
        return [(socket.AF_INET, socktype, proto, "", (self.alias, int(port or 0)))]

    def _redirect(self, address: Any) -> Any:
        """A connection to the alias goes to the loopback server; one to a latency proxy's
        target goes to the proxy (but not the proxy's own)."""
        if address[0] == self.alias:
            if self._serve_tls_port is not None and _port(address[1]) in self._tls_ports:
                return ("127.0.0.1", self._serve_tls_port)
            if self._serve_port is not None:
                return ("127.0.0.1", self._serve_port)
        if self._redirects and not getattr(_THREAD, "direct", False):
            host, port = address[0], address[1]
            if isinstance(host, bytes):
                host = host.decode("ascii", "replace")
            try:
                key = (_normal(str(host)), int(port))
            except (TypeError, ValueError):
                return address
            to = self._redirects.get(key)
            if to is not None:
                if len(address) == 4:  # an IPv6 socket reaches the proxy IPv4-mapped
                    return (f"::ffff:{to[0]}", to[1], *address[2:])
                return to
        return address

    def _to_proxy(self, address: Any) -> bool:
        """Whether *address* is a latency proxy's (the app's own connection to it)."""
        if not self._proxies or getattr(_THREAD, "direct", False):
            return False
        target = _host_port(address)
        if target is None:
            return False
        host = _normal(target[0])
        host = host.removeprefix("::ffff:")
        return (host, _port(target[1]) or 0) in self._proxies

    def _note(self, host: Any, infos: Any) -> None:
        """Open the addresses an allowed host name resolved to."""
        if not self._names or not isinstance(host, str) or _normal(host) not in self._names:
            return
        for info in infos:
            try:
                self._resolved.add(_normal(str(info[4][0])))
            except (IndexError, TypeError):
                continue

    # -- what was refused

    @property
    def refused(self) -> int:
        """How many connections were refused."""
        return sum(self.counts().values())

    def counts(self) -> dict[Refusal, int]:
        """How many times each destination was refused: in this process, and in the other
        processes that logged theirs."""
        with self._lock:
            counts = dict(self._counts)
        if self.log is not None:
            for refusal in read_log(self.log)[0]:
                counts[refusal] = counts.get(refusal, 0) + 1
        return counts

    def refusals(self) -> list[dict[str, Any]]:
        """Every refused destination with its client, call site and count, most frequent first."""
        return tally(self.counts())

    # -- installing

    @property
    def installed(self) -> bool:
        """Whether the guard's patches are in place."""
        return bool(self._patches)

    def install(self) -> None:
        """Put the guard in front of every way out (see the module docstring)."""
        if self._patches:
            raise RuntimeError("this EgressGuard is already installed")
        patches: list[Patch] = []
        try:
            for owner, name, factory in self._targets():
                patches.append(wrap(owner, name, factory))
        except BaseException:
            remove_all(patches)
            raise
        self._patches = tuple(patches)
        _ACTIVE.append(self)

    def uninstall(self) -> None:
        """Take the guard's patches off (a no-op when not installed)."""
        patches, self._patches = self._patches, ()
        if self in _ACTIVE:
            _ACTIVE.remove(self)
        if not _ACTIVE:
            _SENDERS.clear()
        remove_all(patches)

    def __enter__(self) -> EgressGuard:
        self.install()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.uninstall()

    # long: one small wrapper factory per guarded function, over the same five callables;
    # apart, each would take them as arguments and the list of targets would lose its place.
    def _targets(self) -> list[tuple[Any, str, Callable[[Any], Any]]]:
        check, note = self._check, self._note

        served, alias, redirect = self._serves, self._alias, self._redirect

        def resolver(original: Any) -> Any:
            def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
                if served(host):
                    return alias(port, *args, **kwargs)
                check(host, port, sys._getframe(1))
                infos = original(host, port, *args, **kwargs)
                note(host, infos)
                return infos

            return getaddrinfo

        def by_name(original: Any) -> Any:
            def gethostbyname(host: Any) -> Any:
                if served(host):
                    return self.alias
                check(host, None, sys._getframe(1))
                return original(host)

            return gethostbyname

        def by_name_ex(original: Any) -> Any:
            def gethostbyname_ex(host: Any) -> Any:
                if served(host):
                    return host, [], [self.alias]
                check(host, None, sys._getframe(1))
                return original(host)

            return gethostbyname_ex

        to_proxy = self._to_proxy

        def connector(original: Any) -> Any:
            def connect(sock: socket.socket, address: Any) -> Any:
                if sock.family in (socket.AF_INET, socket.AF_INET6):
                    target = _host_port(address)
                    if target is not None:
                        check(target[0], target[1], sys._getframe(1))
                        address = redirect(address)
                        if to_proxy(address):
                            # Known by its local port, which the proxy sees (a
                            # non-blocking connect has one once it has begun).
                            try:
                                return original(sock, address)
                            finally:
                                _mark_proxied(sock)
                return original(sock, address)

            return connect

        def stream_sender(original: Any) -> Any:
            def send(sock: socket.socket, data: Any, *args: Any) -> Any:
                port = _PROXIED.get(sock)
                if port is not None:
                    _SENDERS[port] = current()
                return original(sock, data, *args)

            return send

        def sender(original: Any) -> Any:
            def sendto(sock: socket.socket, data: Any, *args: Any) -> Any:
                # sendto(data, address) or sendto(data, flags, address); a name in the
                # address is resolved by the C library, so it is checked here first.
                if args and sock.family in (socket.AF_INET, socket.AF_INET6):
                    target = _host_port(args[-1])
                    if target is not None:
                        check(target[0], target[1], sys._getframe(1))
                return original(sock, data, *args)

            return sendto

        def message_sender(original: Any) -> Any:
            def sendmsg(sock: socket.socket, buffers: Any, *args: Any, **kw: Any) -> Any:
                # sendmsg(buffers, ancdata, flags, address): the address is the fourth.
                address = kw.get("address", args[2] if len(args) > 2 else None)
                if address is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
                    target = _host_port(address)
                    if target is not None:
                        check(target[0], target[1], sys._getframe(1))
                elif _PROXIED and (port := _PROXIED.get(sock)) is not None:
                    _SENDERS[port] = current()  # asyncio's writelines sends this way
                return original(sock, buffers, *args, **kw)

            return sendmsg

        def loop_datagram(original: Any) -> Any:
            async def create_datagram_endpoint(
                loop: Any, factory: Any, local_addr: Any = None, remote_addr: Any = None, **kw: Any
            ) -> Any:
                target = _host_port(remote_addr)
                if target is not None:
                    check(target[0], target[1], sys._getframe(1))
                return await original(loop, factory, local_addr, remote_addr, **kw)

            return create_datagram_endpoint

        def loop_resolver(original: Any) -> Any:
            async def getaddrinfo(loop: Any, host: Any, port: Any, *args: Any, **kw: Any) -> Any:
                if served(host):
                    return alias(port, *args, **kw)
                check(host, port, sys._getframe(1))
                infos = await original(loop, host, port, *args, **kw)
                note(host, infos)
                return infos

            return getaddrinfo

        def loop_connector(original: Any) -> Any:
            async def create_connection(
                loop: Any, factory: Any, host: Any = None, port: Any = None, **kw: Any
            ) -> Any:
                if served(host):
                    host = self.alias
                check(host, port, sys._getframe(1))
                if host is not None:
                    host, port = redirect((host, port))
                return await original(loop, factory, host, port, **kw)

            return create_connection

        def loop_sock_connector(original: Any) -> Any:
            async def sock_connect(loop: Any, sock: Any, address: Any) -> Any:
                if getattr(sock, "family", None) in (socket.AF_INET, socket.AF_INET6):
                    target = _host_port(address)
                    if target is not None:
                        check(target[0], target[1], sys._getframe(1))
                        address = redirect(address)
                return await original(loop, sock, address)

            return sock_connect

        def aiohttp_resolver(original: Any) -> Any:
            async def resolve(
                resolver: Any, host: Any, port: Any = 0, *args: Any, **kw: Any
            ) -> Any:
                if served(host):
                    # aiohttp's own form of an answer (its ResolveResult).
                    return [
                        {
                            "hostname": host,
                            "host": self.alias,
                            "port": port,
                            "family": socket.AF_INET,
                            "proto": 0,
                            "flags": socket.AI_NUMERICHOST | socket.AI_NUMERICSERV,
                        }
                    ]
                check(host, port, sys._getframe(1))
                return await original(resolver, host, port, *args, **kw)

            return resolve

        trust = self._trust

        def tls_socket(original: Any) -> Any:
            def wrap_socket(context: Any, sock: Any, *args: Any, **kw: Any) -> Any:
                server_side = kw.get("server_side", args[0] if args else False)
                hostname = kw.get("server_hostname", args[3] if len(args) > 3 else None)
                trust(context, bool(server_side), hostname)
                return original(context, sock, *args, **kw)

            return wrap_socket

        def tls_bio(original: Any) -> Any:
            def wrap_bio(context: Any, incoming: Any, outgoing: Any, *args: Any, **kw: Any) -> Any:
                server_side = kw.get("server_side", args[0] if args else False)
                hostname = kw.get("server_hostname", args[1] if len(args) > 1 else None)
                trust(context, bool(server_side), hostname)
                return original(context, incoming, outgoing, *args, **kw)

            return wrap_bio

        def aiohttp_request(original: Any) -> Any:
            async def _request(session: Any, *args: Any, **kw: Any) -> Any:
                # The site is read now: a suspended coroutine's frame has no caller.
                token = _ORIGIN.set(_caller(sys._getframe(1))[1])
                counted = [False]
                held = _COUNTED.set(counted)
                try:
                    return await original(session, *args, **kw)
                except Exception as exc:
                    refused = None if counted[0] else _refusal_in(exc)
                    if refused is not None:
                        # Concurrent calls to one host share one name lookup, refused and
                        # counted once, in the first call's task: count each call it failed.
                        self._count(refused)
                    raise
                finally:
                    _COUNTED.reset(held)
                    _ORIGIN.reset(token)

            return _request

        targets: list[tuple[Any, str, Callable[[Any], Any]]] = [
            (socket, "getaddrinfo", resolver),
            (socket, "gethostbyname", by_name),
            (socket, "gethostbyname_ex", by_name_ex),
            (socket.socket, "connect", connector),
            (socket.socket, "connect_ex", connector),
            (socket.socket, "sendto", sender),
            (asyncio.base_events.BaseEventLoop, "getaddrinfo", loop_resolver),
        ]
        if hasattr(socket.socket, "sendmsg"):
            targets.append((socket.socket, "sendmsg", message_sender))
        if self._proxies:
            # What the app sends to a latency proxy tells it whose request waits next.
            targets += [
                (socket.socket, "send", stream_sender),
                (socket.socket, "sendall", stream_sender),
            ]
        if self._served_tls:
            targets += [
                (ssl.SSLContext, "wrap_socket", tls_socket),
                (ssl.SSLContext, "wrap_bio", tls_bio),
            ]
        if "uvloop" not in sys.modules and installed("uvloop"):
            # A server may pick uvloop after the guard is in: its loop must be guarded then too.
            importlib.import_module("uvloop")
        uvloop = sys.modules.get("uvloop")
        if uvloop is not None and isinstance(getattr(uvloop, "Loop", None), type):
            # uvloop resolves and connects through libuv, never through ``socket``.
            targets += [
                (uvloop.Loop, "getaddrinfo", loop_resolver),
                (uvloop.Loop, "create_connection", loop_connector),
                (uvloop.Loop, "sock_connect", loop_sock_connector),
                # Its datagram transports send through libuv: their remote_addr is checked
                # here (a later transport.sendto(data, addr) to another address is not).
                (uvloop.Loop, "create_datagram_endpoint", loop_datagram),
            ]
        if "aiohttp.resolver" not in sys.modules and all(
            installed(name) for name in ("aiodns", "aiohttp")
        ):
            # aiohttp picks its c-ares resolver when aiodns is there: it never meets ``socket``.
            importlib.import_module("aiohttp.resolver")
        aiohttp_resolvers = sys.modules.get("aiohttp.resolver")
        if aiohttp_resolvers is not None:
            for name in ("ThreadedResolver", "AsyncResolver"):
                cls = getattr(aiohttp_resolvers, name, None)
                if isinstance(cls, type) and "resolve" in vars(cls):
                    targets.append((cls, "resolve", aiohttp_resolver))
        aiohttp_client = sys.modules.get("aiohttp.client")
        session = getattr(aiohttp_client, "ClientSession", None)
        if isinstance(session, type) and "_request" in vars(session):
            targets.append((session, "_request", aiohttp_request))
        return targets

    def __repr__(self) -> str:
        state = "installed" if self.installed else "not installed"
        return f"<EgressGuard {state}, {self.refused} refused>"
