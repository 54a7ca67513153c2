"""A FastAPI app behind Mangum, as deployed to AWS Lambda (unchanged)."""
import hashlib
from typing import List, Optional

from fastapi import FastAPI, Query, Request, Response
from fastapi.responses import RedirectResponse
from mangum import Mangum
from pydantic import BaseModel

P = "/fast"
app = FastAPI()


class Thing(BaseModel):
    name: str
    n: int


@app.get(P + "/items/{id}")
def item(id: str, q: Optional[List[str]] = Query(default=None)):
    return {"id": id, "q": q or []}


@app.post(P + "/echo")
def echo(thing: Thing):
    return {"got": thing.model_dump()}


@app.post(P + "/upload")
async def upload(request: Request):
    data = await request.body()
    return {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}


@app.get(P + "/cookies")
def cookies(request: Request, response: Response):
    response.set_cookie("x", "1")
    response.set_cookie("y", "2")
    return {"seen": request.cookies.get("a")}


@app.get(P + "/binary")
def binary():
    return Response(bytes(range(256)), media_type="image/png")


@app.get(P + "/redirect")
def redirect():
    return RedirectResponse(P + "/items/1", status_code=302)


handler = Mangum(app, lifespan="off")
