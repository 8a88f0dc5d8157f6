"""A throwaway certificate authority for ``https://`` routes served on loopback.

``https://`` routes reach clients other than httpx and httpx2 through the loopback
upstream's TLS port, which presents a certificate for the declared hosts issued by a CA
made in memory for this process with ``trustme`` (the ``clients`` extra). Nothing is written
to the system's trust store or to disk: while a storm runs, the egress guard loads the CA
into a client's ``ssl.SSLContext`` on its way to a TLS handshake with a declared https host
(``SSLContext.wrap_socket``, used by requests, urllib3 and ``urllib.request``, and
``wrap_bio``, used by asyncio's TLS and so by aiohttp), and into no other. A context that
was given the CA keeps it after the storm; the CA's key never left this process, and the
server that used it is gone. A loopback upstream process gets its host certificate and key
(:func:`server_pem`) over a socket pair and loads them from memory (``memfd``).
"""

from __future__ import annotations

import importlib
import ssl
import threading
from collections.abc import Iterable
from typing import Any

from .._optional import installed

__all__ = ["available", "ca_pem", "server_context", "server_pem"]

_LOCK = threading.Lock()
_CA: list[Any] = []


def available() -> bool:
    """Whether ``trustme`` is installed (https:// routes can be served on loopback)."""
    return bool(_CA) or installed("trustme")


def _ca() -> Any:
    with _LOCK:
        if not _CA:
            trustme: Any = importlib.import_module("trustme")
            _CA.append(trustme.CA(organization_name="pytest-storm throwaway CA"))
        return _CA[0]


def ca_pem() -> str:
    """The CA's certificate (PEM), for clients to trust."""
    pem: bytes = _ca().cert_pem.bytes()
    return pem.decode("ascii")


def server_context(hosts: Iterable[str]) -> ssl.SSLContext:
    """A server-side TLS context with a certificate for *hosts*, issued by the CA."""
    names = sorted(set(hosts))
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.set_alpn_protocols(["http/1.1"])
    _ca().issue_cert(*names).configure_cert(context)
    return context


def server_pem(hosts: Iterable[str]) -> bytes:
    """A key and certificate chain for *hosts* (PEM), issued by the CA, for a loopback
    upstream process to load from memory."""
    names = sorted(set(hosts))
    pem: bytes = _ca().issue_cert(*names).private_key_and_cert_chain_pem.bytes()
    return pem
