"""A Litestar app behind the full stack, with per-handler options and problem+json errors.

pip install 'asgi-resilience[demo]' litestar && python examples/litestar_app.py
for i in 1 2 3 4 5 6; do curl -s -o /dev/null -w '%{http_code} ' http://127.0.0.1:8000/items/1; done; echo
curl -i http://127.0.0.1:8000/slow              # 504 application/problem+json after 0.5 s (@timeout)
curl -i http://127.0.0.1:8000/items/0           # 404 application/problem+json (Litestar's NotFoundException)
open http://127.0.0.1:8000/_resilience/        # the live dashboard (loopback only)
"""

import asyncio
import os
from typing import Annotated

from litestar import Litestar, asgi, get
from litestar.exceptions import NotFoundException
from litestar.params import PathParameter

from asgi_resilience import ResilienceStack, Rule, cache, dashboard_app, timeout
from asgi_resilience.integrations.litestar import ResiliencePlugin

stack = ResilienceStack(
    rate_limit={"rules": [Rule("5/minute", path="/items/*", name="items")]},
    cache=True,
    timeout={"timeout": 2.0},
    concurrency=50,
)

# Mounted inside the Litestar app, the dashboard is still outside the stack's rate limit rule above.
dashboard = asgi("/_resilience", is_mount=True, copy_scope=True)(dashboard_app(stack, allow_unauthenticated=True))


@get("/items/{item_id:int}")
@cache(ttl=30)  # the endpoint options work on Litestar route handlers, above or below @get
async def item(item_id: Annotated[int, PathParameter()]) -> dict[str, object]:
    if item_id == 0:
        raise NotFoundException(f"no item {item_id}")  # rendered as problem+json by the plugin
    await asyncio.sleep(0.05)
    return {"id": item_id, "name": f"item {item_id}"}


@get("/slow")
@timeout(0.5)
async def slow() -> str:
    await asyncio.sleep(10)
    return "too late"


app = stack.wrap(Litestar(route_handlers=[item, slow, dashboard], plugins=[ResiliencePlugin()]))

if __name__ == "__main__":
    import uvicorn

    uvicorn.run(app, host="127.0.0.1", port=int(os.environ.get("PORT", "8000")))
