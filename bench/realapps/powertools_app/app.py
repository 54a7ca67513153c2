"""A Powertools for AWS Lambda app: APIGatewayHttpResolver routes with Logger, Tracer and Metrics.

Tracer runs disabled (``POWERTOOLS_TRACE_DISABLED=true`` in the function's environment): there is
no X-Ray daemon here, and Powertools still imports the X-Ray SDK (and with it botocore), as on Lambda.
Metrics print CloudWatch EMF lines to stdout, which is how they leave a Lambda function anyway.
"""
import os

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.event_handler import APIGatewayHttpResolver
from aws_lambda_powertools.metrics import MetricUnit

P = os.environ.get("APP_PREFIX", "/powertools")
app = APIGatewayHttpResolver()
logger = Logger()
tracer = Tracer()
metrics = Metrics()


@app.get(P + "/items/<item_id>")
@tracer.capture_method
def item(item_id):
    q = app.current_event.get_query_string_value("q")
    return {"id": item_id, "q": q.split(",") if q else []}


@app.post(P + "/orders")
@tracer.capture_method
def order():
    data = app.current_event.json_body or {}
    if not isinstance(data.get("item"), str) or not isinstance(data.get("quantity"), int):
        return {"error": "item (string) and quantity (integer) are required"}, 400
    logger.info("order", extra={"item": data["item"], "quantity": data["quantity"]})
    metrics.add_metric(name="Orders", unit=MetricUnit.Count, value=1)
    return {"app": "powertools", "item": data["item"], "quantity": data["quantity"],
            "total": round(data["quantity"] * 2.5, 2)}


@logger.inject_lambda_context
@tracer.capture_lambda_handler
@metrics.log_metrics
def handler(event, context):
    return app.resolve(event, context)
