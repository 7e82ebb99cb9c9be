"""Document problem responses in a FastAPI app's OpenAPI: RFC 9457 schema, ``application/problem+json``.

FastAPI documents its error responses as ``application/json`` (and 422 as ``HTTPValidationError``),
while :class:`~asgi_resilience.ProblemDetailsMiddleware` answers them as
``application/problem+json``: a client generated from the document does not match the wire.
:func:`add_problem_openapi` rewrites the generated document once, when it is first built.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, Protocol

from asgi_resilience.errors._exceptions import ConfigurationError
from asgi_resilience.errors._problem import reason_phrase

__all__ = ["PROBLEM_SCHEMA", "add_problem_openapi"]

MEDIA_TYPE = "application/problem+json"
SCHEMA_NAME = "Problem"
REF = {"$ref": f"#/components/schemas/{SCHEMA_NAME}"}

PROBLEM_SCHEMA: dict[str, Any] = {
    "title": "Problem",
    "description": "An RFC 9457 problem details object; extension members may appear.",
    "type": "object",
    "properties": {
        "type": {"type": "string", "format": "uri-reference", "default": "about:blank"},
        "title": {"type": "string"},
        "status": {"type": "integer", "minimum": 100, "maximum": 599},
        "detail": {"type": "string"},
        "instance": {"type": "string", "format": "uri-reference"},
    },
    "additionalProperties": True,
}


class OpenAPIApp(Protocol):
    """What :func:`add_problem_openapi` needs: FastAPI's ``openapi()`` and its cache attribute."""

    openapi_schema: dict[str, Any] | None

    def openapi(self) -> dict[str, Any]: ...


def add_problem_openapi(app: OpenAPIApp, *, statuses: Iterable[int] = (429, 500, 503, 504)) -> None:
    """Make ``app``'s OpenAPI document describe problem responses as they are sent.

    Every documented error response (4xx, 5xx, ``default``) gets the ``application/problem+json``
    media type with the RFC 9457 ``Problem`` schema (added to ``components.schemas``), replacing
    ``application/json``; each operation also documents ``statuses`` (the stack's own rejections:
    429 rate limited, 500, 503 overloaded or circuit open, 504 timeout) unless it already has them.
    Call it once after the routes are added::

        app = FastAPI()
        add_problem_openapi(app)

    .. versionadded:: 0.1.0
    """
    wanted = tuple(sorted({_status(s) for s in statuses}))
    original: Callable[[], dict[str, Any]] = app.openapi
    rewritten: list[dict[str, Any]] = []  # the document already rewritten (FastAPI caches it)

    def openapi() -> dict[str, Any]:
        schema = original()
        if not any(schema is done for done in rewritten):
            _rewrite(schema, wanted)
            rewritten[:] = [schema]
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def _status(value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 400 <= value <= 599:
        raise ConfigurationError(f"statuses must be HTTP error status codes 400-599, got {value!r}")
    return value


def _rewrite(schema: dict[str, Any], statuses: tuple[int, ...]) -> None:
    schemas = schema.setdefault("components", {}).setdefault("schemas", {})
    schemas.setdefault(SCHEMA_NAME, PROBLEM_SCHEMA)
    for path_item in schema.get("paths", {}).values():
        for method, operation in path_item.items():
            if method not in ("get", "put", "post", "delete", "options", "head", "patch", "trace"):
                continue
            responses = operation.setdefault("responses", {})
            for status in statuses:
                responses.setdefault(str(status), {"description": reason_phrase(status)})
            for code, response in responses.items():
                if code == "default" or code.startswith(("4", "5")):
                    content = response.setdefault("content", {})
                    content.pop("application/json", None)
                    content[MEDIA_TYPE] = {"schema": REF}
