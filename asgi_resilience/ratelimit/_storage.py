"""Rate-limit storages: in-process memory and Redis (one Lua call per request for all checks).

Both take a whole request's checks at once and apply the same rule: every check is decided first,
the request is admitted only if every enforced check allows it, and only then is quota consumed
(by the checks that allowed it). A rejected request costs nothing.
"""

from __future__ import annotations

import hashlib
import itertools
import time
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Sequence
from importlib import resources
from typing import Any, NamedTuple

from asgi_resilience._clock import Clock
from asgi_resilience._redis import redis_client
from asgi_resilience.errors import ConfigurationError, StorageError
from asgi_resilience.ratelimit._policy import Decision, strategy_function

__all__ = ["Check", "MemoryStorage", "RateLimitStorage", "RedisStorage", "storage_from"]

_SWEEP_EVERY = 10_000  # decisions between the starts of two sweep passes
_SWEEP_STEP = 16  # counters a decision examines while a pass runs (the pass never runs all at once)


class Check(NamedTuple):
    """One limit to apply to one request."""

    rule: str  # the rule (policy) name
    nth: int  # which of the rule's limits
    partition: str  # the client key ("ip:192.0.2.1", "global", ...)
    limit: int
    period_ms: int
    cost: int
    enforce: bool
    counter: str = ""  # the counter's identity when it differs from ``rule`` (decorated endpoints)
    multi: bool = False  # the rule has several limits (each is its own policy in headers)


class RateLimitStorage(ABC):
    """Decides a request's checks atomically."""

    name = "storage"

    @abstractmethod
    async def hit(self, strategy: str, checks: Sequence[Check]) -> list[Decision]:
        """Decide ``checks`` together; raises :class:`StorageError` when the backend fails."""

    @abstractmethod
    async def reset(self) -> None:
        """Forget every counter (tests, admin)."""

    async def aclose(self) -> None:
        """Release connections."""
        return None

    def check_strategy(self, strategy: str) -> None:
        """Raise :class:`ConfigurationError` if this storage cannot run ``strategy`` (at construction)."""
        return None


class MemoryStorage(RateLimitStorage):
    """Per-process counters in a dict; decisions are synchronous and therefore atomic on one loop.

    ``clock`` is seconds (wall or monotonic; default ``time.time``); tests pass a ManualClock.
    ``max_keys`` bounds memory when clients invent keys (random API keys, many addresses): past it,
    expired counters are dropped, then the oldest ones.

    Expired counters are dropped incrementally: the keys also sit in a queue in the order they were
    created; every 10,000 decisions a pass starts, and while it runs each decision examines the next
    16 keys of the queue (an expired counter is dropped, a live one goes to the back). No request pays
    for the whole table (a full sweep of a million counters took about 155 ms inside one request).
    A counter costs about 330 bytes, the queue slot included (tracemalloc at a million ``ip:``
    keys; ``tests/ratelimit/test_memory_sweep.py`` holds it under 400 bytes at 100,000 keys).
    """

    name = "memory"

    def __init__(self, *, clock: Clock = time.time, max_keys: int = 1_000_000) -> None:
        if isinstance(max_keys, bool) or not isinstance(max_keys, int) or max_keys < 1:
            raise ConfigurationError(f"max_keys must be a positive int, got {max_keys!r}")
        self._clock = clock
        self.max_keys = max_keys
        self._data: dict[tuple[str, int, str], tuple[Any, int]] = {}
        self._functions: dict[str, Any] = {}
        self._ops = 0
        self._order: deque[tuple[str, int, str]] = deque()  # every key once, oldest first
        self._pass_left = 0  # keys the running sweep pass has still to examine

    def __len__(self) -> int:
        return len(self._data)

    def hit_now(self, strategy: str, checks: Sequence[Check]) -> list[Decision]:
        """The synchronous decision (what :meth:`hit` awaits)."""
        decide = self._functions.get(strategy)
        if decide is None:
            decide = self._functions[strategy] = strategy_function(strategy)
        now_us = round(self._clock() * 1_000_000)
        now_ms = now_us // 1000
        data = self._data
        self._ops += 1
        if self._pass_left > 0:
            self._sweep_step(now_ms)
        elif self._ops >= _SWEEP_EVERY:
            self._ops = 0
            self._pass_left = len(self._order)
        if len(data) >= self.max_keys:
            self.sweep(now_ms)  # over the bound: make room now
        if len(checks) == 1:  # the common case, without the two-phase bookkeeping
            rule, nth, partition, limit, period_ms, cost, _, counter, _ = checks[0]
            key = (counter or rule, nth, partition)
            entry = data.get(key)
            state = entry[0] if entry is not None and entry[1] > now_ms else None
            decision, new_state, ttl = decide(state, now_ms, now_us, limit, period_ms, cost)
            if decision[0]:
                if entry is None:
                    self._order.append(key)
                data[key] = (new_state, now_ms + (ttl if ttl > 1 else 1))
            return [decision]
        outcomes = []
        admitted = True
        for check in checks:
            key = (check.counter or check.rule, check.nth, check.partition)
            entry = data.get(key)
            state = entry[0] if entry is not None and entry[1] > now_ms else None
            decision, new_state, ttl = decide(state, now_ms, now_us, check.limit, check.period_ms, check.cost)
            outcomes.append((key, decision, new_state, ttl))
            if not decision.allowed and check.enforce:
                admitted = False
        if admitted:
            for key, decision, new_state, ttl in outcomes:
                if decision.allowed:
                    if key not in data:
                        self._order.append(key)
                    data[key] = (new_state, now_ms + max(1, ttl))
        else:
            return [_uncommitted(d, c.cost) for (_, d, _, _), c in zip(outcomes, checks, strict=True)]
        return [outcome[1] for outcome in outcomes]

    async def hit(self, strategy: str, checks: Sequence[Check]) -> list[Decision]:
        return self.hit_now(strategy, checks)

    def _sweep_step(self, now_ms: int) -> None:
        order = self._order
        data = self._data
        for _ in range(min(_SWEEP_STEP, self._pass_left, len(order))):
            key = order.popleft()
            entry = data.get(key)
            if entry is None:
                continue  # already gone
            if entry[1] <= now_ms:
                del data[key]
            else:
                order.append(key)  # live: examined again by a later pass
        self._pass_left -= _SWEEP_STEP

    def sweep(self, now_ms: int | None = None) -> None:
        """Drop every expired counter now, then the oldest ones if still above ``max_keys``."""
        if now_ms is None:
            now_ms = int(self._clock() * 1000)
        expired = [key for key, (_, expires) in self._data.items() if expires <= now_ms]
        for key in expired:
            del self._data[key]
        excess = len(self._data) - self.max_keys * 9 // 10
        if excess > 0:  # still too many live counters: drop the oldest (dicts keep insertion order)
            for key in list(itertools.islice(self._data, excess)):
                del self._data[key]
        self._order = deque(self._data)
        self._pass_left = 0

    async def reset(self) -> None:
        self._data.clear()
        self._order.clear()
        self._pass_left = 0


def _uncommitted(decision: Decision, cost: int) -> Decision:
    """A check that allowed a request another check rejected: its quota was not consumed."""
    if not decision.allowed:
        return decision
    return Decision(True, decision.limit, decision.remaining + cost, decision.reset_after, None)


_SCRIPT = resources.files("asgi_resilience.ratelimit").joinpath("ratelimit.lua").read_text(encoding="utf-8")


def _tag(partition: str) -> str:
    """A Redis Cluster hash tag for a partition: readable when safe, hashed otherwise."""
    if len(partition) <= 64 and "{" not in partition and "}" not in partition and partition.isprintable():
        return partition
    return "h:" + hashlib.blake2b(partition.encode("utf-8", "surrogatepass"), digest_size=12).hexdigest()


class RedisStorage(RateLimitStorage):
    """Redis (standalone, Sentinel-managed or Cluster) through one Lua script per request.

    Keys look like ``asgi_rl:{ip:192.0.2.1}:<rule>:<n>``: the partition is the hash tag, so every
    rule that keys requests the same way lands in one slot and one call. On a cluster, checks whose
    partitions differ (say a per-IP rule and a global rule) are sent as one call per slot, in parallel.
    Time comes from Redis ``TIME`` (one clock for every worker). A ``NOSCRIPT`` after a Redis
    restart reloads the script transparently.

    Args:
        client: a ``redis.asyncio`` client (or cluster client), or a URL.
        prefix: the key prefix.
        clock: tests only: use this clock instead of Redis ``TIME``.
    """

    name = "redis"

    def __init__(
        self, client: Any, *, prefix: str = "asgi_rl", clock: Clock | None = None, max_connections: int = 100
    ) -> None:
        # a URL gets a blocking pool: a burst waits for a free connection (bounded by the middleware's
        # store timeout) instead of failing with "Too many connections" as redis-py's default pool does
        self.client = redis_client(client, max_connections=max_connections)
        self.prefix = prefix
        self._clock = clock
        self._script = self.client.register_script(_SCRIPT)
        self._cluster = _is_cluster(self.client)
        self._ready = False
        self._lock: Any = None

    def key(self, check: Check) -> str:
        return f"{self.prefix}:{{{_tag(check.partition)}}}:{check.counter or check.rule}:{check.nth}"

    async def hit(self, strategy: str, checks: Sequence[Check]) -> list[Decision]:
        strategy_function(strategy)  # validates
        now = "" if self._clock is None else str(round(self._clock() * 1_000_000))
        if not self._cluster:
            return (await self._call(strategy, now, checks))[0]
        if not self._ready:
            await self._prepare_cluster()
        groups: dict[str, list[int]] = {}
        for i, check in enumerate(checks):
            groups.setdefault(_tag(check.partition), []).append(i)
        if len(groups) == 1:
            return (await self._call(strategy, now, checks))[0]
        import asyncio

        order = list(groups.values())
        parts = await asyncio.gather(*(self._call(strategy, now, [checks[i] for i in idx]) for idx in order))
        out: list[Decision | None] = [None] * len(checks)
        rejected = False
        for idx, (decisions, committed, _) in zip(order, parts, strict=True):
            rejected = rejected or not committed
            for i, decision in zip(idx, decisions, strict=True):
                out[i] = decision
        if rejected:
            # another slot rejected the request: give back what the admitting slots consumed
            refunds = []
            for idx, (_, committed, used_us) in zip(order, parts, strict=True):
                if committed:
                    refunds.append(self._refund(strategy, used_us, [checks[i] for i in idx]))
                    for i in idx:
                        out[i] = _uncommitted(out[i], checks[i].cost)  # type: ignore[arg-type]
            await asyncio.gather(*refunds)
        return [d for d in out if d is not None]

    async def _prepare_cluster(self) -> None:
        """Discover the cluster and load the script on every primary, once, before the first burst.

        Without this, a burst of first requests makes every one of them rebuild redis-py's node table,
        which closes the others' connections after their scripts ran; the client then retries them
        and a hit is counted twice.
        """
        import asyncio

        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            if self._ready:
                return
            try:
                await self.client.initialize()
                await self.client.script_load(_SCRIPT)
            except Exception as exc:
                raise StorageError(f"Redis Cluster setup failed: {type(exc).__name__}: {exc}") from exc
            self._ready = True

    def _args(self, strategy: str, now: str, mode: str, checks: Sequence[Check]) -> list[Any]:
        args: list[Any] = [strategy, now, mode]
        for check in checks:
            args += [check.limit, check.period_ms, check.cost, 1 if check.enforce else 0]
        return args

    async def _refund(self, strategy: str, used_us: int, checks: Sequence[Check]) -> None:
        keys = [self.key(check) for check in checks]
        try:
            await self._script(keys=keys, args=self._args(strategy, str(used_us), "refund", checks))
        except Exception as exc:
            raise StorageError(f"Redis rate-limit refund failed: {type(exc).__name__}: {exc}") from exc

    async def _call(self, strategy: str, now: str, checks: Sequence[Check]) -> tuple[list[Decision], bool, int]:
        from redis.exceptions import ConnectionError as RedisConnectionError

        keys = [self.key(check) for check in checks]
        args = self._args(strategy, now, "hit", checks)
        for attempt in (1, 2):
            try:
                raw = await self._script(keys=keys, args=args)
                break
            except RedisConnectionError as exc:
                # a pooled connection that died with a Redis restart: one immediate retry on a new one
                if attempt == 2:
                    raise StorageError(f"Redis rate-limit call failed: {type(exc).__name__}: {exc}") from exc
            except Exception as exc:
                raise StorageError(f"Redis rate-limit call failed: {type(exc).__name__}: {exc}") from exc
        try:
            decisions = []
            for i, check in enumerate(checks):
                allowed, remaining, reset_us, retry_us = (int(v) for v in raw[4 * i : 4 * i + 4])
                decisions.append(
                    Decision(
                        bool(allowed),
                        check.limit,
                        remaining,
                        reset_us / 1e6,
                        None if retry_us < 0 else retry_us / 1e6,
                    )
                )
            committed, used_us = int(raw[-2]), int(raw[-1])
        except (TypeError, ValueError, IndexError) as exc:
            raise StorageError(f"unexpected reply from the rate-limit script: {raw!r}") from exc
        return decisions, bool(committed), used_us

    async def reset(self) -> None:
        """Delete this limiter's keys (SCAN + UNLINK on every node)."""
        try:
            batch: list[Any] = []
            async for key in self.client.scan_iter(match=f"{self.prefix}:*", count=500):
                batch.append(key)
            for key in batch:
                await self.client.unlink(key)
        except Exception as exc:
            raise StorageError(f"Redis reset failed: {exc}") from exc

    async def aclose(self) -> None:
        close = getattr(self.client, "aclose", None)
        if close is not None:
            await close()


def _is_cluster(client: Any) -> bool:
    try:
        from redis.asyncio.cluster import RedisCluster
    except ImportError:  # pragma: no cover - only when redis is missing (then no client exists)
        return False
    return isinstance(client, RedisCluster)


def storage_from(storage: str | Any, *, clock: Clock | None = None, prefix: str = "asgi_rl") -> RateLimitStorage:
    """``"memory://"``, a Redis URL (``redis://``, ``rediss://``, ``unix://``, ``redis+cluster://``,
    ``redis+sentinel://``), a ``redis.asyncio`` client, a :class:`RateLimitStorage`, or any other storage
    URL of the ``limits`` package (``memcached://``, ``mongodb://``, ``async+...``: see ``_limits_storage``)."""
    if isinstance(storage, RateLimitStorage):
        return storage
    if storage is None or storage == "memory://" or storage == "memory":
        return MemoryStorage(clock=clock or time.time)
    if isinstance(storage, str):
        if storage.startswith(("redis://", "rediss://", "unix://", "redis+cluster://", "redis+sentinel://")):
            return RedisStorage(storage, clock=clock, prefix=prefix)
        from asgi_resilience.ratelimit._limits_storage import LimitsStorage, is_limits_url

        if is_limits_url(storage):
            return LimitsStorage(storage, prefix=prefix)
        raise ConfigurationError(
            f"storage must be 'memory://', a redis://, rediss://, redis+cluster:// or redis+sentinel:// URL, "
            f"a redis.asyncio client, or another storage URL of the limits package (memcached://, mongodb://, "
            f"async+...); got {storage!r}"
        )
    if hasattr(storage, "register_script"):
        return RedisStorage(storage, clock=clock, prefix=prefix)
    raise ConfigurationError(f"storage must be a URL, a redis.asyncio client or a storage object; got {storage!r}")
