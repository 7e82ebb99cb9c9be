"""Rate limiting a Starlette app behind a proxy: per-client limits, a global cap, a shadow rule,
per-endpoint limits on a route and on a mounted sub-app, a WebSocket endpoint, and Redis fail-over.

pip install -e '.[demo]' && python examples/ratelimit_starlette.py
RATE_LIMIT_STORAGE=redis://127.0.0.1:6379/0 python examples/ratelimit_starlette.py

curl -i http://127.0.0.1:8000/ -H 'X-Forwarded-For: 203.0.113.9'  # peer 127.0.0.1 is trusted: keyed by 203.0.113.9
curl -i http://127.0.0.1:8000/login -X POST                      # @rate_limit("5/minute") on the route
curl -i http://127.0.0.1:8000/admin/                              # @rate_limit on the mounted app
"""

import os

import uvicorn
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.websockets import WebSocket

from asgi_resilience import RateLimitMiddleware, Rule, rate_limit


async def home(request: Request) -> Response:
    return PlainTextResponse("hello")


@rate_limit("5/minute", name="login")
async def login(request: Request) -> Response:
    return PlainTextResponse("welcome")


async def admin_home(request: Request) -> Response:
    return PlainTextResponse("admin")


admin = rate_limit("20/minute", name="admin")(Starlette(routes=[Route("/", admin_home)]))


async def echo(websocket: WebSocket) -> None:  # the handshake is limited: 429 or close 1008
    await websocket.accept()
    async for message in websocket.iter_text():
        await websocket.send_text(message)


app = Starlette(
    routes=[
        Route("/", home),
        Route("/login", login, methods=["POST"]),
        Mount("/admin", app=admin),
        WebSocketRoute("/ws", echo),
    ],
    middleware=[
        Middleware(
            RateLimitMiddleware,
            rules=[
                Rule("100/minute;2000/hour", name="per-client"),
                Rule("5000/minute", key="global", name="site"),
                Rule("20/minute", name="candidate", shadow=True),  # counted and logged, never enforced
            ],
            storage=os.environ.get("RATE_LIMIT_STORAGE", "memory://"),
            trusted_proxies=["127.0.0.1/32", "10.0.0.0/8"],  # the proxies that append X-Forwarded-For
            on_store_error="local",  # Redis down: limit per process instead of not at all
            headers="both",  # draft-10 RateLimit fields and X-RateLimit-* for older clients
        )
    ],
)

if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=8000)
