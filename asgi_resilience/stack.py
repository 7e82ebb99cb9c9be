"""The stack builder: every server-side layer in the one order that works, from one call.

::

    from asgi_resilience import Rule, resilient

    app = resilient(
        app,
        rate_limit={"rules": [Rule("100/minute")]},  # or [Rule(...)], or "100/minute"
        cache={"backend": "memory://"},              # or True for the middleware defaults
        timeout=10.0,                                # or {"timeout": 10.0, "rules": {...}}
        concurrency=100,                             # or {"max_concurrent": 100, "max_queue": 50}
        redis="redis://localhost:6379/0",            # one client, shared by the limiter and the cache
    )

The order, outermost first, and why:

1. **problems** (:class:`ProblemDetailsMiddleware`): outermost, so every rejection and every
   exception of every layer below renders as the same RFC 9457 problem response.
2. **rate_limit** (``RateLimitMiddleware``): before the cache, so a response served from the cache
   still counts against the client's limit (otherwise a cached endpoint is an unlimited one).
3. **cache** (``CacheMiddleware``): outside the timeout, so ``stale-if-error`` can answer with a stored
   response when the app below timed out (the 504 comes back through the cache).
4. **timeout** (``TimeoutMiddleware``): around the concurrency limit, so the time a request waits
   for a slot counts against its deadline.
5. **concurrency** (``ConcurrencyLimitMiddleware``): innermost, so cache hits and rate-limited
   requests never take a slot: only requests that really reach the app are load-shed.

Each argument takes the layer's options as a dict (keyword arguments of the middleware), a shorthand
(see :class:`ResilienceStack`), ``True`` for the middleware's defaults, or ``False``/``None`` to
leave the layer out. Everything is validated when the stack is built.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any, TypeAlias, TypedDict, TypeVar, cast

from asgi_resilience._clock import Clock
from asgi_resilience._durations import seconds
from asgi_resilience._optional import import_optional
from asgi_resilience._proxy import TrustedProxies
from asgi_resilience._redis import redis_client
from asgi_resilience._routing import EndpointOptions
from asgi_resilience.caching import Cache, CacheRule
from asgi_resilience.caching._policy import CookiePolicy
from asgi_resilience.errors import ConfigurationError
from asgi_resilience.observability._telemetry import Telemetry, resolve_telemetry
from asgi_resilience.problems import ProblemHandler
from asgi_resilience.ratelimit import Rule
from asgi_resilience.ratelimit._middleware import CallableErrorMode, HeaderMode, StoreErrorMode
from asgi_resilience.ratelimit._policy import Strategy
from asgi_resilience.timeouts._adaptive import Algorithm
from asgi_resilience.timeouts._middleware import Mode
from asgi_resilience.types import ASGIApp, Message, Receive, Scope, Send

if TYPE_CHECKING:
    from opentelemetry.trace import TracerProvider

    from asgi_resilience.client import AsyncResilientTransport

__all__ = [
    "CacheLayer",
    "CacheOptions",
    "ConcurrencyLayer",
    "ConcurrencyOptions",
    "LAYER_ORDER",
    "ProblemsLayer",
    "ProblemsOptions",
    "RateLimitLayer",
    "RateLimitOptions",
    "ResilienceStack",
    "ResilientApp",
    "TimeoutLayer",
    "TimeoutOptions",
    "resilient",
]

A = TypeVar("A", bound=ASGIApp)


class ProblemsOptions(TypedDict, total=False):
    """The keyword options of :class:`~asgi_resilience.ProblemDetailsMiddleware` (``problems={...}``)."""

    mapping: Mapping[type[BaseException], int | ProblemHandler] | None
    debug: bool
    type_base: str | None
    request_id_header: str | None
    trace_id: bool


class RateLimitOptions(TypedDict, total=False):
    """The keyword options of :class:`~asgi_resilience.RateLimitMiddleware` (``rate_limit={...}``)."""

    rules: Sequence[Rule]
    storage: str | Any
    strategy: Strategy
    exempt: Sequence[str] | str | Callable[[Any], bool | Awaitable[bool]] | None
    trusted_proxies: Sequence[str] | int | TrustedProxies | None
    on_store_error: StoreErrorMode
    store_timeout: float | timedelta
    store_cooldown: float | timedelta
    on_callable_error: CallableErrorMode
    shadow: bool
    headers: HeaderMode | None
    ipv6_prefix: int
    key_prefix: str
    clock: Clock | None


class CacheOptions(TypedDict, total=False):
    """The keyword options of :class:`~asgi_resilience.CacheMiddleware` (``cache={...}``)."""

    cache: Cache | None
    backend: str | Any
    max_body_size: int
    l1_entries: int
    max_entries: int
    max_bytes: int
    l1_max_bytes: int
    rules: Sequence[CacheRule]
    stale_while_revalidate: float
    stale_if_error: float
    backend_timeout: float
    cookie_policy: CookiePolicy
    normalize_query: bool
    lock_timeout: float
    heuristic_fraction: float
    targeted_fields: Sequence[str]
    strip_targeted_fields: bool
    clock: Clock | None


class TimeoutOptions(TypedDict, total=False):
    """The keyword options of :class:`~asgi_resilience.TimeoutMiddleware` (``timeout={...}``)."""

    timeout: float | timedelta | None
    rules: Mapping[str, float | timedelta | None] | None
    mode: Mode
    idle_timeout: float | timedelta | None
    status: int
    exempt_event_streams: bool
    trusted_proxies: Sequence[str] | int | TrustedProxies | None
    deadline_headers: Sequence[str]


class ConcurrencyOptions(TypedDict, total=False):
    """The keyword options of :class:`~asgi_resilience.ConcurrencyLimitMiddleware` (``concurrency={...}``)."""

    max_concurrent: int
    max_queue: int
    queue_timeout: float | timedelta
    lifo_on_overload: bool
    exempt: Sequence[str]
    partitions: Mapping[str, float] | None
    adaptive: bool
    min_concurrent: int
    algorithm: Algorithm
    window: float | timedelta
    retry_after: float | timedelta
    clock: Clock


# What each layer argument accepts (mypy checks it; the stack checks it again at run time).
ProblemsLayer: TypeAlias = bool | None | ProblemsOptions
RateLimitLayer: TypeAlias = bool | None | str | Rule | Sequence[str | Rule] | RateLimitOptions
CacheLayer: TypeAlias = bool | None | str | Cache | CacheRule | Sequence[CacheRule] | CacheOptions
TimeoutLayer: TypeAlias = bool | None | float | timedelta | TimeoutOptions
ConcurrencyLayer: TypeAlias = bool | None | int | ConcurrencyOptions

LAYER_ORDER = ("problems", "rate_limit", "cache", "timeout", "concurrency")
"""Layer names, outermost first."""


@dataclass(frozen=True, slots=True)
class _LayerSpec:
    name: str
    module: str
    cls: str
    storage_option: str | None  # the keyword that takes the shared Redis client, if any


_SPECS: dict[str, _LayerSpec] = {
    "problems": _LayerSpec("problems", "asgi_resilience.problems", "ProblemDetailsMiddleware", None),
    "rate_limit": _LayerSpec("rate_limit", "asgi_resilience.ratelimit", "RateLimitMiddleware", "storage"),
    "cache": _LayerSpec("cache", "asgi_resilience.caching", "CacheMiddleware", "backend"),
    "timeout": _LayerSpec("timeout", "asgi_resilience.timeouts", "TimeoutMiddleware", None),
    "concurrency": _LayerSpec("concurrency", "asgi_resilience.timeouts", "ConcurrencyLimitMiddleware", None),
}


def _load_class(spec: _LayerSpec) -> type[Any]:
    cls: type[Any] = getattr(importlib.import_module(spec.module), spec.cls)
    return cls


def _rule(value: Any) -> Any:
    if isinstance(value, str):
        rule_cls = getattr(importlib.import_module("asgi_resilience.ratelimit"), "Rule", None)
        if rule_cls is None:  # pragma: no cover - only while the rate limiter is missing
            raise ConfigurationError("rate_limit='...' needs asgi_resilience.ratelimit.Rule")
        return rule_cls(value)
    return value


def _rate_limit_options(value: Any) -> dict[str, Any]:
    if isinstance(value, str):
        return {"rules": [_rule(value)]}
    if isinstance(value, Sequence):
        return {"rules": [_rule(item) for item in value]}
    if type(value).__name__ == "Rule":
        return {"rules": [value]}
    raise ConfigurationError(
        f"rate_limit must be a dict of RateLimitMiddleware options, a Rule, a list of Rules, a rate string "
        f"such as '100/minute', True or False; got {value!r}"
    )


def _cache_options(value: Any) -> dict[str, Any]:
    if isinstance(value, str):
        return {"backend": value}
    module = importlib.import_module("asgi_resilience.caching")
    cache_cls = getattr(module, "Cache", None)
    if cache_cls is not None and isinstance(value, cache_cls):
        return {"cache": value}
    rule_cls = getattr(module, "CacheRule", None)
    if rule_cls is not None:
        if isinstance(value, rule_cls):
            return {"rules": [value]}
        if isinstance(value, Sequence) and value and all(isinstance(rule, rule_cls) for rule in value):
            return {"rules": list(value)}
    raise ConfigurationError(
        f"cache must be a dict of CacheMiddleware options, a Cache object, a CacheRule or a list of them, a backend "
        f"URL such as 'memory://', True or False; got {value!r}"
    )


def _timeout_options(value: Any) -> dict[str, Any]:
    if isinstance(value, (int, float, timedelta)) and not isinstance(value, bool):
        return {"timeout": seconds(value, "timeout")}
    raise ConfigurationError(
        f"timeout must be a dict of TimeoutMiddleware options, a number of seconds, True or False; got {value!r}"
    )


def _concurrency_options(value: Any) -> dict[str, Any]:
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 1:
            raise ConfigurationError(f"concurrency must be at least 1 request, got {value}")
        return {"max_concurrent": value}
    raise ConfigurationError(
        f"concurrency must be a dict of ConcurrencyLimitMiddleware options, a maximum number of concurrent "
        f"requests, True or False; got {value!r}"
    )


def _problems_options(value: Any) -> dict[str, Any]:
    raise ConfigurationError(
        f"problems must be a dict of ProblemDetailsMiddleware options, True or False; got {value!r}"
    )


_SHORTHANDS: dict[str, Callable[[Any], dict[str, Any]]] = {
    "problems": _problems_options,
    "rate_limit": _rate_limit_options,
    "cache": _cache_options,
    "timeout": _timeout_options,
    "concurrency": _concurrency_options,
}


def _options(name: str, value: Any) -> dict[str, Any] | None:
    if value is False or value is None:
        return None
    if value is True:
        return {}
    if isinstance(value, Mapping):
        for key in value:
            if not isinstance(key, str):
                raise ConfigurationError(f"{name} options must have string keys, got {key!r}")
        return dict(value)
    return _SHORTHANDS[name](value)


def _check_keywords(name: str, cls: type[Any], options: Mapping[str, Any]) -> None:
    try:
        parameters = inspect.signature(cls).parameters
    except (TypeError, ValueError):  # pragma: no cover - every layer is a plain class
        return
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return
    accepted = {n for n, p in parameters.items() if p.kind is not inspect.Parameter.POSITIONAL_ONLY} - {"app"}
    unknown = sorted(set(options) - accepted)
    if unknown:
        raise ConfigurationError(
            f"{name}: {cls.__name__} has no option {', '.join(map(repr, unknown))}; "
            f"it accepts {', '.join(sorted(accepted))}"
        )
    if "telemetry" in options:
        raise ConfigurationError(f"{name}: set telemetry= on the stack, not on one layer")


class ResilienceStack:
    """The server-side layers in the documented order, configured once, validated at construction.

    ``ResilienceStack(...).wrap(app)`` (or calling the stack with the app) returns a
    :class:`ResilientApp`; :func:`resilient` does both in one call. Shorthands besides a dict:

    * ``rate_limit``: a ``Rule``, a rate string (``"100/minute"``: one rule per client IP), or a list
      of them;
    * ``cache``: a backend URL (``"memory://"``, ``"redis://..."``), a shared ``Cache`` object (to
      call ``purge``/``purge_tags`` from the app), or ``CacheRule`` objects;
    * ``timeout``: seconds (``float`` or ``timedelta``);
    * ``concurrency``: the maximum number of concurrent requests.

    The shape of every option (known keywords, shorthands, the queue/timeout combination) is checked
    here; the values themselves are checked by each middleware when :meth:`wrap` builds it, which for
    :func:`resilient` is the same call.

    Args:
        problems: ProblemDetailsMiddleware options; on by default.
        rate_limit: RateLimitMiddleware options; off by default.
        cache: CacheMiddleware options; off by default.
        timeout: TimeoutMiddleware options; off by default.
        concurrency: ConcurrencyLimitMiddleware options; off by default.
        redis: a ``redis://`` URL or a ``redis.asyncio`` client, turned into ONE client handed to every
            layer that keeps state (the limiter's ``storage``, the cache's ``backend``) unless that
            layer's options name their own, and to :meth:`transport` for opt-in shared breaker state.
        telemetry: one :class:`~asgi_resilience.observability.Telemetry` for every layer (``True``: the
            process default, ``False``: none). The dashboard reads it.
        tracing: put ``opentelemetry-instrumentation-asgi``'s ``OpenTelemetryMiddleware`` outermost
            (extra ``otel``), so every request has a server span the layers add their events and
            attributes to (a 429, a 504, a cache result); ``True`` uses the global tracer provider, or
            pass a ``TracerProvider``. Per-message ``send``/``receive`` spans are left out. Off by default:
            leave it off when the framework or the server already instruments requests.

    .. versionadded:: 0.1.0
    """

    def __init__(
        self,
        *,
        problems: ProblemsLayer = True,
        rate_limit: RateLimitLayer = False,
        cache: CacheLayer = False,
        timeout: TimeoutLayer = False,
        concurrency: ConcurrencyLayer = False,
        redis: str | Any | None = None,
        telemetry: Telemetry | bool = True,
        tracing: bool | TracerProvider = False,
    ) -> None:
        self.telemetry = resolve_telemetry(telemetry)
        self._tracing: Any = None
        self._tracer_provider: Any = None
        if tracing is not False:
            if tracing is not True and not callable(getattr(tracing, "get_tracer", None)):
                raise ConfigurationError(
                    f"tracing must be True, False or an OpenTelemetry TracerProvider, got {tracing!r}"
                )
            self._tracing = import_optional(
                "opentelemetry.instrumentation.asgi", extra="otel", feature="tracing=True"
            ).OpenTelemetryMiddleware
            if tracing is not True:
                self._tracer_provider = tracing
        given = {
            "problems": problems,
            "rate_limit": rate_limit,
            "cache": cache,
            "timeout": timeout,
            "concurrency": concurrency,
        }
        self._owns_redis = isinstance(redis, str)
        self.redis: Any = redis_client(redis) if redis is not None else None
        self._layers: list[tuple[str, type[Any], dict[str, Any]]] = []
        for name in LAYER_ORDER:
            options = _options(name, given[name])
            if options is None:
                continue
            spec = _SPECS[name]
            cls = _load_class(spec)
            _check_keywords(name, cls, options)
            if (
                spec.storage_option is not None
                and self.redis is not None
                and spec.storage_option not in options
                and "cache" not in options  # a shared Cache object brings its own backend
            ):
                options[spec.storage_option] = self.redis
            self._layers.append((name, cls, options))
        self._check_combination()

    def _check_combination(self) -> None:
        layers = {name: options for name, _, options in self._layers}
        timeout_options = layers.get("timeout")
        concurrency_options = layers.get("concurrency")
        if timeout_options is not None and concurrency_options is not None:
            total = timeout_options.get("timeout")
            queue = concurrency_options.get("queue_timeout")
            if total is not None and queue is not None:
                if seconds(queue, "concurrency queue_timeout", allow_zero=True) >= seconds(total, "timeout"):
                    raise ConfigurationError(
                        f"concurrency queue_timeout ({queue}) must be shorter than the request timeout ({total}): "
                        "the time spent queueing counts against the deadline, so a queued request would get a "
                        "504 before it could be shed with a 503; lower queue_timeout or raise timeout"
                    )

    @property
    def layers(self) -> tuple[str, ...]:
        """The names of the enabled layers, outermost first."""
        return tuple(name for name, _, _ in self._layers)

    def options(self, layer: str) -> dict[str, Any]:
        """The options a layer is built with (including the shared Redis client)."""
        for name, _, options in self._layers:
            if name == layer:
                return dict(options)
        raise KeyError(layer)

    def wrap(self, app: ASGIApp) -> ResilientApp:
        """Wrap ``app`` in the enabled layers; each call builds fresh middleware instances."""
        built: dict[str, Any] = {}
        wrapped: ASGIApp = app
        for name, cls, options in reversed(self._layers):
            wrapped = cls(wrapped, **options, telemetry=self.telemetry)
            built[name] = wrapped
        if self._tracing is not None:
            wrapped = self._tracing(
                wrapped,
                tracer_provider=self._tracer_provider,
                meter_provider=self.telemetry.meter_provider,
                exclude_spans=["receive", "send"],
            )
        return ResilientApp(wrapped, stack=self, app=app, layers={name: built[name] for name in self.layers})

    __call__ = wrap

    def transport(
        self, transport: Any = None, *, shared_breaker_state: bool = False, **options: Any
    ) -> AsyncResilientTransport:
        """An ``AsyncResilientTransport`` reporting to this stack's telemetry.

        With ``shared_breaker_state=True`` the breaker state lives in the stack's Redis (opt-in, shared
        by every process); it needs ``redis=``.
        """
        if "telemetry" in options:
            raise ConfigurationError("set telemetry= on the stack, not on the transport it builds")
        if shared_breaker_state:
            if self.redis is None:
                raise ConfigurationError("shared_breaker_state=True needs the stack's redis= URL or client")
            options["state"] = self.redis
        from asgi_resilience.client import AsyncResilientTransport

        return AsyncResilientTransport(transport, **options, telemetry=self.telemetry)

    def snapshot(self) -> dict[str, Any]:
        """The telemetry snapshot plus the stack's layer order (what the dashboard shows)."""
        data = self.telemetry.snapshot()
        data["layers"] = (["tracing"] if self._tracing is not None else []) + list(self.layers)
        return data

    async def aclose(self) -> None:
        """Close the Redis client the stack built from a URL (a client you passed stays open)."""
        if self._owns_redis and self.redis is not None:
            await self.redis.aclose()

    def __repr__(self) -> str:
        return f"ResilienceStack(layers={list(self.layers)!r})"


class ResilientApp:
    """The wrapped ASGI app :func:`resilient` returns.

    Calls go straight to the outermost layer. ``.stack`` is the :class:`ResilienceStack` (pass it to
    ``dashboard_app``), ``.layers`` maps layer names to the middleware instances (e.g. to call the
    cache's ``purge``), ``.app`` is the app that was wrapped; any other attribute is the wrapped app's
    (read and set). On lifespan shutdown the Redis client the stack created is closed after the app
    has shut down.
    """

    __slots__ = ("_outer", "app", "layers", "stack")

    def __init__(self, outer: ASGIApp, *, stack: ResilienceStack, app: ASGIApp, layers: dict[str, Any]) -> None:
        self._outer = outer
        self.stack = stack
        self.app = app
        self.layers = layers

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "lifespan":
            await self._outer(scope, receive, send)
            return
        for layer in self.layers.values():
            endpoints = getattr(layer, "_endpoints", None)
            if isinstance(endpoints, EndpointOptions) and not endpoints.checked:
                endpoints.check()  # at startup: warn about endpoint options this app's routes cannot honour

        async def lifespan_send(message: Message) -> None:
            if message["type"] == "lifespan.shutdown.complete":
                await self.stack.aclose()
            await send(message)

        await self._outer(scope, receive, lifespan_send)

    def __getattr__(self, name: str) -> Any:
        # Only called for names ResilientApp does not have: the wrapped app's attributes.
        if name.startswith("__") or name in _SLOTS:
            raise AttributeError(name)
        return getattr(self.app, name)

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _SLOTS:
            object.__setattr__(self, name, value)
        else:
            setattr(self.app, name, value)

    def __repr__(self) -> str:
        return f"ResilientApp(layers={list(self.layers)!r}, app={self.app!r})"


_SLOTS = frozenset(ResilientApp.__slots__)


def resilient(
    app: A,
    *,
    problems: ProblemsLayer = True,
    rate_limit: RateLimitLayer = False,
    cache: CacheLayer = False,
    timeout: TimeoutLayer = False,
    concurrency: ConcurrencyLayer = False,
    redis: str | Any | None = None,
    telemetry: Telemetry | bool = True,
    tracing: bool | TracerProvider = False,
) -> A:
    """Wrap ``app`` in the resilience layers, in the documented order (see this module's docstring).

    ``resilient(app, **options)`` is ``ResilienceStack(**options).wrap(app)``: the object returned is
    a :class:`ResilientApp`. It is typed as the app you passed, so that ``app = resilient(app, ...)``
    type-checks for every framework, and it forwards attribute access to that app (``app.state``,
    ``app.include_router(...)``, ``app.url_path_for(...)`` keep working). ``isinstance(app, FastAPI)``
    is False afterwards; use ``ResilienceStack(...).wrap(app)`` where you want the ``ResilientApp``
    type itself (``.stack``, ``.layers``).

    .. versionadded:: 0.1.0
    """
    stack = ResilienceStack(
        problems=problems,
        rate_limit=rate_limit,
        cache=cache,
        timeout=timeout,
        concurrency=concurrency,
        redis=redis,
        telemetry=telemetry,
        tracing=tracing,
    )
    return cast(A, stack.wrap(app))
