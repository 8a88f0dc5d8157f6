"""Exceptions and warnings of the public API."""

from __future__ import annotations

import pytest


class ConcurrencyWarning(pytest.PytestWarning):
    """A storm's figures may not mean what they seem (for example, the load generator was CPU-bound)."""


class ConfigError(ValueError):
    """A storm parameter is invalid; raised before any load is fired.

    The message names the parameter, the value and where it came from.
    """


class StormError(RuntimeError):
    """A storm could not run to completion (for example, the app's lifespan startup failed)."""


class BudgetExceeded(AssertionError):
    """A storm broke one or more of its budgets; the message is the verdict table."""

    def __init__(self, message: str, result: object = None) -> None:
        super().__init__(message)
        self.result = result


# Shown as pytest_concurrency.BudgetExceeded (their public home) in tracebacks.
for _cls in (ConcurrencyWarning, ConfigError, StormError, BudgetExceeded):
    _cls.__module__ = "pytest_concurrency"
