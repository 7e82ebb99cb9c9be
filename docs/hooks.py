"""MkDocs hook: the docstrings' Sphinx roles and directives read as plain Markdown in the API reference.

The package's docstrings are Google style with a few reST habits (``:class:`Rule```, ``.. versionadded::``)
that Python-Markdown would show literally. Long identifiers in table cells (metric names) get
break opportunities after dots and underscores, so tables fit the page.
"""

from __future__ import annotations

import re
from typing import Any

_ROLE = re.compile(r":(?:class|func|meth|attr|data|mod|exc|obj):<code>(~?)([^<]*)</code>")
_CELL_CODE = re.compile(r"(<td>\s*<code>)([^<]{24,})(</code>)")
_VERSION = re.compile(r"<p>\.\. version(added|changed)::\s*([^<\s]+)\s*</p>")


def _role(match: re.Match[str]) -> str:
    short, target = match.groups()
    return f"<code>{target.rsplit('.', 1)[-1] if short else target}</code>"


def _version(match: re.Match[str]) -> str:
    kind, version = match.groups()
    return f'<p class="version"><em>{"Added" if kind == "added" else "Changed"} in version {version}.</em></p>'


def _breakable(match: re.Match[str]) -> str:
    """A long identifier in a table cell may wrap after a dot or an underscore, never inside a word."""
    start, text, end = match.groups()
    return start + text.replace(".", ".<wbr>").replace("_", "_<wbr>") + end


def on_page_content(html: str, **kwargs: Any) -> str:
    html = _VERSION.sub(_version, _ROLE.sub(_role, html))
    return _CELL_CODE.sub(_breakable, html)
