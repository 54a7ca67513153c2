"""A Powertools for AWS Lambda APIGatewayHttpResolver app, as deployed to AWS Lambda (unchanged)."""
import base64
import hashlib

from aws_lambda_powertools import Logger
from aws_lambda_powertools.event_handler import APIGatewayHttpResolver, Response
from aws_lambda_powertools.shared.cookies import Cookie

P = "/pt"
app = APIGatewayHttpResolver()
logger = Logger()


@app.get(P + "/items/<id>")
def item(id):
    q = app.current_event.get_query_string_value("q")  # HTTP API 2.0 joins repeated values with commas
    return {"id": id, "q": q.split(",") if q else []}


@app.post(P + "/echo")
def echo():
    return {"got": app.current_event.json_body}


@app.post(P + "/upload")
def upload():
    ev = app.current_event
    data = base64.b64decode(ev.body) if ev.is_base64_encoded else (ev.body or "").encode()
    return {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}


@app.get(P + "/cookies")
def cookies():
    seen = None
    for c in app.current_event.cookies or []:
        k, _, v = c.partition("=")
        if k == "a":
            seen = v
    return Response(status_code=200, content_type="application/json", body={"seen": seen},
                    cookies=[Cookie("x", "1"), Cookie("y", "2")])


@app.get(P + "/binary")
def binary():
    return Response(status_code=200, content_type="image/png", body=bytes(range(256)))


@app.get(P + "/redirect")
def go():
    return Response(status_code=302, headers={"Location": P + "/items/1"}, body="")


@logger.inject_lambda_context
def handler(event, context):
    return app.resolve(event, context)
