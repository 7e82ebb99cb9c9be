"""A raw ASGI app (no framework) behind the full stack, with the dashboard beside it.

pip install 'asgi-resilience[demo]' && python examples/raw_asgi.py
for i in 1 2 3 4; do curl -s -o /dev/null -w '%{http_code} ' http://127.0.0.1:8000/; done; echo   # 200 200 200 429
curl -i http://127.0.0.1:8000/slow             # 504 application/problem+json after 1 s
open http://127.0.0.1:8000/_resilience/        # the live dashboard (loopback only)
"""

import asyncio
import os

from asgi_resilience import ResilienceStack, Rule, dashboard_app

stack = ResilienceStack(
    rate_limit=[Rule("3/minute", name="per-client")],  # the list shorthand: rules keyed by client IP
    timeout=1.0,  # seconds; the 504 is a problem+json response
    concurrency={"max_concurrent": 10, "max_queue": 10, "queue_timeout": 0.5},
)
dashboard = dashboard_app(stack, allow_unauthenticated=True)


async def hello(scope, receive, send):
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    if scope["path"] == "/slow":
        await asyncio.sleep(5)
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": b"hello from raw ASGI\n"})


api = stack.wrap(hello)


async def app(scope, receive, send):
    """Route /_resilience to the dashboard (outside the stack: watching costs no rate limit), the rest to the API."""
    path = scope.get("path", "")
    if scope["type"] == "http" and (path == "/_resilience" or path.startswith("/_resilience/")):
        scope = {**scope, "root_path": scope.get("root_path", "") + "/_resilience"}
        await dashboard(scope, receive, send)
    else:
        await api(scope, receive, send)


if __name__ == "__main__":
    import uvicorn

    uvicorn.run(app, host="127.0.0.1", port=int(os.environ.get("PORT", "8000")))
