"""The public surface: sorted and complete ``__all__`` and importability without extras."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

import asgi_resilience
from asgi_resilience._optional import import_optional


def test_all_is_sorted_and_unique() -> None:
    assert list(asgi_resilience.__all__) == sorted(set(asgi_resilience.__all__))


def test_all_names_exist_and_public_classes_are_exported() -> None:
    for name in asgi_resilience.__all__:
        assert getattr(asgi_resilience, name) is not None
    public = {
        name
        for name, value in vars(asgi_resilience).items()
        if not name.startswith("_") and isinstance(value, type) and value.__module__.startswith("asgi_resilience")
    }
    assert public <= set(asgi_resilience.__all__)


def test_every_exception_derives_from_resilience_error() -> None:
    for name in asgi_resilience.__all__:
        value = getattr(asgi_resilience, name)
        if isinstance(value, type) and issubclass(value, BaseException):
            assert issubclass(value, asgi_resilience.ResilienceError), name


def test_version_matches_metadata() -> None:
    from importlib.metadata import version

    assert asgi_resilience.__version__ == version("asgi-resilience")
    with pytest.raises(AttributeError):
        asgi_resilience.no_such_name  # noqa: B018


def test_import_works_without_any_extra() -> None:
    """Blocks the optional packages and imports the whole public surface in a fresh interpreter."""
    code = textwrap.dedent(
        """
        import sys
        for name in ("redis", "opentelemetry", "uvicorn", "fastapi"):
            sys.modules[name] = None  # makes ``import name`` raise ImportError
        import asgi_resilience
        for name in asgi_resilience.__all__:
            getattr(asgi_resilience, name)
        print("ok")
        """
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_missing_extra_names_the_pip_install() -> None:
    with pytest.raises(ImportError, match=r"pip install 'asgi-resilience\[redis\]'"):
        import_optional("no_such_module_xyz", extra="redis", feature="The Redis backend")
    assert import_optional("json", extra="x", feature="json").dumps([]) == "[]"
