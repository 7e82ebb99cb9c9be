"""ProblemDetailsMiddleware: exceptions become RFC 9457 ``application/problem+json`` responses."""

from __future__ import annotations

import dataclasses
import inspect
import logging
import re
import time
import warnings
from collections.abc import Awaitable, Callable, Mapping
from typing import Any
from urllib.parse import urlsplit

from asgi_resilience._asgi import ARRIVAL, get_header, send_problem
from asgi_resilience.errors._exceptions import ConfigurationError, ResilienceError
from asgi_resilience.errors._problem import (
    ProblemDetails,
    from_error,
    internal_error,
    reason_phrase,
    render,
)
from asgi_resilience.observability._ratelog import RateLimitedLog
from asgi_resilience.observability._telemetry import Telemetry, resolve_telemetry
from asgi_resilience.problems._frameworks import framework_resolvers
from asgi_resilience.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["SCOPE_KEY", "ProblemDetailsMiddleware", "ProblemHandler"]

logger = logging.getLogger("asgi_resilience.errors")

ProblemResult = ResilienceError | ProblemDetails | int
ProblemHandler = Callable[[Exception], ProblemResult | Awaitable[ProblemResult]]
"""Maps an exception to a :class:`Problem` (or any ResilienceError), a ProblemDetails, or a status."""

_Resolver = Callable[[Exception, bool], ProblemDetails]
_REQUEST_ID = re.compile(rb"[\x21-\x7e]{1,200}\Z")
_STARTED_MESSAGE = "Caught handled exception, but response already started."
_MAX_CHAIN = 64
_monotonic = time.monotonic
SCOPE_KEY = "asgi_resilience.problems"
"""The scope key under which the middleware serving a request is found (framework integrations use it)."""


def _from_http_exception(exc: Exception, debug: bool) -> ProblemDetails:
    status: int = getattr(exc, "status_code", 500)
    detail: Any = getattr(exc, "detail", None)
    headers: Mapping[str, str] | None = getattr(exc, "headers", None)
    extensions: dict[str, Any] = {}
    if isinstance(detail, str):
        text: str | None = None if detail == reason_phrase(status) else detail
    else:
        text = None
        if detail is not None:
            extensions["data"] = detail
    return ProblemDetails(status=status, detail=text, extensions=extensions, headers=tuple((headers or {}).items()))


def _from_validation_error(exc: Exception, debug: bool) -> ProblemDetails:
    errors_method = getattr(exc, "errors", None)
    raw: Any = errors_method() if callable(errors_method) else []
    errors = []
    for item in raw if isinstance(raw, (list, tuple)) else []:
        if not isinstance(item, Mapping):
            continue
        entry = {k: v for k, v in item.items() if k in {"loc", "msg", "type"}}
        if "ctx" in item and isinstance(item["ctx"], Mapping):
            entry["ctx"] = {k: str(v) for k, v in item["ctx"].items()}
        if debug and "input" in item:
            entry["input"] = item["input"]  # request data only goes back to the client in debug mode
        errors.append(entry)
    return ProblemDetails(
        status=422,
        type="validation-error",
        title="Request validation failed",
        detail=f"{len(errors)} validation error{'s' if len(errors) != 1 else ''} in the request",
        extensions={"errors": errors},
    )


def _from_resilience_error(exc: Exception, debug: bool) -> ProblemDetails:
    return from_error(exc, debug=debug) if isinstance(exc, ResilienceError) else internal_error(exc, debug=debug)


def _from_upstream_timeout(exc: Exception, debug: bool) -> ProblemDetails:
    # An outbound call that ran out of time while serving the request: the request's gateway timed out.
    return ProblemDetails(
        status=504, type="upstream-timeout", title="Upstream timed out", detail=str(exc) if debug else None
    )


def _from_upstream_error(exc: Exception, debug: bool) -> ProblemDetails:
    # Never the upstream's address or error text unless debugging: it is an implementation detail.
    return ProblemDetails(
        status=502, type="upstream-error", title="Upstream unavailable", detail=str(exc) if debug else None
    )


def _builtin_resolvers() -> dict[type[BaseException], _Resolver]:
    import httpx

    resolvers: dict[type[BaseException], _Resolver] = {
        ResilienceError: _from_resilience_error,
        httpx.TimeoutException: _from_upstream_timeout,
        httpx.TransportError: _from_upstream_error,
    }
    from starlette.exceptions import HTTPException

    resolvers[HTTPException] = _from_http_exception
    try:
        from fastapi.exceptions import RequestValidationError
    except ImportError:
        pass
    else:
        resolvers[RequestValidationError] = _from_validation_error
    resolvers.update(framework_resolvers())
    return resolvers


class ProblemDetailsMiddleware:
    """Turn exceptions into RFC 9457 problem responses.

    * :class:`Problem` raised by the app is rendered exactly; every ResilienceError maps itself.
    * ``mapping`` maps exception classes to a status or a :data:`ProblemHandler`, looked up along
      the exception's MRO (most specific class wins, over the built-in mappings too).
    * An unhandled ``httpx.TimeoutException`` from an outbound call maps to 504 ``upstream-timeout``
      and any other ``httpx.TransportError`` to 502 ``upstream-error`` (no upstream detail unless
      debugging): a failed dependency is a gateway problem, not an internal error.
    * Starlette/FastAPI ``HTTPException`` and FastAPI ``RequestValidationError`` map without
      configuration. Inside a Starlette or FastAPI app the middleware registers its handler with the
      app's innermost ``ExceptionMiddleware`` (only where the app kept the framework default), so
      the error response still passes through the user middlewares (CORS, request id) that sit
      inside this one.
    * Anything else is a 500 without message, repr or traceback unless ``debug=True``; it is logged
      once with its traceback.
    * Once the response has started nothing more is sent: the exception is logged and re-raised
      so the server drops the connection and the client sees a truncated response, not a fake
      complete one.

    Args:
        app: the ASGI app to wrap.
        mapping: ``{ExceptionClass: status | handler}``.
        debug: put the exception message and traceback in the body (never in production).
        type_base: an absolute URI that turns type slugs into absolute type URIs.
        request_id_header: a request header copied into the ``request_id`` extension, or None.
        trace_id: add the current OpenTelemetry trace id as the ``trace_id`` extension.
        telemetry: record ``asgi_resilience.exceptions{error.type,result}``; False for none.

    .. versionadded:: 0.1.0
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        mapping: Mapping[type[BaseException], int | ProblemHandler] | None = None,
        debug: bool = False,
        type_base: str | None = None,
        request_id_header: str | None = "X-Request-ID",
        trace_id: bool = True,
        telemetry: Telemetry | bool = True,
    ) -> None:
        self.app = app
        self._exceptions = resolve_telemetry(telemetry).instrument("asgi_resilience.exceptions")
        self._expected_log = RateLimitedLog(logger)
        self.debug = debug
        self.type_base = _check_type_base(type_base)
        self._request_id_header = request_id_header.lower().encode("latin-1") if request_id_header else None
        self._user: dict[type[BaseException], int | ProblemHandler] = {}
        for exc_type, target in (mapping or {}).items():
            if not (isinstance(exc_type, type) and issubclass(exc_type, Exception)):
                raise ConfigurationError(f"mapping keys must be Exception subclasses, got {exc_type!r}")
            if isinstance(target, bool) or not (callable(target) or isinstance(target, int)):
                raise ConfigurationError(
                    f"mapping[{exc_type.__name__}] must be an HTTP status or a callable, got {target!r}"
                )
            if isinstance(target, int) and not 400 <= target <= 599:
                raise ConfigurationError(f"mapping[{exc_type.__name__}] status must be 400-599, got {target}")
            self._user[exc_type] = target
        self._builtin = _builtin_resolvers()
        self._lookup_cache: dict[type[BaseException], Any] = {}
        self._get_span: Callable[[], Any] | None = None
        if trace_id:
            try:
                from opentelemetry import trace
            except ImportError:
                pass
            else:
                self._get_span = trace.get_current_span
        self._prepared = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            if not self._prepared and scope["type"] == "lifespan":
                self._prepare(scope)
            await self.app(scope, receive, send)
            return
        if ARRIVAL not in scope:
            scope[ARRIVAL] = _monotonic()  # see _asgi.ARRIVAL
        if not self._prepared:
            self._prepare(scope)
        scope[SCOPE_KEY] = self  # the integrations' exception hooks resolve with this middleware's options
        started = False

        # A closure, not a SendTracker: this wrapper runs for every message of every response.
        async def tracked(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracked)
        except Exception as exc:
            if started:
                original: BaseException = exc
                while _is_starlette_started_error(original) and original.__cause__ is not None:
                    original = original.__cause__  # Starlette wraps it once per exception-handling layer
                if isinstance(original, ResilienceError):  # ours (a deadline): counted, logged once per interval
                    self._expected_log.log(
                        logging.WARNING,
                        ("started", type(original).__name__),
                        "%s after the response started; the response is cut short",
                        type(original).__name__,
                    )
                else:
                    logger.error("Exception after the response started; the response is cut short", exc_info=original)
                self._exceptions.add(1, {"error.type": _type_name(original), "result": "skipped"})
                if original is exc:
                    raise
                raise original from None
            problem = await self.resolve(exc, scope)
            await send_problem(send, problem, type_base=self.type_base, head=scope.get("method") == "HEAD")

    async def resolve(self, exc: Exception, scope: Scope) -> ProblemDetails:
        """The problem document for ``exc`` raised while serving ``scope`` (and log it)."""
        leaf = _leaf(exc)
        target = self._lookup(type(leaf))
        problem: ProblemDetails
        if target is None:
            problem = internal_error(leaf, debug=self.debug)
            logger.error("Unhandled exception while serving %s", _where(scope), exc_info=exc)
            self._exceptions.add(1, {"error.type": _type_name(leaf), "result": "unhandled"})
        else:
            self._exceptions.add(1, {"error.type": _type_name(leaf), "result": "handled"})
            try:
                problem = await self._apply(target, leaf)
            except Exception:
                logger.exception("Problem handler for %s failed", type(leaf).__name__)
                problem = internal_error(leaf, debug=self.debug)
            if problem.status >= 500:
                # a storm of mapped rejections (an open circuit, overload) is counted above and
                # logged once per interval per cause, with the count
                self._expected_log.log(
                    logging.WARNING,
                    (type(leaf).__name__, problem.status),
                    "%s mapped to %d while serving %s",
                    type(leaf).__name__,
                    problem.status,
                    _where(scope),
                )
            else:
                logger.debug("%s mapped to %d", type(leaf).__name__, problem.status)
        return self._decorate(problem, scope)

    def _lookup(self, exc_type: type[BaseException]) -> Any:
        try:
            return self._lookup_cache[exc_type]
        except KeyError:
            pass
        found: Any = None
        for cls in exc_type.__mro__:
            if cls in self._user:
                found = self._user[cls]
                break
            if cls in self._builtin:
                found = self._builtin[cls]
                break
        if len(self._lookup_cache) < 1024:
            self._lookup_cache[exc_type] = found
        return found

    async def _apply(self, target: Any, exc: Exception) -> ProblemDetails:
        if isinstance(target, int):
            return ProblemDetails(status=target, detail=str(exc) if self.debug else None)
        if target in self._builtin.values():
            return target(exc, self.debug)  # type: ignore[no-any-return]
        result = target(exc)
        if inspect.isawaitable(result):
            result = await result
        if isinstance(result, ProblemDetails):
            return result
        if isinstance(result, ResilienceError):
            return from_error(result, debug=self.debug)
        if isinstance(result, int) and not isinstance(result, bool) and 400 <= result <= 599:
            return ProblemDetails(status=result)
        raise TypeError(f"problem handler returned {result!r}; return a Problem, ProblemDetails or a status")

    def _decorate(self, problem: ProblemDetails, scope: Scope) -> ProblemDetails:
        extra: dict[str, Any] = {}
        if self._get_span is not None:
            context = self._get_span().get_span_context()
            if context.is_valid:
                extra["trace_id"] = format(context.trace_id, "032x")
        if self._request_id_header is not None:
            value = get_header(scope, self._request_id_header)
            if value is not None and _REQUEST_ID.match(value):
                extra["request_id"] = value.decode("ascii")
        if not extra:
            return problem
        return dataclasses.replace(problem, extensions={**extra, **problem.extensions})

    def _prepare(self, scope: Scope) -> None:
        """Register our handler with a Starlette/FastAPI app's innermost ExceptionMiddleware."""
        self._prepared = True
        from starlette.middleware.exceptions import ExceptionMiddleware

        node: Any = self.app
        for _ in range(_MAX_CHAIN):
            if isinstance(node, ExceptionMiddleware):
                break
            if _warn_unhooked_framework(node):
                return
            stack = getattr(node, "middleware_stack", False)
            if stack is None and callable(getattr(node, "build_middleware_stack", None)):
                node.middleware_stack = stack = node.build_middleware_stack()
            node = stack if stack else getattr(node, "app", None)
            if node is None:
                return
        else:
            return
        self._install(node, scope.get("app"))

    def _install(self, middleware: Any, app: Any) -> None:
        handlers: dict[Any, Any] = middleware._exception_handlers
        defaults: list[Any] = [middleware.http_exception]
        try:
            from fastapi import exception_handlers as fastapi_handlers
        except ImportError:
            pass
        else:
            defaults += [fastapi_handlers.http_exception_handler, fastapi_handlers.request_validation_exception_handler]
        for exc_type in self._builtin:
            if not exc_type.__module__.startswith(("starlette", "fastapi")):
                continue  # ours and httpx's are covered by the catch-all below
            if exc_type not in handlers or handlers[exc_type] in defaults:
                handlers[exc_type] = self._starlette_handler
        app_handlers = getattr(app, "exception_handlers", None) or {}
        if Exception not in app_handlers and 500 not in app_handlers and Exception not in handlers:
            handlers[Exception] = self._starlette_handler

    async def _starlette_handler(self, request: Any, exc: Exception) -> Any:
        from starlette.responses import Response

        problem = await self.resolve(exc, request.scope)
        body, headers = render(problem, type_base=self.type_base)
        response = Response(content=body, status_code=problem.status)
        response.raw_headers = headers
        return response


def _warn_unhooked_framework(app: Any) -> bool:
    """Warn (once per middleware) if ``app`` is a framework that answers its own exceptions unhooked."""
    module = type(app).__module__
    if module.startswith("litestar.") and hasattr(app, "asgi_router"):
        handlers = getattr(app, "exception_handlers", None) or {}
        if not any(getattr(handler, "__asgi_resilience__", False) for handler in handlers.values()):
            warnings.warn(
                "ProblemDetailsMiddleware wraps a Litestar app: exceptions raised in its handlers are answered by "
                "Litestar itself, not as application/problem+json; add "
                "plugins=[asgi_resilience.integrations.litestar.ResiliencePlugin()] to the Litestar app",
                RuntimeWarning,
                stacklevel=3,
            )
        return True
    if module.startswith(("django.", "asgi_resilience.integrations.django")) and hasattr(app, "get_response_async"):
        from django.conf import settings

        if "asgi_resilience.integrations.django.ProblemDetailsMiddleware" not in list(settings.MIDDLEWARE):
            warnings.warn(
                "ProblemDetailsMiddleware wraps a Django app: exceptions raised in its views are answered by Django "
                "itself, not as application/problem+json; add 'asgi_resilience.integrations.django."
                "ProblemDetailsMiddleware' to settings.MIDDLEWARE",
                RuntimeWarning,
                stacklevel=3,
            )
        if not module.startswith("asgi_resilience."):
            warnings.warn(
                "Django's own ASGIHandler leaves a view running when a timeout cancels the request; build the app "
                "with asgi_resilience.integrations.django.get_asgi_application() so that the view is cancelled",
                RuntimeWarning,
                stacklevel=3,
            )
        return True
    return False


def _leaf(exc: Exception) -> Exception:
    """The single exception inside (nested) one-member exception groups, else ``exc`` itself."""
    while _is_group(exc):
        inner: Any = getattr(exc, "exceptions", ())
        if len(inner) != 1 or not isinstance(inner[0], Exception):
            break
        exc = inner[0]
    return exc


def _is_group(exc: BaseException) -> bool:
    # By name, so that the builtin (3.11+) and the exceptiongroup backport (3.10) both match.
    return any(cls.__name__ == "BaseExceptionGroup" for cls in type(exc).__mro__)


def _is_starlette_started_error(exc: BaseException) -> bool:
    return isinstance(exc, RuntimeError) and exc.args == (_STARTED_MESSAGE,)


def _type_name(exc: BaseException) -> str:
    """The exception's public dotted name (private module segments dropped: ``asgi_resilience.Problem``)."""
    cls = type(exc)
    if cls.__module__ == "builtins":
        return cls.__qualname__
    module = ".".join(part for part in cls.__module__.split(".") if not part.startswith("_"))
    if module.startswith("asgi_resilience."):
        module = "asgi_resilience"  # every public class is re-exported at the top level
    return f"{module}.{cls.__qualname__}"


def _where(scope: Scope) -> str:
    return f"{scope.get('method', '?')} {scope.get('path', '?')}"


def _check_type_base(type_base: str | None) -> str | None:
    if type_base is None:
        return None
    if not urlsplit(type_base).scheme:
        raise ConfigurationError(
            f"type_base must be an absolute URI such as 'https://example.com/problems/', got {type_base!r}"
        )
    return type_base if type_base.endswith(("/", "#", ":")) else type_base + "/"
