"""The sans-io core of the response cache: RFC 9111 decisions for a shared cache.

Nothing here awaits, reads a clock or knows about ASGI beyond raw header lists: callers pass
``now`` and headers in and get small frozen values back. RFC 9111 points this module follows:

* 3 / 3.5: what a shared cache may store (``no-store``, ``private``, ``Authorization``);
* 4.1: the secondary key from ``Vary`` (values normalised; ``Vary: *`` never matches);
* 4.2.1 / 4.2.2: freshness lifetime (``s-maxage`` > ``max-age`` > ``Expires``; an invalid
  ``Expires`` means already expired) and heuristic freshness only for heuristically cacheable
  statuses or ``public`` responses that carry ``Last-Modified``;
* 4.2.3: ``current_age`` from the stored ``Age``, ``Date`` and the request/response times;
* 4.3.2 / 4.3.4: answering client conditionals and updating stored headers from a 304;
* 4.4: invalidation by unsafe methods of the target URI, ``Location`` and ``Content-Location``;
* 5.2: request and response directives; RFC 5861 ``stale-while-revalidate`` / ``stale-if-error``.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field, replace
from typing import Literal
from urllib.parse import parse_qsl, urlencode, urlsplit

from asgi_resilience._durations import seconds
from asgi_resilience._paths import path_regex
from asgi_resilience.caching._headers import (
    MAX_SECONDS,
    delta_seconds,
    field_names,
    header,
    headers_all,
    parse_age,
    parse_cache_control,
    parse_http_date,
    parse_targeted,
)
from asgi_resilience.errors import ConfigurationError

__all__ = [
    "HEURISTIC_STATUSES",
    "CacheRule",
    "Entry",
    "Freshness",
    "RequestDirectives",
    "StoreDecision",
    "VaryMarker",
    "cache_status",
    "client_conditional_matches",
    "decide_store",
    "freshness",
    "index_of",
    "invalidation_targets",
    "not_modified_headers",
    "parse_cache_control",
    "parse_http_date",
    "primary_key",
    "quick_refusal",
    "status_refused",
    "request_directives",
    "revalidation_headers",
    "update_from_304",
    "vary_values",
]

RawHeaders = Sequence[tuple[bytes, bytes]]
Directives = dict[str, "str | None"]
CookiePolicy = Literal["vary", "bypass", "ignore"]

# RFC 9110 section 15.1: statuses that are heuristically cacheable.
HEURISTIC_STATUSES = frozenset({200, 203, 204, 300, 301, 308, 404, 405, 410, 414, 501})
# Final statuses we understand well enough to store with explicit freshness (never 206 or 304).
UNDERSTOOD_STATUSES = HEURISTIC_STATUSES | {302, 303, 307, 400, 403, 500, 502, 503, 504}
# RFC 9110 section 7.6.1 hop-by-hop fields plus the ones a shared cache never stores or replays.
_NEVER_STORED = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"proxy-authenticate",
        b"proxy-authentication-info",
        b"proxy-authorization",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"age",
        b"cache-status",
        b"surrogate-key",
        b"cache-tag",
        b"set-cookie",
    }
)
# RFC 9110 section 15.4.5: the fields a 304 carries.
_NOT_MODIFIED_FIELDS = frozenset(
    {b"cache-control", b"content-location", b"date", b"etag", b"expires", b"vary", b"last-modified"}
)
# RFC 9111 section 3.2: fields a 304 must not replace in the stored response.
_KEEP_ON_UPDATE = frozenset({b"content-length", b"content-encoding", b"content-type", b"content-range"})


# --- rules ----------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CacheRule:
    """Caching defaults for requests whose path matches ``path`` (``*`` matches anything, ``/`` too).

    ``ttl`` is the freshness lifetime used when the response states none (no ``s-maxage``,
    ``max-age`` or ``Expires``); ``no-store`` and ``private`` from the app still win.
    ``stale_while_revalidate`` / ``stale_if_error`` are grace periods used when the response sends
    no such directive. ``tags`` are added to every entry stored under the rule. ``allow_set_cookie``
    stores responses that set cookies (the stored copy never carries ``Set-Cookie``).
    ``vary`` adds request headers to the key. ``bypass=True`` never caches matching paths.

    ``statuses``: the response statuses stored under the rule. By default (``None``) the RFC 9111
    behaviour: a response with explicit freshness (``max-age``...) is stored for any status the
    cache understands, and ``ttl`` applies to the heuristically cacheable ones (200, 203, 204,
    300, 301, 308, 404, 405, 410, 414, 501), so a 404 or 410 is cached too. ``statuses={200}``
    turns negative caching off; listing a status also lets ``ttl`` apply to it.
    206 and 304 are never stored.
    """

    path: str = "*"
    ttl: float | None = None
    stale_while_revalidate: float | None = None
    stale_if_error: float | None = None
    tags: tuple[str, ...] = ()
    vary: tuple[str, ...] = ()
    allow_set_cookie: bool = False
    bypass: bool = False
    statuses: Collection[int] | None = None
    _pattern: re.Pattern[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.path, str):
            raise ConfigurationError(f"CacheRule path must be a string such as '/products/*', got {self.path!r}")
        for name in ("ttl", "stale_while_revalidate", "stale_if_error"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, seconds(value, name, allow_zero=True))
        tags = (self.tags,) if isinstance(self.tags, str) else tuple(self.tags)
        for tag in tags:
            if not isinstance(tag, str) or not tag or any(c.isspace() or c == "," for c in tag):
                raise ConfigurationError(f"cache tags must be non-empty strings without spaces or commas, got {tag!r}")
        object.__setattr__(self, "tags", tags)
        vary = (self.vary,) if isinstance(self.vary, str) else tuple(self.vary)
        object.__setattr__(self, "vary", tuple(v.strip().lower() for v in vary))
        object.__setattr__(self, "_pattern", path_regex(self.path, what="CacheRule path"))
        if self.statuses is not None:
            if isinstance(self.statuses, (str, bytes, int)):
                raise ConfigurationError(f"statuses must be a collection of status codes, got {self.statuses!r}")
            for status in self.statuses:
                if (
                    not isinstance(status, int)
                    or isinstance(status, bool)
                    or not 200 <= status <= 599
                    or status
                    in (
                        206,
                        304,
                    )
                ):
                    raise ConfigurationError(
                        f"statuses must be final status codes 200-599 other than 206 and 304, got {status!r}"
                    )
            object.__setattr__(self, "statuses", frozenset(self.statuses))

    def matches(self, path: str) -> bool:
        return self._pattern.fullmatch(path) is not None


# --- requests ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RequestDirectives:
    """What the client asked of the cache (RFC 9111 section 5.2.1)."""

    no_store: bool = False
    no_cache: bool = False
    max_age: float | None = None
    max_stale: float | None = None  # math.inf for a bare ``max-stale``
    min_fresh: float | None = None
    only_if_cached: bool = False


_DEFAULT_REQUEST = RequestDirectives()


def request_directives(headers: RawHeaders) -> RequestDirectives:
    values = headers_all(headers, b"cache-control")
    if not values:
        pragma = header(headers, b"pragma")
        if pragma is not None and b"no-cache" in pragma.lower():
            return RequestDirectives(no_cache=True)
        return _DEFAULT_REQUEST
    cc = parse_cache_control(values)
    max_stale: float | None = None
    if "max-stale" in cc:
        raw = cc["max-stale"]
        max_stale = math.inf if raw is None else (delta_seconds(cc, "max-stale") or 0.0)
    max_age = delta_seconds(cc, "max-age")
    return RequestDirectives(
        no_store="no-store" in cc,
        no_cache="no-cache" in cc or max_age == 0.0,
        max_age=max_age,
        max_stale=max_stale,
        min_fresh=delta_seconds(cc, "min-fresh"),
        only_if_cached="only-if-cached" in cc,
    )


def normalize_query(query: str) -> str:
    """Query parameters sorted by name only, so ``?b=1&a=2`` and ``?a=2&b=1`` share an entry.

    The sort is stable: repeated names keep their order (``?id=1&id=2`` is not ``?id=2&id=1``, and
    an app that reads the last value gets a different answer for each).
    """
    if not query:
        return ""
    pairs = parse_qsl(query, keep_blank_values=True)
    return urlencode(sorted(pairs, key=lambda pair: pair[0]))


def index_of(path: str, query: str) -> str:
    """The host-independent name under which every entry of one URL is indexed (for purge)."""
    return f"{path}?{query}" if query else path


def _digest(*parts: bytes) -> str:
    h = hashlib.blake2b(digest_size=16)
    for part in parts:
        h.update(len(part).to_bytes(4, "big"))
        h.update(part)
    return h.hexdigest()


def primary_key(scheme: str, host: str, path: str, query: str, *, cookie: bytes | None = None) -> str:
    """The key shared by GET and HEAD of one URL (and, with ``cookie_policy="vary"``, one Cookie)."""
    key = f"{scheme}://{host.lower()}{index_of(path, query)}"
    if cookie is not None:
        key += "|c=" + _digest(cookie)
    return key


def _normalize_value(value: bytes) -> bytes:
    return b",".join(p.strip() for p in b" ".join(value.split()).split(b","))


def vary_values(names: Sequence[bytes], headers: RawHeaders) -> tuple[tuple[bytes, bytes], ...]:
    """The secondary key (RFC 9111 4.1): a digest of each ``Vary`` field's normalised request value.

    Digests, not values, are stored, so ``Vary: Authorization``/``Cookie`` never put credentials in
    the backend.
    """
    out = []
    for name in names:
        values = headers_all(headers, name)
        value = _normalize_value(b",".join(values)) if values else b"\x00absent"
        out.append((name, hashlib.blake2b(value, digest_size=12).digest()))
    return tuple(out)


def variant_key(primary: str, nonce: str, values: tuple[tuple[bytes, bytes], ...]) -> str:
    return f"{primary}#{nonce}:" + _digest(*(part for pair in values for part in pair))


# --- stored entries ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class VaryMarker:
    """Stored at the primary key of a response with ``Vary``: where its variants live."""

    names: tuple[bytes, ...]
    nonce: str


@dataclass(frozen=True, slots=True)
class Entry:
    """One stored response plus what the policy needs to judge it later (times are POSIX seconds)."""

    status: int
    headers: tuple[tuple[bytes, bytes], ...]
    body: bytes
    request_time: float
    response_time: float
    initial_age: float  # corrected_initial_age of RFC 9111 section 4.2.3
    lifetime: float
    swr: float
    sie: float
    must_revalidate: bool
    shared_auth: bool
    etag: bytes | None
    etag_generated: bool
    last_modified: bytes | None
    vary: tuple[tuple[bytes, bytes], ...] = ()
    tags: tuple[str, ...] = ()
    index: str = ""
    invalidated: bool = False

    def storage_ttl(self) -> float:
        """How long the backend keeps the entry: fresh time plus stale grace and a revalidation window."""
        validator = (self.etag and not self.etag_generated) or self.last_modified
        keep = max(self.lifetime, 60.0) if validator else 60.0  # room for max-stale and revalidation
        return max(1.0, min(self.lifetime + max(self.swr, self.sie, keep) - self.initial_age, MAX_SECONDS))


@dataclass(frozen=True, slots=True)
class Freshness:
    age: float
    lifetime: float

    @property
    def fresh(self) -> bool:
        return self.age < self.lifetime

    @property
    def ttl(self) -> float:
        return self.lifetime - self.age


def freshness(entry: Entry, now: float) -> Freshness:
    """Current age (RFC 9111 4.2.3: corrected initial age plus resident time) and lifetime."""
    age = entry.initial_age + max(0.0, now - entry.response_time)
    return Freshness(age=age, lifetime=0.0 if entry.invalidated else entry.lifetime)


def usable_fresh(f: Freshness, req: RequestDirectives) -> bool:
    """Whether a stored response may be served without contacting the app (RFC 9111 4.2 + 5.2.1)."""
    if req.no_cache:
        return False
    if req.max_age is not None and f.age > req.max_age:
        return False
    if req.min_fresh is not None and f.ttl < req.min_fresh:
        return False
    if f.fresh:
        return True
    return req.max_stale is not None and -f.ttl <= req.max_stale


@dataclass(frozen=True, slots=True)
class StoreDecision:
    """Whether (and how) a response may be stored; ``reason`` names the rule that refused it."""

    store: bool
    reason: str = ""
    lifetime: float = 0.0
    swr: float = 0.0
    sie: float = 0.0
    must_revalidate: bool = False
    shared_auth: bool = False
    strip: frozenset[bytes] = frozenset()
    vary: tuple[bytes, ...] = ()


DEFAULT_TARGETED = (b"cdn-cache-control",)
_REFUSALS: dict[str, StoreDecision] = {}


def _refuse(reason: str) -> StoreDecision:
    refusal = _REFUSALS.get(reason)
    if refusal is None:  # immutable: one per reason
        refusal = _REFUSALS[reason] = StoreDecision(False, reason)
    return refusal


def status_refused(status: int, rule: CacheRule | None) -> bool:
    """Whether a response with ``status`` is never stored (only ``rule.statuses`` when it names them)."""
    if status < 200 or status == 206 or status == 304:
        return True
    chosen = rule.statuses if rule is not None else None
    return status not in (UNDERSTOOD_STATUSES if chosen is None else chosen)


def quick_refusal(headers: RawHeaders, targeted: Sequence[bytes] = DEFAULT_TARGETED) -> str | None:
    """The common reasons not to store a response, found in one pass over its fields, or None.

    ``"event-stream"`` (its first ``Content-Type`` is ``text/event-stream``: a live stream is never
    stored), else ``"no-store"`` or ``"private"`` when ``Cache-Control`` says so plainly: exactly what
    :func:`decide_store` decides from the parsed directives, and None whenever that is not certain (a
    quoted string in ``Cache-Control``, or a targeted field such as ``CDN-Cache-Control`` that would
    replace it). None means: decide with :func:`decide_store`.
    """
    content_type: bytes | None = None
    plain = True  # Cache-Control decides, and reads without quoted strings
    no_store = False
    private: bool | None = None  # the first ``private`` counts: bare (True) or with a value (False)
    for name, value in headers:
        name = name.lower()
        if name == b"content-type":
            if content_type is None:
                content_type = value
        elif name == b"cache-control":
            if b'"' in value:
                plain = False
            elif plain:
                for part in value.lower().split(b","):
                    directive, sep, _ = part.partition(b"=")
                    directive = directive.strip()
                    if directive == b"no-store":
                        no_store = True
                    elif directive == b"private" and private is None:
                        private = not sep
        elif name in targeted:
            plain = False
    if content_type is not None and content_type.lower().startswith(b"text/event-stream"):
        return "event-stream"
    if not plain:
        return None
    return "no-store" if no_store else ("private" if private else None)


def response_directives(headers: RawHeaders, targeted: Sequence[bytes] = DEFAULT_TARGETED) -> tuple[Directives, bool]:
    """The directives this cache obeys, and whether ``Expires`` still counts.

    RFC 9213 section 2.2: the first targeted field (in ``targeted`` order) with a valid, non-empty
    value wins, and then ``Cache-Control`` and ``Expires`` are ignored; otherwise ``Cache-Control``.
    """
    for name in targeted:
        values = headers_all(headers, name)
        if values:
            directives = parse_targeted(values)
            if directives is not None:
                return directives, False
    return parse_cache_control(headers_all(headers, b"cache-control")), True


def decide_store(
    *,
    method: str,
    status: int,
    headers: RawHeaders,
    request_time: float,
    response_time: float,
    has_authorization: bool,
    rule: CacheRule | None,
    default_swr: float,
    default_sie: float,
    heuristic_fraction: float = 0.1,
    max_heuristic: float = 86400.0,
    targeted: Sequence[bytes] = DEFAULT_TARGETED,
) -> StoreDecision:
    """RFC 9111 section 3 for a shared cache, plus the rule's defaults.

    ``targeted``: lower-case names of targeted cache-control fields (RFC 9213), most specific
    first; the first one present with a valid, non-empty value replaces ``Cache-Control`` and
    ``Expires`` for this cache.
    """
    if method != "GET":
        return _refuse("method")
    chosen = rule.statuses if rule is not None else None
    if status_refused(status, rule):
        return _refuse("status")
    cc, use_expires = response_directives(headers, targeted)
    if "no-store" in cc:
        return _refuse("no-store")
    strip: set[bytes] = set()
    if "private" in cc:
        if cc["private"] is None:
            return _refuse("private")
        strip.update(field_names([cc["private"].encode("latin-1")]))
    if "no-cache" in cc and cc["no-cache"] is not None:
        strip.update(field_names([cc["no-cache"].encode("latin-1")]))
    shares_auth = "public" in cc or "s-maxage" in cc or "must-revalidate" in cc
    if has_authorization and not shares_auth:
        return _refuse("authorization")
    if header(headers, b"set-cookie") is not None and b"set-cookie" not in strip:
        if rule is None or not rule.allow_set_cookie:
            return _refuse("set-cookie")
    vary = field_names(headers_all(headers, b"vary"))
    if b"*" in vary:
        return _refuse("vary-star")
    if rule is not None:
        vary.extend(v.encode("latin-1") for v in rule.vary if v.encode("latin-1") not in vary)
    strip.update(field_names(headers_all(headers, b"connection")))

    lifetime: float | None = delta_seconds(cc, "s-maxage")
    if lifetime is None:
        lifetime = delta_seconds(cc, "max-age")
    date = parse_http_date(header(headers, b"date"))
    if lifetime is None and use_expires:
        expires_raw = headers_all(headers, b"expires")
        if expires_raw:
            # an invalid Expires, or several of them, means "already expired" (RFC 9111 section 5.3)
            expires = parse_http_date(expires_raw[0]) if len(expires_raw) == 1 else None
            lifetime = 0.0 if expires is None else max(0.0, expires - (date if date is not None else response_time))
    if lifetime is None and rule is not None and rule.ttl is not None and status in (chosen or HEURISTIC_STATUSES):
        lifetime = float(rule.ttl)
    if lifetime is None and (status in HEURISTIC_STATUSES or "public" in cc):
        last_modified = parse_http_date(header(headers, b"last-modified"))
        if last_modified is not None:
            base = date if date is not None else response_time
            lifetime = min(max(0.0, (base - last_modified) * heuristic_fraction), max_heuristic)
    if "no-cache" in cc and cc["no-cache"] is None:
        lifetime = 0.0
    if not parse_age(headers)[1]:
        lifetime = 0.0  # an Age that is not a non-negative integer: treat the response as stale
    has_validator = header(headers, b"etag") is not None or header(headers, b"last-modified") is not None
    if not lifetime and not ("no-cache" in cc and cc["no-cache"] is None and has_validator):
        return _refuse("not-fresh")
    must_revalidate = "must-revalidate" in cc or "proxy-revalidate" in cc or "no-cache" in cc
    swr = delta_seconds(cc, "stale-while-revalidate")
    sie = delta_seconds(cc, "stale-if-error")
    if "s-maxage" in cc and swr is None and sie is None:
        # s-maxage implies proxy-revalidate (RFC 9111 5.2.2.10) unless the origin itself allows stale use
        must_revalidate = True
    if swr is None:
        swr = default_swr if rule is None or rule.stale_while_revalidate is None else rule.stale_while_revalidate
    if sie is None:
        sie = default_sie if rule is None or rule.stale_if_error is None else rule.stale_if_error
    if must_revalidate:
        swr = sie = 0.0
    return StoreDecision(
        True,
        lifetime=lifetime or 0.0,
        swr=float(swr),
        sie=float(sie),
        must_revalidate=must_revalidate,
        shared_auth=shares_auth,
        strip=frozenset(strip),
        vary=tuple(vary),
    )


def initial_age(headers: RawHeaders, request_time: float, response_time: float) -> float:
    """``corrected_initial_age`` (RFC 9111 section 4.2.3)."""
    date = parse_http_date(header(headers, b"date"))
    apparent_age = max(0.0, response_time - date) if date is not None else 0.0
    age_value = parse_age(headers)[0]
    corrected_age_value = age_value + max(0.0, response_time - request_time)
    return max(apparent_age, corrected_age_value)


def strong_etag(body: bytes) -> bytes:
    return b'"' + hashlib.blake2b(body, digest_size=16).hexdigest().encode("ascii") + b'"'


def build_entry(
    decision: StoreDecision,
    *,
    status: int,
    headers: RawHeaders,
    body: bytes,
    request_time: float,
    response_time: float,
    vary: tuple[tuple[bytes, bytes], ...],
    tags: tuple[str, ...],
    index: str,
) -> Entry:
    """The entry to store: never-stored and stripped fields removed, a strong ETag added if missing."""
    kept = tuple(
        (k.lower(), v) for k, v in headers if k.lower() not in _NEVER_STORED and k.lower() not in decision.strip
    )
    etag = header(kept, b"etag")
    generated = etag is None
    if etag is None:
        etag = strong_etag(body)
        kept = (*kept, (b"etag", etag))
    return Entry(
        status=status,
        headers=kept,
        body=body,
        request_time=request_time,
        response_time=response_time,
        initial_age=initial_age(headers, request_time, response_time),
        lifetime=decision.lifetime,
        swr=decision.swr,
        sie=decision.sie,
        must_revalidate=decision.must_revalidate,
        shared_auth=decision.shared_auth,
        etag=etag,
        etag_generated=generated,
        last_modified=header(kept, b"last-modified"),
        vary=vary,
        tags=tags,
        index=index,
    )


def response_tags(headers: RawHeaders) -> list[str]:
    """Tags from ``Surrogate-Key`` (space separated) and ``Cache-Tag`` (comma separated)."""
    tags: list[str] = []
    for raw in headers_all(headers, b"surrogate-key"):
        tags.extend(t for t in raw.decode("latin-1").split() if t)
    for raw in headers_all(headers, b"cache-tag"):
        tags.extend(t.strip() for t in raw.decode("latin-1").split(",") if t.strip())
    return tags


# --- conditionals ----------------------------------------------------------------------------------


def _weak_match(etag: bytes, candidates: bytes) -> bool:
    stored = etag.strip().removeprefix(b"W/")
    for candidate in candidates.split(b","):
        candidate = candidate.strip()
        if candidate == b"*" or candidate.removeprefix(b"W/") == stored:
            return True
    return False


def client_conditional_matches(request_headers: RawHeaders, entry: Entry) -> bool:
    """Whether a fresh entry answers the client's GET/HEAD conditional with 304 (RFC 9110 13.2.2)."""
    if entry.status != 200:
        return False
    inm = header(request_headers, b"if-none-match")
    if inm is not None:
        return entry.etag is not None and _weak_match(entry.etag, inm)
    ims = parse_http_date(header(request_headers, b"if-modified-since"))
    if ims is None:
        return False
    last_modified = parse_http_date(entry.last_modified)
    if last_modified is None:
        last_modified = parse_http_date(header(entry.headers, b"date"))
    return last_modified is not None and last_modified <= ims


def not_modified_headers(entry: Entry) -> list[tuple[bytes, bytes]]:
    return [(k, v) for k, v in entry.headers if k in _NOT_MODIFIED_FIELDS]


_CONDITIONALS = frozenset({b"if-none-match", b"if-modified-since", b"if-match", b"if-unmodified-since", b"if-range"})


def revalidation_headers(request_headers: RawHeaders, entry: Entry) -> tuple[list[tuple[bytes, bytes]], bool]:
    """Request headers for revalidating ``entry`` with the app, and whether they carry a validator."""
    headers = [(k, v) for k, v in request_headers if k not in _CONDITIONALS]
    validated = False
    if entry.etag is not None and not entry.etag_generated:
        headers.append((b"if-none-match", entry.etag))
        validated = True
    if entry.last_modified is not None:
        headers.append((b"if-modified-since", entry.last_modified))
        validated = True
    return headers, validated


def update_from_304(
    entry: Entry,
    headers: RawHeaders,
    request_time: float,
    response_time: float,
    rule: CacheRule | None = None,
    *,
    targeted: Sequence[bytes] = DEFAULT_TARGETED,
) -> Entry:
    """The stored entry refreshed by a 304 from the app (RFC 9111 sections 3.2 and 4.3.4)."""
    fresh = {k.lower() for k, _ in headers} - _KEEP_ON_UPDATE - _NEVER_STORED
    merged = [(k, v) for k, v in entry.headers if k not in fresh]
    merged.extend((k.lower(), v) for k, v in headers if k.lower() in fresh)
    combined = tuple(merged)
    decision = decide_store(
        method="GET",
        status=entry.status,
        headers=combined,
        request_time=request_time,
        response_time=response_time,
        has_authorization=False,
        rule=rule,
        default_swr=entry.swr,
        default_sie=entry.sie,
        targeted=targeted,
    )
    fresh_enough = decision.store and parse_age(headers)[1]
    return replace(
        entry,
        headers=combined,
        request_time=request_time,
        response_time=response_time,
        initial_age=initial_age(headers, request_time, response_time),
        lifetime=decision.lifetime if fresh_enough else 0.0,
        etag=header(combined, b"etag"),
        last_modified=header(combined, b"last-modified"),
        invalidated=False,
    )


# --- invalidation -------------------------------------------------------------------------------------


def invalidation_targets(host: str, path: str, query: str, response_headers: RawHeaders) -> list[str]:
    """Indexes to invalidate after an unsafe request succeeded (RFC 9111 section 4.4)."""
    targets = [index_of(path, query)]
    for name in (b"location", b"content-location"):
        raw = header(response_headers, name)
        if raw is None:
            continue
        try:
            parts = urlsplit(raw.decode("latin-1").strip())
        except ValueError:
            continue
        if parts.netloc and parts.netloc.lower() != host.lower():
            continue  # another host: not ours to invalidate
        if not parts.path.startswith("/"):
            continue
        target = index_of(parts.path, normalize_query(parts.query))
        if target not in targets:
            targets.append(target)
    return targets


# --- Cache-Status (RFC 9211) ------------------------------------------------------------------------

CACHE_NAME = "asgi-resilience"


def cache_status(
    *,
    hit: bool = False,
    fwd: str | None = None,
    ttl: float | None = None,
    stored: bool = False,
    collapsed: bool = False,
    fwd_status: int | None = None,
    detail: str | None = None,
) -> bytes:
    parts = [CACHE_NAME]
    if hit:
        parts.append("hit")
    if fwd is not None:
        parts.append(f"fwd={fwd}")
    if fwd_status is not None:
        parts.append(f"fwd-status={fwd_status}")
    if ttl is not None:
        parts.append(f"ttl={math.floor(ttl)}")
    if stored:
        parts.append("stored")
    if collapsed:
        parts.append("collapsed")
    if detail is not None:
        parts.append(f"detail={detail}")
    return "; ".join(parts).encode("ascii")
