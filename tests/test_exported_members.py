"""The public surface is deliberate: everything exported is listed, and nothing else."""

from __future__ import annotations

import pytest_concurrency


def test_all_names_exist_and_are_documented() -> None:
    for name in pytest_concurrency.__all__:
        member = getattr(pytest_concurrency, name)
        if name != "__version__":
            assert member.__doc__, f"{name} has no docstring"


def test_public_surface() -> None:
    public = {n for n in dir(pytest_concurrency) if n.isidentifier() and not n.startswith("_")}
    assert public - {"plugin"} == set(pytest_concurrency.__all__) - {"__version__"}


def test_websocket_storms_are_public() -> None:
    assert {"run_websocket_storm", "WebSocketResult"} <= set(pytest_concurrency.__all__)
    assert issubclass(pytest_concurrency.WebSocketResult, pytest_concurrency.StormResult)


def test_side_by_side_with_real_servers_is_public() -> None:
    assert {"compare", "Fidelity"} <= set(pytest_concurrency.__all__)
