"""Look at responses where a storm asks to: cookies for their user, error samples, checks.

One inspector serves a round whatever its executor (tasks on a loop, pool threads). It
is only consulted for responses whose headers and body the driver kept — when the storm
has checks or stateful users, or when the status is an error (for a sample body) — so a
storm without them pays nothing per request.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .._checks import SAMPLE_BYTES, Checks, Response, Samples, headers_text
from .._metrics import ErrorBook
from .._workload import Request, RequestMix

__all__ = ["Inspector"]


class Inspector:
    """Judges kept responses for one round (thread-safe under the GIL)."""

    def __init__(self, book: ErrorBook, mix: RequestMix, checks: Checks, users: bool) -> None:
        self.book = book
        self.labels = mix.labels
        self.checks = checks
        self.endpoint_checks = [checks.merged(r.parsed_checks) for r in mix.requests]
        #: Keep headers and body of every response (checks that read them, cookies).
        self.capture = users or checks.needs_body or any(c.needs_body for c in self.endpoint_checks)
        #: Judge statuses even when the body is not kept.
        self.judges = bool(checks) or any(self.endpoint_checks)
        self.samples = Samples()

    def checks_for(self, index: int, request: Request | None = None) -> Checks:
        """The checks of endpoint *index* (or of a request built on the fly)."""
        if request is not None:
            return self.checks.merged(request.parsed_checks)
        return self.endpoint_checks[index] if self.endpoint_checks else self.checks

    def look(
        self,
        user: Any,
        index: int,
        checks: Checks,
        status: int,
        raw_headers: Sequence[Any] | None,
        chunks: Sequence[bytes] | None,
    ) -> int:
        """Cookies for *user*, a sample of an error body, the checks; the error kind or 0."""
        body = b"".join(chunks) if chunks else b""
        headers = headers_text(raw_headers or ())
        if user is not None and headers:
            user.absorb(headers)
        if status >= 400:
            self.samples.keep(status, body)
        if not checks:
            return 0
        failure = checks.judge(Response(status, headers, body))
        if failure is None:
            return 0
        label = self.labels[index] if index < len(self.labels) else "?"
        sample = body[:SAMPLE_BYTES].decode("utf-8", "replace")
        return self.book.adopt("CheckFailed", f"{label}: {failure}\nbody: {sample}")
