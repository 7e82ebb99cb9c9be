"""RateLimitMiddleware: the ASGI adapter that drives the rate-limit core and its storage."""

from __future__ import annotations

import hashlib
import inspect
import logging
import math
import re
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import timedelta
from typing import Any, Literal, TypeVar

import anyio
from starlette.requests import HTTPConnection

from asgi_resilience._asgi import ARRIVAL, append_headers, get_header, send_error
from asgi_resilience._clock import Clock
from asgi_resilience._durations import seconds
from asgi_resilience._outage import OutageGuard
from asgi_resilience._paths import path_regex
from asgi_resilience._proxy import DEFAULT_IPV6_PREFIX, TrustedProxies, network_key
from asgi_resilience._redis import CONNECT_BUDGET
from asgi_resilience._routing import ATTRIBUTE, EndpointOptions, mark_endpoint
from asgi_resilience.errors import ConfigurationError, RateLimitExceeded, StorageError
from asgi_resilience.observability import RateLimitedLog, Telemetry, resolve_telemetry
from asgi_resilience.observability._telemetry import Series
from asgi_resilience.ratelimit._policy import (
    MOVING_WINDOW_MAX,
    STRATEGIES,
    CostSource,
    Decision,
    KeySource,
    LimitSource,
    Rule,
    Strategy,
    parse_limits,
)
from asgi_resilience.ratelimit._storage import Check, MemoryStorage, RateLimitStorage, storage_from
from asgi_resilience.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["RateLimitMiddleware", "rate_limit"]

logger = logging.getLogger("asgi_resilience.ratelimit")

T = TypeVar("T")
HeaderMode = Literal["draft-10", "legacy", "both"]
CallableErrorMode = Literal["deny", "skip"]
StoreErrorMode = Literal["open", "closed", "local"]
_CONCERN = "rate_limit"
_MAX_COOLDOWN = 30.0
_NEAR_KEYS = 10_000  # per rule, for the dashboard's near-limit count
_monotonic = time.monotonic


def rate_limit(
    limit: LimitSource,
    *,
    key: KeySource = "ip",
    methods: Sequence[str] | None = None,
    cost: CostSource = 1,
    name: str | None = None,
    shadow: bool = False,
) -> Callable[[T], T]:
    """Limit one endpoint: ``@rate_limit("5/minute")`` on a Starlette/FastAPI endpoint or a mounted app.

    The endpoint is returned unchanged (FastAPI still sees its signature); :class:`RateLimitMiddleware`
    finds the rule before routing, for routes added through ``APIRouter``/``include_router`` and in
    ``Mount``-ed sub-apps alike. Stack several decorators for several rules. The policy name defaults
    to the endpoint's name, and each endpoint counts separately.
    """

    def decorate(endpoint: T) -> T:
        marks = getattr(endpoint, ATTRIBUTE, None)
        existing: tuple[Rule, ...] = tuple(marks.get(_CONCERN, ())) if isinstance(marks, dict) else ()
        base = name or getattr(endpoint, "__name__", None) or type(endpoint).__name__
        rule_name = base if not existing or name else f"{base}#{len(existing) + 1}"
        rule = Rule(limit, key=key, methods=methods, cost=cost, name=rule_name, shadow=shadow)
        where = getattr(endpoint, "__module__", None) or type(endpoint).__module__
        qualname = getattr(endpoint, "__qualname__", None) or type(endpoint).__qualname__
        rule.counter = f"{where}.{qualname}#{len(existing) + 1}"  # endpoints never share a counter
        return mark_endpoint(endpoint, _CONCERN, (*existing, rule))

    return decorate


def _sf_string(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


class _WebSocketDenialSend:
    """Turns a problem response into ``websocket.http.response.*`` messages (the ASGI extension)."""

    __slots__ = ("_send",)

    def __init__(self, send: Send) -> None:
        self._send = send

    async def __call__(self, message: Message) -> None:
        await self._send({**message, "type": "websocket." + message["type"]})


class RateLimitMiddleware:
    """Rate limiting as pure ASGI middleware: decide before the app runs, add headers to every response.

    Args:
        app: the ASGI app.
        rules: :class:`Rule` objects applied to every matching request (``@rate_limit`` adds more per
            endpoint). A request passes only if every matching rule passes.
        storage: ``"memory://"`` (per process), a Redis URL (``redis://``, ``rediss://``,
            ``redis+cluster://``, ``redis+sentinel://``) or a ``redis.asyncio`` client: one call per
            request for all its limits, atomically. Any other storage URL of the ``limits`` package
            (``memcached://``, ``mongodb://``, ``async+memory://``, ...) goes through ``limits``' own
            async strategies: 2-3 round trips per limit, each limit atomic but not a request's limits
            together, no ``gcra``. A client built from a URL is closed on ASGI lifespan shutdown and by
            :meth:`aclose`; a client or storage passed in is never closed (its owner closes it).
        strategy: ``"sliding-window"`` (default), ``"fixed-window"``, ``"moving-window"`` or ``"gcra"``.
        exempt: path patterns (``["/health", "/metrics*"]``; ``*`` matches anything, ``/`` included, every
            other character is literal) or a sync/async callable of the request
            returning True for requests that skip every rule.
        trusted_proxies: None (the peer is the client), CIDRs, a hop count, or a
            :class:`~asgi_resilience.TrustedProxies` (``"unix"`` in the list trusts a unix-socket peer).
        on_store_error: when the storage fails or exceeds ``store_timeout``: ``"open"`` (admit),
            ``"closed"`` (503 problem+json) or ``"local"`` (decide with an in-process limiter).
        store_timeout: seconds one storage call may take (default 50 ms). The first call on a new
            connection (at start-up, or the probe after a failure) may take up to 0.5 s: it connects.
        store_cooldown: after a failure, seconds during which the storage is not tried; then one
            request probes it (one probe per cooldown while it stays down). Recovery is automatic and
            takes at most this long once the storage is back.
        on_callable_error: when a rule's key, limit or cost callable raises (or returns a bad
            cost) for a request: ``"deny"`` (default) answers 429 for that rule, ``"skip"`` leaves
            that one rule out for the request. The other rules apply either way. Counted as
            ``result="callable_error"``, logged once per interval per rule.
        shadow: decide, count and log, but never reject (every rule).
        headers: ``"draft-10"`` (``RateLimit-Policy`` and ``RateLimit``), ``"legacy"``
            (``X-RateLimit-Limit/-Remaining/-Reset``), ``"both"``, or None for no headers.
        ipv6_prefix: IPv6 clients are keyed by this prefix length (default /56, as express-rate-limit:
            a subscriber commonly holds a /56 or a /48, so rotating /64s must not earn fresh quotas;
            64 keys per LAN, 128 per address).
        key_prefix: prefix of the storage keys.
        clock: seconds; tests only (memory counters, the breaker and Redis scripts use it).
        telemetry: True (process default), False (off) or a Telemetry instance.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        rules: Sequence[Rule] = (),
        storage: str | Any = "memory://",
        strategy: Strategy = "sliding-window",
        exempt: Sequence[str] | str | Callable[[Any], bool | Awaitable[bool]] | None = None,
        trusted_proxies: Sequence[str] | int | TrustedProxies | None = None,
        on_store_error: StoreErrorMode = "open",
        store_timeout: float | timedelta = 0.05,
        store_cooldown: float | timedelta = 1.0,
        on_callable_error: CallableErrorMode = "deny",
        shadow: bool = False,
        headers: HeaderMode | None = "draft-10",
        ipv6_prefix: int = DEFAULT_IPV6_PREFIX,
        key_prefix: str = "asgi_rl",
        clock: Clock | None = None,
        telemetry: Telemetry | bool = True,
    ) -> None:
        self.app = app
        if strategy not in STRATEGIES:
            raise ConfigurationError(f"strategy must be one of {', '.join(STRATEGIES)}; got {strategy!r}")
        self.strategy: str = strategy
        self.rules = tuple(rules)
        for rule in self.rules:
            if not isinstance(rule, Rule):
                raise ConfigurationError(f"rules must be Rule objects, got {rule!r}")
            self._check_rule(rule)
        names = [rule.name for rule in self.rules]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ConfigurationError(f"rule names must be unique (they name the counters); pass name= to {duplicates}")
        if on_store_error not in ("open", "closed", "local"):
            raise ConfigurationError(f"on_store_error must be 'open', 'closed' or 'local', got {on_store_error!r}")
        self.on_store_error = on_store_error
        self.store_timeout = seconds(store_timeout, "store_timeout", maximum=60)
        self.store_cooldown = seconds(store_cooldown, "store_cooldown", allow_zero=True, maximum=_MAX_COOLDOWN)
        if on_callable_error not in ("deny", "skip"):
            raise ConfigurationError(f"on_callable_error must be 'deny' or 'skip', got {on_callable_error!r}")
        self.on_callable_error = on_callable_error
        self._rare_log = RateLimitedLog(logger)  # per-request events (a failing callable, shadow mode)
        if headers not in ("draft-10", "legacy", "both", None, False):
            raise ConfigurationError(f"headers must be 'draft-10', 'legacy', 'both' or None, got {headers!r}")
        self._draft_headers = headers in ("draft-10", "both")
        self._legacy_headers = headers in ("legacy", "both")
        if isinstance(ipv6_prefix, bool) or not isinstance(ipv6_prefix, int) or not 1 <= ipv6_prefix <= 128:
            raise ConfigurationError(f"ipv6_prefix must be an int from 1 to 128 (e.g. 64 or 56), got {ipv6_prefix!r}")
        self.ipv6_prefix = ipv6_prefix
        self.proxies = (
            trusted_proxies if isinstance(trusted_proxies, TrustedProxies) else TrustedProxies(trusted_proxies)
        )
        self.shadow = bool(shadow)
        self._clock: Clock = clock or time.monotonic
        self.storage: RateLimitStorage = storage_from(storage, clock=clock, prefix=key_prefix)
        self.storage.check_strategy(strategy)
        # the synchronous fast path; a subclass (a custom storage) is awaited like any other
        self._memory = self.storage if type(self.storage) is MemoryStorage else None
        self._owns_storage = isinstance(storage, str) and self._memory is None  # a client built here from a URL
        self._fallback = MemoryStorage(clock=clock or time.time) if on_store_error == "local" else None
        self._exempt_regex: re.Pattern[str] | None = None
        self._exempt_call: Callable[[Any], bool | Awaitable[bool]] | None = None
        if isinstance(exempt, str):
            exempt = [exempt]
        if callable(exempt):
            self._exempt_call = exempt
        elif exempt is not None:
            patterns = list(exempt)
            if not all(isinstance(p, str) for p in patterns):
                raise ConfigurationError(f"exempt must be path patterns or a callable, got {exempt!r}")
            if patterns:
                self._exempt_regex = path_regex(patterns, what="exempt")
        self._endpoints = EndpointOptions(_CONCERN, app)
        self._unfiltered = all(rule.path is None and rule.methods is None for rule in self.rules)
        self._all_static = all(rule.static for rule in self.rules)
        self._direct = not self.proxies.enabled
        self._ip_cache: dict[str | None, str] = {}
        self._checks_cache: dict[Any, list[Check]] = {}
        self._series: dict[tuple[str, str], Series] = {}
        # rule -> {client key: until when} for keys with at most 10 % of a quota left: the dashboard
        # shows how many (never which) clients are close to their limit, as this process saw them
        self._near: dict[str, dict[str, float]] = {}
        self._policy_headers: dict[str, tuple[bytes, bytes]] = {}
        # breaker around the storage (shared by all requests; per-request state stays in locals)
        self._outage = OutageGuard(cooldown=self.store_cooldown, clock=self._clock)
        self._policy_cache: dict[tuple[str, int, int, int], tuple[str, str]] = {}
        tel = resolve_telemetry(telemetry)
        self._telemetry = tel
        self._requests = tel.instrument("asgi_resilience.rate_limit.requests")
        self._duration = tel.instrument("asgi_resilience.rate_limit.duration")
        tel.register_snapshot("rate_limit", self.snapshot)

    def _check_rule(self, rule: Rule) -> None:
        if self.strategy == "moving-window" and rule.limits is not None:
            for limit in rule.limits:
                if limit.amount > MOVING_WINDOW_MAX:
                    raise ConfigurationError(
                        f"rule {rule.name!r}: moving-window keeps one entry per hit and is capped at "
                        f"{MOVING_WINDOW_MAX} per window; use strategy='sliding-window' or 'gcra' for larger limits"
                    )

    def snapshot(self) -> dict[str, Any]:
        """Live state for the dashboard."""
        now = self._clock()
        return {
            "storage": self.storage.name,
            "strategy": self.strategy,
            "rules": [rule.name for rule in self.rules],
            "shadow": self.shadow,
            "on_store_error": self.on_store_error,
            "store_available": self._outage.available,
            "store_failures": self._outage.failures,
            "keys": len(self._memory) if self._memory is not None else None,
            "near_limit": self._near_limit_counts(now),
        }

    def _near_limit_counts(self, now: float) -> dict[str, int]:
        counts: dict[str, int] = {}
        for rule, keys in list(self._near.items()):
            for key, until in list(keys.items()):
                if until <= now:
                    del keys[key]
            counts[rule] = len(keys)
        return counts

    def _note_near(self, check: Check, decision: Decision) -> None:
        """Remember that ``check``'s client has at most 10 % of this quota left (until it resets)."""
        keys = self._near.get(check.rule)
        if keys is None:
            keys = self._near[check.rule] = {}
        elif len(keys) >= _NEAR_KEYS:
            keys.clear()
        keys[check.partition] = self._clock() + max(decision.reset_after, 1.0)

    async def reset(self) -> None:
        """Forget every counter (tests, admin)."""
        await self.storage.reset()
        if self._fallback is not None:
            await self._fallback.reset()

    async def aclose(self) -> None:
        """Close the Redis client this middleware built from a URL (idempotent).

        A client or storage object passed in is left open: whoever created it closes it. Called on
        ASGI lifespan shutdown; call it yourself when the server does not run the lifespan protocol.
        A later request reconnects (an app may be started again, as ``TestClient`` does).
        """
        if self._owns_storage:
            await self.storage.aclose()

    def _lifespan_receive(self, receive: Receive) -> Receive:
        async def wrapped() -> Message:
            message = await receive()
            if message["type"] == "lifespan.shutdown":
                try:
                    await self.aclose()
                except Exception:  # the app's own shutdown must still run
                    logger.exception("closing the rate-limit storage %s on shutdown failed", self.storage.name)
            return message

        return wrapped

    # ------------------------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind != "http" and kind != "websocket":
            if kind == "lifespan" and self._owns_storage:
                await self.app(scope, self._lifespan_receive(receive), send)
                return
            await self.app(scope, receive, send)
            return
        if ARRIVAL not in scope:
            scope[ARRIVAL] = _monotonic()  # see _asgi.ARRIVAL
        path: str = scope.get("path", "")
        if self._exempt_regex is not None and self._exempt_regex.fullmatch(path):
            await self.app(scope, receive, send)
            return
        if self._exempt_call is not None:
            try:
                exempt = self._exempt_call(HTTPConnection(scope))
                if inspect.isawaitable(exempt):
                    exempt = await exempt
            except Exception:
                logger.exception("the rate-limit exempt callable failed; the request is not exempt")
                exempt = False
            if exempt:
                await self.app(scope, receive, send)
                return
        method = scope.get("method")
        rules: Sequence[Rule]
        static = self._all_static
        if self._unfiltered:
            rules = self.rules
        else:
            rules = [rule for rule in self.rules if rule.matches(method, path)]
        endpoint_rules = self._endpoints.lookup(scope)
        if endpoint_rules:
            rules = [*rules, *(rule for rule in endpoint_rules if rule.matches(method, path))]
            static = all(rule.static for rule in rules)
        if not rules:
            await self.app(scope, receive, send)
            return
        refused: list[str] = []
        if static:
            checks = self._static_checks(scope, rules)
        else:
            checks = await self._checks(scope, rules, refused)
        if refused:
            # a failing callable (on_callable_error="deny") or a cost above the limit: waiting cannot
            # help, so the 429 carries no Retry-After
            self._telemetry.span_attributes({"asgi_resilience.rate_limit.result": "limited"})
            exc = RateLimitExceeded(
                "This request cannot be admitted by the rate limit", retry_after=None, violated_policies=refused
            )
            await self._deny(scope, receive, send, exc, ())
            return
        if not checks:
            await self.app(scope, receive, send)
            return
        memory = self._memory
        decisions = memory.hit_now(self.strategy, checks) if memory is not None else await self._decide(checks)
        if decisions is None:  # storage failed, fail open
            await self.app(scope, receive, send)
            return
        if decisions is False:  # storage failed, fail closed
            await self._reject_store(scope, receive, send)
            return
        if len(checks) == 1 and not self._legacy_headers:
            headers, violated, wait = self._outcome_one(checks[0], decisions[0])
        else:
            headers, violated, wait = self._outcome(checks, decisions)
        if violated:
            self._telemetry.span_event("asgi_resilience.rate_limit.limited", {"rules": ",".join(violated)})
            self._telemetry.span_attributes({"asgi_resilience.rate_limit.result": "limited"})
            exc = RateLimitExceeded(retry_after=max(wait, 0.001), violated_policies=violated)
            await self._deny(scope, receive, send, exc, headers)
            return
        if not headers:
            await self.app(scope, receive, send)
            return
        if kind == "websocket":
            await self.app(scope, receive, _accept_with_headers(send, headers))
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                append_headers(message, headers)
            await send(message)

        await self.app(scope, receive, send_with_headers)

    def _static_checks(self, scope: Scope, rules: Sequence[Rule]) -> list[Check]:
        """Checks for rules with a fixed limit, a shorthand key and an int cost: no awaiting.

        For the middleware's own rules the (immutable) check list of each client is cached.
        """
        if rules is not self.rules:
            return self._build_checks(rules, [self._partition(rule.key, scope) for rule in rules])
        if len(rules) == 1:
            cache_key: Any = self._partition(rules[0].key, scope)
        else:
            cache_key = tuple([self._partition(rule.key, scope) for rule in rules])
        found = self._checks_cache.get(cache_key)
        if found is None:
            partitions = [cache_key] if len(rules) == 1 else list(cache_key)
            found = self._build_checks(rules, partitions)
            if len(self._checks_cache) >= 8192:
                self._checks_cache.clear()
            self._checks_cache[cache_key] = found
        return found

    def _build_checks(self, rules: Sequence[Rule], partitions: Sequence[Any]) -> list[Check]:
        checks: list[Check] = []
        for rule, partition in zip(rules, partitions, strict=True):
            cost: Any = rule.cost
            limits: Any = rule.limits
            enforce = not (self.shadow or rule.shadow)
            multi = len(limits) > 1
            for nth, limit in enumerate(limits):
                checks.append(
                    Check(rule.name, nth, partition, limit.amount, limit.period_ms, cost, enforce, rule.counter, multi)
                )
        return checks

    async def _checks(self, scope: Scope, rules: Sequence[Rule], refused: list[str]) -> list[Check]:
        """The checks of the rules that apply; rules that must refuse the request go to ``refused``.

        Each rule's callables are evaluated on their own: one that raises fails only its own rule.
        """
        checks: list[Check] = []
        global_shadow = self.shadow
        request = HTTPConnection(scope)  # what callables receive: also a mapping over the scope
        for rule in rules:
            enforce = not (global_shadow or rule.shadow)
            try:
                found = await self._evaluate(rule, scope, request)
            except Exception as exc:
                self._record(rule.name, "callable_error")
                self._rare_log.log(
                    logging.ERROR,
                    ("callable", rule.name),
                    "rate-limit rule %r: its key/limit/cost callable failed; on_callable_error=%r",
                    rule.name,
                    self.on_callable_error,
                    exc_info=exc,
                )
                if self.on_callable_error == "deny" and enforce:
                    refused.append(rule.name)
                continue
            if found is None:
                continue
            limits, partition, cost = found
            if any(cost > limit.amount for limit in limits):
                # more than the whole quota: no wait makes it fit, so it is refused without Retry-After
                self._record(rule.name, "limited" if enforce else "shadow_limited")
                if enforce:
                    refused.append(rule.name)
                continue
            multi = len(limits) > 1
            for nth, limit in enumerate(limits):
                checks.append(
                    Check(rule.name, nth, partition, limit.amount, limit.period_ms, cost, enforce, rule.counter, multi)
                )
        return checks

    async def _evaluate(self, rule: Rule, scope: Scope, request: Any) -> tuple[Sequence[Any], str, int] | None:
        """(limits, partition, cost) of ``rule`` for a request, None when it does not apply; may raise."""
        limits = rule.limits
        if limits is None:
            value = rule.limit(request)  # type: ignore[operator]
            if inspect.isawaitable(value):
                value = await value
            if value is None:
                return None  # unlimited for this request
            limits = parse_limits(value)
            self._check_rule_limits(rule, limits)
        partition = self._partition(rule.key, scope, request)
        if partition is not None and not isinstance(partition, str):
            partition = await partition
        if partition is None:
            return None
        cost: Any = rule.cost
        if not isinstance(cost, int):
            cost = cost(request)
            if inspect.isawaitable(cost):
                cost = await cost
            if isinstance(cost, bool) or not isinstance(cost, int) or cost < 0:
                raise ValueError(f"rule {rule.name!r}: cost callable returned {cost!r}, expected an int >= 0")
        return limits, partition, cost

    def _check_rule_limits(self, rule: Rule, limits: Sequence[Any]) -> None:
        if self.strategy == "moving-window" and any(limit.amount > MOVING_WINDOW_MAX for limit in limits):
            raise ValueError(f"rule {rule.name!r}: moving-window limits are capped at {MOVING_WINDOW_MAX}")

    def _partition(self, key: KeySource, scope: Scope, request: Any = None) -> str | None | Awaitable[str | None]:
        if key == "ip":
            return self._ip_partition(scope)
        if key == "global":
            return "global"
        if not isinstance(key, str):
            value = key(request if request is not None else HTTPConnection(scope))
            if inspect.isawaitable(value):
                return _prefixed(value)
            return None if value is None else "key:" + str(value)
        if key == "user":
            user = scope.get("user")
            identity = _user_identity(user)
            if identity is None:
                return "anon:" + self._ip_partition(scope)
            return "user:" + identity
        # header:<Name>
        header = key[7:]
        raw = get_header(scope, header.lower().encode("latin-1"))
        if raw is None or not raw.strip():
            return "anon:" + self._ip_partition(scope)
        # hashed: header values are often secrets (API keys) and must not show up in Redis key names
        digest = hashlib.blake2b(raw.strip(), digest_size=12).hexdigest()
        return f"hdr:{header.lower()}:{digest}"

    def _ip_partition(self, scope: Scope) -> str:
        if self._direct:
            # no trusted proxy: the peer is the client (and a forwarding header earns one warning)
            if not self.proxies.warned:
                for name, _ in scope.get("headers", ()):
                    if name == b"x-forwarded-for" or name == b"forwarded":
                        self.proxies.client_ip(scope)
                        break
            client = scope.get("client")
            peer = str(client[0]) if client else None
            found = self._ip_cache.get(peer)
            if found is not None:
                return found
            ip = self.proxies.client_ip({"client": client}) if client else None
        else:
            ip = self.proxies.client_ip(scope)
        partition = "ip:unknown" if ip is None else "ip:" + network_key(ip, ipv6_prefix=self.ipv6_prefix)
        if self._direct:
            if len(self._ip_cache) >= 8192:
                self._ip_cache.clear()
            self._ip_cache[peer] = partition
        return partition

    async def _decide(self, checks: list[Check]) -> list[Decision] | None | Literal[False]:
        if self._memory is not None:
            return self._memory.hit_now(self.strategy, checks)
        outage = self._outage
        probing = outage.failures > 0
        if not outage.admit():
            return self._degraded(checks)
        started = time.perf_counter()
        try:
            # the first call on a new connection (at start, after a failure) also connects, loads the
            # script and says hello: that is not a slow store, so it gets a connection budget
            budget = self.store_timeout if outage.connected else max(self.store_timeout, CONNECT_BUDGET)
            with anyio.fail_after(budget):
                decisions = await self.storage.hit(self.strategy, checks)
        except Exception as exc:  # StorageError, TimeoutError, or a custom storage's own error
            # a fixed cooldown, not a growing one: a probe per cooldown costs one request a fast failure
            # (or one store_timeout), and the limiter is back within store_cooldown of the store
            if outage.failed() or probing:  # not once per request already in flight when it went down
                logger.warning(
                    "rate-limit storage %s failed (%s); on_store_error=%r for the next %.1f s",
                    self.storage.name,
                    type(exc).__name__ if isinstance(exc, TimeoutError) else exc,
                    self.on_store_error,
                    outage.remaining,
                )
            return self._degraded(checks)
        self._duration.record(time.perf_counter() - started, {"storage": self.storage.name})
        if outage.succeeded():
            logger.warning("rate-limit storage %s recovered", self.storage.name)
        return decisions

    def _degraded(self, checks: list[Check]) -> list[Decision] | None | Literal[False]:
        if self._fallback is not None:
            return self._fallback.hit_now(self.strategy, checks)
        for rule in dict.fromkeys(check.rule for check in checks):
            self._requests.add(1, {"rule": rule, "result": "store_error"})
        return None if self.on_store_error == "open" else False

    def _outcome(
        self, checks: list[Check], decisions: list[Decision]
    ) -> tuple[list[tuple[bytes, bytes]], list[str], float]:
        """Count the decisions, collect violated policies and build the headers, in one pass."""
        if len(checks) == 1 and not self._legacy_headers:
            return self._outcome_one(checks[0], decisions[0])
        violated: list[str] = []
        wait = 0.0
        draft = self._draft_headers
        policies: list[str] = []
        states: list[str] = []
        per_rule: dict[str, str] | None = None
        cache = self._policy_cache
        ceil = math.ceil
        for check, decision in zip(checks, decisions, strict=True):
            retry = decision.retry_after
            if decision.remaining * 10 <= decision.limit:
                self._note_near(check, decision)
            if decision.allowed:
                result = "allowed"
            elif check.enforce:
                result = "limited"
                if check.rule not in violated:
                    violated.append(check.rule)
                if retry is not None and retry > wait:
                    wait = retry
            else:
                result = "shadow_limited"
            if check.multi:  # one count per rule, the worst result of its limits
                if per_rule is None:
                    per_rule = {}
                previous = per_rule.get(check.rule)
                if previous is None or _RANK[result] > _RANK[previous]:
                    per_rule[check.rule] = result
            else:
                self._record(check.rule, result)
            if draft:
                found = cache.get((check.rule, check.nth, check.limit, check.period_ms))
                if found is None:
                    found = self._policy_item(check)
                reset = max(1, ceil(retry)) if retry is not None else max(0, ceil(decision.reset_after))
                policies.append(found[1])
                states.append(f"{found[0]};r={decision.remaining};t={reset}")
        if per_rule:
            for rule, result in per_rule.items():
                self._record(rule, result)
        headers: list[tuple[bytes, bytes]] = []
        if draft:
            joined = policies[0] if len(policies) == 1 else ", ".join(policies)
            policy_header = self._policy_headers.get(joined)
            if policy_header is None:
                if len(self._policy_headers) > 1024:
                    self._policy_headers.clear()
                policy_header = self._policy_headers[joined] = (b"ratelimit-policy", joined.encode("latin-1"))
            headers.append(policy_header)
            headers.append((b"ratelimit", (states[0] if len(states) == 1 else ", ".join(states)).encode("latin-1")))
        if self._legacy_headers:
            tight = min(decisions, key=lambda d: (d.remaining, -_reset_seconds(d)))
            headers.append((b"x-ratelimit-limit", str(tight.limit).encode()))
            headers.append((b"x-ratelimit-remaining", str(tight.remaining).encode()))
            headers.append((b"x-ratelimit-reset", str(_reset_seconds(tight)).encode()))
        return headers, violated, wait

    def _outcome_one(self, check: Check, decision: Decision) -> tuple[list[tuple[bytes, bytes]], list[str], float]:
        """:meth:`_outcome` for the common single-check request."""
        allowed, limit, remaining, reset_after, retry = decision
        if remaining * 10 <= limit:
            self._note_near(check, decision)
        violated: list[str] = []
        wait = 0.0
        if allowed:
            self._record(check.rule, "allowed")
        elif check.enforce:
            self._record(check.rule, "limited")
            violated.append(check.rule)
            wait = retry or 0.0
        else:
            self._record(check.rule, "shadow_limited")
        if not self._draft_headers:
            return [], violated, wait
        found = self._policy_cache.get((check.rule, check.nth, check.limit, check.period_ms))
        if found is None:
            found = self._policy_item(check)
        reset = max(1, math.ceil(retry)) if retry is not None else max(0, math.ceil(reset_after))
        policy_header = self._policy_headers.get(found[1])
        if policy_header is None:
            if len(self._policy_headers) > 1024:
                self._policy_headers.clear()
            policy_header = self._policy_headers[found[1]] = (b"ratelimit-policy", found[1].encode("latin-1"))
        state = f"{found[0]};r={remaining};t={reset}".encode("latin-1")
        return [policy_header, (b"ratelimit", state)], violated, wait

    def _record(self, rule: str, result: str) -> None:
        series = self._series.get((rule, result))
        if series is None:
            if len(self._series) > 4096:
                self._series.clear()
            series = self._series[(rule, result)] = self._requests.bind({"rule": rule, "result": result})
        series.add(1)
        if result == "shadow_limited":
            self._rare_log.log(
                logging.INFO, ("shadow", rule), "rate limit %r would reject this request (shadow mode)", rule
            )

    def _policy_item(self, check: Check) -> tuple[str, str]:
        window = max(1, math.ceil(check.period_ms / 1000))
        name = _sf_string(f"{check.rule}/{window}s" if check.multi else check.rule)
        found = (name, f"{name};q={check.limit};w={window}")
        if len(self._policy_cache) > 4096:
            self._policy_cache.clear()
        self._policy_cache[(check.rule, check.nth, check.limit, check.period_ms)] = found
        return found

    async def _deny(
        self, scope: Scope, receive: Receive, send: Send, exc: RateLimitExceeded | StorageError, headers: Any
    ) -> None:
        if scope["type"] == "websocket":
            await receive()  # websocket.connect
            if "websocket.http.response" in (scope.get("extensions") or {}):
                await send_error(_WebSocketDenialSend(send), exc, extra_headers=headers)
            else:
                await send({"type": "websocket.close", "code": 1008, "reason": exc.title})
            return
        await send_error(send, exc, extra_headers=headers, head=scope.get("method") == "HEAD")

    async def _reject_store(self, scope: Scope, receive: Receive, send: Send) -> None:
        wait = max(1.0, self._outage.remaining)
        exc = StorageError("The rate limiter's storage is unavailable", retry_after=wait)
        await self._deny(scope, receive, send, exc, ())


_RANK = {"allowed": 0, "shadow_limited": 1, "limited": 2}


def _reset_seconds(decision: Decision) -> int:
    if decision.retry_after is not None:
        return max(1, math.ceil(decision.retry_after))
    return max(0, math.ceil(decision.reset_after))


async def _prefixed(value: Awaitable[str | None]) -> str | None:
    resolved = await value
    return None if resolved is None else "key:" + str(resolved)


def _user_identity(user: Any) -> str | None:
    if user is None:
        return None
    if getattr(user, "is_authenticated", True) is False:
        return None
    if isinstance(user, dict):
        found = user.get("id") or user.get("sub") or user.get("username")
        return None if found is None else str(found)
    for attr in ("identity", "id", "username", "display_name"):
        try:
            found = getattr(user, attr, None)
        except Exception:  # starlette's BaseUser.identity raises NotImplementedError
            continue
        if found:
            return str(found)
    return str(user) if isinstance(user, str) else None


def _accept_with_headers(send: Send, headers: list[tuple[bytes, bytes]]) -> Send:
    async def wrapped(message: Message) -> None:
        if message["type"] == "websocket.accept":
            message = {**message, "headers": [*message.get("headers", ()), *headers]}
        await send(message)

    return wrapped
