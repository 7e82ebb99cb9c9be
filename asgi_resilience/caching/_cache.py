"""The shared :class:`Cache` object: a backend, its L1, purges, and backend failures as misses."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar
from urllib.parse import urlsplit

import anyio

from asgi_resilience._clock import Clock
from asgi_resilience._optional import import_optional
from asgi_resilience._outage import OutageGuard
from asgi_resilience._redis import CONNECT_BUDGET, is_redis_url, redis_client
from asgi_resilience.caching._policy import Entry, VaryMarker, index_of, normalize_query
from asgi_resilience.caching._storage import AiocacheStore, Found, L1Store, MemoryStore, RedisStore, Store
from asgi_resilience.errors import ConfigurationError
from asgi_resilience.observability import Telemetry, resolve_telemetry

__all__ = ["Cache"]

logger = logging.getLogger("asgi_resilience.cache")
T = TypeVar("T")
MAX_BYTES = 32 * 1024 * 1024
"""Default byte budget of the memory backend (per process)."""
L1_MAX_BYTES = 8 * 1024 * 1024
"""Default byte budget of the L1 in front of a shared backend (per process)."""
_CLOSE_TIMEOUT = 2.0  # seconds aclose() waits for the listener and for the backend client to close
_BACKOFF = 1.0  # seconds the backend is skipped after a failure, so an outage costs one timeout per second


_AIOCACHE = "aiocache+"


def _is_aiocache(value: object) -> bool:
    return type(value).__module__.startswith("aiocache") and hasattr(value, "get") and hasattr(value, "set")


def _is_redis_client(value: object) -> bool:
    return type(value).__module__.startswith("redis") and hasattr(value, "execute_command")


class Cache:
    """The storage of a :class:`CacheMiddleware`, which an app can also hold to purge.

    ``backend``: ``"memory://"`` (in process), a ``redis://`` / ``rediss://`` / ``unix://`` URL or a
    ``redis.asyncio.Redis`` client, or aiocache (``aiocache<1``, the ``aiocache`` extra): an
    ``aiocache+<url>`` URL such as ``"aiocache+memory://"`` (``aiocache.Cache.from_url`` builds it) or
    a cache instance.
    ``l1_entries``: size of an in-process LRU in front of a shared backend (0 = off); other processes'
    purges reach it through Redis pub/sub. ``max_entries`` / ``max_bytes``: bounds of the memory
    backend (default 10,000 values and 32 MiB); ``l1_max_bytes``: byte bound of the L1 (default 8 MiB).
    Both evict the least recently used values first; bytes are counted from what is stored (body,
    header fields, key and a fixed overhead per value), not from the process RSS.
    ``backend_timeout``: seconds before a backend call counts as failed; failures are logged, counted
    and answered as a miss. ``clock``: wall-clock seconds
    (stored entries are compared with ``Date`` headers and shared between processes).

    ``await cache.purge(url)``, ``await cache.purge_tags(*tags, soft=False)``, ``await cache.clear()``.
    """

    def __init__(
        self,
        backend: str | Any = "memory://",
        *,
        l1_entries: int = 0,
        max_entries: int = 10_000,
        max_bytes: int = MAX_BYTES,
        l1_max_bytes: int = L1_MAX_BYTES,
        backend_timeout: float = 0.25,
        namespace: str = "asgi-resilience:cache",
        clock: Clock = time.time,
        telemetry: Telemetry | bool = True,
    ) -> None:
        if not isinstance(l1_entries, int) or l1_entries < 0:
            raise ConfigurationError(f"l1_entries must be an int >= 0 (0 turns the L1 off), got {l1_entries!r}")
        if not isinstance(max_entries, int) or max_entries < 1:
            raise ConfigurationError(f"max_entries must be an int >= 1, got {max_entries!r}")
        for name, value in (("max_bytes", max_bytes), ("l1_max_bytes", l1_max_bytes)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigurationError(f"{name} must be an int >= 1 (bytes), got {value!r}")
        if not isinstance(backend_timeout, (int, float)) or not 0 < backend_timeout <= 60:
            raise ConfigurationError(f"backend_timeout must be seconds in (0, 60], got {backend_timeout!r}")
        if not namespace or not isinstance(namespace, str) or "{" in namespace or "}" in namespace:
            raise ConfigurationError(f"namespace must be a non-empty string without braces, got {namespace!r}")
        self.clock = clock
        self.backend_timeout = float(backend_timeout)
        self._telemetry = resolve_telemetry(telemetry)
        usage = self._telemetry.instrument("asgi_resilience.cache.memory.usage")
        l2: Store
        if isinstance(backend, str) and backend.startswith("memory://"):
            l2 = MemoryStore(max_entries=max_entries, max_bytes=max_bytes, clock=clock, usage=usage)
        elif is_redis_url(backend) or _is_redis_client(backend):
            client = redis_client(backend, socket_timeout=max(backend_timeout, 0.5))
            l2 = RedisStore(client, namespace=namespace, owns_client=isinstance(backend, str))
        elif isinstance(backend, str) and backend.startswith(_AIOCACHE):
            aiocache = import_optional("aiocache", extra="aiocache", feature="The cache's aiocache backend")
            try:
                instance = aiocache.Cache.from_url(backend[len(_AIOCACHE) :])
            except Exception as exc:
                raise ConfigurationError(f"aiocache cannot build a cache from {backend!r}: {exc}") from exc
            l2 = AiocacheStore(instance, namespace=namespace)
        elif _is_aiocache(backend):
            l2 = AiocacheStore(backend, namespace=namespace)
        else:
            raise ConfigurationError(
                f"backend must be 'memory://', a redis:// URL, a redis.asyncio.Redis client, an aiocache+<url> "
                f"URL or an aiocache cache instance, got {backend!r}"
            )
        self.store: Store = l2
        self.memory: MemoryStore | None = l2 if isinstance(l2, MemoryStore) else None
        self.l1: L1Store | None = None
        if l1_entries and self.memory is None:
            self.l1 = L1Store(l2, max_entries=l1_entries, max_bytes=l1_max_bytes, clock=clock, usage=usage)
            self.store = self.l1
        self._errors = self._telemetry.instrument("asgi_resilience.cache.errors")
        self._outage = OutageGuard(cooldown=_BACKOFF, clock=clock)
        self._listener: asyncio.Task[None] | None = None
        self._listener_loop: asyncio.AbstractEventLoop | None = None
        self._closed = False

    @property
    def backend_name(self) -> str:
        return self.store.name

    # --- backend calls that never raise -----------------------------------------------------------------

    async def call(self, operation: str, make: Callable[[], Awaitable[T]], default: T) -> T:
        """Run one backend operation with the timeout; on failure log, count and return ``default``."""
        outage = self._outage
        if not outage.admit():
            self._errors.add(1, {"operation": operation})
            return default
        # a call that also has to connect (at start, after a failure) is not a slow backend
        budget = self.backend_timeout if outage.connected else max(self.backend_timeout, CONNECT_BUDGET)
        try:
            with anyio.fail_after(budget):
                result = await make()
        except Exception as exc:
            outage.failed()
            self._errors.add(1, {"operation": operation})
            logger.warning("cache backend %s failed during %s: %s", self.store.name, operation, type(exc).__name__)
            return default
        outage.succeeded()
        return result

    @property
    def available(self) -> bool:
        """False while the backend is skipped after a failure (reads then say "miss" without asking it)."""
        return self._outage.available

    def peek(self, key: str) -> Entry | VaryMarker | None:
        """A synchronous read from memory (the memory backend or the L1), None if not there."""
        if self.memory is not None:
            return self.memory.peek(key)
        if self.l1 is not None:
            return self.l1.peek(key)
        return None

    async def get(self, key: str) -> Entry | VaryMarker | None:
        if self.memory is not None:
            return self.memory.peek(key)
        self.ensure_listener()
        return await self.call("get", lambda: self.store.get(key), None)

    async def lookup(self, key: str, *, lease: float) -> Found:
        """:meth:`get`; on a shared backend, a miss also takes the lease of ``key`` when the backend can
        do both in one round trip (``Found.token``), or says that another process holds it."""
        if self.memory is not None:
            return Found(self.memory.peek(key))
        self.ensure_listener()
        return await self.call("get", lambda: self.store.lookup(key, lease=lease), Found(None))

    async def set(
        self,
        key: str,
        value: Entry | VaryMarker,
        ttl: float,
        *,
        index: str,
        tags: Sequence[str],
        release: str | None = None,
    ) -> None:
        """Store ``value``; ``release``: the lease token of ``key`` to give back in the same call."""
        if self.memory is not None:
            self.memory.put(key, value, ttl, index=index, tags=tags)
            return
        await self.call("set", lambda: self.store.set(key, value, ttl, index=index, tags=tags, release=release), None)

    # --- invalidation ----------------------------------------------------------------------------------

    async def purge_indexes(self, indexes: Sequence[str]) -> int:
        removed: list[str] = []
        none: list[str] = []
        for index in indexes:
            removed.extend(await self.call("purge", functools.partial(self.store.purge_index, index), none))
        await self._publish(removed)
        return len(removed)

    async def purge(self, url: str) -> int:
        """Delete every stored response of ``url`` (a path such as ``/products/1?x=2`` or an absolute URL).

        Every variant (Vary, Cookie, host) goes; the query is compared after sorting its parameters.
        Returns how many stored values were removed.
        """
        if not isinstance(url, str) or not url:
            raise ValueError(f"purge() needs a URL or a path starting with '/', got {url!r}")
        parts = urlsplit(url)
        path = parts.path or "/"
        if not path.startswith("/"):
            raise ValueError(f"purge() needs a URL or a path starting with '/', got {url!r}")
        return await self.purge_indexes([index_of(path, normalize_query(parts.query))])

    async def purge_tags(self, *tags: str, soft: bool = False) -> int:
        """Delete every response stored with one of ``tags``; ``soft=True`` marks them stale instead.

        Soft-purged responses are revalidated with the app on the next request and may still be
        served under ``stale-if-error`` while it fails. Returns how many stored values were affected.
        """
        for tag in tags:
            if not isinstance(tag, str) or not tag:
                raise ValueError(f"cache tags are non-empty strings, got {tag!r}")
        if not tags:
            return 0
        none: list[str] = []
        keys = await self.call("purge", lambda: self.store.purge_tags(list(tags), soft=soft), none)
        await self._publish(keys)
        return len(keys)

    async def clear(self) -> None:
        """Remove everything this cache stored (its whole namespace), here and in other processes' L1."""
        await self.call("clear", self.store.clear, None)
        if self.l1 is not None:
            self.l1.invalidate(["*"])
        await self._publish(["*"])

    async def _publish(self, keys: list[str]) -> None:
        if keys and self.store.shared:
            await self.call("publish", lambda: self.store.publish(keys), None)

    # --- pub/sub listener for the L1 --------------------------------------------------------------------

    def ensure_listener(self) -> None:
        """Start (once per event loop) the task that applies other processes' purges to the L1."""
        if self.l1 is None or self._closed:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # pragma: no cover - not under asyncio (trio): no L1 invalidation
            return
        if self._listener is not None and self._listener_loop is loop and not self._listener.done():
            return
        waiter = self.l1.listen(self.l1.invalidate)
        if waiter is None:
            return
        self._listener = loop.create_task(waiter)  # type: ignore[arg-type]
        self._listener_loop = loop

    def snapshot(self) -> dict[str, Any]:
        return {
            "backend": self.store.name,
            "memory_entries": len(self.memory) if self.memory is not None else None,
            "memory_bytes": self.memory.bytes if self.memory is not None else None,
            "memory_max_bytes": self.memory.lru.max_bytes if self.memory is not None else None,
            "l1_entries": len(self.l1) if self.l1 is not None else None,
            "l1_bytes": self.l1.bytes if self.l1 is not None else None,
            "l1_max_bytes": self.l1.lru.max_bytes if self.l1 is not None else None,
            "backend_down": not self._outage.available,
        }

    async def aclose(self) -> None:
        """Stop the invalidation listener and close a backend client this object created."""
        self._closed = True
        listener, self._listener = self._listener, None
        # Both waits are bounded: closing must not hang on a Redis that stopped answering.
        if listener is not None:
            listener.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait({listener}, timeout=_CLOSE_TIMEOUT)
        with contextlib.suppress(Exception), anyio.move_on_after(_CLOSE_TIMEOUT):
            await self.store.aclose()
