"""How the exceptions of Litestar and Django map to problems (used only where the framework is loaded).

A framework is looked at only if the app already imported it (``sys.modules``): building a
ProblemDetailsMiddleware never imports Django or Litestar. The integrations in
``asgi_resilience.integrations`` route those frameworks' exceptions here (a Litestar plugin, a Django
middleware), since both frameworks answer their own exceptions before an outer ASGI middleware can.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping
from typing import Any

from asgi_resilience.errors._problem import ProblemDetails, reason_phrase

__all__ = ["framework_resolvers"]

_Resolver = Callable[[Exception, bool], ProblemDetails]


def _validation_problem(status: int, errors: list[dict[str, Any]]) -> ProblemDetails:
    return ProblemDetails(
        status=status,
        type="validation-error",
        title="Request validation failed",
        detail=f"{len(errors)} validation error{'s' if len(errors) != 1 else ''} in the request",
        extensions={"errors": errors},
    )


def _litestar_http_exception(exc: Exception, debug: bool) -> ProblemDetails:
    status: int = getattr(exc, "status_code", 500)
    detail: Any = getattr(exc, "detail", "")
    headers: Mapping[str, str] | None = getattr(exc, "headers", None)
    extra: Any = getattr(exc, "extra", None)
    text = detail if isinstance(detail, str) and detail and detail != reason_phrase(status) else None
    if status >= 500 and not debug:
        text = None  # a server error's message is an implementation detail
    extensions = {"data": extra} if extra and status < 500 else {}
    return ProblemDetails(status=status, detail=text, extensions=extensions, headers=tuple((headers or {}).items()))


def _litestar_validation(exc: Exception, debug: bool) -> ProblemDetails:
    errors: list[dict[str, Any]] = []
    extra: Any = getattr(exc, "extra", None)
    for item in extra if isinstance(extra, list) else []:
        if not isinstance(item, Mapping):
            continue
        loc = [part for part in (item.get("source"), item.get("key")) if part is not None]
        errors.append({"loc": loc, "msg": str(item.get("message", ""))})
    if not errors:
        detail: Any = getattr(exc, "detail", "")
        errors.append({"loc": [], "msg": str(detail) if debug else "invalid request"})
    return _validation_problem(getattr(exc, "status_code", 400), errors)


def _django_status(status: int) -> _Resolver:
    def resolve(exc: Exception, debug: bool) -> ProblemDetails:
        message = str(exc)  # Django shows it only on its debug pages too
        return ProblemDetails(status=status, detail=message if message and debug else None)

    return resolve


def _django_validation(exc: Exception, debug: bool) -> ProblemDetails:
    errors: list[dict[str, Any]] = []
    by_field: Any = getattr(exc, "message_dict", None) if hasattr(exc, "error_dict") else None
    if isinstance(by_field, Mapping):
        for field, messages in by_field.items():
            loc = [] if field == "__all__" else [field]
            errors.extend({"loc": loc, "msg": str(message)} for message in messages)
    else:
        errors.extend({"loc": [], "msg": str(message)} for message in getattr(exc, "messages", []))
    return _validation_problem(400, errors)


def framework_resolvers() -> dict[type[BaseException], _Resolver]:
    """Resolvers for the exceptions of the frameworks this process has imported."""
    resolvers: dict[type[BaseException], _Resolver] = {}
    if "litestar" in sys.modules:
        from litestar.exceptions import HTTPException, ValidationException

        resolvers[HTTPException] = _litestar_http_exception
        resolvers[ValidationException] = _litestar_validation
    if "django" in sys.modules:
        from django.core.exceptions import (
            BadRequest,
            PermissionDenied,
            SuspiciousOperation,
            ValidationError,
        )
        from django.http import Http404

        resolvers[Http404] = _django_status(404)
        resolvers[PermissionDenied] = _django_status(403)
        resolvers[SuspiciousOperation] = _django_status(400)
        resolvers[BadRequest] = _django_status(400)
        resolvers[ValidationError] = _django_validation
    return resolvers
