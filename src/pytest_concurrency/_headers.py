"""HTTP/1.1 header grammar: what a request may carry and what a real server refuses to send.

Names are tokens (RFC 9110 §5.6.2, h11's ``_abnf.token``). A request header value may not
hold CR, LF or NUL: on the wire they end the header or split the request (h11 refuses
them). A response header value is held to what gunicorn and uvicorn's httptools protocol
let through: HTAB, SP, visible characters and obs-text (0x80–0xFF), nothing else.
Nothing here imports the rest of the package.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

__all__ = [
    "HOP_BY_HOP",
    "RESPONSE_VALUE_BAD",
    "TOKEN",
    "TOKEN_BYTES",
    "WSGI_VALUE_BAD",
    "content_length",
    "request_header_fault",
    "response_header_fault",
    "wsgi_header_fault",
]

TOKEN = re.compile(r"[-!#$%&'*+.^_`|~0-9a-zA-Z]+")
_REQUEST_VALUE_BAD = re.compile(r"[\r\n\x00]")
#: A response header name, and what a response header value may not hold: controls but
#: HTAB, and DEL (WSGI: nor anything outside latin-1).
TOKEN_BYTES = re.compile(rb"[-!#$%&'*+.^_`|~0-9a-zA-Z]+")
RESPONSE_VALUE_BAD = re.compile(rb"[^\t\x20-\x7e\x80-\xff]")
WSGI_VALUE_BAD = re.compile(r"[^\t\x20-\x7e\x80-\xff]")

#: Hop-by-hop headers (RFC 9110 §7.6.1): PEP 3333 leaves them to the server, and wsgiref
#: refuses them from an app.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailers",
        "transfer-encoding",
        "upgrade",
    }
)


def request_header_fault(name: object, value: object) -> str | None:
    """Why a request header cannot be sent, or None when it can."""
    if not isinstance(name, str | bytes) or not isinstance(value, str | bytes):
        return "a header name and value must be str"
    text_name = name.decode("latin-1") if isinstance(name, bytes) else name
    text_value = value.decode("latin-1") if isinstance(value, bytes) else value
    if not TOKEN.fullmatch(text_name):
        return "a header name must be a token (letters, digits and !#$%&'*+-.^_`|~)"
    if _REQUEST_VALUE_BAD.search(text_value):
        return (
            "a header value must not contain CR, LF or NUL: on the wire they end the header "
            "and could split the request in two"
        )
    return None


def response_header_fault(name: bytes, value: bytes) -> str | None:
    """Why an ASGI response header would be refused by a real server, or None."""
    if not TOKEN_BYTES.fullmatch(name):
        return f"response header name {name!r} is not a token"
    if RESPONSE_VALUE_BAD.search(value):
        return (
            f"response header {name!r} has a value with CR, LF, NUL or another control: {value!r}"
        )
    return None


def wsgi_header_fault(name: str, value: str) -> str | None:
    """Why a WSGI response header would be refused by a real server (or PEP 3333), or None."""
    if not TOKEN.fullmatch(name):
        return f"response header name {name!r} is not a token"
    if WSGI_VALUE_BAD.search(value):
        return (
            f"response header {name!r} has a value with CR, LF, NUL, another control or a "
            f"character outside latin-1: {value!r}"
        )
    return None


def content_length(values: Sequence[bytes]) -> int | None:
    """The declared length of every ``content-length`` value given, or None if none was."""
    found: int | None = None
    for value in values:
        if value.isdigit() and len(value) <= 20 and len(values) == 1:
            return int(value)
        for part in value.split(b","):
            text = part.strip(b" \t")
            if not text.isdigit() or len(text) > 20:
                raise ValueError(f"content-length {value!r} is not a number of bytes")
            length = int(text)
            if found is not None and found != length:
                raise ValueError("conflicting content-length headers")
            found = length
    return found
