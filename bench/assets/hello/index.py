def handler(event, context):
    return "Hello Serverless"
