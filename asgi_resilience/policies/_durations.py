"""Durations for the policies: the shared validator (:mod:`asgi_resilience._durations`)."""

from __future__ import annotations

from asgi_resilience._durations import seconds

__all__ = ["seconds"]
