"""Several uvicorn worker processes sharing one Redis: one rate limit and one cache for all of them.

pip install 'asgi-resilience[demo,redis]'
REDIS_URL=redis://127.0.0.1:6379/0 python examples/multiworker_redis.py --workers 4
for i in $(seq 1 12); do curl -s http://127.0.0.1:8000/; echo; done
    # different worker pids answer, and still only 10 requests a minute get through: the 11th is a 429
curl -s http://127.0.0.1:8000/report; curl -s http://127.0.0.1:8000/report
    # the same cached report from every worker (generated once, by one of them)
"""

import argparse
import asyncio
import os
import time

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from asgi_resilience import Rule, resilient

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")


async def home(request: Request) -> JSONResponse:
    return JSONResponse({"pid": os.getpid()})


async def report(request: Request) -> JSONResponse:
    await asyncio.sleep(0.1)  # expensive: computed once for all workers
    return JSONResponse(
        {"generated_by": os.getpid(), "generated_at": time.time()},
        headers={"Cache-Control": "public, max-age=30"},
    )


async def pid(request: Request) -> JSONResponse:
    return JSONResponse({"pid": os.getpid()})


app = resilient(
    Starlette(routes=[Route("/", home), Route("/report", report), Route("/pid", pid)]),
    # moving-window: exactly 10 in any rolling minute, whichever worker counts
    rate_limit={
        "rules": [Rule("10/minute", name="per-client")],
        "strategy": "moving-window",
        "exempt": ["/pid", "/report"],
    },
    cache=True,
    redis=REDIS_URL,  # one client per worker, shared by the limiter and the cache
)

if __name__ == "__main__":
    import uvicorn

    parser = argparse.ArgumentParser()
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8000")))
    args = parser.parse_args()
    here = os.path.dirname(os.path.abspath(__file__))
    uvicorn.run("multiworker_redis:app", host="127.0.0.1", port=args.port, workers=args.workers, app_dir=here)
