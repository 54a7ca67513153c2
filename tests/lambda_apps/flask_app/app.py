"""A Flask app behind apig-wsgi, as deployed to AWS Lambda (unchanged)."""
import hashlib

from apig_wsgi import make_lambda_handler
from flask import Flask, jsonify, make_response, redirect, request

P = "/flask"
app = Flask(__name__)


@app.get(P + "/items/<id>")
def item(id):
    return jsonify(id=id, q=request.args.getlist("q"))


@app.post(P + "/echo")
def echo():
    return jsonify(got=request.get_json())


@app.post(P + "/upload")
def upload():
    data = request.get_data()
    return jsonify(size=len(data), sha256=hashlib.sha256(data).hexdigest())


@app.get(P + "/cookies")
def cookies():
    resp = make_response(jsonify(seen=request.cookies.get("a")))
    resp.set_cookie("x", "1")
    resp.set_cookie("y", "2")
    return resp


@app.get(P + "/binary")
def binary():
    resp = make_response(bytes(range(256)))
    resp.headers["Content-Type"] = "image/png"
    return resp


@app.get(P + "/redirect")
def go():
    return redirect(P + "/items/1", code=302)


handler = make_lambda_handler(app, binary_support=True)
