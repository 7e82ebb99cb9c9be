"""The replay buffer of a streaming request body: kept while sent, so a retry can re-send it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx

__all__ = ["Tee", "TeeView"]


class Tee:
    """Keeps the chunks of a streaming request body (up to ``cap`` bytes) while they are sent."""

    __slots__ = ("cap", "chunks", "done", "overflow", "size", "source", "sync_it", "async_it")

    def __init__(self, source: Any, cap: int) -> None:
        self.source = source
        self.cap = cap
        self.chunks: list[bytes] = []
        self.size = 0
        self.overflow = False
        self.done = False
        self.sync_it: Iterator[bytes] | None = None
        self.async_it: AsyncIterator[bytes] | None = None

    @property
    def replayable(self) -> bool:
        return not self.overflow

    def take(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self.overflow:
            return
        if self.size > self.cap:
            self.overflow = True  # committed: this attempt goes on, no later one can replay
            self.chunks = []
        else:
            self.chunks.append(chunk)


class TeeView(httpx.SyncByteStream, httpx.AsyncByteStream):
    """One attempt's view of a teed body: the buffered prefix, then the rest of the source."""

    def __init__(self, tee: Tee) -> None:
        self._tee = tee

    def __iter__(self) -> Iterator[bytes]:
        tee = self._tee
        yield from list(tee.chunks)
        if tee.done:
            return
        if tee.sync_it is None:
            tee.sync_it = iter(tee.source)
        for chunk in tee.sync_it:
            tee.take(chunk)
            yield chunk
        tee.done = True

    async def __aiter__(self) -> AsyncIterator[bytes]:
        tee = self._tee
        for chunk in list(tee.chunks):
            yield chunk
        if tee.done:
            return
        if tee.async_it is None:
            tee.async_it = tee.source.__aiter__()
        async for chunk in tee.async_it:
            tee.take(chunk)
            yield chunk
        tee.done = True
