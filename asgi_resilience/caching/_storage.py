"""Storage glue of the response cache: memory, Redis (redis-py), aiocache, and the L1 in front.

Every backend stores :class:`Entry` / :class:`VaryMarker` values under string keys, keeps two
indexes for purging (URL -> keys, tag -> keys) and may offer a cross-process lease. Shared backends
serialize with msgpack (never pickle). Errors propagate; :class:`~asgi_resilience.caching.Cache`
turns them into misses.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import secrets
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, NamedTuple

import msgpack

from asgi_resilience._clock import Clock
from asgi_resilience.caching._policy import Entry, VaryMarker
from asgi_resilience.errors import ConfigurationError
from asgi_resilience.observability import Instrument

__all__ = [
    "AiocacheStore",
    "BoundedLRU",
    "Found",
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


class Found(NamedTuple):
    """What :meth:`Store.lookup` found under a key."""

    value: Value | None
    token: str | None = None
    """The lease of the key, taken by this lookup: the caller computes the value, then stores it with
    ``set(..., release=token)`` or gives the lease back with ``release_lease``."""
    leased: bool = False
    """Nothing is stored and another caller holds the lease (it is computing the value)."""


class Store(ABC):
    """The operations the cache middleware needs from a backend."""

    name = "store"
    shared = False  # whether other processes see the same data (enables leases and pub/sub)

    @abstractmethod
    async def get(self, key: str) -> Value | None: ...

    @abstractmethod
    async def set(
        self, key: str, value: Value, ttl: float, *, index: str, tags: Sequence[str], release: str | None = None
    ) -> None:
        """Store ``value``; ``release``: a lease token of ``key`` given back by the same call."""

    async def lookup(self, key: str, *, lease: float) -> Found:
        """:meth:`get`, and when nothing is stored, take the lease of ``key`` for ``lease`` seconds in
        the same round trip if the backend can (otherwise the caller calls :meth:`acquire_lease`)."""
        return Found(await self.get(key))

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

    async def set(
        self, key: str, value: Value, ttl: float, *, index: str, tags: Sequence[str], release: str | None = None
    ) -> None:
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

    async def set(
        self, key: str, value: Value, ttl: float, *, index: str, tags: Sequence[str], release: str | None = None
    ) -> None:
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


_LEASE = b"\x00lease:"
"""Prefix of the placeholder a lookup leaves under a missing entry's key: the lease of that key (never
the start of a msgpack value)."""

_ACQUIRE = """
local v = redis.call('GET', KEYS[1])
if not v then
  redis.call('SET', KEYS[1], ARGV[3] .. ARGV[1], 'PX', ARGV[2])
  return 1
end
if string.sub(v, 1, string.len(ARGV[3])) == ARGV[3] then return 0 end
if redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then return 1 end
return 0
"""

_RELEASE = """
if redis.call('GET', KEYS[2]) == ARGV[1] then redis.call('DEL', KEYS[2]) end
if redis.call('GET', KEYS[1]) == ARGV[2] .. ARGV[1] then redis.call('DEL', KEYS[1]) end
return 0
"""

_STORE = """
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
if ARGV[3] ~= '' and redis.call('GET', KEYS[2]) == ARGV[3] then redis.call('DEL', KEYS[2]) end
for i = 3, #KEYS do
  redis.call('SADD', KEYS[i], ARGV[4])
  if redis.call('PTTL', KEYS[i]) < tonumber(ARGV[5]) then redis.call('PEXPIRE', KEYS[i], ARGV[5]) end
end
return 1
"""

_INDEX = """
for i = 1, #KEYS do
  redis.call('SADD', KEYS[i], ARGV[1])
  if redis.call('PTTL', KEYS[i]) < tonumber(ARGV[2]) then redis.call('PEXPIRE', KEYS[i], ARGV[2]) end
end
return 1
"""


def _tag(name: str) -> str:
    """A Redis Cluster hash tag for ``name``: the name itself when short and safe, else a digest."""
    if len(name) <= 100 and name.isascii() and name.isprintable() and "{" not in name and "}" not in name:
        return name
    return "h:" + hashlib.blake2b(name.encode("utf-8", "surrogatepass"), digest_size=16).hexdigest()


def _require_cluster_capable_redis_py() -> None:
    """The cache on Redis Cluster needs redis-py 8: older asyncio cluster clients cannot publish to or
    subscribe from the cache's invalidation channel, and L1 copies would go stale silently."""
    from importlib.metadata import version

    installed = version("redis")
    major = installed.split(".", 1)[0]
    if not (major.isascii() and major.isdigit()) or int(major) < 8:
        raise ConfigurationError(
            f"the cache on Redis Cluster needs redis-py >= 8.0 (installed: {installed}); "
            "pip install 'redis>=8' or use a single Redis for the cache"
        )


def _is_cluster(client: Any) -> bool:
    try:
        from redis.asyncio.cluster import RedisCluster
    except ImportError:  # pragma: no cover - redis missing: no client exists either
        return False
    return isinstance(client, RedisCluster)


class RedisStore(Store):
    """Redis (standalone, Sentinel-managed or Cluster) through redis-py.

    Keys: ``{ns}:e:{<key>}`` values, ``{ns}:l:{<key>}`` leases of stale values, ``{ns}:i:{<url>}``
    and ``{ns}:t:{<tag>}`` index sets whose members are cache keys. The braces are Redis Cluster hash
    tags (a digest replaces a long or unusual name): a value and its lease share a slot, so every
    script touches one slot. On a cluster, a store whose index sets live in other slots sends one
    call per slot, in parallel; purges group their deletions by slot.

    Round trips: a hit is one ``SET ... NX GET`` (the value comes back; Redis >= 7.0), which on a miss
    leaves a lease placeholder in the empty key, so a miss that stores costs that and one script
    (value, index sets, lease). Older servers: ``GET`` then a lease script.

    Invalidations: sharded pub/sub (``SPUBLISH``/``SSUBSCRIBE``, Redis >= 7.0) on ``{ns}:{inval}``,
    classic pub/sub on older servers.
    """

    name = "redis"
    shared = True

    def __init__(self, client: Any, *, namespace: str, owns_client: bool) -> None:
        self._r = client
        self._ns = namespace
        self._owns = owns_client
        self._channel = f"{namespace}:{{inval}}"
        self._cluster = _is_cluster(client)
        if self._cluster:
            _require_cluster_capable_redis_py()
        self._scripts: dict[str, Any] = {}
        self._set_get = True  # SET NX GET (Redis >= 7.0); off after a syntax error from an older server
        self._sharded: bool | None = None  # SPUBLISH/SSUBSCRIBE available; None: not asked yet
        self._ready = not self._cluster
        self._lock: asyncio.Lock | None = None

    # --- key names ---------------------------------------------------------------------------------

    def _e(self, key: str) -> str:
        return f"{self._ns}:e:{{{_tag(key)}}}"

    def _l(self, key: str) -> str:
        return f"{self._ns}:l:{{{_tag(key)}}}"

    def _i(self, index: str) -> str:
        return f"{self._ns}:i:{{{_tag(index)}}}"

    def _t(self, tag: str) -> str:
        return f"{self._ns}:t:{{{_tag(tag)}}}"

    def _slot(self, name: str) -> int:
        from redis.crc import key_slot

        return int(key_slot(name.encode()))

    async def _prepare(self) -> None:
        """On a cluster, discover the nodes once before the first burst (not once per request)."""
        if self._ready:
            return
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            if not self._ready:
                await self._r.initialize()
                self._ready = True

    async def _run(self, name: str, source: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
        script = self._scripts.get(name)
        if script is None:
            script = self._scripts[name] = self._r.register_script(source)
        return await script(keys=list(keys), args=list(args))

    # --- reads and writes --------------------------------------------------------------------------

    async def get(self, key: str) -> Value | None:
        await self._prepare()
        blob = await self._r.get(self._e(key))
        if blob is None or blob.startswith(_LEASE):
            return None
        return decode(blob)

    async def lookup(self, key: str, *, lease: float) -> Found:
        await self._prepare()
        if not self._set_get:
            return Found(await self.get(key))
        from redis.exceptions import ResponseError

        token = secrets.token_hex(8)
        try:
            blob = await self._r.set(
                self._e(key), _LEASE + token.encode(), px=max(1, int(lease * 1000)), nx=True, get=True
            )
        except ResponseError as exc:
            if "syntax" not in str(exc).lower():
                raise
            self._set_get = False  # Redis < 7.0 refuses NX with GET
            return Found(await self.get(key))
        if blob is None:
            return Found(None, token=token)
        if blob.startswith(_LEASE):
            return Found(None, leased=True)
        return Found(decode(blob))

    async def set(
        self, key: str, value: Value, ttl: float, *, index: str, tags: Sequence[str], release: str | None = None
    ) -> None:
        await self._prepare()
        ms = max(1000, int(ttl * 1000))
        entry = self._e(key)
        sets = [self._i(index), *(self._t(t) for t in tags)]
        here = sets
        elsewhere: dict[int, list[str]] = {}
        if self._cluster:
            slot = self._slot(entry)
            here = []
            for name in sets:
                other = self._slot(name)
                (here if other == slot else elsewhere.setdefault(other, [])).append(name)
        calls = [self._run("store", _STORE, [entry, self._l(key), *here], [encode(value), ms, release or "", key, ms])]
        calls += [self._run("index", _INDEX, names, [key, ms]) for names in elsewhere.values()]
        if len(calls) == 1:
            await calls[0]
        else:
            await asyncio.gather(*calls)

    async def _unlink(self, names: Sequence[str]) -> None:
        if not names:
            return
        if not self._cluster:
            await self._r.unlink(*names)
            return
        by_slot: dict[int, list[str]] = {}
        for name in names:
            by_slot.setdefault(self._slot(name), []).append(name)
        await asyncio.gather(*(self._r.unlink(*group) for group in by_slot.values()))

    async def _members(self, set_names: Sequence[str]) -> list[str]:
        replies = await asyncio.gather(*(self._r.smembers(name) for name in set_names))
        found: dict[str, None] = {}
        for members in replies:
            for member in members:
                found[member.decode() if isinstance(member, bytes) else str(member)] = None
        return list(found)

    async def purge_index(self, index: str) -> list[str]:
        await self._prepare()
        set_name = self._i(index)
        keys = await self._members([set_name])
        await self._unlink([set_name, *(self._e(k) for k in keys)])
        return keys

    async def purge_tags(self, tags: Sequence[str], *, soft: bool) -> list[str]:
        await self._prepare()
        set_names = [self._t(t) for t in tags]
        keys = await self._members(set_names)
        if not keys:
            return []
        if soft:
            blobs = await asyncio.gather(*(self._r.get(self._e(k)) for k in keys))
            writes = []
            for key, blob in zip(keys, blobs, strict=True):
                if blob is None or blob.startswith(_LEASE):
                    continue
                try:
                    value = decode(blob)
                except ValueError:
                    continue
                writes.append(self._r.set(self._e(key), encode(_soft(value)), keepttl=True, xx=True))
            await asyncio.gather(*writes)
        else:
            await self._unlink([*set_names, *(self._e(k) for k in keys)])
        return keys

    async def clear(self) -> None:
        await self._prepare()
        batch: list[str] = []
        async for name in self._r.scan_iter(match=f"{self._ns}:*", count=500):
            batch.append(name.decode() if isinstance(name, bytes) else str(name))
            if len(batch) >= 500:
                await self._unlink(batch)
                batch = []
        await self._unlink(batch)

    # --- leases ------------------------------------------------------------------------------------

    async def acquire_lease(self, key: str, ttl: float) -> str | None:
        await self._prepare()
        token = secrets.token_hex(8)
        ok = await self._run(
            "acquire", _ACQUIRE, [self._e(key), self._l(key)], [token, max(1, int(ttl * 1000)), _LEASE]
        )
        return token if int(ok) == 1 else None

    async def release_lease(self, key: str, token: str) -> None:
        await self._prepare()
        await self._run("release", _RELEASE, [self._e(key), self._l(key)], [token, _LEASE])

    # --- invalidation channel ----------------------------------------------------------------------

    async def _sharded_pubsub(self) -> bool:
        """Whether the server has sharded pub/sub (Redis >= 7.0); asked once."""
        if self._sharded is None:
            await self._prepare()
            try:
                info = await self._r.execute_command("COMMAND", "INFO", "SPUBLISH")
            except Exception:
                info = None
            if isinstance(info, dict):  # the cluster client answers per node
                info = next(iter(info.values()), None)
            from redis.asyncio.client import PubSub

            # the client must be able to subscribe to it too (redis-py's asyncio PubSub has had
            # ``ssubscribe`` only in recent releases): otherwise both sides use classic pub/sub
            self._sharded = bool(info) and any(bool(item) for item in info) and hasattr(PubSub, "ssubscribe")
        return self._sharded

    async def publish(self, keys: Sequence[str]) -> None:
        await self._prepare()
        data = msgpack.packb(list(keys), use_bin_type=True)
        if await self._sharded_pubsub():
            await self._r.execute_command("SPUBLISH", self._channel, data)
        else:
            await self._r.publish(self._channel, data)

    def listen(self, callback: Callable[[list[str]], None]) -> Awaitable[None] | None:
        return self._listen(callback)

    def _subscriber(self) -> Any:
        """A client for the subscription: on a cluster, a plain connection to the node that owns the
        channel's slot (where sharded messages are delivered)."""
        if not self._cluster:
            return self._r
        import redis.asyncio as aredis

        node = self._r.get_node_from_key(self._channel)
        pool = aredis.ConnectionPool(connection_class=node.connection_class, **node.connection_kwargs)
        return aredis.Redis(connection_pool=pool)

    async def _listen(self, callback: Callable[[list[str]], None]) -> None:
        """Deliver invalidations; after any outage the whole L1 is dropped (messages may be lost)."""
        first = True
        while True:
            client: Any = None
            pubsub: Any = None
            try:
                await self._prepare()
                sharded = await self._sharded_pubsub()
                client = self._subscriber()
                pubsub = client.pubsub()
                if sharded:
                    await pubsub.ssubscribe(self._channel)
                else:
                    await pubsub.subscribe(self._channel)
                if not first:
                    callback(["*"])  # subscribed again: anything published while we were away is lost
                first = False
                while True:
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                    if message is None:
                        continue
                    kind = message.get("type")
                    if kind in ("sunsubscribe", "unsubscribe"):
                        raise ConnectionError("the channel moved (cluster resharding)")
                    if kind not in ("message", "smessage"):
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
                    if pubsub is not None:
                        await pubsub.aclose()
                with contextlib.suppress(Exception):
                    if client is not None and client is not self._r:
                        await client.aclose()

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

    async def set(
        self, key: str, value: Value, ttl: float, *, index: str, tags: Sequence[str], release: str | None = None
    ) -> None:
        self.lru.pop(key)
        await self.l2.set(key, value, ttl, index=index, tags=tags, release=release)
        self._remember(key, value)

    async def lookup(self, key: str, *, lease: float) -> Found:
        found = self.peek(key)
        if found is not None:
            return Found(found)
        result = await self.l2.lookup(key, lease=lease)
        if result.value is not None:
            self._remember(key, result.value)
        return result

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
