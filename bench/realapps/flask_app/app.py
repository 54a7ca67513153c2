"""A Flask app behind apig-wsgi, as one deploys it to AWS Lambda: JSON routes, an order POST route."""
import os

from apig_wsgi import make_lambda_handler
from flask import Flask, jsonify, request

P = os.environ.get("APP_PREFIX", "/flask")
app = Flask(__name__)


@app.get(P + "/items/<item_id>")
def item(item_id):
    return jsonify(id=item_id, q=request.args.getlist("q"))


@app.post(P + "/orders")
def order():
    data = request.get_json(silent=True) or {}
    if not isinstance(data.get("item"), str) or not isinstance(data.get("quantity"), int):
        return jsonify(error="item (string) and quantity (integer) are required"), 400
    return jsonify(app="flask", item=data["item"], quantity=data["quantity"], total=round(data["quantity"] * 2.5, 2))


handler = make_lambda_handler(app)
