"""Programmatic entry points: fire a storm without pytest."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

from ._budget import verdict_table
from ._errors import BudgetExceeded, ConcurrencyWarning
from ._params import Layer
from ._result import StormResult
from ._storm import StormPlan, plan_storm, run_plan, run_plan_async
from ._workload import Request, RequestFactory, split_requests

__all__ = ["arun_storm", "check_budgets", "run_storm", "warn_about"]


def warn_about(result: StormResult, *, stacklevel: int = 3) -> None:
    """Emit a :class:`ConcurrencyWarning` for each caveat the storm found in its own figures."""
    for message in result.warnings:
        warnings.warn(ConcurrencyWarning(f"{result.label}: {message}"), stacklevel=stacklevel)


def check_budgets(result: StormResult) -> None:
    """Raise :class:`BudgetExceeded` with the verdict table when a budget did not hold."""
    if not result.passed:
        broken = ", ".join(v.name for v in result.failed_verdicts)
        raise BudgetExceeded(f"storm broke its budget ({broken})\n{verdict_table(result)}", result)


def _plan(
    app: Any,
    method: str | None,
    path: str | None,
    requests: int | Sequence[Request] | RequestFactory | None,
    params: dict[str, Any],
) -> StormPlan:
    mix, params = split_requests(requests, params)
    return plan_storm(app, method, path, requests=mix, layers=[Layer("keyword argument", params)])


def run_storm(
    app: Any,
    method: str | None = None,
    path: str | None = None,
    *,
    requests: int | Sequence[Request] | RequestFactory | None = None,
    check: bool = True,
    **params: Any,
) -> StormResult:
    """Fire a storm at *app* and return its result; raise :class:`BudgetExceeded` if *check*."""
    result = run_plan(_plan(app, method, path, requests, params))
    warn_about(result)
    if check:
        check_budgets(result)
    return result


async def arun_storm(
    app: Any,
    method: str | None = None,
    path: str | None = None,
    *,
    requests: int | Sequence[Request] | RequestFactory | None = None,
    check: bool = True,
    **params: Any,
) -> StormResult:
    """Async twin of :func:`run_storm`."""
    result = await run_plan_async(_plan(app, method, path, requests, params))
    warn_about(result)
    if check:
        check_budgets(result)
    return result
