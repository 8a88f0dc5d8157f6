"""A FastAPI app on SQLAlchemy's async engine over asyncpg, as such apps are written: one
engine for the app's life (made at startup from ``DATABASE_URL``, disposed at shutdown),
and an endpoint that reads one row per request."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

ENGINE: dict[str, AsyncEngine] = {}


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    engine = create_async_engine(os.environ["DATABASE_URL"], pool_size=10, max_overflow=0)
    ENGINE["db"] = engine
    try:
        yield
    finally:
        del ENGINE["db"]
        await engine.dispose()


app = FastAPI(lifespan=lifespan)


@app.get("/items/{item_id}")
async def item(item_id: int) -> dict[str, Any]:
    async with ENGINE["db"].connect() as conn:
        row = (
            await conn.execute(
                text("select cast(:id as integer) as id, 'widget' as name"), {"id": item_id}
            )
        ).one()
    return {"id": row.id, "name": row.name}
