"""What the loop monitor and the thread-pool probe share: start/stop, the loop, percentiles."""

from __future__ import annotations

import asyncio
import math
from types import TracebackType
from typing import Any, Self

from hdrh.histogram import HdrHistogram


def _percentiles_ms(histogram: HdrHistogram, *percentiles: float) -> list[float]:
    # One pass over the counts; hdrh's mean and stddev walk every bucket in Python
    # (tens of ms on a 1 µs..1 h histogram), so means are taken from the raw values.
    if not histogram.get_total_count():
        return [math.nan for _ in percentiles]
    values = histogram.get_percentile_to_value_dict(list(percentiles))
    return [values[p] / 1000 for p in percentiles]


def _running_asyncio_loop(what: str) -> asyncio.AbstractEventLoop:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        raise RuntimeError(
            f"{what} must be started from inside a running asyncio event loop "
            "(anyio's asyncio backend)"
        ) from None


class _StartStop:
    """``async with`` for a probe with ``start()`` and ``stop()`` coroutines."""

    async def start(self) -> None:
        raise NotImplementedError

    async def stop(self) -> Any:
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()
