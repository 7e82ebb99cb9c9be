"""The one path-pattern language of every layer's path rules.

The limiter's ``Rule(path=...)`` and ``exempt=``, ``CacheRule(path=...)``, and the timeout's and the
concurrency limit's ``rules=`` all compile their patterns here, so a pattern means the same thing
everywhere:

* ``*`` matches any run of characters, ``/`` included (``/api/*`` matches ``/api/v1/users``);
* every other character is literal: ``?``, ``[``, ``]``, ``.`` and ``+`` have no special meaning;
* a pattern matches the whole path (``scope["path"]``, decoded, without the query string), and is
  case-sensitive;
* a pattern starts with ``/`` or ``*``; anything else is refused at construction.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from asgi_resilience.errors import ConfigurationError

__all__ = ["path_regex"]


def path_regex(patterns: str | Sequence[str], *, what: str = "path pattern") -> re.Pattern[str]:
    """One compiled regex that fully matches the paths any of ``patterns`` matches (use ``fullmatch``).

    ``what`` names the option in the error raised for a bad pattern (``"CacheRule path"``).
    """
    items = list(patterns) if isinstance(patterns, (list, tuple, set, frozenset)) else [patterns]
    if not items:
        raise ConfigurationError(f"{what}: give at least one path pattern such as '/api/*'")
    parts = []
    for pattern in items:
        if not isinstance(pattern, str) or not pattern.startswith(("/", "*")):
            raise ConfigurationError(
                f"{what} {pattern!r}: a path pattern is a string that must start with '/' or '*' (e.g. '/reports/*'); "
                "'*' matches any characters, '/' included, and every other character is literal"
            )
        parts.append("".join(".*" if piece == "*" else re.escape(piece) for piece in re.split(r"(\*)", pattern)))
    return re.compile("|".join(f"(?:{part})" for part in parts) if len(parts) > 1 else parts[0], re.DOTALL)
