"""Cost of checking a response's headers as a real server does, per response.

    python benchmarks/response_headers.py

Three headers (content-length, content-type, a request id), in-process ASGI and WSGI:
lists equal to one already checked (the cache answers: most apps send a handful of
distinct lists), and lists that differ on every response (each checked in full).
Each figure is the best of nine runs of 50,000 responses, less the loop that feeds them.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from pytest_concurrency._drivers import asgi, wsgi


def _per_response(check: Callable[[Any], int] | None, make: Callable[[int], Any]) -> float:
    best = float("inf")
    n = 50_000
    for _ in range(9):
        lists = [make(i) for i in range(n)]
        started = time.perf_counter()
        if check is None:
            for _headers in lists:
                pass
        else:
            for headers in lists:
                check(headers)
        best = min(best, (time.perf_counter() - started) / n)
    return best * 1e9


def _asgi_new(i: int) -> list[tuple[bytes, bytes]]:
    return [
        (b"content-length", str(i % 1000).encode()),
        (b"content-type", b"text/plain; charset=utf-8"),
        (b"x-request-id", str(i).encode()),
    ]


def _asgi_equal(i: int) -> list[tuple[bytes, bytes]]:
    return [
        (b"content-length", str(13).encode()),
        (b"content-type", b"text/plain; charset=utf-8"),
        (b"x-request-id", str(1).encode()),
    ]


def _wsgi_new(i: int) -> list[tuple[str, str]]:
    return [
        ("Content-Type", "text/html; charset=utf-8"),
        ("Content-Length", str(i % 1000)),
        ("X-Request-Id", str(i)),
    ]


def _wsgi_equal(i: int) -> list[tuple[str, str]]:
    return [
        ("Content-Type", "text/html; charset=utf-8"),
        ("Content-Length", str(13)),
        ("X-Request-Id", str(1)),
    ]


def main() -> None:
    cases = [
        ("asgi, equal lists (cached)", asgi.response_headers, _asgi_equal),
        ("asgi, a new list each response", asgi.response_headers, _asgi_new),
        ("wsgi, equal lists (cached)", wsgi.response_headers, _wsgi_equal),
        ("wsgi, a new list each response", wsgi.response_headers, _wsgi_new),
    ]
    print("response header checks, 3 headers, ns per response (best of 9 × 50,000)")
    for name, check, make in cases:
        cost = _per_response(check, make) - _per_response(None, make)
        print(f"  {name:<32} {cost:8.0f}")


if __name__ == "__main__":
    main()
