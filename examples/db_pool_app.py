"""FastAPI + SQLAlchemy async: an endpoint bound by its database connection pool, and its fix.

``GET /report`` takes a connection from the engine's pool and holds it for one 20 ms query
(``select pg_sleep(0.02)`` on PostgreSQL through asyncpg; on SQLite, where no server
runs, a 20 ms await while the connection is held: the pool queues the same way). With ``pool_size=5`` the endpoint serves at most 5 / 20 ms = 250 requests per
second however async the framework is: 100 users wait ≈ 100 / 250 s - 20 ms = 380 ms for
a connection (Little's law). ``pool_size=20`` serves 1,000 per second.

``make_app(url, pool_size)`` builds one; ``app`` (5 connections) and ``app_fixed`` (20)
use a SQLite file in the temporary directory. ``STORM_DATABASE_URL`` (a
``postgresql://`` URL) points both at PostgreSQL instead.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

#: How long each request holds its connection.
QUERY_SECONDS = 0.02
SMALL_POOL = 5
FIXED_POOL = 20
_SQLITE = Path(tempfile.gettempdir()) / "pytest-storm-db-pool-example.sqlite3"


def async_url(url: str) -> str:
    """``postgresql://…`` → ``postgresql+asyncpg://…``; a SQLite path or URL → aiosqlite."""
    if url.startswith(("postgresql://", "postgres://")):
        return "postgresql+asyncpg://" + url.split("://", 1)[1]
    if "://" not in url:
        return f"sqlite+aiosqlite:///{url}"
    return url


def make_engine(url: str, pool_size: int) -> AsyncEngine:
    """An async engine with a fixed pool of *pool_size* connections (no overflow)."""
    url = async_url(url)
    # aiosqlite answers in a thread per connection: no rollback on each return keeps
    # that hop (CPU a loaded machine may not have) out of the time a connection is held.
    reset = None if url.startswith("sqlite") else "rollback"
    return create_async_engine(
        url, pool_size=pool_size, max_overflow=0, pool_timeout=30, pool_reset_on_return=reset
    )


def make_app(url: str, pool_size: int) -> FastAPI:
    """The app on *url* with a pool of *pool_size* connections; the engine is disposed at shutdown."""
    engine = make_engine(url, pool_size)
    postgres = engine.dialect.name == "postgresql"

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await engine.dispose()

    app = FastAPI(lifespan=lifespan)
    app.state.engine = engine

    @app.get("/report")
    async def report() -> dict[str, int]:
        async with engine.connect() as conn:
            if postgres:
                await conn.execute(text("select pg_sleep(:s)"), {"s": QUERY_SECONDS})
            else:
                await asyncio.sleep(QUERY_SECONDS)  # the query's time, connection held
        return {"rows": 1}

    return app


_URL = os.environ.get("STORM_DATABASE_URL") or str(_SQLITE)
app = make_app(_URL, SMALL_POOL)
app_fixed = make_app(_URL, FIXED_POOL)
