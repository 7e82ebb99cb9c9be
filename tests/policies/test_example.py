"""The usage example behaves as it says: stand-in clients made slow, failing or down."""

from __future__ import annotations

import importlib.util
import sys
import time
from pathlib import Path
from types import ModuleType

import anyio
import pytest

from asgi_resilience import CircuitOpenError, DependencyUnavailable, TimeLimitExceeded

pytestmark = pytest.mark.anyio

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "policies_any_call.py"


def load() -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"policies_example_{time.monotonic_ns()}", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


async def test_llm_call_retries_then_breaks_then_recovers() -> None:
    ex = load()
    ex.llm_client.mode = "failing"
    assert await ex.call_llm("x") == "answer to 'x'"
    ex.llm_client.mode = "down"
    ex.llm_client.calls = 0
    with pytest.raises(ConnectionError):
        await ex.call_llm("x")
    assert ex.llm_client.calls == 3  # three attempts, then the breaker (3 consecutive failures) opened
    with pytest.raises(CircuitOpenError):
        await ex.call_llm("x")
    assert ex.llm_client.calls == 3  # refused without calling the client
    ex.llm_client.mode = "ok"
    await anyio.sleep(0.25)
    assert await ex.call_llm("x") == "answer to 'x'"


async def test_llm_call_is_cut_by_its_time_limit() -> None:
    ex = load()
    ex.llm_client.mode = "slow"
    ex.llm_client.delay = 10
    started = time.monotonic()
    with pytest.raises(TimeLimitExceeded):
        await ex.call_llm("x")
    assert time.monotonic() - started < 3  # the 2 s total limit, not 3 x 10 s


async def test_authorization_fails_open_and_admin_fails_closed() -> None:
    ex = load()
    assert await ex.can_read("mallory", "d") is False
    for mode in ("down", "slow"):
        ex.authz_client.mode = mode
        assert await ex.can_read("mallory", "d") is True  # fail open: down or slow
        with pytest.raises(DependencyUnavailable) as info:
            await ex.is_admin("root")  # fail closed
        assert info.value.status == 503


async def test_main_runs() -> None:
    ex = load()
    with anyio.fail_after(30):
        await ex.main()
