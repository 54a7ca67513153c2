"""Google functions-framework: an HTTP function wrapping the hello handler."""

import functions_framework
from index import handler


@functions_framework.http
def hello(request):
    event = {"rawPath": request.path, "rawQueryString": request.query_string.decode("latin-1"),
             "headers": dict(request.headers), "requestContext": {"http": {"method": request.method}}}
    return handler(event, None), 200, {"Content-Type": "text/plain"}
