"""Storms of a pytest session, shared by the plugin and the report writers."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from ._model.result import StormResult

__all__ = ["STORMS_KEY", "SessionStorms"]


@dataclass
class SessionStorms:
    """Every storm fired in this session, in order, with the node id of its test."""

    rows: list[tuple[str, StormResult]] = field(default_factory=list)


STORMS_KEY = pytest.StashKey[SessionStorms]()
