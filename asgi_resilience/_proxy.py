"""Who is the client? Peer address, trusted proxies and forwarding headers, done safely.

Shared by every layer that needs the client's address or must decide whether a peer may speak for
someone else (the rate limiter keys on the address; the timeout layer only accepts deadline headers
from trusted peers).

* With no trusted proxy (the default) the client is ``scope["client"]`` and forwarding headers are
  ignored: anyone can write ``X-Forwarded-For``. One warning names the ``trusted_proxies`` setting
  the first time such a header arrives.
* ``TrustedProxies(["10.0.0.0/8", "192.168.1.7"])``: when the peer is in one of these networks,
  the RFC 7239 ``Forwarded`` header (or ``X-Forwarded-For``) is read right to left, skipping
  trusted hops; the first untrusted address is the client. A header sent by an untrusted peer is
  ignored.
* ``TrustedProxies(2)``: exactly two proxies stand in front of the app (the peer and one more);
  the client is the second address from the right of the forwarding header.

:func:`network_key` groups IPv6 clients by prefix (a /64 is one subscriber, not one address).
"""

from __future__ import annotations

import functools
import ipaddress
import logging
from collections.abc import Sequence
from typing import Literal

from asgi_resilience.errors import ConfigurationError
from asgi_resilience.types import Scope

__all__ = ["TrustedProxies", "network_key", "parse_forwarded", "parse_x_forwarded_for"]

logger = logging.getLogger("asgi_resilience.proxy")

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
HeaderChoice = Literal["auto", "forwarded", "x-forwarded-for"]
_CACHE_SIZE = 4096
_MAX_HOPS = 64  # longer chains are read only up to this many hops from the right


@functools.lru_cache(maxsize=_CACHE_SIZE)
def _parse_ip(value: str) -> IPAddress | None:
    """An address from a header or a peer tuple (ports, brackets and zone ids removed), or None."""
    value = value.strip().strip('"').strip()
    if not value:
        return None
    if value.startswith("["):  # "[2001:db8::1]:4711" or "[2001:db8::1]"
        end = value.find("]")
        if end < 0:
            return None
        value = value[1:end]
    elif value.count(":") == 1:  # "192.0.2.1:8080"
        value = value.split(":", 1)[0]
    value = value.split("%", 1)[0]  # zone id ("fe80::1%eth0")
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _split_quoted(value: str, separator: str) -> list[str]:
    """Split on ``separator`` outside double-quoted strings (RFC 7230 quoted-string, with escapes)."""
    parts: list[str] = []
    current: list[str] = []
    quoted = escaped = False
    for char in value:
        if escaped:
            current.append(char)
            escaped = False
        elif quoted and char == "\\":
            current.append(char)
            escaped = True
        elif char == '"':
            quoted = not quoted
            current.append(char)
        elif char == separator and not quoted:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return parts


def parse_forwarded(values: Sequence[str]) -> list[str | None]:
    """The ``for=`` node of each RFC 7239 ``Forwarded`` element, left to right.

    An element without ``for=``, or whose node is ``unknown``, obfuscated (``_hidden``) or not an
    IP address, gives None: nothing left of it can be attributed.
    """
    nodes: list[str | None] = []
    for value in values:
        for element in _split_quoted(value, ","):
            if not element.strip():
                continue
            node: str | None = None
            for pair in _split_quoted(element, ";"):
                name, sep, raw = pair.partition("=")
                if sep and name.strip().lower() == "for":
                    address = _parse_ip(raw)
                    node = str(address) if address is not None else None
                    break
            nodes.append(node)
    return nodes


def parse_x_forwarded_for(values: Sequence[str]) -> list[str | None]:
    """Each ``X-Forwarded-For`` entry, left to right; entries that are not addresses give None."""
    nodes: list[str | None] = []
    for value in values:
        for entry in value.split(","):
            if not entry.strip():
                continue
            address = _parse_ip(entry)
            nodes.append(str(address) if address is not None else None)
    return nodes


@functools.lru_cache(maxsize=_CACHE_SIZE)
def network_key(ip: str, *, ipv6_prefix: int = 64, ipv4_prefix: int = 32) -> str:
    """The partition an address belongs to: IPv6 by ``/ipv6_prefix`` (default /64), IPv4 by host.

    ``network_key("2001:db8::1") == network_key("2001:db8::ffff") == "2001:db8::/64"``.
    A value that is not an IP address (a unix socket, ``testclient``) is returned unchanged.
    """
    address = _parse_ip(ip)
    if address is None:
        return ip
    if isinstance(address, ipaddress.IPv6Address):
        if ipv6_prefix >= 128:
            return str(address)
        return str(ipaddress.IPv6Network((address, ipv6_prefix), strict=False))
    if ipv4_prefix >= 32:
        return str(address)
    return str(ipaddress.IPv4Network((address, ipv4_prefix), strict=False))


class TrustedProxies:
    """Which peers may report the client address, and the client address of a request.

    Args:
        trusted: None (trust nobody: the peer is the client), a sequence of CIDRs or addresses
            (``["10.0.0.0/8", "::1"]``), or a hop count (the number of proxies in front of the app,
            the peer included; every peer is then trusted to forward).
        header: which forwarding header to read: ``"auto"`` (``X-Forwarded-For`` when present, else
            ``Forwarded``), ``"forwarded"`` or ``"x-forwarded-for"``. Pin the one your proxy
            writes: a client can send the header your proxy leaves alone. ``"auto"`` prefers
            ``X-Forwarded-For`` because nearly every proxy appends to it (so a ``Forwarded`` header
            a client sends through such a proxy is ignored), and logs one warning when a request
            carries both.
    """

    __slots__ = ("_cache", "_header", "_hops", "_networks", "_warned", "_warned_both")

    def __init__(self, trusted: Sequence[str] | int | None = None, *, header: HeaderChoice = "auto") -> None:
        if header not in ("auto", "forwarded", "x-forwarded-for"):
            raise ConfigurationError(f"header must be 'auto', 'forwarded' or 'x-forwarded-for', got {header!r}")
        self._header = header
        self._hops = 0
        self._networks: tuple[IPNetwork, ...] = ()
        self._cache: dict[str, bool] = {}
        self._warned = False
        self._warned_both = False
        if trusted is None:
            return
        if isinstance(trusted, bool) or (isinstance(trusted, int) and trusted < 0):
            raise ConfigurationError(
                f"trusted_proxies must be None, a list of CIDRs or a hop count >= 0, got {trusted!r}"
            )
        if isinstance(trusted, int):
            self._hops = trusted
            return
        if isinstance(trusted, str):
            raise ConfigurationError(f"trusted_proxies must be a list of CIDRs, not a single string: use [{trusted!r}]")
        networks: list[IPNetwork] = []
        for entry in trusted:
            try:
                networks.append(ipaddress.ip_network(str(entry).strip(), strict=False))
            except ValueError as exc:
                raise ConfigurationError(
                    f"trusted_proxies entry {entry!r} is not an IP address or CIDR (e.g. '10.0.0.0/8', '::1')"
                ) from exc
        self._networks = tuple(networks)

    @property
    def enabled(self) -> bool:
        """Whether any peer is trusted to forward the client's address."""
        return self._hops > 0 or bool(self._networks)

    @property
    def warned(self) -> bool:
        """Whether the one warning about untrusted forwarding headers was logged."""
        return self._warned

    @property
    def hops(self) -> int:
        return self._hops

    def __repr__(self) -> str:
        if self._hops:
            return f"TrustedProxies({self._hops})"
        return f"TrustedProxies({[str(n) for n in self._networks]!r})"

    def is_trusted(self, ip: str | None) -> bool:
        """Whether ``ip`` (a peer or a hop) is a trusted proxy. With a hop count every peer is."""
        if ip is None:
            return False
        if self._hops:
            return True
        if not self._networks:
            return False
        found = self._cache.get(ip)
        if found is None:
            address = _parse_ip(ip)
            found = address is not None and any(address in net for net in self._networks)
            if len(self._cache) >= _CACHE_SIZE:
                self._cache.clear()
            self._cache[ip] = found
        return found

    def client_ip(self, scope: Scope) -> str | None:
        """The client's address for ``scope``, or None when the server reports no peer."""
        client = scope.get("client")
        peer: str | None = None
        if client:
            peer = str(client[0])
            address = _parse_ip(peer)
            if address is not None:
                peer = str(address)
        if not self.enabled:
            if not self._warned and self._forwarding_values(scope)[1]:
                self._warned = True
                logger.warning(
                    "a request arrived with a Forwarded/X-Forwarded-For header but no proxy is trusted, so "
                    "the header is ignored and clients are identified by the peer address; if the app runs "
                    "behind a proxy, set trusted_proxies= (CIDRs or a hop count)"
                )
            return peer
        if not self.is_trusted(peer):
            return peer  # a header from an untrusted peer is ignored
        kind, values = self._forwarding_values(scope)
        if not values:
            return peer
        nodes = parse_forwarded(values) if kind == "forwarded" else parse_x_forwarded_for(values)
        return self._walk(nodes[-_MAX_HOPS:], peer)

    def _walk(self, nodes: list[str | None], peer: str | None) -> str | None:
        reporter = peer
        if self._hops:
            # the peer is hop 1 and reported the last entry; hop n reported the n-th entry from the right
            depth = min(self._hops, len(nodes))
            for node in reversed(nodes[len(nodes) - depth :]):
                if node is None:
                    return reporter
                reporter = node
            return reporter
        for node in reversed(nodes):
            if node is None:
                return reporter  # "unknown" or garbage: the last trusted hop is all we can vouch for
            if not self.is_trusted(node):
                return node
            reporter = node
        return reporter  # every hop is a trusted proxy: the leftmost one is the origin

    def _forwarding_values(self, scope: Scope) -> tuple[str, list[str]]:
        forwarded: list[str] = []
        xff: list[str] = []
        for name, value in scope.get("headers", ()):
            if name == b"forwarded":
                forwarded.append(value.decode("latin-1"))
            elif name == b"x-forwarded-for":
                xff.append(value.decode("latin-1"))
        if self._header == "forwarded":
            return "forwarded", forwarded
        if self._header == "x-forwarded-for":
            return "x-forwarded-for", xff
        if xff:
            if forwarded and not self._warned_both:
                self._warned_both = True
                logger.warning(
                    "a request carries both X-Forwarded-For and Forwarded; X-Forwarded-For is used. If your "
                    "proxy writes Forwarded, pin it with TrustedProxies(..., header='forwarded'), otherwise "
                    "with header='x-forwarded-for'"
                )
            return "x-forwarded-for", xff
        return "forwarded", forwarded
