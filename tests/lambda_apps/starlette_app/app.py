"""A Starlette app behind Mangum, as deployed to AWS Lambda (unchanged)."""
import hashlib

from mangum import Mangum
from starlette.applications import Starlette
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route

P = "/star"


async def item(request):
    return JSONResponse({"id": request.path_params["id"], "q": request.query_params.getlist("q")})


async def echo(request):
    return JSONResponse({"got": await request.json()})


async def upload(request):
    data = await request.body()
    return JSONResponse({"size": len(data), "sha256": hashlib.sha256(data).hexdigest()})


async def cookies(request):
    resp = JSONResponse({"seen": request.cookies.get("a")})
    resp.set_cookie("x", "1")
    resp.set_cookie("y", "2")
    return resp


async def binary(request):
    return Response(bytes(range(256)), media_type="image/png")


async def redirect(request):
    return RedirectResponse(P + "/items/1", status_code=302)


app = Starlette(routes=[Route(P + "/items/{id}", item), Route(P + "/echo", echo, methods=["POST"]),
                        Route(P + "/upload", upload, methods=["POST"]), Route(P + "/cookies", cookies),
                        Route(P + "/binary", binary), Route(P + "/redirect", redirect)])
handler = Mangum(app, lifespan="off")
