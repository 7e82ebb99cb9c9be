"""Response bodies: the call's deadline between chunks, and one report when the body is closed."""

from __future__ import annotations

import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any, Optional

import anyio
import httpx

__all__ = ["AsyncBody", "BodyError", "SyncBody", "body_complete"]

BodyError = Optional[BaseException]  # noqa: UP045 - a runtime alias must work on Python 3.10


def body_complete(response: httpx.Response) -> bool:
    """Whether the whole body is already in memory, so the call is over when the response arrives.

    True for a response read before it was returned (``httpx.Response(503)`` from a
    ``MockTransport``, a cache) and for an in-memory ``httpx.ByteStream`` body, also behind the
    default transport's stream adapter (respx's default mocker hands httpcore a ``ByteStream``).
    Such a body can neither fail nor take time to read, and the caller may never read or close
    it, so its outcome must be counted at once rather than when the stream is closed.
    """
    if response.is_closed:
        return True
    stream = response.stream
    if isinstance(stream, httpx.ByteStream):
        return True
    # httpx's Async/SyncResponseStream keep the httpcore stream here; the check fails safe (False)
    return isinstance(getattr(stream, "_httpcore_stream", None), httpx.ByteStream)


class SyncBody(httpx.SyncByteStream):
    """Wraps a response body: enforces the call's deadline between chunks and reports at close.

    Without cancellation a blocked read is bounded by httpx's own read timeout (which the retry
    driver already caps by the deadline).
    """

    def __init__(
        self,
        stream: Any,
        *,
        deadline: float = math.inf,
        on_close: Callable[[BodyError], None] | None = None,
    ):
        self._stream = stream
        self._deadline = deadline
        self._on_close = on_close
        self._error: BodyError = None
        self._closed = False

    def __iter__(self) -> Iterator[bytes]:
        try:
            for chunk in self._stream:
                if time.monotonic() >= self._deadline:
                    raise httpx.ReadTimeout("the call's total deadline passed while reading the response body")
                yield chunk
        except GeneratorExit:
            raise
        except BaseException as exc:
            self._error = exc
            raise

    def close(self) -> None:
        try:
            self._stream.close()
        finally:
            if not self._closed:
                self._closed = True
                if self._on_close is not None:
                    self._on_close(self._error)


class AsyncBody(httpx.AsyncByteStream):
    """Async twin of :class:`SyncBody`; a chunk that could outlast the deadline is cut exactly at it."""

    def __init__(
        self,
        stream: Any,
        *,
        deadline: float = math.inf,
        read_timeout: float | None = None,
        on_close: Callable[[BodyError], Awaitable[None]] | None = None,
    ):
        self._stream = stream
        self._deadline = deadline
        self._read_timeout = math.inf if read_timeout is None else read_timeout
        self._on_close = on_close
        self._error: BodyError = None
        self._closed = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        iterator = self._stream.__aiter__()
        try:
            while True:
                left = self._deadline - time.monotonic()
                try:
                    if left > self._read_timeout or left == math.inf:  # httpx's read timeout fires first
                        chunk = await iterator.__anext__()
                    else:
                        with anyio.fail_after(max(left, 0.0)):
                            chunk = await iterator.__anext__()
                except StopAsyncIteration:
                    return
                except TimeoutError:
                    raise httpx.ReadTimeout(
                        "the call's total deadline passed while reading the response body"
                    ) from None
                yield chunk
        except GeneratorExit:
            raise
        except BaseException as exc:
            self._error = exc
            raise

    async def aclose(self) -> None:
        try:
            await self._stream.aclose()
        finally:
            if not self._closed:
                self._closed = True
                if self._on_close is not None:
                    await self._on_close(self._error)
