"""Lazy imports of optional dependencies with an install hint.

``import asgi_resilience`` never imports an extra; the first use of a feature that needs one does,
and a missing extra raises an ``ImportError`` that names the ``pip install`` to run.
"""

from __future__ import annotations

import importlib
from types import ModuleType

__all__ = ["import_optional"]


def import_optional(module: str, *, extra: str, feature: str) -> ModuleType:
    """Import ``module`` or raise ImportError naming the extra that provides it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ImportError(
            f"{feature} needs the {module.split('.')[0]!r} package, which is not installed. "
            f"Install it with: pip install 'asgi-resilience[{extra}]'"
        ) from exc
