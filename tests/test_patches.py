"""The patch registry: nesting, removal in any order, every exit path; upstreams and probes on it."""

from __future__ import annotations

import asyncio
import itertools
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import anyio
import anyio.to_thread
import httpx
import pytest
from asgiref.sync import SyncToAsync, sync_to_async

from pytest_concurrency._model.probes import (
    ANYIO_LIMITER,
    ASGIREF_THREADS,
    DEFAULT_EXECUTOR,
    PoolUsage,
)
from pytest_concurrency._probes.patches import PATCHES, PatchRegistry
from pytest_concurrency._probes.pools import ThreadPoolProbe
from pytest_concurrency._simio import INSTALLED, Upstream


class Owner:
    def method(self) -> str:
        return "original"

    @staticmethod
    def static() -> str:
        return "static"

    @classmethod
    def klass(cls) -> str:
        return "class"


ORIGINAL = Owner.__dict__["method"]


def replacement(label: str) -> Callable[[Owner], str]:
    def method(self: Owner) -> str:
        return label

    return method


@pytest.mark.parametrize("count", [2, 3])
def test_patches_come_off_in_any_order(count: int) -> None:
    registry = PatchRegistry()
    for order in itertools.permutations(range(count)):
        patches = [registry.patch(Owner, "method", replacement(f"p{i}")) for i in range(count)]
        assert Owner().method() == f"p{count - 1}"
        live = set(range(count))
        for index in order:
            patches[index].remove()
            live.discard(index)
            # The newest patch still on is in effect; with none left, the original.
            expected = f"p{max(live)}" if live else "original"
            assert Owner().method() == expected, (order, index)
        assert Owner.__dict__["method"] is ORIGINAL
        assert registry.patched(Owner, "method") == []


def test_removing_twice_is_harmless_and_restores_descriptors() -> None:
    registry = PatchRegistry()
    static, klass = Owner.__dict__["static"], Owner.__dict__["klass"]
    with registry.patch(Owner, "static", staticmethod(lambda: "patched")) as first:
        with registry.patch(Owner, "klass", classmethod(lambda cls: "patched")):
            assert (Owner.static(), Owner.klass()) == ("patched", "patched")
        first.remove()
        first.remove()
        assert Owner.static() == "static"
    assert Owner.__dict__["static"] is static
    assert Owner.__dict__["klass"] is klass
    assert (Owner.static(), Owner.klass()) == ("static", "class")


def test_instance_patch_is_deleted_not_frozen() -> None:
    registry = PatchRegistry()
    owner = Owner()
    outer = registry.patch(owner, "method", lambda: "outer")
    inner = registry.patch(owner, "method", lambda: "inner")
    assert owner.method() == "inner"
    outer.remove()
    assert owner.method() == "inner"
    inner.remove()
    # Nothing of ours is left on the instance: the class's method shows through again.
    assert "method" not in vars(owner)
    assert owner.method() == "original"


def test_keyboard_interrupt_inside_a_patched_block_restores() -> None:
    registry = PatchRegistry()
    outer = registry.patch(Owner, "method", replacement("outer"))
    inner = registry.patch(Owner, "method", replacement("inner"))

    def interrupted() -> None:
        with outer, inner:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        interrupted()
    assert Owner.__dict__["method"] is ORIGINAL
    assert registry.patched(Owner, "method") == []


def test_wrappers_wrap_the_original_so_any_one_can_go_first() -> None:
    registry = PatchRegistry()
    calls: list[str] = []

    def tracing(label: str) -> Callable[[Callable[[Owner], str]], Callable[[Owner], str]]:
        def factory(original: Callable[[Owner], str]) -> Callable[[Owner], str]:
            def method(self: Owner) -> str:
                calls.append(label)
                return original(self)

            return method

        return factory

    first = registry.wrap(Owner, "method", tracing("first"))
    second = registry.wrap(Owner, "method", tracing("second"))
    assert Owner().method() == "original"
    first.remove()
    assert Owner().method() == "original"
    assert calls == ["second", "second"]
    second.remove()
    assert Owner.__dict__["method"] is ORIGINAL


def test_a_value_written_over_ours_is_left_alone() -> None:
    registry = PatchRegistry()
    theirs = replacement("theirs")
    ours = registry.patch(Owner, "method", replacement("ours"))
    Owner.method = theirs  # type: ignore[method-assign]
    try:
        ours.remove()
        assert Owner.__dict__["method"] is theirs
    finally:
        Owner.method = ORIGINAL  # type: ignore[method-assign]
    assert registry.patched(Owner, "method") == []


def test_a_refused_attribute_leaves_the_registry_empty() -> None:
    registry = PatchRegistry()
    with pytest.raises((AttributeError, TypeError)):
        registry.patch(object(), "anything", 1)
    with pytest.raises((AttributeError, TypeError)):
        registry.patch(int, "real", 1)
    assert registry.patched(int, "real") == []


# -- Upstream on the registry -----------------------------------------------------------------


def transports() -> tuple[object, object]:
    return (
        httpx.HTTPTransport.__dict__["handle_request"],
        httpx.AsyncHTTPTransport.__dict__["handle_async_request"],
    )


@pytest.fixture
def httpx_originals() -> Iterator[tuple[object, object]]:
    before = transports()
    yield before
    assert transports() == before


@pytest.mark.parametrize("count", [2, 3])
def test_nested_upstreams_uninstalled_in_every_order_restore_httpx(
    count: int, httpx_originals: tuple[object, object]
) -> None:
    for order in itertools.permutations(range(count)):
        upstreams = [Upstream() for _ in range(count)]
        for index, upstream in enumerate(upstreams):
            upstream.route("http://svc/", content=f"u{index}")
            upstream.install()
        live = set(range(count))
        with httpx.Client() as client:
            assert client.get("http://svc/").text == f"u{count - 1}"
            for index in order:
                upstreams[index].uninstall()
                live.discard(index)
                assert not upstreams[index].installed
                if live:
                    # The upstream installed last of those left answers.
                    assert client.get("http://svc/").text == f"u{max(live)}", (order, index)
        # Identity, not equality: the very functions httpx defined are back.
        assert transports()[0] is httpx_originals[0]
        assert transports()[1] is httpx_originals[1]
        assert not any(u in INSTALLED for u in upstreams)


def test_keyboard_interrupt_inside_an_upstream_restores_httpx(
    httpx_originals: tuple[object, object],
) -> None:
    outer = Upstream()
    with pytest.raises(KeyboardInterrupt), outer, Upstream():
        raise KeyboardInterrupt
    assert transports()[0] is httpx_originals[0]
    assert transports()[1] is httpx_originals[1]
    assert not outer.installed
    assert INSTALLED == []


# -- the thread-pool probe on the registry ----------------------------------------------------


def test_importing_the_plugin_patches_nothing() -> None:
    code = (
        "import anyio.to_thread, asgiref.sync\n"
        "run_sync = anyio.to_thread.run_sync\n"
        "handler = asgiref.sync.SyncToAsync.__dict__['thread_handler']\n"
        "import pytest_concurrency, pytest_concurrency.plugin\n"
        "import pytest_concurrency._probes.pools\n"
        "from pytest_concurrency._probes.patches import PATCHES\n"
        "assert anyio.to_thread.run_sync is run_sync\n"
        "assert asgiref.sync.SyncToAsync.__dict__['thread_handler'] is handler\n"
        "assert not PATCHES._slots, PATCHES._slots\n"
    )
    # The same modules as this process: the subprocess gets its import path.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run(
        [sys.executable, "-c", code], check=False, capture_output=True, text=True, env=env
    )
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("inner_first", [True, False])
def test_nested_probes_restore_anyio_asgiref_and_the_loop(inner_first: bool) -> None:
    run_sync = anyio.to_thread.run_sync
    thread_handler = SyncToAsync.__dict__["thread_handler"]

    async def work() -> None:
        await anyio.to_thread.run_sync(time.sleep, 0.002)
        await sync_to_async(time.sleep, thread_sensitive=False)(0.002)
        await asyncio.get_running_loop().run_in_executor(None, time.sleep, 0.002)

    async def main() -> tuple[list[PoolUsage], list[PoolUsage]]:
        loop = asyncio.get_running_loop()
        outer, inner = ThreadPoolProbe(), ThreadPoolProbe()
        await outer.start()
        await inner.start()
        assert anyio.to_thread.run_sync is not run_sync
        assert "run_in_executor" in vars(loop)
        await work()
        first, second = (inner, outer) if inner_first else (outer, inner)
        await first.stop()
        # The probe still running keeps its wrappers and keeps counting.
        assert anyio.to_thread.run_sync is not run_sync
        assert SyncToAsync.__dict__["thread_handler"] is not thread_handler
        assert "run_in_executor" in vars(loop)
        await work()
        await second.stop()
        assert "run_in_executor" not in vars(loop)
        return outer.result, inner.result

    outer, inner = anyio.run(main)

    assert anyio.to_thread.run_sync is run_sync
    assert SyncToAsync.__dict__["thread_handler"] is thread_handler
    assert PATCHES.patched(anyio.to_thread, "run_sync") == []
    assert PATCHES.patched(SyncToAsync, "thread_handler") == []
    # Both probes saw the work done while both ran.
    for pools in (outer, inner):
        limiter = next(p for p in pools if p.name == ANYIO_LIMITER)
        assert limiter.wait_p99_ms is not None
        assert next(p for p in pools if p.name == ASGIREF_THREADS).max_busy >= 1
        executor = next(p for p in pools if p.name == DEFAULT_EXECUTOR)
        assert executor.wait_p99_ms is not None


def test_a_probe_stopped_by_keyboard_interrupt_restores() -> None:
    run_sync = anyio.to_thread.run_sync
    thread_handler = SyncToAsync.__dict__["thread_handler"]
    loops: list[Any] = []

    async def main() -> None:
        loops.append(asyncio.get_running_loop())
        async with ThreadPoolProbe():
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        anyio.run(main)
    assert anyio.to_thread.run_sync is run_sync
    assert SyncToAsync.__dict__["thread_handler"] is thread_handler
    assert "run_in_executor" not in vars(loops[0])
