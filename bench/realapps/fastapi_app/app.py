"""A FastAPI app behind Mangum, as one deploys it to AWS Lambda: pydantic validation on a POST route."""
import os
from typing import List, Optional

from fastapi import FastAPI, Query
from mangum import Mangum
from pydantic import BaseModel, Field

P = os.environ.get("APP_PREFIX", "/fastapi")
app = FastAPI(title="orders")


class Order(BaseModel):
    item: str = Field(min_length=1, max_length=64)
    quantity: int = Field(ge=1, le=1000)
    note: Optional[str] = None


class Receipt(BaseModel):
    app: str
    item: str
    quantity: int
    total: float


@app.get(P + "/items/{item_id}")
def item(item_id: str, q: Optional[List[str]] = Query(default=None)):
    return {"id": item_id, "q": q or []}


@app.post(P + "/orders", response_model=Receipt)
def order(order: Order) -> Receipt:
    return Receipt(app="fastapi", item=order.item, quantity=order.quantity, total=round(order.quantity * 2.5, 2))


handler = Mangum(app, lifespan="off")
