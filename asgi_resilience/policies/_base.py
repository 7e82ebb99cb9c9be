"""What every policy is: a decorator for async and sync functions that keeps their signature.

A policy binds itself around a function once, at decoration time (``bind_async`` /
``bind_sync`` return a new function with the same arguments), so a call pays for the policy's
own work and one extra frame, never for building closures per call. A pipeline binds its
policies innermost first.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, ClassVar, ParamSpec, TypeVar, overload

from asgi_resilience.errors import ConfigurationError
from asgi_resilience.policies._agen_run import REFUSALS, AsyncGenFn

__all__ = ["AsyncFn", "P", "Policy", "R", "SyncFn", "check_function"]

P = ParamSpec("P")
R = TypeVar("R")
AsyncFn = Callable[..., Awaitable[Any]]
SyncFn = Callable[..., Any]


def check_function(policy: str, fn: Any) -> None:
    if not callable(fn):
        raise ConfigurationError(f"{policy} decorates a function, got {fn!r}")
    if inspect.isgeneratorfunction(fn):
        raise ConfigurationError(
            f"{policy} cannot decorate the generator {getattr(fn, '__qualname__', fn)!r}: a generator's "
            "work happens while it is iterated, after the call returned; protect the calls it makes instead "
            "(async generators are supported by retry, time_limit, bulkhead and circuit_breaker)"
        )


class Policy:
    """Base of every policy (``retry``, ``circuit_breaker``, ``time_limit``, ``bulkhead``, ...).

    Use it as a decorator on an ``async def`` or a plain function, or compose it in
    :func:`~asgi_resilience.policies.pipeline`.
    """

    kind: ClassVar[str] = "policy"
    rank: ClassVar[int] = 0
    """Position in a pipeline, outermost first (see :func:`~asgi_resilience.policies.pipeline`)."""
    async_only: ClassVar[bool] = False

    def bind_async(self, inner: AsyncFn) -> AsyncFn:  # pragma: no cover - every policy overrides it
        raise NotImplementedError

    def bind_sync(self, inner: SyncFn) -> SyncFn:  # pragma: no cover - every policy overrides it
        raise NotImplementedError

    def bind_asyncgen(self, inner: AsyncGenFn) -> AsyncGenFn:
        """Wrap an async generator function (a stream); policies that cannot protect one refuse it."""
        reason = REFUSALS.get(self.kind, "it does not apply to a stream of items")
        raise ConfigurationError(
            f"{self.kind} cannot decorate the async generator {getattr(inner, '__qualname__', inner)!r}: {reason}"
        )

    @overload
    def __call__(self, fn: Callable[P, Coroutine[Any, Any, R]]) -> Callable[P, Coroutine[Any, Any, R]]: ...
    @overload
    def __call__(self, fn: Callable[P, R]) -> Callable[P, R]: ...
    def __call__(self, fn: Callable[P, Any]) -> Callable[P, Any]:
        return decorate(self, fn)


def decorate(policy: Policy, fn: Callable[P, Any]) -> Callable[P, Any]:
    check_function(type(policy).__name__, fn)
    wrapped: Callable[..., Any]
    if inspect.isasyncgenfunction(fn):
        wrapped = policy.bind_asyncgen(fn)
    elif inspect.iscoroutinefunction(fn):
        wrapped = policy.bind_async(fn)
    elif policy.async_only:
        raise ConfigurationError(
            f"{policy.kind} needs an async function (it runs attempts concurrently); "
            f"{getattr(fn, '__qualname__', fn)!r} is synchronous"
        )
    else:
        wrapped = policy.bind_sync(fn)
    return functools.wraps(fn)(wrapped)
