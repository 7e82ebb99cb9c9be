"""RFC 9457 problem details: the :class:`Problem` exception and the sans-io rendering core.

Nothing here awaits, reads a clock or knows about ASGI: it turns exceptions into
:class:`ProblemDetails` values and those into bytes. The ASGI adapters send them.

RFC 9457 points this module follows:

* section 3: the document is a JSON object served as ``application/problem+json``;
* section 3.1.1: ``type`` is a URI reference, ``about:blank`` when absent;
* section 3.1.2: ``status`` is advisory but MUST equal the status of the response;
* section 3.1.3 / 4.2.1: with ``about:blank`` the ``title`` SHOULD be the HTTP reason phrase;
* section 3.1.4: ``detail`` helps the client fix the problem and is *not* debugging output;
* section 3.2: extension members; names SHOULD start with a letter and use ALPHA / DIGIT / ``_``
  and be at least three characters long so that they also map to XML;
* section 5: security: no stack traces or implementation details unless debugging is on.
"""

from __future__ import annotations

import http
import json
import re
import traceback
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from asgi_resilience.errors._exceptions import ConfigurationError, ResilienceError

__all__ = [
    "PROBLEM_MEDIA_TYPE",
    "Problem",
    "ProblemDetails",
    "from_error",
    "internal_error",
    "reason_phrase",
    "render",
]

PROBLEM_MEDIA_TYPE = "application/problem+json"
ABOUT_BLANK = "about:blank"
_RESERVED = frozenset({"type", "title", "status", "detail", "instance"})
_EXTENSION_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]{2,}\Z")
# Headers we compute ourselves; a caller cannot override them through ``headers=``.
_OWN_HEADERS = frozenset({"content-type", "content-length"})


def reason_phrase(status: int) -> str:
    """The HTTP reason phrase of ``status`` (RFC 9110 section 15), ``"Error"`` if unknown."""
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def _check_extensions(extensions: Mapping[str, Any]) -> None:
    for name in extensions:
        if name in _RESERVED:
            raise ConfigurationError(
                f"problem extension {name!r} would overwrite a standard member; pass it as the keyword {name}= instead"
            )
        if not _EXTENSION_NAME.match(name):
            raise ConfigurationError(
                f"problem extension name {name!r} is invalid: use at least three letters, digits or '_', "
                "starting with a letter (RFC 9457 section 3.2)"
            )


def _header_items(headers: Mapping[str, str] | Iterable[tuple[str, str]] | None) -> tuple[tuple[str, str], ...]:
    if headers is None:
        return ()
    items = headers.items() if isinstance(headers, Mapping) else headers
    return tuple((str(k), str(v)) for k, v in items if str(k).lower() not in _OWN_HEADERS)


class Problem(ResilienceError):
    """An exception an application raises to answer with an exact RFC 9457 problem document.

    ``raise Problem(409, type="out-of-stock", detail="Item 12 is sold out", item=12)`` renders as
    a 409 ``application/problem+json`` response whose body holds those members, ``item`` as an
    extension. Without ``type`` the problem is ``about:blank`` with the reason phrase as title.

    Args:
        status: the HTTP status, 400 to 599.
        type: a problem type URI or a slug (made absolute with the middleware's ``type_base``).
        title: a short summary of the problem type; defaults to the reason phrase.
        detail: an explanation of this occurrence, shown to the client.
        instance: a URI reference identifying this occurrence.
        headers: response headers to send (``WWW-Authenticate``, ``Retry-After``, ...).
        **extensions: extension members added to the document.
    """

    expose = True

    def __init__(
        self,
        status: int,
        *,
        type: str | None = None,
        title: str | None = None,
        detail: str | None = None,
        instance: str | None = None,
        headers: Mapping[str, str] | Iterable[tuple[str, str]] | None = None,
        **extensions: Any,
    ) -> None:
        if not isinstance(status, int) or isinstance(status, bool) or not 400 <= status <= 599:
            raise ConfigurationError(f"Problem status must be an int from 400 to 599, got {status!r}")
        _check_extensions(extensions)
        self.status = status
        self.type = type
        self.title = title if title is not None else reason_phrase(status)
        self.detail = detail
        self.instance = instance
        self._headers = _header_items(headers)
        self._extensions = dict(extensions)
        super().__init__(detail or self.title)

    @property
    def extensions(self) -> Mapping[str, Any]:
        return self._extensions

    @property
    def headers(self) -> Mapping[str, str]:
        return dict(self._headers)

    def __repr__(self) -> str:
        return f"Problem({self.status}, type={self.type!r}, title={self.title!r}, detail={self.detail!r})"


@dataclass(frozen=True, slots=True)
class ProblemDetails:
    """A rendered-ready problem: what goes on the wire, nothing more."""

    status: int
    type: str | None = None
    title: str | None = None
    detail: str | None = None
    instance: str | None = None
    extensions: Mapping[str, Any] = field(default_factory=dict)
    headers: tuple[tuple[str, str], ...] = ()

    def body(self, *, type_base: str | None = None) -> dict[str, Any]:
        """The JSON object of the document, with slugs made absolute against ``type_base``."""
        type_uri = self.type or ABOUT_BLANK
        if type_base and self.type and ":" not in self.type and not self.type.startswith("/"):
            type_uri = type_base + self.type
        doc: dict[str, Any] = {
            "type": type_uri,
            "title": self.title or reason_phrase(self.status),
            "status": self.status,
        }
        if self.detail is not None:
            doc["detail"] = self.detail
        if self.instance is not None:
            doc["instance"] = self.instance
        for name, value in self.extensions.items():
            if name not in _RESERVED:
                doc[name] = value
        return doc


def from_error(exc: ResilienceError, *, debug: bool = False) -> ProblemDetails:
    """The problem document of one of our own exceptions (or an app's :class:`Problem`)."""
    if isinstance(exc, Problem):
        return ProblemDetails(
            status=exc.status,
            type=exc.type,
            title=exc.title,
            detail=exc.detail,
            instance=exc.instance,
            extensions=_with_debug(exc._extensions, exc, debug),
            headers=exc._headers,
        )
    detail = str(exc) if (exc.expose or debug) else None
    return ProblemDetails(
        status=exc.status,
        type=exc.type,
        title=exc.title if exc.type is not None else reason_phrase(exc.status),
        detail=detail,
        extensions=_with_debug(exc.extensions, exc, debug),
        headers=tuple(exc.headers.items()),
    )


def internal_error(exc: BaseException, *, debug: bool = False) -> ProblemDetails:
    """The 500 document for an exception nobody mapped: no message, no repr, no traceback unless ``debug``."""
    return ProblemDetails(
        status=500,
        detail=str(exc) if debug else None,
        extensions=_with_debug({}, exc, debug),
    )


def _with_debug(extensions: Mapping[str, Any], exc: BaseException, debug: bool) -> Mapping[str, Any]:
    if not debug:
        return extensions
    return {
        **extensions,
        "exception": {
            "type": f"{type(exc).__module__}.{type(exc).__qualname__}",
            "message": str(exc),
            "traceback": traceback.format_exception(type(exc), exc, exc.__traceback__),
        },
    }


def render(problem: ProblemDetails, *, type_base: str | None = None) -> tuple[bytes, list[tuple[bytes, bytes]]]:
    """Serialize ``problem`` to the body bytes and the raw ASGI headers of its response.

    Values that JSON cannot encode are rendered with ``str()`` rather than failing the response.
    """
    body = json.dumps(problem.body(type_base=type_base), ensure_ascii=False, separators=(",", ":"), default=str).encode(
        "utf-8"
    )
    headers = [
        (b"content-type", PROBLEM_MEDIA_TYPE.encode("latin-1")),
        (b"content-length", str(len(body)).encode("latin-1")),
    ]
    for name, value in problem.headers:
        if "\r" in value or "\n" in value or "\r" in name or "\n" in name:
            continue  # never let a header value split the response
        try:
            headers.append((name.lower().encode("latin-1"), value.encode("latin-1")))
        except UnicodeEncodeError:
            continue  # a header value that cannot go on the wire is dropped, not a crash
    return body, headers
