"""Build httpx clients whose connection options still work under the resilient transport.

Passing ``transport=`` to ``httpx.Client`` makes it ignore ``limits``, ``http2``, ``verify``,
``cert`` and ``proxy`` (the httpx-retries FAQ). These helpers give those options to the inner
``httpx.HTTPTransport`` instead, wrap it (and every transport in ``mounts``) in the resilient
pipeline, and pass everything else to the client. Only public httpx API is used.
"""

from __future__ import annotations

from typing import Any

import httpx

from asgi_resilience.client._transports import AsyncResilientTransport, ResilientTransport

__all__ = ["async_resilient_client", "resilient_client"]

_TRANSPORT_OPTIONS = ("verify", "cert", "trust_env", "http1", "http2", "limits", "proxy")
_RESILIENCE_OPTIONS = (
    "retry",
    "breaker",
    "hedge",
    "total_timeout",
    "attempt_timeout",
    "max_concurrent",
    "raise_on_exhaustion",
    "state",
    "shared",
    "on_retry",
    "on_give_up",
    "on_transition",
    "telemetry",
)


def _split(kwargs: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    transport = {k: kwargs.pop(k) for k in _TRANSPORT_OPTIONS if k in kwargs}
    resilience = {k: kwargs.pop(k) for k in _RESILIENCE_OPTIONS if k in kwargs}
    if "trust_env" in transport:
        kwargs["trust_env"] = transport["trust_env"]
    return transport, resilience, kwargs


def _prepare(kwargs: dict[str, Any]) -> tuple[Any, dict[str, Any], dict[str, Any], dict[str, Any], dict[str, Any]]:
    """Split a client helper's arguments: (own transport, inner transport options, resilience options,
    mounts, client options); options for our inner transport next to ``transport=`` are an error."""
    transport_options, resilience, client_options = _split(dict(kwargs))
    inner = client_options.pop("transport", None)
    conflicting = sorted(set(transport_options) - {"trust_env"})
    if inner is not None and conflicting:
        raise TypeError(f"pass {conflicting} to your own transport, or drop transport=")
    mounts = client_options.pop("mounts", None) or {}
    return inner, transport_options, resilience, mounts, client_options


def resilient_client(**kwargs: Any) -> httpx.Client:
    """An ``httpx.Client`` whose every request goes through :class:`ResilientTransport`.

    Accepts every ``httpx.Client`` argument plus the :class:`ResilientTransport` options
    (``retry``, ``breaker``, ``total_timeout``, ``attempt_timeout``, ``max_concurrent``,
    ``raise_on_exhaustion``, ``state``, ``shared``, ``on_retry``, ``on_give_up``,
    ``on_transition``, ``telemetry``). ``verify``, ``cert``, ``http1``, ``http2``, ``limits`` and
    ``proxy`` configure the inner ``httpx.HTTPTransport``; a ``transport=`` of your own is wrapped
    instead, and so is every transport in ``mounts``. Proxies from the environment are not read
    (httpx only reads them when it builds its own transports): pass ``proxy=`` explicitly.

    .. versionadded:: 0.1.0
    """
    inner, transport_options, resilience, mounts, client_options = _prepare(kwargs)
    base = inner if inner is not None else httpx.HTTPTransport(**transport_options)
    return httpx.Client(
        transport=ResilientTransport(base, **resilience),
        mounts={k: (ResilientTransport(v, **resilience) if v is not None else None) for k, v in mounts.items()},
        **client_options,
    )


def async_resilient_client(**kwargs: Any) -> httpx.AsyncClient:
    """An ``httpx.AsyncClient`` whose every request goes through :class:`AsyncResilientTransport`.

    Same arguments as :func:`resilient_client`; hooks may be sync or async.

    .. versionadded:: 0.1.0
    """
    inner, transport_options, resilience, mounts, client_options = _prepare(kwargs)
    base = inner if inner is not None else httpx.AsyncHTTPTransport(**transport_options)
    return httpx.AsyncClient(
        transport=AsyncResilientTransport(base, **resilience),
        mounts={k: (AsyncResilientTransport(v, **resilience) if v is not None else None) for k, v in mounts.items()},
        **client_options,
    )
