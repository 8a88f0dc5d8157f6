"""Tasks a storm can always end: cancelled once, then abandoned if the app will not let go.

A server cancels a request's task once when its client has gone or it shuts down. An
app that catches ``CancelledError`` and carries on would keep a task group waiting
forever (anyio re-delivers the cancellation on every ``await``, at full CPU), and
``asyncio.run`` waits for every task at shutdown. So the tasks that run app code are
plain asyncio tasks kept in a :class:`TaskSet`: one that is still running a grace period
after its cancellation is *abandoned* — its coroutine is closed, which raises
``GeneratorExit`` at its ``await`` (its ``finally`` blocks run, as when a server kills
the worker) — and counted.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

import anyio

__all__ = ["ABANDON_GRACE", "TaskSet"]

#: After a cancellation, how long a task may take to end before it is abandoned.
ABANDON_GRACE = 1.0


class TaskSet:
    """Asyncio tasks run for one round: the first failure kept, the set's end awaited."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[None]] = set()
        self._dropped: set[asyncio.Task[None]] = set()
        self._ended = asyncio.Event()
        #: The first exception a task ended with (cancellations aside).
        self.failure: BaseException | None = None
        #: Tasks abandoned because the app went on after being cancelled.
        self.abandoned = 0

    def __len__(self) -> int:
        return len(self._tasks)

    def spawn(self, work: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """Run *work* as a task of the set."""
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        self._ended.clear()
        task.add_done_callback(self._task_ended)
        return task

    def _task_ended(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if task in self._dropped:
            self._dropped.discard(task)
            if not task.cancelled():
                task.exception()  # the closed coroutine's own error: retrieved, not logged
        elif not task.cancelled() and task.exception() is not None and self.failure is None:
            self.failure = task.exception()
            self._ended.set()
        if not self._tasks:
            self._ended.set()

    async def wait(self) -> None:
        """Until every task has ended, or one failed."""
        await self._ended.wait()

    def abandon(self, task: asyncio.Task[None]) -> None:
        """Stop waiting for a task whose app went on after it was cancelled."""
        if task.done() or task in self._dropped:
            return
        self.abandoned += 1
        self._dropped.add(task)
        try:
            task.get_coro().close()
        except RuntimeError:
            # It ignored GeneratorExit as well: no longer wait for it, nor let the
            # loop's shutdown wait for it.
            self._tasks.discard(task)
            asyncio.tasks._unregister_task(task)
            if not self._tasks:
                self._ended.set()
            return
        task.cancel()  # wakes the task, which then ends at once

    async def stop(self, grace: float) -> None:
        """Cancel the tasks still running; abandon those that have not ended after *grace*."""
        with anyio.CancelScope(shield=True):
            left = [task for task in self._tasks if not task.done()]
            for task in left:
                task.cancel()
            if not left:
                return
            _, pending = await asyncio.wait(left, timeout=grace)
            for task in pending:
                self.abandon(task)
            if pending:
                await asyncio.sleep(0)  # let the abandoned tasks wake and end
