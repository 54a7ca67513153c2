"""Always-on baseline: a Flask app served by gunicorn that calls the hello handler in-process.

The event is a small dict built from the request (the handler ignores it), so the baseline pays
for routing and a function call, not for an API Gateway event.
"""

from flask import Flask, Response, request
from index import handler

app = Flask(__name__)


@app.get("/hello/serverless")
def hello():
    event = {"rawPath": request.path, "rawQueryString": request.query_string.decode("latin-1"),
             "headers": dict(request.headers), "requestContext": {"http": {"method": request.method}}}
    return Response(handler(event, None), mimetype="text/plain")
