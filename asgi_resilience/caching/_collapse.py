"""Request collapsing: one app call per key, in this process and (with a shared backend) across processes.

* A :class:`Flight` per key in this process: the first miss calls the app, concurrent misses wait
  for its entry (``lock_timeout`` at most). The waiters are released as soon as the entry exists,
  before the first client has read it, or at once when the response turns out not storable.
* A lease in the backend for other processes, which poll for the stored result meanwhile.
* The hit-for-pass table: keys whose last response (to an eligible request) could not be stored
  are neither looked up in a shared backend nor collapsed for :data:`PASS_SECONDS`, so that an
  uncacheable URL is never serialised behind one request.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Literal

import anyio

from asgi_resilience._clock import Clock
from asgi_resilience.caching._cache import Cache
from asgi_resilience.caching._policy import Entry

__all__ = ["PASS_ENTRIES", "PASS_SECONDS", "Collapser", "Flight"]

PASS_SECONDS = 10.0
PASS_ENTRIES = 10_000


@dataclass
class Flight:
    """One in-process computation of a key that concurrent misses wait for."""

    key: str = ""
    done: anyio.Event = field(default_factory=anyio.Event)
    entry: Entry | None = None
    token: str | None = None  # the cross-process lease ("local": none needed)


class Collapser:
    """Flights, leases and the hit-for-pass table of one middleware."""

    def __init__(self, cache: Cache, clock: Clock, lock_timeout: float) -> None:
        self.cache = cache
        self.clock = clock
        self.lock_timeout = lock_timeout
        self.flights: dict[str, Flight] = {}
        self.passing: dict[str, float] = {}

    # --- hit-for-pass ------------------------------------------------------------------------------------

    def is_passing(self, key: str) -> bool:
        until = self.passing.get(key)
        if until is None:
            return False
        if until > self.clock():
            return True
        del self.passing[key]
        return False

    def mark_passing(self, key: str) -> None:
        if len(self.passing) >= PASS_ENTRIES:
            self.passing.clear()
        self.passing[key] = self.clock() + PASS_SECONDS

    def stored(self, key: str) -> None:
        """A response for ``key`` was stored: its hit-for-pass period ends."""
        self.passing.pop(key, None)

    # --- flights in this process ------------------------------------------------------------------------

    def begin(self, key: str) -> Flight:
        flight = Flight(key=key)
        self.flights[key] = flight
        return flight

    async def join(self, key: str) -> tuple[Entry | None, bool] | None:
        """Wait for the flight of ``key`` if there is one: ``(its entry, timed out)``; None if none."""
        flight = self.flights.get(key)
        if flight is None:
            return None
        timed_out = True
        with anyio.move_on_after(self.lock_timeout):
            await flight.done.wait()
            timed_out = False
        return flight.entry, timed_out

    def publish(self, flight: Flight | None, entry: Entry | None) -> None:
        """Hand ``entry`` to the waiters and release them (None: they call the app themselves)."""
        if flight is None:
            return
        if entry is not None:
            flight.entry = entry
        self.end(flight)

    def end(self, flight: Flight) -> None:
        flight.done.set()
        if self.flights.get(flight.key) is flight:
            del self.flights[flight.key]

    # --- leases across processes ------------------------------------------------------------------------

    async def acquire_lease(self, flight: Flight) -> bool:
        """Take the backend lease of the flight's key; False when another process holds it."""
        key = flight.key
        flight.token = await self.cache.call(
            "lease", lambda: self.cache.store.acquire_lease(key, self.lock_timeout), "local"
        )
        return flight.token is not None

    async def release_lease(self, flight: Flight | None) -> None:
        if flight is None:
            return
        token, flight.token = flight.token, None
        if token is not None and token != "local":
            key = flight.key
            await self.cache.call("lease", lambda: self.cache.store.release_lease(key, token), None)

    async def await_other_process(
        self, key: str, fetch: Callable[[], Awaitable[Entry | None]]
    ) -> Entry | Literal["pass", "timeout"]:
        """Another process holds the lease: poll the backend (``fetch``) for its result within ``lock_timeout``.

        An entry: its stored result. ``"pass"``: the lease was given back without a stored result
        (not storable, or its holder failed): call the app without collapsing. ``"timeout"``.
        """
        delay = 0.005
        with anyio.move_on_after(self.lock_timeout):
            while True:
                await anyio.sleep(delay)
                # at most 50 ms between polls: one GET per poll is cheap, and a waiter that learns late
                # that it must call the app itself adds the delay to its response time
                delay = min(delay * 2, 0.05)
                value = await fetch()
                if value is not None:
                    return value
                token = await self.cache.call(
                    "lease", lambda: self.cache.store.acquire_lease(key, self.lock_timeout), None
                )
                if token is None:
                    continue
                # the holder gave the lease back: it stored its result just before, or it had none
                value = await fetch()
                await self.cache.call("lease", functools.partial(self.cache.store.release_lease, key, token), None)
                if value is not None:
                    return value
                if not self.cache.available:
                    continue  # that "miss" was a backend failure, not an answer: keep waiting
                self.mark_passing(key)
                return "pass"
        return "timeout"
