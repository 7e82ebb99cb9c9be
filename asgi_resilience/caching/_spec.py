"""The state machine of one cacheable request, sans-io: every RFC decision, none of the I/O.

Two pure functions name the next step; :class:`~asgi_resilience.caching.CacheMiddleware` matches
each closed set exhaustively (``assert_never``) and only performs the I/O the step names.

:func:`on_request` (a stored entry, the request, ``now``) is one of:

* :class:`FreshHit`: serve the stored response (RFC 9111 section 4.2, with the request's
  ``max-age``/``min-fresh``/``max-stale``, section 5.2.1);
* :class:`StaleHit`: serve it stale now and revalidate in the background (RFC 5861
  ``stale-while-revalidate``);
* :class:`Revalidate`: forward with the stored validators; the entry answers a 304 (section 4.3)
  and ``stale-if-error``;
* :class:`Miss`: forward, collapsing concurrent requests for the same key;
* :class:`Pass`: forward at once, neither looked up nor collapsed ("hit-for-pass": the key's last
  response to an eligible request could not be stored);
* :class:`NotCached`: ``only-if-cached`` and nothing usable: 504 (section 5.2.1.7).

:func:`on_response` (the request, the app's status and fields, ``now``) is one of:

* :class:`UseUpdated`: a 304 to our validators: refresh the stored entry and serve it (4.3.4);
* :class:`StaleOnError`: a 5xx within ``stale-if-error``: serve the stored response instead;
* :class:`StoreWhole`: storable with a known ``Content-Length``: read the whole body, store it,
  then answer (the miss carries the same generated ``ETag`` as later hits, and ``Range`` and
  client conditionals are answered from it);
* :class:`StoreStreamed`: storable, length unknown: stream it to the client and store it if it
  ends within ``max_body_size``;
* :class:`Forward`: not storable: pass it through (and say whether the key becomes hit-for-pass).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

from asgi_resilience.caching._headers import content_length, header
from asgi_resilience.caching._policy import (
    DEFAULT_TARGETED,
    CacheRule,
    Entry,
    RequestDirectives,
    StoreDecision,
    decide_store,
    freshness,
    quick_refusal,
    status_refused,
    usable_fresh,
)

__all__ = [
    "FreshHit",
    "Forward",
    "Miss",
    "NotCached",
    "Pass",
    "RequestFacts",
    "RequestStep",
    "ResponseStep",
    "Revalidate",
    "StaleHit",
    "StaleOnError",
    "StorePolicy",
    "StoreStreamed",
    "StoreWhole",
    "UseUpdated",
    "grace_allows",
    "on_request",
    "on_response",
]

RawHeaders = Sequence[tuple[bytes, bytes]]


class RequestFacts(NamedTuple):
    """What the state machine needs to know about a GET or HEAD request (a tuple: built per request)."""

    method: str
    directives: RequestDirectives
    has_auth: bool = False
    ranged: bool = False  # a GET with Range
    conditional: bool = False  # If-None-Match, If-Modified-Since, If-Match or If-Unmodified-Since (as sent)

    @property
    def eligible(self) -> bool:
        """Whether an unstorable response to this request says something about the URL itself.

        Requests with ``Authorization`` are passed before lookup (as Varnish does), and a range or
        conditional request may get a 206/304 that says nothing about the full response: none of
        them ever makes a key hit-for-pass.
        """
        return self.method == "GET" and not self.has_auth and not self.ranged and not self.conditional


@dataclass(frozen=True, slots=True)
class StorePolicy:
    """The middleware's storage settings, fixed at construction."""

    default_swr: float = 0.0
    default_sie: float = 0.0
    heuristic_fraction: float = 0.1
    targeted: tuple[bytes, ...] = DEFAULT_TARGETED
    max_body_size: int = 1_048_576


# --- request side --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FreshHit:
    entry: Entry


@dataclass(frozen=True, slots=True)
class StaleHit:
    entry: Entry


@dataclass(frozen=True, slots=True)
class Revalidate:
    entry: Entry


@dataclass(frozen=True, slots=True)
class Miss:
    pass


@dataclass(frozen=True, slots=True)
class Pass:
    pass


@dataclass(frozen=True, slots=True)
class NotCached:
    pass


RequestStep = FreshHit | StaleHit | Revalidate | Miss | Pass | NotCached
_MISS, _PASS, _NOT_CACHED = Miss(), Pass(), NotCached()  # immutable and empty: one instance each


def on_request(entry: Entry | None, req: RequestFacts, now: float, *, passing: bool = False) -> RequestStep:
    """The next step for a request given the entry stored under its key (None: nothing stored)."""
    if entry is not None and req.has_auth and not entry.shared_auth:
        entry = None  # stored for anonymous requests only (RFC 9111 section 3.5)
    if entry is not None:
        f = freshness(entry, now)
        if usable_fresh(f, req.directives):
            return FreshHit(entry)
        d = req.directives
        if (
            not f.fresh
            and not d.no_cache
            and not entry.must_revalidate
            and entry.swr > 0
            and -f.ttl <= entry.swr
            and (d.max_age is None or f.age <= d.max_age)
        ):
            return StaleHit(entry)
    if req.directives.only_if_cached:
        return _NOT_CACHED
    if passing:
        return _PASS
    return Revalidate(entry) if entry is not None else _MISS


def grace_allows(stale: Entry, now: float, *, error: bool = False) -> bool:
    """Whether a stale entry may still be served: on an error (``stale-if-error``) or at all."""
    if stale.must_revalidate:
        return False
    window = stale.sie if error else max(stale.swr, stale.sie)
    return window > 0 and -freshness(stale, now).ttl <= window


# --- response side --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class UseUpdated:
    pass


@dataclass(frozen=True, slots=True)
class StaleOnError:
    pass


@dataclass(frozen=True, slots=True)
class StoreWhole:
    decision: StoreDecision


@dataclass(frozen=True, slots=True)
class StoreStreamed:
    decision: StoreDecision


@dataclass(frozen=True, slots=True)
class Forward:
    reason: str
    mark_pass: bool = False


ResponseStep = UseUpdated | StaleOnError | StoreWhole | StoreStreamed | Forward
_FORWARDS: dict[tuple[str, bool], Forward] = {}


def _forward(reason: str, mark: bool) -> Forward:
    """The immutable Forward step, one per (reason, mark): the reasons are a small fixed set."""
    step = _FORWARDS.get((reason, mark))
    if step is None:
        step = _FORWARDS[(reason, mark)] = Forward(reason, mark)
    return step


def on_response(
    req: RequestFacts,
    status: int,
    headers: RawHeaders,
    *,
    request_time: float,
    response_time: float,
    rule: CacheRule | None,
    policy: StorePolicy,
    stale: Entry | None = None,
    validated: bool = False,
    trailers: bool = False,
) -> ResponseStep:
    """The next step when the app's response head arrives.

    ``stale``: the entry being revalidated (if any); ``validated``: the request carried its validators.
    """
    if validated and status == 304:
        return UseUpdated()
    if stale is not None and status >= 500 and grace_allows(stale, response_time, error=True):
        return StaleOnError()
    if req.method != "GET" or trailers:
        return _forward("method" if req.method != "GET" else "trailers", False)
    # a key becomes hit-for-pass only for an eligible request, and never while a fresh entry exists
    mark = req.eligible and (stale is None or not freshness(stale, response_time).fresh)
    refusal = quick_refusal(headers, policy.targeted)
    if refusal is not None:  # an event stream, or no-store/private said plainly: nothing more to parse
        if refusal != "event-stream" and status_refused(status, rule):
            refusal = "status"  # (decide_store's order of reasons)
        return _forward(refusal, mark)
    decision = decide_store(
        method=req.method,
        status=status,
        headers=headers,
        request_time=request_time,
        response_time=response_time,
        has_authorization=req.has_auth,
        rule=rule,
        default_swr=policy.default_swr,
        default_sie=policy.default_sie,
        heuristic_fraction=policy.heuristic_fraction,
        targeted=policy.targeted,
    )
    if not decision.store:
        return _forward(decision.reason, mark)
    # a Content-Length next to Transfer-Encoding is not to be trusted (RFC 9112 section 6.3)
    length = None if header(headers, b"transfer-encoding") is not None else content_length(headers)
    if length is None:
        return StoreStreamed(decision)
    if length > policy.max_body_size:
        return _forward("too-large", mark)
    return StoreWhole(decision)
