"""A Django project (ASGI) behind the full stack: per-view options and problem+json errors.

pip install 'asgi-resilience[demo]' django && python examples/django_app.py
curl -i http://127.0.0.1:8000/items/1           # cached for 30 s (@cache): the second answer has an Age
curl -i http://127.0.0.1:8000/items/0           # 404 application/problem+json (Http404)
curl -i http://127.0.0.1:8000/slow              # 504 application/problem+json after 0.5 s (@timeout)
for i in 1 2 3 4; do curl -s -o /dev/null -w '%{http_code} ' http://127.0.0.1:8000/login; done; echo  # 200 200 200 429

One file for the example; in a project the settings go in settings.py and the last lines in asgi.py.
"""

import asyncio
import os

from django.conf import settings
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpRequest, JsonResponse
from django.urls import path

from asgi_resilience import cache, rate_limit, resilient, timeout
from asgi_resilience.integrations.django import get_asgi_application

if not settings.configured:
    settings.configure(
        DEBUG=False,
        SECRET_KEY="example-only",
        ALLOWED_HOSTS=["127.0.0.1", "localhost", "testserver"],
        ROOT_URLCONF=__name__,
        # last, closest to the views: Http404, PermissionDenied, ValidationError, Problem -> problem+json
        MIDDLEWARE=["asgi_resilience.integrations.django.ProblemDetailsMiddleware"],
    )


async def index(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"endpoints": ["/items/<id>", "/slow", "/login", "/admin-only"]})


@cache(ttl=30)
async def item(request: HttpRequest, item_id: int) -> JsonResponse:
    if item_id == 0:
        raise Http404("no such item")
    await asyncio.sleep(0.05)
    return JsonResponse({"id": item_id, "name": f"item {item_id}"})


@timeout(0.5)
async def slow(request: HttpRequest) -> JsonResponse:
    await asyncio.sleep(10)  # cancelled at 0.5 s: the view does not keep running
    return JsonResponse({"late": True})


@rate_limit("3/minute")
async def login(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"token": "..."})


async def admin_only(request: HttpRequest) -> JsonResponse:
    raise PermissionDenied


urlpatterns = [
    path("", index),
    path("items/<int:item_id>", item),
    path("slow", slow),
    path("login", login),
    path("admin-only", admin_only),
]

app = resilient(get_asgi_application(), rate_limit=True, cache=True, timeout=2.0, concurrency=50)

if __name__ == "__main__":
    import uvicorn

    uvicorn.run(app, host="127.0.0.1", port=int(os.environ.get("PORT", "8000")))
