"""The same FastAPI endpoint answering with a Pydantic v2 model or its v1 twin (``pydantic.v1``).

Pydantic 2 ships the v1 API as ``pydantic.v1``, so one app can serialise the same order
both ways: ``/orders-v2/{n}`` returns a v2 model (FastAPI serialises it in Rust),
``/orders-v1/{n}`` returns the v1 model's ``.json()`` as it is, the way a v1 app paid for it.
"""

from __future__ import annotations

from datetime import datetime

import pydantic.v1 as pv1
from fastapi import FastAPI, Response
from pydantic import BaseModel

#: Lines of an order: enough nested objects for serialisation to show, like a real payload.
LINES = 50


class LineV2(BaseModel):
    sku: str
    name: str
    quantity: int
    unit_price: float
    tags: list[str]


class OrderV2(BaseModel):
    id: int
    customer: str
    created: datetime
    lines: list[LineV2]
    total: float


class LineV1(pv1.BaseModel):
    sku: str
    name: str
    quantity: int
    unit_price: float
    tags: list[str]


class OrderV1(pv1.BaseModel):
    id: int
    customer: str
    created: datetime
    lines: list[LineV1]
    total: float


def order_data(order_id: int, lines: int = LINES) -> dict[str, object]:
    """The order both models are built from."""
    items = [
        {
            "sku": f"SKU-{order_id}-{i}",
            "name": f"Item number {i}",
            "quantity": i % 7 + 1,
            "unit_price": 9.99 + i,
            "tags": ["blue", "large", f"batch-{i % 3}"],
        }
        for i in range(lines)
    ]
    total = sum(float(str(i["unit_price"])) * int(str(i["quantity"])) for i in items)
    return {
        "id": order_id,
        "customer": f"customer-{order_id}",
        "created": datetime(2026, 11, 30, 12, 0, 0),
        "lines": items,
        "total": total,
    }


app = FastAPI()


@app.get("/orders-v2/{order_id}")
async def order_v2(order_id: int) -> Response:
    order = OrderV2(**order_data(order_id))  # type: ignore[arg-type]
    return Response(order.model_dump_json(), media_type="application/json")


@app.get("/orders-v1/{order_id}")
async def order_v1(order_id: int) -> Response:
    order = OrderV1(**order_data(order_id))
    return Response(order.json(), media_type="application/json")
