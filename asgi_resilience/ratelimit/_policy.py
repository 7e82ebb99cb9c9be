"""The sans-io rate-limit core: rules, limits, and one pure decision function per strategy.

Nothing here awaits, reads a clock or touches a storage. Every strategy is a function
``(state, now_ms, now_us, limit, period_ms, cost) -> (Decision, new_state)``; a storage keeps the
states and commits ``new_state`` only when the request is admitted by every enforced check. Time is
counted in integer milliseconds (GCRA in microseconds) so that the Redis Lua script, which mirrors
these functions line by line, gives bit-identical answers.

Strategies (``limit`` hits per ``period``):

* ``fixed-window``: a counter per aligned window. Cheap; allows up to 2x at a window boundary.
* ``sliding-window``: the previous window's count weighted by how much of it still overlaps the
  sliding period, plus the current count (Cloudflare's sliding-window counter). The default.
* ``moving-window``: an exact log of hit times. Memory and CPU grow with the limit: limits are
  capped at :data:`MOVING_WINDOW_MAX` hits.
* ``gcra``: the generic cell rate algorithm (a token bucket with one timestamp): bursts up to
  ``limit``, then one hit every ``period / limit``; exact retry-after.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Literal, NamedTuple

from limits import parse_many
from limits.limits import RateLimitItem

from asgi_resilience._paths import path_regex
from asgi_resilience.errors import ConfigurationError

__all__ = [
    "MOVING_WINDOW_MAX",
    "STRATEGIES",
    "Decision",
    "Limit",
    "Rule",
    "Strategy",
    "decide",
    "parse_limits",
]

Strategy = Literal["sliding-window", "fixed-window", "moving-window", "gcra"]
STRATEGIES: tuple[str, ...] = ("sliding-window", "fixed-window", "moving-window", "gcra")
MOVING_WINDOW_MAX = 10_000

# What a rule's callables receive: the request as a ``starlette.requests.HTTPConnection`` (``.headers``,
# ``.client``, ``.url``; it is also a read-only mapping over the ASGI scope). Each may be sync or async.
LimitSource = str | Callable[[Any], str | None | Awaitable[str | None]]
KeySource = str | Callable[[Any], str | None | Awaitable[str | None]]
CostSource = int | Callable[[Any], int | Awaitable[int]]


class Limit(NamedTuple):
    """One parsed limit: ``amount`` hits per ``period_ms`` milliseconds."""

    amount: int
    period_ms: int

    @property
    def window(self) -> int:
        """The window in whole seconds (for ``w=`` in ``RateLimit-Policy``)."""
        return max(1, math.ceil(self.period_ms / 1000))


class Decision(NamedTuple):
    """The outcome of one limit for one request.

    Attributes:
        allowed: whether this limit admits the request.
        limit: the limit's quota (hits per window).
        remaining: quota units left after this request (0 when rejected).
        reset_after: seconds until the quota is back (for the ``t=`` of ``RateLimit``).
        retry_after: when rejected, seconds until the same request would be admitted (``None`` when
            allowed).
    """

    allowed: bool
    limit: int
    remaining: int
    reset_after: float
    retry_after: float | None


def _item_to_limit(item: RateLimitItem) -> Limit:
    return Limit(int(item.amount), int(item.get_expiry()) * 1000)


_PARSED: dict[str, tuple[Limit, ...]] = {}


def parse_limits(value: str) -> tuple[Limit, ...]:
    """Parse a ``limits`` rate string (``"5/second;60/minute"``); cached; raises ConfigurationError."""
    found = _PARSED.get(value)
    if found is not None:
        return found
    try:
        items = parse_many(value)
    except (ValueError, TypeError) as exc:
        raise ConfigurationError(
            f"cannot parse rate limit {value!r}: use the limits notation, e.g. '100/minute' or '5/second;60/minute'"
        ) from exc
    parsed = tuple(_item_to_limit(item) for item in items)
    for limit in parsed:
        if limit.amount <= 0:
            raise ConfigurationError(f"rate limit {value!r} must allow at least one hit per window")
    if len(_PARSED) > 1024:
        _PARSED.clear()
    _PARSED[value] = parsed
    return parsed


class Rule:
    """A rate-limit rule: which requests it applies to, how they are grouped, and their quota.

    Args:
        limit: a rate string (``"100/minute"``, several joined by ``;``) or a sync/async callable of
            the request (a ``starlette.requests.HTTPConnection``) returning one, or None for unlimited
            (how tiers work).
        key: how requests are grouped: ``"ip"`` (the client address, see ``trusted_proxies``),
            ``"header:<Name>"``, ``"user"`` (``scope["user"]`` set by an auth middleware; anonymous
            users fall back to their address), ``"global"`` (one bucket for everyone), or a
            sync/async callable of the request returning a string (None skips the rule).
            ``"header:<Name>"`` keys on a value the *client* chooses: every invented value is a fresh
            bucket, so use it only for a header a trusted gateway sets. For API keys, use a callable
            that validates the key and keys unknown ones by address.
        path: path pattern(s) the request path must match (``"/api/*"``; ``*`` also matches ``/``;
            every other character is literal: the same language as every layer's path rules).
        methods: HTTP methods the rule applies to (all when None).
        cost: quota units a request takes: an int or a sync/async callable of the request.
        name: the policy name in headers, metrics and ``violated_policies``.
        shadow: decide and count, but never reject (dark launch).
    """

    __slots__ = (
        "_path_regex",
        "cost",
        "counter",
        "key",
        "limit",
        "limits",
        "methods",
        "name",
        "path",
        "shadow",
        "static",
    )

    def __init__(
        self,
        limit: LimitSource,
        *,
        key: KeySource = "ip",
        path: str | Sequence[str] | None = None,
        methods: Sequence[str] | None = None,
        cost: CostSource = 1,
        name: str | None = None,
        shadow: bool = False,
    ) -> None:
        self.limit = limit
        self.limits: tuple[Limit, ...] | None = None
        if isinstance(limit, str):
            self.limits = parse_limits(limit)
        elif not callable(limit):
            raise ConfigurationError(f"Rule limit must be a rate string or a callable, got {limit!r}")
        if isinstance(key, str):
            if key not in ("ip", "user", "global") and not (key.startswith("header:") and len(key) > 7):
                raise ConfigurationError(
                    f"Rule key must be 'ip', 'user', 'global', 'header:<Name>' or a callable, got {key!r}"
                )
        elif not callable(key):
            raise ConfigurationError(f"Rule key must be a string shorthand or a callable, got {key!r}")
        self.key = key
        if isinstance(cost, bool) or (isinstance(cost, int) and cost < 0):
            raise ConfigurationError(f"Rule cost must be an int >= 0 or a callable, got {cost!r}")
        if not isinstance(cost, int) and not callable(cost):
            raise ConfigurationError(f"Rule cost must be an int >= 0 or a callable, got {cost!r}")
        self.cost = cost
        if isinstance(cost, int) and self.limits is not None and any(cost > lim.amount for lim in self.limits):
            raise ConfigurationError(
                f"Rule cost {cost} is more than the limit {limit!r} allows: no request could ever be admitted"
            )
        if path is not None and not isinstance(path, (str, list, tuple)):
            raise ConfigurationError(f"Rule path must be a path pattern or a list of them, got {path!r}")
        patterns = [path] if isinstance(path, str) else list(path) if path is not None else []
        self.path = tuple(patterns) or None
        self._path_regex = path_regex(patterns, what="Rule path") if patterns else None
        self.methods = frozenset(m.upper() for m in methods) if methods is not None else None
        if isinstance(methods, str):
            raise ConfigurationError(f"Rule methods must be a list such as [{methods!r}], not a string")
        if name is not None and (not isinstance(name, str) or not name or not (name.isascii() and name.isprintable())):
            raise ConfigurationError(f"Rule name must be a non-empty printable ASCII string, got {name!r}")
        if name is None:
            name = limit if isinstance(limit, str) else getattr(limit, "__name__", "dynamic")
        self.name: str = name
        self.counter = name  # what the storage keys use (decorated endpoints add their module path)
        self.shadow = bool(shadow)
        # checks can be built without calling anything (the middleware's fast path)
        self.static = self.limits is not None and isinstance(key, str) and isinstance(cost, int)

    def __repr__(self) -> str:
        return f"Rule({self.limit!r}, key={self.key!r}, path={self.path!r}, name={self.name!r})"

    def matches(self, method: str | None, path: str) -> bool:
        """Whether the rule applies to a request (method None: a WebSocket handshake, counted as GET)."""
        if self.methods is not None and (method or "GET") not in self.methods:
            return False
        return self._path_regex is None or self._path_regex.fullmatch(path) is not None


# ----------------------------------------------------------------------------------------------
# strategies: (state, now_ms, now_us, limit, period_ms, cost) -> (Decision, new_state, ttl_ms)


def _fixed(state: Any, now_ms: int, now_us: int, limit: int, period: int, cost: int) -> tuple[Decision, Any, int]:
    window = now_ms // period
    count = state[1] if state is not None and state[0] == window else 0
    reset_ms = (window + 1) * period - now_ms
    if count + cost <= limit:
        count += cost
        return Decision(True, limit, limit - count, reset_ms / 1000, None), (window, count), reset_ms
    return Decision(False, limit, max(0, limit - count), reset_ms / 1000, reset_ms / 1000), None, reset_ms


def _sliding(state: Any, now_ms: int, now_us: int, limit: int, period: int, cost: int) -> tuple[Decision, Any, int]:
    window = now_ms // period
    current = previous = 0
    if state is not None:
        if state[0] == window:
            current, previous = state[1], state[2]
        elif state[0] == window - 1:
            previous = state[1]
    elapsed = now_ms - window * period
    left = period - elapsed  # ms until this window ends
    # weighted count * period, in integers: previous * (period - elapsed) + current * period
    used = previous * left + current * period
    if used + cost * period <= limit * period:
        current += cost
        remaining = (limit * period - previous * left - current * period) // period
        return Decision(True, limit, remaining, left / 1000, None), (window, current, previous), left + period
    remaining = max(0, (limit * period - used) // period)
    if cost > limit:
        wait = left + period
    else:
        need = used + cost * period - limit * period  # > 0, in hit-milliseconds
        if previous > 0 and need <= previous * left:
            wait = -(-need // previous)  # the previous window's weight drains previous hits per period
        elif current + cost <= limit:
            wait = left
        else:
            # next window: current becomes previous; need current * (period - e) / period + cost <= limit
            wait = left + -(-(period * (current + cost - limit)) // current)
    return Decision(False, limit, remaining, wait / 1000, wait / 1000), None, left + period


def _moving(state: Any, now_ms: int, now_us: int, limit: int, period: int, cost: int) -> tuple[Decision, Any, int]:
    start = now_ms - period
    hits: list[int] = [t for t in state if t > start] if state else []
    count = len(hits)
    if count + cost <= limit:
        hits.extend([now_ms] * cost)
        oldest = hits[0] if hits else now_ms
        reset_ms = oldest + period - now_ms
        return Decision(True, limit, limit - count - cost, reset_ms / 1000, None), hits, period
    if cost > limit:
        wait = period
    else:
        wait = hits[count + cost - limit - 1] + period - now_ms  # when enough of the oldest hits expire
    reset_ms = hits[0] + period - now_ms if hits else wait
    return Decision(False, limit, max(0, limit - count), reset_ms / 1000, wait / 1000), None, period


def _gcra(state: Any, now_ms: int, now_us: int, limit: int, period: int, cost: int) -> tuple[Decision, Any, int]:
    period_us = period * 1000
    interval = max(1, period_us // limit)  # emission interval
    tat = state if state is not None and state > now_us else now_us
    new_tat = tat + cost * interval
    allow_at = new_tat - period_us
    if allow_at <= now_us:
        remaining = (period_us - (new_tat - now_us)) // interval
        ttl_us = new_tat - now_us
        return Decision(True, limit, remaining, ttl_us / 1e6, None), new_tat, -(-ttl_us // 1000)
    remaining = max(0, (period_us - (tat - now_us)) // interval)
    wait_us = allow_at - now_us if cost <= limit else period_us
    return Decision(False, limit, remaining, (tat - now_us) / 1e6, wait_us / 1e6), None, -(-(tat - now_us) // 1000)


Decide = Callable[[Any, int, int, int, int, int], tuple[Decision, Any, int]]
_STRATEGY_FUNCTIONS: dict[str, Decide] = {
    "fixed-window": _fixed,
    "sliding-window": _sliding,
    "moving-window": _moving,
    "gcra": _gcra,
}


def decide(strategy: str, state: Any, now: float, limit: int, period_ms: int, cost: int) -> tuple[Decision, Any, int]:
    """One pure decision: ``(Decision, new state (None when unchanged), state ttl in ms)``.

    ``now`` is in seconds (any epoch, as long as it only moves forward for one key).
    """
    now_us = round(now * 1_000_000)
    return _STRATEGY_FUNCTIONS[strategy](state, now_us // 1000, now_us, limit, period_ms, cost)


def strategy_function(strategy: str) -> Decide:
    """The decision function of ``strategy`` (validated), for storages that loop over checks."""
    found = _STRATEGY_FUNCTIONS.get(strategy)
    if found is None:
        raise ConfigurationError(f"strategy must be one of {', '.join(STRATEGIES)}; got {strategy!r}")
    return found
