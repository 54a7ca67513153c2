"""A plain handler with pydantic and requests: validates the API Gateway event and its JSON body,
then prepares (never sends: no network) the request it would forward to a downstream service."""
import json
import os

import requests
from pydantic import BaseModel, Field, ValidationError

DOWNSTREAM = os.environ.get("DOWNSTREAM_URL", "https://orders.example.invalid/v1/orders")


class Http(BaseModel):
    method: str
    path: str


class RequestContext(BaseModel):
    http: Http


class ApiEvent(BaseModel):
    rawPath: str
    headers: dict[str, str] = {}
    body: str | None = None
    isBase64Encoded: bool = False
    requestContext: RequestContext


class Order(BaseModel):
    item: str = Field(min_length=1, max_length=64)
    quantity: int = Field(ge=1, le=1000)


def _answer(status, doc):
    return {"statusCode": status, "headers": {"Content-Type": "application/json"}, "body": json.dumps(doc)}


def handler(event, context):
    try:
        ev = ApiEvent.model_validate(event)
        order = Order.model_validate_json(ev.body or "{}")
    except ValidationError as exc:
        return _answer(400, {"error": exc.errors(include_url=False, include_context=False)})
    prepared = requests.Request("POST", DOWNSTREAM, json=order.model_dump(),
                                headers={"X-Request-Id": getattr(context, "aws_request_id", "-")}).prepare()
    return _answer(200, {"app": "pydantic", "item": order.item, "quantity": order.quantity,
                         "total": round(order.quantity * 2.5, 2), "forward": {
                             "method": prepared.method, "url": prepared.url, "bytes": len(prepared.body or b"")}})
