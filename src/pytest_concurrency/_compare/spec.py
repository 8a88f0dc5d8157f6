"""What a control or experiment process is sent: the storm to run and where to import from."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .._params import Layer

__all__ = ["ChildSpec"]


@dataclass(frozen=True)
class ChildSpec:
    """A storm by import path, its parameter layers, and the process's ``sys.path``."""

    app: str
    method: str | None
    path: str | None
    requests: Sequence[Any] | Any
    layers: list[Layer]
    scale: tuple[float, str] | None
    sys_path: list[str]
