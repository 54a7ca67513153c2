# An ordinary Lambda handler, unchanged: AWS's own runtime interface client (awslambdaric, vendored
# into vendor/ by `make examples`) runs it as the `provided` runtime's bootstrap.
def handler(event, context):
    name = (event.get("queryStringParameters") or {}).get("name", "world")
    print("greeting", name, "request", context.aws_request_id)
    return {"statusCode": 200, "headers": {"Content-Type": "text/plain"},
            "body": f"Hello {name} from awslambdaric, {context.get_remaining_time_in_millis() > 0}"}
