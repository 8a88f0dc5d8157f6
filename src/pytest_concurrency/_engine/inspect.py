"""Look at responses where a storm asks to: cookies for their user, error samples, checks.

One inspector serves a round whatever its executor (tasks on a loop, pool threads). It
is only consulted for responses whose headers and body the driver kept — when the storm
has checks or stateful users, or when the status is an error (for a sample body) — so a
storm without them pays nothing per request.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from .._checks import SAMPLE_BYTES, Checks, Response, Samples, headers_text
from .._metrics import ErrorBook
from .._workload import Request, RequestMix

__all__ = ["Inspector"]


class Inspector:
    """Judges kept responses for one round (thread-safe under the GIL)."""

    def __init__(
        self,
        book: ErrorBook,
        mix: RequestMix,
        checks: Checks,
        users: bool,
        *,
        deadline: float = math.inf,
    ) -> None:
        self.book = book
        #: How long the checks on one response may take (the request's timeout).
        self.deadline = deadline
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
        response = self.seen(user, status, raw_headers, chunks)
        if not checks:
            return 0
        return self._failed(index, response, checks.judge(response, self.deadline))

    async def ajudged(self, index: int, checks: Checks, response: Response) -> int:
        """The checks of a response :meth:`seen` on an event loop (``async def`` checks are
        awaited, each within the deadline); the error kind or 0."""
        return self._failed(index, response, await checks.ajudge(response, self.deadline))

    def check_failed(self, error: int) -> bool:
        """True when failure kind *error* is a check's (a check past its deadline is named
        as such, not as the request's timeout)."""
        return error != 0 and self.book.kinds[error] == "CheckFailed"

    def seen(
        self,
        user: Any,
        status: int,
        raw_headers: Sequence[Any] | None,
        chunks: Sequence[bytes] | None,
    ) -> Response:
        """The response as checks read it: *user* takes its cookies, an error body is sampled."""
        body = b"".join(chunks) if chunks else b""
        headers = headers_text(raw_headers or ())
        if user is not None and headers:
            user.absorb(headers)
        if status >= 400:
            self.samples.keep(status, body)
        return Response(status, headers, body)

    def _failed(self, index: int, response: Response, failure: str | None) -> int:
        if failure is None:
            return 0
        label = self.labels[index] if index < len(self.labels) else "?"
        sample = response.content[:SAMPLE_BYTES].decode("utf-8", "replace")
        return self.book.adopt("CheckFailed", f"{label}: {failure}\nbody: {sample}")
