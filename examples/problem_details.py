"""RFC 9457 problem details for a Starlette app.

pip install -e '.[demo]' && python examples/problem_details.py
curl -i http://127.0.0.1:8000/orders/12      # 409 application/problem+json
curl -i http://127.0.0.1:8000/crash          # 500, no traceback in the body
"""

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from asgi_resilience import Overloaded, Problem, ProblemDetailsMiddleware


class OrderLocked(Exception):
    pass


async def home(request: Request) -> Response:
    return JSONResponse({"try": ["/orders/12", "/orders/7", "/missing", "/busy", "/crash"]})


async def order(request: Request) -> Response:
    order_id = int(request.path_params["order_id"])
    if order_id == 12:
        raise Problem(409, type="out-of-stock", detail="Item 12 is sold out", item=order_id)
    if order_id == 7:
        raise OrderLocked(order_id)
    raise HTTPException(404, detail=f"No order {order_id}")


async def busy(request: Request) -> Response:
    raise Overloaded(retry_after=2)


async def crash(request: Request) -> Response:
    raise RuntimeError("the database password is hunter2")  # never shown to the client


app = Starlette(
    routes=[
        Route("/", home),
        Route("/orders/{order_id:int}", order),
        Route("/busy", busy),
        Route("/crash", crash),
    ]
)
app.add_middleware(CORSMiddleware, allow_origins=["*"])
app.add_middleware(
    ProblemDetailsMiddleware,
    type_base="https://example.com/problems/",
    mapping={OrderLocked: 423},
)

if __name__ == "__main__":
    import uvicorn

    uvicorn.run(app, host="127.0.0.1", port=8000)
