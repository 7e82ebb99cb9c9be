"""Tiered rate limits for a FastAPI API keyed by API key: free 10/min, standard 60/min,
premium 300/min, enterprise 1000/min, plus a per-IP limit on writes and a stricter per-route limit.

pip install -e '.[demo]' fastapi && python examples/ratelimit_tiers_fastapi.py
RATE_LIMIT_STORAGE=redis://127.0.0.1:6379/0 python examples/ratelimit_tiers_fastapi.py   # shared by workers

curl -i http://127.0.0.1:8000/items -H 'X-API-Key: key-free'        # RateLimit-Policy: "plan";q=10;w=60
curl -i http://127.0.0.1:8000/items -H 'X-API-Key: key-premium'     # RateLimit-Policy: "plan";q=300;w=60
for i in $(seq 12); do curl -s -o /dev/null -w '%{http_code} ' http://127.0.0.1:8000/items; done   # ... 429 429
curl -i -X POST http://127.0.0.1:8000/items/report -H 'X-API-Key: key-enterprise'   # also limited by @rate_limit
curl -i http://127.0.0.1:8000/health                                 # exempt: no limit, no headers
"""

import os

import uvicorn
from fastapi import APIRouter, FastAPI
from starlette.requests import HTTPConnection

from asgi_resilience import RateLimitMiddleware, Rule, rate_limit

TIERS = {"free": "10/minute", "standard": "60/minute", "premium": "300/minute", "enterprise": "1000/minute"}
# In a real service this is a database or cache lookup (it may be async, as here).
API_KEYS = {"key-free": "free", "key-standard": "standard", "key-premium": "premium", "key-enterprise": "enterprise"}


async def plan_limit(request: HTTPConnection) -> str | None:
    """The limit of the caller's plan; unknown or missing keys get the free tier."""
    return TIERS[API_KEYS.get(request.headers.get("x-api-key", ""), "free")]


def account(request: HTTPConnection) -> str:
    """One bucket per known API key. Unknown keys share their client's bucket: otherwise inventing
    a new key per request would give a fresh free-tier bucket each time."""
    api_key = request.headers.get("x-api-key", "")
    if api_key in API_KEYS:
        return "key:" + api_key
    return "anonymous:" + (request.client.host if request.client else "unknown")


router = APIRouter(prefix="/items")


@router.get("")
async def list_items() -> list[dict[str, int]]:
    return [{"id": 1}, {"id": 2}]


@router.post("/report")
@rate_limit("2/minute", key=account, name="reports")  # expensive: two per known key (or address) per minute
async def build_report() -> dict[str, str]:
    return {"status": "queued"}


app = FastAPI()
app.include_router(router)


@app.get("/health")
async def health() -> dict[str, str]:
    return {"status": "ok"}


app.add_middleware(
    RateLimitMiddleware,
    rules=[
        Rule(plan_limit, key=account, name="plan"),
        Rule("30/minute", methods=["POST", "PUT", "PATCH", "DELETE"], name="writes-per-ip"),
    ],
    storage=os.environ.get("RATE_LIMIT_STORAGE", "memory://"),
    strategy="gcra",  # bursts up to the plan's quota, then a steady rate
    exempt=["/health"],
    trusted_proxies=None,  # behind a load balancer: e.g. ["10.0.0.0/8"] or 1
)

if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=8000)
