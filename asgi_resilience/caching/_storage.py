"""Storage glue of the response cache: memory, Redis (redis-py), aiocache, and the L1 in front.

Every backend stores :class:`Entry` / :class:`VaryMarker` values under string keys, keeps two
indexes for purging (URL -> keys, tag -> keys) and may offer a cross-process lease. Shared backends
serialize with msgpack (never pickle). Errors propagate; :class:`~asgi_resilience.caching.Cache`
turns them into misses.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any

import msgpack

from asgi_resilience._clock import Clock
from asgi_resilience.caching._policy import Entry, VaryMarker
from asgi_resilience.observability import Instrument

__all__ = [
    "AiocacheStore",
    "BoundedLRU",
    "L1Store",
    "MemoryStore",
    "RedisStore",
    "Store",
    "decode",
    "encode",
    "footprint",
]

logger = logging.getLogger("asgi_resilience.cache")
Value = Entry | VaryMarker
_ENTRY = 1
_MARKER = 2


def encode(value: Value) -> bytes:
    """msgpack bytes of an entry or a vary marker (a versioned array, never pickle)."""
    if isinstance(value, VaryMarker):
        return msgpack.packb([_MARKER, list(value.names), value.nonce], use_bin_type=True)  # type: ignore[no-any-return]
    e = value
    return msgpack.packb(  # type: ignore[no-any-return]
        [
            _ENTRY,
            e.status,
            [[k, v] for k, v in e.headers],
            e.body,
            e.request_time,
            e.response_time,
            e.initial_age,
            e.lifetime,
            e.swr,
            e.sie,
            e.must_revalidate,
            e.shared_auth,
            e.etag,
            e.etag_generated,
            e.last_modified,
            [[k, v] for k, v in e.vary],
            list(e.tags),
            e.index,
            e.invalidated,
        ],
        use_bin_type=True,
    )


def decode(blob: bytes) -> Value:
    """The value :func:`encode` produced; ValueError for anything else (a foreign or corrupt key)."""
    try:
        data = msgpack.unpackb(blob, raw=False, use_list=True, strict_map_key=True)
        if data[0] == _MARKER:
            names, nonce = data[1], data[2]
            if not isinstance(nonce, str) or not all(isinstance(n, bytes) for n in names):
                raise ValueError("bad vary marker")
            return VaryMarker(names=tuple(names), nonce=nonce)
        if data[0] != _ENTRY or len(data) != 19:
            raise ValueError("unknown cache entry version")
        entry = Entry(
            status=int(data[1]),
            headers=tuple((bytes(k), bytes(v)) for k, v in data[2]),
            body=bytes(data[3]),
            request_time=float(data[4]),
            response_time=float(data[5]),
            initial_age=float(data[6]),
            lifetime=float(data[7]),
            swr=float(data[8]),
            sie=float(data[9]),
            must_revalidate=bool(data[10]),
            shared_auth=bool(data[11]),
            etag=None if data[12] is None else bytes(data[12]),
            etag_generated=bool(data[13]),
            last_modified=None if data[14] is None else bytes(data[14]),
            vary=tuple((bytes(k), bytes(v)) for k, v in data[15]),
            tags=tuple(str(t) for t in data[16]),
            index=str(data[17]),
            invalidated=bool(data[18]),
        )
    except ValueError:
        raise
    except Exception as exc:  # msgpack raises many types for garbage
        raise ValueError(f"undecodable cache entry: {type(exc).__name__}") from exc
    return entry


def _soft(value: Value) -> Value:
    if isinstance(value, Entry):
        from dataclasses import replace

        return replace(value, invalidated=True)
    return value


# --- in-process LRU bounded by entries and bytes ------------------------------------------------------

_VALUE_OVERHEAD = 400
"""Approximate bytes of one stored value beyond its payload: the Entry object and its tuples, the LRU
slot and the index bookkeeping of its key."""
_FIELD_OVERHEAD = 120
"""Approximate bytes of one header field beyond its name and value: a 2-tuple and two bytes objects."""


def footprint(key: str, value: Value) -> int:
    """Approximate bytes ``value`` stored under ``key`` holds in this process (payload plus overheads).

    Counted from the sizes of what is stored, never from the process RSS: the body, every header
    name and value, the Vary values, tags and the URL index, the key (twice: the LRU and the index),
    and a fixed overhead per value and per header field.
    """
    size = _VALUE_OVERHEAD + 2 * len(key)
    if isinstance(value, VaryMarker):
        return size + len(value.nonce) + sum(len(n) + _FIELD_OVERHEAD for n in value.names)
    size += len(value.body) + len(value.index) + len(value.etag or b"") + len(value.last_modified or b"")
    size += sum(len(k) + len(v) + _FIELD_OVERHEAD for k, v in value.headers)
    size += sum(len(k) + len(v) + _FIELD_OVERHEAD for k, v in value.vary)
    size += sum(len(t) + _FIELD_OVERHEAD for t in value.tags)
    return size


class BoundedLRU:
    """Values with an expiry time, evicted least recently used first beyond ``max_entries`` values or
    ``max_bytes`` bytes (as :func:`footprint` counts them). A value larger than the whole byte budget
    is not kept at all (it would evict everything else).

    ``on_evict(key)`` is called for every key that leaves (evicted, expired, replaced is not a leave);
    ``usage`` is an up-down counter that follows :attr:`bytes`.
    """

    __slots__ = ("_attrs", "_clock", "_data", "_on_evict", "_usage", "bytes", "max_bytes", "max_entries")

    def __init__(
        self,
        *,
        max_entries: int,
        max_bytes: int,
        clock: Clock,
        on_evict: Callable[[str], None] | None = None,
        usage: Instrument | None = None,
        tier: str = "memory",
    ) -> None:
        self._data: OrderedDict[str, tuple[Value, float, int]] = OrderedDict()
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.bytes = 0
        self._clock = clock
        self._on_evict = on_evict
        self._usage = usage
        self._attrs = {"tier": tier}

    def __len__(self) -> int:
        return len(self._data)

    def __contains__(self, key: object) -> bool:
        return key in self._data

    def get(self, key: str) -> Value | None:
        item = self._data.get(key)
        if item is None:
            return None
        if item[1] <= self._clock():
            self.pop(key)
            return None
        self._data.move_to_end(key)
        return item[0]

    def put(self, key: str, value: Value, until: float) -> bool:
        """Keep ``value`` until ``until``; False (and any older value dropped) if it alone exceeds the budget."""
        size = footprint(key, value)
        before = self.bytes
        old = self._data.pop(key, None)
        if old is not None:
            self.bytes -= old[2]
        if size > self.max_bytes:
            if old is not None and self._on_evict is not None:
                self._on_evict(key)
            self._report(before)
            return False
        self._data[key] = (value, until, size)
        self.bytes += size
        data = self._data
        while len(data) > self.max_entries or self.bytes > self.max_bytes:
            oldest, (_, _, oldest_size) = data.popitem(last=False)
            self.bytes -= oldest_size
            if self._on_evict is not None:
                self._on_evict(oldest)
        self._report(before)
        return True

    def replace(self, key: str, value: Value) -> None:
        """Swap the value of ``key`` in place (same expiry, same recency), e.g. to mark it stale."""
        item = self._data.get(key)
        if item is not None:
            size = footprint(key, value)
            before = self.bytes
            self._data[key] = (value, item[1], size)
            self.bytes += size - item[2]
            self._report(before)

    def pop(self, key: str) -> None:
        item = self._data.pop(key, None)
        if item is None:
            return
        before = self.bytes
        self.bytes -= item[2]
        if self._on_evict is not None:
            self._on_evict(key)
        self._report(before)

    def clear(self) -> None:
        before = self.bytes
        self._data.clear()
        self.bytes = 0
        self._report(before)

    def _report(self, before: int) -> None:
        if self._usage is not None and self.bytes != before:
            self._usage.add(self.bytes - before, self._attrs)


class Store(ABC):
    """The operations the cache middleware needs from a backend."""

    name = "store"
    shared = False  # whether other processes see the same data (enables leases and pub/sub)

    @abstractmethod
    async def get(self, key: str) -> Value | None: ...

    @abstractmethod
    async def set(self, key: str, value: Value, ttl: float, *, index: str, tags: Sequence[str]) -> None: ...

    @abstractmethod
    async def purge_index(self, index: str) -> list[str]:
        """Delete every key stored under ``index``; return them."""

    @abstractmethod
    async def purge_tags(self, tags: Sequence[str], *, soft: bool) -> list[str]:
        """Delete (or mark stale, keeping them) every key stored with one of ``tags``; return them."""

    @abstractmethod
    async def clear(self) -> None: ...

    async def acquire_lease(self, key: str, ttl: float) -> str | None:
        """A token if this process may compute ``key`` now (always, for a process-local store)."""
        return "local"

    async def release_lease(self, key: str, token: str) -> None:
        return None

    async def publish(self, keys: Sequence[str]) -> None:
        """Tell other processes' L1 caches that ``keys`` (``["*"]``: everything) changed."""
        return None

    def listen(self, callback: Callable[[list[str]], None]) -> Awaitable[None] | None:
        """A coroutine delivering other processes' invalidations to ``callback`` until cancelled."""
        return None

    async def aclose(self) -> None:
        return None


class _Indexes:
    """URL and tag indexes kept in process (memory and aiocache backends)."""

    def __init__(self) -> None:
        self.by_index: dict[str, set[str]] = {}
        self.by_tag: dict[str, set[str]] = {}
        self.meta: dict[str, tuple[str, tuple[str, ...]]] = {}

    def add(self, key: str, index: str, tags: Sequence[str]) -> None:
        self.forget(key)
        self.meta[key] = (index, tuple(tags))
        self.by_index.setdefault(index, set()).add(key)
        for tag in tags:
            self.by_tag.setdefault(tag, set()).add(key)

    def forget(self, key: str) -> None:
        meta = self.meta.pop(key, None)
        if meta is None:
            return
        index, tags = meta
        for table, name in [(self.by_index, index), *((self.by_tag, t) for t in tags)]:
            members = table.get(name)
            if members is not None:
                members.discard(key)
                if not members:
                    del table[name]

    def keys_of_tags(self, tags: Iterable[str]) -> list[str]:
        found: list[str] = []
        for tag in tags:
            for key in self.by_tag.get(tag, ()):
                if key not in found:
                    found.append(key)
        return found

    def clear(self) -> None:
        self.by_index.clear()
        self.by_tag.clear()
        self.meta.clear()


class MemoryStore(Store):
    """An in-process LRU bounded by ``max_entries`` values and ``max_bytes`` bytes; expired values are
    dropped when read."""

    name = "memory"

    def __init__(self, *, max_entries: int, max_bytes: int, clock: Clock, usage: Instrument | None = None) -> None:
        self._idx = _Indexes()
        self.lru = BoundedLRU(
            max_entries=max_entries, max_bytes=max_bytes, clock=clock, on_evict=self._idx.forget, usage=usage
        )
        self._clock = clock

    def __len__(self) -> int:
        return len(self.lru)

    @property
    def bytes(self) -> int:
        """Bytes the stored values hold (as :func:`footprint` counts them)."""
        return self.lru.bytes

    def peek(self, key: str) -> Value | None:
        """Synchronous read: the memory backend never needs to await (the hot path uses this)."""
        return self.lru.get(key)

    async def get(self, key: str) -> Value | None:
        return self.lru.get(key)

    def put(self, key: str, value: Value, ttl: float, *, index: str, tags: Sequence[str]) -> None:
        if self.lru.put(key, value, self._clock() + ttl):
            self._idx.add(key, index, tags)

    async def set(self, key: str, value: Value, ttl: float, *, index: str, tags: Sequence[str]) -> None:
        self.put(key, value, ttl, index=index, tags=tags)

    async def purge_index(self, index: str) -> list[str]:
        keys = list(self._idx.by_index.get(index, ()))
        for key in keys:
            self.lru.pop(key)
        return keys

    async def purge_tags(self, tags: Sequence[str], *, soft: bool) -> list[str]:
        keys = self._idx.keys_of_tags(tags)
        for key in keys:
            if soft:
                value = self.lru.get(key)
                if value is not None:
                    self.lru.replace(key, _soft(value))
            else:
                self.lru.pop(key)
        return keys

    async def clear(self) -> None:
        self.lru.clear()
        self._idx.clear()


class AiocacheStore(Store):
    """Any ``aiocache`` cache instance (``aiocache<1``); entries go in as msgpack bytes.

    aiocache has no sets, so the URL and tag indexes are kept in this process: purges reach the
    entries this process stored (and ``clear()`` everything).
    """

    name = "aiocache"

    def __init__(self, cache: Any, *, namespace: str) -> None:
        self._cache = cache
        self._ns = namespace
        self._idx = _Indexes()

    def _k(self, key: str) -> str:
        return f"{self._ns}:e:{key}"

    async def get(self, key: str) -> Value | None:
        blob = await self._cache.get(self._k(key), loads_fn=_identity)
        if blob is None:
            return None
        return decode(bytes(blob))

    async def set(self, key: str, value: Value, ttl: float, *, index: str, tags: Sequence[str]) -> None:
        await self._cache.set(self._k(key), encode(value), ttl=max(1, int(ttl + 0.999)), dumps_fn=_identity)
        self._idx.add(key, index, tags)

    async def purge_index(self, index: str) -> list[str]:
        keys = list(self._idx.by_index.get(index, ()))
        for key in keys:
            await self._cache.delete(self._k(key))
            self._idx.forget(key)
        return keys

    async def purge_tags(self, tags: Sequence[str], *, soft: bool) -> list[str]:
        keys = self._idx.keys_of_tags(tags)
        for key in keys:
            if soft:
                value = await self.get(key)
                if isinstance(value, Entry):  # aiocache cannot keep a TTL: the entry's own bound is used
                    ttl = max(1, int(value.storage_ttl() + 0.999))
                    await self._cache.set(self._k(key), encode(_soft(value)), ttl=ttl, dumps_fn=_identity)
            else:
                await self._cache.delete(self._k(key))
                self._idx.forget(key)
        return keys

    async def clear(self) -> None:
        # aiocache can only clear a namespace it was created with; delete the keys we know of
        for key in list(self._idx.meta):
            await self._cache.delete(self._k(key))
        self._idx.clear()

    async def aclose(self) -> None:
        close = getattr(self._cache, "close", None)
        if close is not None:
            await close()


def _identity(value: Any) -> Any:
    return value


_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class RedisStore(Store):
    """Redis through redis-py: one ``GET`` per lookup, sets for the URL and tag indexes.

    Keys: ``{ns}:e:<key>`` values, ``{ns}:i:<url>`` and ``{ns}:t:<tag>`` index sets, ``{ns}:l:<key>``
    leases; invalidations are published on ``{ns}:inval``.
    """

    name = "redis"
    shared = True

    def __init__(self, client: Any, *, namespace: str, owns_client: bool) -> None:
        self._r = client
        self._ns = namespace
        self._owns = owns_client
        self._channel = f"{namespace}:inval"
        self._release: Any = None

    def _k(self, key: str) -> str:
        return f"{self._ns}:e:{key}"

    async def get(self, key: str) -> Value | None:
        blob = await self._r.get(self._k(key))
        if blob is None:
            return None
        return decode(blob)

    async def set(self, key: str, value: Value, ttl: float, *, index: str, tags: Sequence[str]) -> None:
        full = self._k(key)
        ms = max(1000, int(ttl * 1000))
        seconds = max(1, int(ttl + 0.999))
        pipe = self._r.pipeline(transaction=False)
        pipe.set(full, encode(value), px=ms)
        for set_key in [f"{self._ns}:i:{index}", *(f"{self._ns}:t:{t}" for t in tags)]:
            pipe.sadd(set_key, full)
            pipe.expire(set_key, seconds, nx=True)
            pipe.expire(set_key, seconds, gt=True)
        await pipe.execute()

    async def _members(self, set_keys: Sequence[str]) -> list[str]:
        found: list[str] = []
        for set_key in set_keys:
            for member in await self._r.smembers(set_key):
                text = member.decode() if isinstance(member, bytes) else str(member)
                if text not in found:
                    found.append(text)
        return found

    def _short(self, full: str) -> str:
        return full[len(self._ns) + 3 :]

    async def purge_index(self, index: str) -> list[str]:
        set_key = f"{self._ns}:i:{index}"
        members = await self._members([set_key])
        await self._r.unlink(set_key, *members)
        return [self._short(m) for m in members]

    async def purge_tags(self, tags: Sequence[str], *, soft: bool) -> list[str]:
        set_keys = [f"{self._ns}:t:{t}" for t in tags]
        members = await self._members(set_keys)
        if not members:
            return []
        if soft:
            blobs = await self._r.mget(members)
            pipe = self._r.pipeline(transaction=False)
            for full, blob in zip(members, blobs, strict=True):
                if blob is None:
                    continue
                try:
                    value = decode(blob)
                except ValueError:
                    continue
                pipe.set(full, encode(_soft(value)), keepttl=True, xx=True)
            await pipe.execute()
        else:
            await self._r.unlink(*set_keys, *members)
        return [self._short(m) for m in members]

    async def clear(self) -> None:
        batch: list[bytes] = []
        async for key in self._r.scan_iter(match=f"{self._ns}:*", count=500):
            batch.append(key)
            if len(batch) >= 500:
                await self._r.unlink(*batch)
                batch = []
        if batch:
            await self._r.unlink(*batch)

    async def acquire_lease(self, key: str, ttl: float) -> str | None:
        token = secrets.token_hex(8)
        ok = await self._r.set(f"{self._ns}:l:{key}", token, nx=True, px=max(1, int(ttl * 1000)))
        return token if ok else None

    async def release_lease(self, key: str, token: str) -> None:
        if self._release is None:
            self._release = self._r.register_script(_RELEASE)
        await self._release(keys=[f"{self._ns}:l:{key}"], args=[token])

    async def publish(self, keys: Sequence[str]) -> None:
        await self._r.publish(self._channel, msgpack.packb(list(keys), use_bin_type=True))

    def listen(self, callback: Callable[[list[str]], None]) -> Awaitable[None] | None:
        return self._listen(callback)

    async def _listen(self, callback: Callable[[list[str]], None]) -> None:
        """Deliver invalidations; after any outage the whole L1 is dropped (messages may be lost)."""
        first = True
        while True:
            pubsub = self._r.pubsub()
            try:
                await pubsub.subscribe(self._channel)
                if not first:
                    callback(["*"])  # subscribed again: anything published while we were away is lost
                first = False
                while True:
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                    if message is None or message.get("type") != "message":
                        continue
                    try:
                        keys = msgpack.unpackb(message["data"], raw=False)
                    except Exception:
                        continue
                    if isinstance(keys, list):
                        callback([str(k) for k in keys])
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                logger.warning("cache invalidation listener lost Redis (%s); retrying", type(exc).__name__)
                callback(["*"])
                await asyncio.sleep(0.5)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()

    async def aclose(self) -> None:
        if self._owns:
            await self._r.aclose()


class L1Store(Store):
    """An in-process LRU in front of a shared store, bounded by entries and bytes. An L1 value never
    outlives its freshness."""

    def __init__(
        self,
        l2: Store,
        *,
        max_entries: int,
        max_bytes: int,
        clock: Clock,
        marker_ttl: float = 5.0,
        usage: Instrument | None = None,
    ) -> None:
        self.l2 = l2
        self.name = f"l1+{l2.name}"
        self.shared = l2.shared
        self.lru = BoundedLRU(max_entries=max_entries, max_bytes=max_bytes, clock=clock, usage=usage, tier="l1")
        self._clock = clock
        self._marker_ttl = marker_ttl

    def __len__(self) -> int:
        return len(self.lru)

    @property
    def bytes(self) -> int:
        return self.lru.bytes

    def peek(self, key: str) -> Value | None:
        return self.lru.get(key)

    def _remember(self, key: str, value: Value) -> None:
        now = self._clock()
        if isinstance(value, VaryMarker):
            until = now + self._marker_ttl
        else:
            if value.invalidated:
                return
            until = now + (value.lifetime - value.initial_age - max(0.0, now - value.response_time))
            if until <= now:
                return
        self.lru.put(key, value, until)

    def invalidate(self, keys: Sequence[str]) -> None:
        if "*" in keys:
            self.lru.clear()
            return
        for key in keys:
            self.lru.pop(key)

    async def get(self, key: str) -> Value | None:
        found = self.peek(key)
        if found is not None:
            return found
        value = await self.l2.get(key)
        if value is not None:
            self._remember(key, value)
        return value

    async def set(self, key: str, value: Value, ttl: float, *, index: str, tags: Sequence[str]) -> None:
        self.lru.pop(key)
        await self.l2.set(key, value, ttl, index=index, tags=tags)
        self._remember(key, value)

    async def purge_index(self, index: str) -> list[str]:
        keys = await self.l2.purge_index(index)
        self.invalidate(keys)
        return keys

    async def purge_tags(self, tags: Sequence[str], *, soft: bool) -> list[str]:
        keys = await self.l2.purge_tags(tags, soft=soft)
        self.invalidate(keys)
        return keys

    async def clear(self) -> None:
        self.lru.clear()
        await self.l2.clear()

    async def acquire_lease(self, key: str, ttl: float) -> str | None:
        return await self.l2.acquire_lease(key, ttl)

    async def release_lease(self, key: str, token: str) -> None:
        await self.l2.release_lease(key, token)

    async def publish(self, keys: Sequence[str]) -> None:
        await self.l2.publish(keys)

    def listen(self, callback: Callable[[list[str]], None]) -> Awaitable[None] | None:
        return self.l2.listen(callback)

    async def aclose(self) -> None:
        await self.l2.aclose()
