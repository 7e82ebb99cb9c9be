"""A Django URLconf with the same endpoints as the other frameworks in test_frameworks.py."""

from __future__ import annotations

import asyncio

from django.core.exceptions import PermissionDenied, ValidationError
from django.http import Http404, HttpRequest, JsonResponse
from django.urls import path
from django.views import View

from asgi_resilience import Overloaded, Problem, cache, rate_limit, timeout

CALLS = {"cached": 0, "cached_view": 0, "slow_cancelled": 0}


@cache(ttl=30)
async def cached(request: HttpRequest) -> JsonResponse:
    CALLS["cached"] += 1
    return JsonResponse({"calls": CALLS["cached"]})


@cache(ttl=30)
class CachedView(View):
    async def get(self, request: HttpRequest) -> JsonResponse:
        CALLS["cached_view"] += 1
        return JsonResponse({"calls": CALLS["cached_view"]})


@timeout(0.2)
async def slow(request: HttpRequest) -> JsonResponse:
    try:
        await asyncio.sleep(3)
    except asyncio.CancelledError:
        CALLS["slow_cancelled"] += 1
        raise
    return JsonResponse({"late": True})


@rate_limit("2/minute")
async def limited(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"ok": True})


async def problem(request: HttpRequest) -> JsonResponse:
    raise Problem(409, type="out-of-stock", detail="sold out", item=12)


async def overloaded(request: HttpRequest) -> JsonResponse:
    raise Overloaded(retry_after=3)


async def missing(request: HttpRequest) -> JsonResponse:
    raise Http404("no item 12 in table items")


async def forbidden(request: HttpRequest) -> JsonResponse:
    raise PermissionDenied("not yours")


async def invalid(request: HttpRequest) -> JsonResponse:
    count = request.GET.get("count", "")
    if not count.isdigit():
        raise ValidationError({"count": ["Enter a whole number."]})
    return JsonResponse({"count": int(count)})


async def boom(request: HttpRequest) -> JsonResponse:
    raise RuntimeError("secret database password")


urlpatterns = [
    path("cached", cached),
    path("cached-view", CachedView.as_view()),
    path("slow", slow),
    path("limited", limited),
    path("problem", problem),
    path("overloaded", overloaded),
    path("missing", missing),
    path("forbidden", forbidden),
    path("invalid", invalid),
    path("boom", boom),
]
