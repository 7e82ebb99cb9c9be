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
* A unix-socket peer (``uvicorn --uds`` behind nginx: the server reports no address,
  ``scope["client"] is None``) is trusted when ``"unix"`` is in the list, and counts as a hop in
  hop-count mode. When proxies are trusted but the peer is missing and not trusted, one warning
  says so (every such client would otherwise share one key).
* Which header: ``header="auto"`` (default) learns which one the trusted proxy writes. A request
  from a trusted peer that carries only one of the two headers shows it (the proxy always adds
  its own, so a client cannot remove it); from then on only that header is read. Until then a
  request with both is attributed only when both agree, otherwise to the peer.

:func:`network_key` groups IPv6 clients by prefix (by default a /56, as express-rate-limit does: a
subscriber commonly gets a /56 or a /48, and rotating /64s inside it must not give fresh quotas).
"""

from __future__ import annotations

import functools
import ipaddress
import logging
from collections.abc import Sequence
from typing import Literal

from asgi_resilience.errors import ConfigurationError
from asgi_resilience.types import Scope

__all__ = ["DEFAULT_IPV6_PREFIX", "TrustedProxies", "network_key", "parse_forwarded", "parse_x_forwarded_for"]

logger = logging.getLogger("asgi_resilience.proxy")

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
HeaderChoice = Literal["auto", "forwarded", "x-forwarded-for"]
_CACHE_SIZE = 4096
_MAX_HOPS = 64  # longer chains are read only up to this many hops from the right
DEFAULT_IPV6_PREFIX = 56
UNIX = "unix"  # the entry of trusted_proxies that trusts unix-socket peers (no address)


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
def network_key(ip: str, *, ipv6_prefix: int = DEFAULT_IPV6_PREFIX, ipv4_prefix: int = 32) -> str:
    """The partition an address belongs to: IPv6 by ``/ipv6_prefix`` (default /56), IPv4 by host.

    ``network_key("2001:db8::1") == network_key("2001:db8:0:ff::1") == "2001:db8::/56"``.
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
            (``["10.0.0.0/8", "::1"]``, and ``"unix"`` for a unix-socket peer, which has no
            address), or a hop count (the number of proxies in front of the app, the peer
            included; every peer is then trusted to forward, a unix-socket peer too).
        header: which forwarding header to read: ``"auto"``, ``"forwarded"`` or
            ``"x-forwarded-for"``. A client can send the header your proxy leaves alone, so only
            the one the proxy writes may be read. ``"auto"`` (default) learns it: a request from a
            trusted peer carrying only one of the two shows which one the proxy writes, and from
            then on only that one is read (logged once). Until then a request carrying both is
            attributed only if both give the same client, otherwise to the peer (logged once).
            Pin the header when you know it.
    """

    __slots__ = (
        "_cache",
        "_detected",
        "_header",
        "_hops",
        "_networks",
        "_unix",
        "_warned",
        "_warned_both",
        "_warned_no_peer",
    )

    def __init__(self, trusted: Sequence[str] | int | None = None, *, header: HeaderChoice = "auto") -> None:
        if header not in ("auto", "forwarded", "x-forwarded-for"):
            raise ConfigurationError(f"header must be 'auto', 'forwarded' or 'x-forwarded-for', got {header!r}")
        self._header = header
        self._detected: str | None = None  # the header "auto" learned the trusted proxy writes
        self._hops = 0
        self._unix = False
        self._networks: tuple[IPNetwork, ...] = ()
        self._cache: dict[str, bool] = {}
        self._warned = False
        self._warned_both = False
        self._warned_no_peer = False
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
            if isinstance(entry, str) and entry.strip().lower() == UNIX:
                self._unix = True
                continue
            try:
                networks.append(ipaddress.ip_network(str(entry).strip(), strict=False))
            except ValueError as exc:
                raise ConfigurationError(
                    f"trusted_proxies entry {entry!r} is not an IP address, a CIDR (e.g. '10.0.0.0/8', '::1') "
                    "or 'unix' (a unix-socket peer)"
                ) from exc
        self._networks = tuple(networks)

    @property
    def enabled(self) -> bool:
        """Whether any peer is trusted to forward the client's address."""
        return self._hops > 0 or bool(self._networks) or self._unix

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
        return f"TrustedProxies({[str(n) for n in self._networks] + ([UNIX] if self._unix else [])!r})"

    def is_trusted(self, ip: str | None) -> bool:
        """Whether ``ip`` (a peer or a hop) is a trusted proxy. With a hop count every peer is.

        None stands for a peer without an address (a unix socket): trusted in hop-count mode and
        when ``"unix"`` is listed.
        """
        if self._hops:
            return True
        if ip is None or ip == "":
            return self._unix
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
        """The client's address for ``scope``, or None when it cannot be told (no peer, no header)."""
        client = scope.get("client")
        peer: str | None = None
        if client and client[0]:
            peer = str(client[0])
            address = _parse_ip(peer)
            if address is not None:
                peer = str(address)
        if not self.enabled:
            if not self._warned and any(self._header_values(scope)):
                self._warned = True
                logger.warning(
                    "a request arrived with a Forwarded/X-Forwarded-For header but no proxy is trusted, so "
                    "the header is ignored and clients are identified by the peer address; if the app runs "
                    "behind a proxy, set trusted_proxies= (CIDRs or a hop count)"
                )
            return peer
        if not self.is_trusted(peer):
            if peer is None and not self._warned_no_peer:
                self._warned_no_peer = True
                logger.warning(
                    "trusted_proxies is set but the server reports no peer address (a unix socket?), so "
                    "forwarding headers are ignored and every such client shares one key; add 'unix' to "
                    "trusted_proxies if a proxy connects over a unix socket"
                )
            return peer  # a header from an untrusted peer is ignored
        forwarded, xff = self._header_values(scope)
        kind = self._choose(forwarded, xff)
        if kind == "forwarded":
            return self._walk(parse_forwarded(forwarded)[-_MAX_HOPS:], peer) if forwarded else peer
        if kind == "x-forwarded-for":
            return self._walk(parse_x_forwarded_for(xff)[-_MAX_HOPS:], peer) if xff else peer
        # "auto" before it learned which header the proxy writes, and the request carries both
        by_forwarded = self._walk(parse_forwarded(forwarded)[-_MAX_HOPS:], peer)
        by_xff = self._walk(parse_x_forwarded_for(xff)[-_MAX_HOPS:], peer)
        if by_forwarded == by_xff:
            return by_xff
        if not self._warned_both:
            self._warned_both = True
            logger.warning(
                "a request from a trusted proxy carries both X-Forwarded-For and Forwarded and they name "
                "different clients; it is attributed to the proxy until a request shows which header the "
                "proxy writes. Pin it with TrustedProxies(..., header='forwarded' or 'x-forwarded-for')"
            )
        return peer

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

    def _header_values(self, scope: Scope) -> tuple[list[str], list[str]]:
        forwarded: list[str] = []
        xff: list[str] = []
        for name, value in scope.get("headers", ()):
            if name == b"forwarded":
                forwarded.append(value.decode("latin-1"))
            elif name == b"x-forwarded-for":
                xff.append(value.decode("latin-1"))
        return forwarded, xff

    def _choose(self, forwarded: list[str], xff: list[str]) -> str | None:
        """The header to read for a request from a trusted peer; None while "auto" cannot tell."""
        if self._header != "auto":
            return self._header
        if self._detected is not None:
            return self._detected
        if bool(forwarded) == bool(xff):
            return None if forwarded else "x-forwarded-for"
        # only one of the two: the trusted proxy writes this one (it would have added the other)
        self._detected = "forwarded" if forwarded else "x-forwarded-for"
        logger.info("trusted proxies write %s: only that header is read from now on", self._detected)
        return self._detected
