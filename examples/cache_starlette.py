"""Response caching for a Starlette app, with purge by URL and by tag.

pip install -e '.[demo]' && python examples/cache_starlette.py        # memory backend
REDIS_URL=redis://127.0.0.1:6379/0 python examples/cache_starlette.py    # shared Redis + an L1

curl -i http://127.0.0.1:8000/products/1          # Cache-Status: asgi-resilience; fwd=miss; stored
curl -i http://127.0.0.1:8000/products/1          # Cache-Status: asgi-resilience; hit; ttl=59, Age: 1
curl -i http://127.0.0.1:8000/products/1 -H 'If-None-Match: <etag from above>'   # 304 from the cache
curl -i -X POST http://127.0.0.1:8000/products/1  # invalidates /products/1 (unsafe method)
curl -i -X POST http://127.0.0.1:8000/purge/products   # purge_tags("products")
curl -i http://127.0.0.1:8000/me -H 'Authorization: Bearer alice'  # never stored (private)
"""

import os
import time

import anyio
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from asgi_resilience import Cache, CacheMiddleware, CacheRule, cache

BACKEND = os.environ.get("REDIS_URL", "memory://")
shared = Cache(BACKEND, l1_entries=0 if BACKEND == "memory://" else 1000)


async def home(request: Request) -> Response:
    return JSONResponse({"try": ["/products/1", "/catalog", "/me", "POST /purge/products", "POST /purge?url=/catalog"]})


@cache(ttl=60, tags=["products"], stale_while_revalidate=30, stale_if_error=300)
async def product(request: Request) -> Response:
    if request.method == "POST":
        return JSONResponse({"updated": request.path_params["pid"]})  # 2xx: the cache invalidates the URL
    await anyio.sleep(0.05)  # an expensive page
    pid = request.path_params["pid"]
    return JSONResponse(
        {"product": pid, "rendered_at": time.time()},
        headers={"Surrogate-Key": f"product-{pid}"},  # extra tag, stripped before the client sees it
    )


async def catalog(request: Request) -> Response:
    # the app sets its own freshness: no decorator or rule needed
    return JSONResponse({"rendered_at": time.time()}, headers={"Cache-Control": "public, max-age=30"})


async def me(request: Request) -> Response:
    user = request.headers.get("authorization", "anonymous")
    return JSONResponse({"user": user}, headers={"Cache-Control": "private, max-age=60"})


async def purge_tag(request: Request) -> Response:
    count = await shared.purge_tags(request.path_params["tag"], soft=request.query_params.get("soft") == "1")
    return JSONResponse({"purged": count})


async def purge_url(request: Request) -> Response:
    return JSONResponse({"purged": await shared.purge(request.query_params.get("url", "/"))})


app = Starlette(
    routes=[
        Route("/", home),
        Route("/products/{pid}", product, methods=["GET", "POST"]),
        Route("/catalog", catalog),
        Route("/me", me),
        Route("/purge/{tag}", purge_tag, methods=["POST"]),
        Route("/purge", purge_url, methods=["POST"]),
    ]
)
app.add_middleware(CacheMiddleware, cache=shared, rules=[CacheRule("/purge*", bypass=True)])

if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(os.environ.get("PORT", "8000")))
