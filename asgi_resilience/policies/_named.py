"""Per-name configuration of the policies, from one place: a dict, or environment variables.

``configure_policies({"bulkhead": {"db": {"max_concurrent": 20, "max_queue": 50}},
"time_limit": {"auth": 5, "llm": 30}})`` or, with no code at all,
``ASGI_RESILIENCE__BULKHEAD__DB__MAX_CONCURRENT=20`` and ``ASGI_RESILIENCE__TIME_LIMIT__AUTH=5``:
``<ENV_PREFIX><KIND>__<NAME>__<OPTION>`` (``__`` separates the parts, so names and options may
contain single underscores; ``time_limit`` takes no option part). Values read from the
environment are parsed as JSON when they can be (``20``, ``0.5``, ``true``, ``null``), else kept
as strings.

Precedence for one option of one named policy: environment > :func:`configure_policies` >
the keyword arguments written in code > the defaults. Configuration applies when a named policy
is first created; changing it with :func:`configure_policies` after that raises, naming the
policy (the same options again are accepted: a module may be imported twice).
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Mapping
from typing import Any

from asgi_resilience.errors import ConfigurationError

__all__ = ["ENV_PREFIX", "KINDS", "configure_policies", "configured", "mark_created"]

ENV_PREFIX = "ASGI_RESILIENCE__"
KINDS = ("bulkhead", "circuit_breaker", "hedge", "retry", "time_limit")

_lock = threading.Lock()
_config: dict[str, dict[str, Any]] = {}
_created: set[tuple[str, str]] = set()


def _parse(value: str) -> Any:
    try:
        return json.loads(value)
    except ValueError:
        return value


def _from_env(kind: str, name: str) -> dict[str, Any]:
    prefix = f"{ENV_PREFIX}{kind.upper()}__{name.upper()}"
    found: dict[str, Any] = {}
    for key, value in os.environ.items():
        if key == prefix and kind == "time_limit":
            found["seconds"] = _parse(value)
        elif key.startswith(prefix + "__"):
            found[key[len(prefix) + 2 :].lower()] = _parse(value)
    return found


def configure_policies(config: Mapping[str, Mapping[str, Any]]) -> None:
    """Set the options of named policies: ``{kind: {name: options}}``.

    ``kind`` is one of ``bulkhead``, ``circuit_breaker``, ``hedge``, ``retry``, ``time_limit``;
    ``options`` is a dict of the keyword arguments of that factory (a number for
    ``time_limit``). Replaces earlier configuration of the same names.
    """
    if not isinstance(config, Mapping):
        raise ConfigurationError(f"configure_policies takes {{kind: {{name: options}}}}, got {config!r}")
    staged: dict[str, dict[str, Any]] = {}
    for kind, names in config.items():
        if kind not in KINDS:
            raise ConfigurationError(f"unknown policy kind {kind!r}: use one of {', '.join(KINDS)}")
        if not isinstance(names, Mapping):
            raise ConfigurationError(f"configure_policies[{kind!r}] must map names to options, got {names!r}")
        for name, options in names.items():
            if kind == "time_limit" and not isinstance(options, Mapping):
                options = {"seconds": options}
            if not isinstance(options, Mapping):
                raise ConfigurationError(f"options of {kind} {name!r} must be a dict, got {options!r}")
            staged[f"{kind}:{name}"] = dict(options)
    with _lock:
        late = sorted(
            key
            for key, options in staged.items()
            if tuple(key.split(":", 1)) in _created and _config.get(key) != options
        )
        if late:
            raise ConfigurationError(
                f"{', '.join(late)} already exist: configure policies before their first use (at start-up)"
            )
        _config.update(staged)


def configured(kind: str, name: str, given: Mapping[str, Any]) -> dict[str, Any]:
    """The options of a named policy: code defaults (``given``) overridden by dict, then env."""
    with _lock:
        options = {**given, **_config.get(f"{kind}:{name}", {})}
    options.update(_from_env(kind, name))
    return options


def mark_created(kind: str, name: str) -> None:
    with _lock:
        _created.add((kind, name))


def reset_configuration() -> None:
    """Forget every configured option and created name (for tests)."""
    with _lock:
        _config.clear()
        _created.clear()
