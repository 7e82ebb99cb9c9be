"""The stack's typed options stay the middlewares' own options, and the wrapped app stays usable."""

from __future__ import annotations

import inspect
import typing

import pytest
from starlette.applications import Starlette

from asgi_resilience import (
    CacheMiddleware,
    ConcurrencyLimitMiddleware,
    ProblemDetailsMiddleware,
    RateLimitMiddleware,
    ResilientApp,
    TimeoutMiddleware,
    resilient,
)
from asgi_resilience.stack import (
    CacheOptions,
    ConcurrencyOptions,
    ProblemsOptions,
    RateLimitOptions,
    TimeoutOptions,
)

PAIRS = [
    (ProblemsOptions, ProblemDetailsMiddleware),
    (RateLimitOptions, RateLimitMiddleware),
    (CacheOptions, CacheMiddleware),
    (TimeoutOptions, TimeoutMiddleware),
    (ConcurrencyOptions, ConcurrencyLimitMiddleware),
]


@pytest.mark.parametrize(("options", "middleware"), PAIRS, ids=[m.__name__ for _, m in PAIRS])
def test_options_typeddict_mirrors_the_middleware_signature(options: type, middleware: type) -> None:
    """Every keyword option with the same type, except the app and telemetry (set on the stack)."""
    hints = typing.get_type_hints(options)
    init = typing.get_type_hints(middleware.__init__)
    parameters = inspect.signature(middleware).parameters
    expected = {name for name in parameters if name not in {"app", "telemetry"}}
    assert set(hints) == expected
    for name in expected:
        assert hints[name] == init[name], name


def test_resilient_forwards_attributes_to_the_wrapped_app() -> None:
    inner = Starlette()
    app = resilient(inner, timeout=1.0)
    assert isinstance(app, ResilientApp)
    assert app.app is inner
    assert app.router is inner.router  # read through
    app.state.ready = True
    assert inner.state.ready is True
    app.debug = True  # set through
    assert inner.debug is True
    assert app.layers.keys() == {"problems", "timeout"}
    with pytest.raises(AttributeError):
        app.no_such_attribute  # noqa: B018
