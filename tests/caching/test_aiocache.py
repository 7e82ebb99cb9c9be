"""The aiocache backend is an extra of its own: the package works without it, the backend names the install."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from asgi_resilience import Cache, CacheMiddleware, ConfigurationError

from .conftest import OFF, Origin, get, status_of

HINT = "pip install 'asgi-resilience[aiocache]'"


async def test_aiocache_url_builds_the_backend() -> None:
    origin = Origin(headers=[("cache-control", "max-age=60"), ("cache-tag", "t")])
    cache = Cache("aiocache+memory://", telemetry=OFF)
    mw = CacheMiddleware(origin, cache=cache, telemetry=OFF)
    assert cache.backend_name == "aiocache"
    await get(mw)
    assert status_of(await get(mw)).startswith("asgi-resilience; hit")
    assert await mw.purge_tags("t") == 1
    await get(mw)
    assert origin.calls == 2
    await cache.aclose()


def test_without_aiocache_the_backend_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "aiocache", None)  # import aiocache -> ImportError
    with pytest.raises(ImportError, match=r"pip install 'asgi-resilience\[aiocache\]'"):
        Cache("aiocache+memory://", telemetry=OFF)
    with pytest.raises(ImportError, match=r"pip install 'asgi-resilience\[aiocache\]'"):
        CacheMiddleware(Origin(), backend="aiocache+redis://localhost:6379/0", telemetry=OFF)


def test_bad_aiocache_url_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="aiocache cannot build"):
        Cache("aiocache+ftp://nowhere", telemetry=OFF)


def test_package_imports_and_caches_without_aiocache() -> None:
    """A fresh interpreter in which aiocache cannot be imported: everything but that backend works."""
    code = textwrap.dedent(
        """
        import asyncio, sys

        class Block:
            def find_spec(self, name, path=None, target=None):
                if name == "aiocache" or name.startswith("aiocache."):
                    raise ImportError("blocked: " + name)
                return None

        sys.meta_path.insert(0, Block())
        import asgi_resilience
        from asgi_resilience import CacheMiddleware, resilient
        from asgi_resilience.testing import ASGIHarness, http_scope
        assert "aiocache" not in sys.modules

        async def app(scope, receive, send):
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"cache-control", b"max-age=60")]})
            await send({"type": "http.response.body", "body": b"ok"})

        async def main():
            mw = CacheMiddleware(app, telemetry=False)
            await ASGIHarness().run(mw, http_scope("GET", "/"))
            h = await ASGIHarness().run(mw, http_scope("GET", "/"))
            print(h.header("cache-status"))
            try:
                CacheMiddleware(app, backend="aiocache+memory://", telemetry=False)
            except ImportError as exc:
                print(exc)

        asyncio.run(main())
        """
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    status, error = result.stdout.strip().splitlines()
    assert status.startswith("asgi-resilience; hit")
    assert HINT in error
