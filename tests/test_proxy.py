from __future__ import annotations

import logging

import pytest

from asgi_resilience._proxy import TrustedProxies, network_key, parse_forwarded, parse_x_forwarded_for
from asgi_resilience.errors import ConfigurationError
from asgi_resilience.testing import http_scope


def scope(peer: str | None = "10.0.0.1", **headers: str) -> dict[str, object]:
    hdrs = [(k.replace("_", "-"), v) for k, v in headers.items()]
    return dict(http_scope(headers=hdrs, client=(peer, 1234) if peer is not None else None))


def test_no_trust_uses_peer_and_ignores_headers(caplog: pytest.LogCaptureFixture) -> None:
    proxies = TrustedProxies()
    assert not proxies.enabled
    with caplog.at_level(logging.WARNING, logger="asgi_resilience.proxy"):
        assert proxies.client_ip(scope("203.0.113.9", x_forwarded_for="1.2.3.4")) == "203.0.113.9"
        assert proxies.client_ip(scope("203.0.113.9", forwarded="for=1.2.3.4")) == "203.0.113.9"
    warnings = [r for r in caplog.records if "trusted_proxies" in r.getMessage()]
    assert len(warnings) == 1  # once, naming the setting


def test_no_warning_without_forwarding_headers(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="asgi_resilience.proxy"):
        assert TrustedProxies().client_ip(scope("203.0.113.9")) == "203.0.113.9"
    assert not caplog.records


def test_missing_client_and_non_ip_peer() -> None:
    proxies = TrustedProxies(["10.0.0.0/8"])
    assert proxies.client_ip(scope(None, x_forwarded_for="1.2.3.4")) is None
    assert proxies.client_ip(scope("testclient", x_forwarded_for="1.2.3.4")) == "testclient"
    assert not proxies.is_trusted(None)
    assert not proxies.is_trusted("not-an-ip")


def test_cidr_trust_reads_xff_right_to_left_skipping_trusted_hops() -> None:
    proxies = TrustedProxies(["10.0.0.0/8", "192.168.0.0/16"])
    # client spoofs 6.6.6.6; the real client is 198.51.100.7, seen by two trusted proxies
    s = scope("10.0.0.1", x_forwarded_for="6.6.6.6, 198.51.100.7, 192.168.1.1")
    assert proxies.client_ip(s) == "198.51.100.7"


def test_header_from_untrusted_peer_is_ignored() -> None:
    proxies = TrustedProxies(["10.0.0.0/8"])
    assert proxies.client_ip(scope("203.0.113.5", x_forwarded_for="1.2.3.4")) == "203.0.113.5"
    assert proxies.client_ip(scope("203.0.113.5", forwarded="for=1.2.3.4")) == "203.0.113.5"


def test_trusted_peer_without_header_is_the_client() -> None:
    assert TrustedProxies(["10.0.0.0/8"]).client_ip(scope("10.1.2.3")) == "10.1.2.3"


def test_all_hops_trusted_gives_leftmost() -> None:
    proxies = TrustedProxies(["10.0.0.0/8"])
    assert proxies.client_ip(scope("10.0.0.1", x_forwarded_for="10.9.9.9, 10.0.0.2")) == "10.9.9.9"


def test_garbage_entry_stops_the_walk_at_the_last_trusted_reporter() -> None:
    proxies = TrustedProxies(["10.0.0.0/8"])
    assert proxies.client_ip(scope("10.0.0.1", x_forwarded_for="1.1.1.1, garbage, 10.0.0.2")) == "10.0.0.2"
    assert proxies.client_ip(scope("10.0.0.1", forwarded="for=1.1.1.1, for=unknown")) == "10.0.0.1"


def test_forwarded_rfc7239_forms() -> None:
    proxies = TrustedProxies(["10.0.0.0/8"])
    value = 'for=192.0.2.60;proto=http;by=203.0.113.43, For="[2001:db8:cafe::17]:4711";proto=https'
    assert proxies.client_ip(scope("10.0.0.1", forwarded=value)) == "2001:db8:cafe::17"
    assert proxies.client_ip(scope("10.0.0.1", forwarded='for="192.0.2.43:47011"')) == "192.0.2.43"
    assert parse_forwarded(['for=_hidden, by=1.2.3.4, for="a,b";x="q\\"x"', "for=1.2.3.4"]) == [
        None,
        None,
        None,
        "1.2.3.4",
    ]
    assert parse_forwarded(["for=[::1"]) == [None]


def test_auto_never_lets_a_client_pick_its_address_with_the_header_the_proxy_does_not_write(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # the proxy writes only Forwarded; the client adds its own X-Forwarded-For
    spoofed = scope("10.0.0.1", forwarded="for=1.1.1.1", x_forwarded_for="2.2.2.2")
    proxies = TrustedProxies(["10.0.0.0/8"])
    with caplog.at_level(logging.WARNING, logger="asgi_resilience.proxy"):
        assert proxies.client_ip(spoofed) == "10.0.0.1"  # they disagree and nothing is learned yet
        assert proxies.client_ip(spoofed) == "10.0.0.1"
    assert len([r for r in caplog.records if "header='forwarded'" in r.getMessage()]) == 1
    # an ordinary request through the proxy shows it writes Forwarded (it would have added XFF)
    assert proxies.client_ip(scope("10.0.0.1", forwarded="for=3.3.3.3")) == "3.3.3.3"
    assert proxies.client_ip(spoofed) == "1.1.1.1"  # the client's X-Forwarded-For is ignored from now on
    assert proxies.client_ip(scope("10.0.0.1", x_forwarded_for="2.2.2.2")) == "10.0.0.1"


def test_auto_learns_an_x_forwarded_for_proxy_the_same_way() -> None:
    spoofed = scope("10.0.0.1", forwarded="for=1.1.1.1", x_forwarded_for="2.2.2.2")
    proxies = TrustedProxies(["10.0.0.0/8"])
    assert proxies.client_ip(scope("10.0.0.1")) == "10.0.0.1"  # no header (a health check): nothing learned
    assert proxies.client_ip(scope("10.0.0.1", x_forwarded_for="4.4.4.4")) == "4.4.4.4"
    assert proxies.client_ip(spoofed) == "2.2.2.2"
    agree = scope("10.0.0.1", forwarded="for=5.5.5.5", x_forwarded_for="5.5.5.5")
    assert TrustedProxies(["10.0.0.0/8"]).client_ip(agree) == "5.5.5.5"  # both agree: no need to know
    # an untrusted peer teaches nothing
    fresh = TrustedProxies(["10.0.0.0/8"])
    assert fresh.client_ip(scope("203.0.113.9", x_forwarded_for="6.6.6.6")) == "203.0.113.9"
    assert fresh.client_ip(spoofed) == "10.0.0.1"


def test_a_pinned_header_is_read_alone() -> None:
    s = scope("10.0.0.1", forwarded="for=1.1.1.1", x_forwarded_for="2.2.2.2")
    assert TrustedProxies(["10.0.0.0/8"], header="x-forwarded-for").client_ip(s) == "2.2.2.2"
    assert TrustedProxies(["10.0.0.0/8"], header="forwarded").client_ip(s) == "1.1.1.1"
    only_xff = scope("10.0.0.1", x_forwarded_for="2.2.2.2")
    assert TrustedProxies(["10.0.0.0/8"], header="forwarded").client_ip(only_xff) == "10.0.0.1"


def test_a_unix_socket_peer_is_a_trusted_hop_when_configured(caplog: pytest.LogCaptureFixture) -> None:
    """uvicorn --uds behind nginx: scope["client"] is None."""
    via_socket = http_scope(headers=[("x-forwarded-for", "198.51.100.7")], client=None)
    assert TrustedProxies(["unix"]).client_ip(via_socket) == "198.51.100.7"
    assert TrustedProxies(["10.0.0.0/8", "UNIX"]).client_ip(via_socket) == "198.51.100.7"
    assert TrustedProxies(1).client_ip(via_socket) == "198.51.100.7"  # hop-count mode counts it
    two_hops = http_scope(headers=[("x-forwarded-for", "198.51.100.7, 10.0.0.5")], client=None)
    assert TrustedProxies(2).client_ip(two_hops) == "198.51.100.7"
    assert TrustedProxies(["unix"]).client_ip(http_scope(client=None)) is None  # no header: unknown
    assert repr(TrustedProxies(["::1", "unix"])) == "TrustedProxies(['::1/128', 'unix'])"
    # an address peer is not trusted by "unix"
    assert TrustedProxies(["unix"]).client_ip(scope("10.0.0.1", x_forwarded_for="1.1.1.1")) == "10.0.0.1"
    proxies = TrustedProxies(["10.0.0.0/8"])
    with caplog.at_level(logging.WARNING, logger="asgi_resilience.proxy"):
        assert proxies.client_ip(via_socket) is None
        assert proxies.client_ip(via_socket) is None
    assert len([r for r in caplog.records if "add 'unix'" in r.getMessage()]) == 1


def test_multiple_header_lines_are_one_list() -> None:
    s = http_scope(
        headers=[("x-forwarded-for", "6.6.6.6, 1.1.1.1"), ("x-forwarded-for", "10.0.0.3")], client=("10.0.0.1", 1)
    )
    assert TrustedProxies(["10.0.0.0/8"]).client_ip(s) == "1.1.1.1"


def test_hop_count() -> None:
    one = TrustedProxies(1)
    assert one.enabled and one.hops == 1 and one.is_trusted("203.0.113.1")
    assert one.client_ip(scope("203.0.113.1", x_forwarded_for="6.6.6.6, 1.1.1.1")) == "1.1.1.1"
    two = TrustedProxies(2)
    assert two.client_ip(scope("203.0.113.1", x_forwarded_for="6.6.6.6, 1.1.1.1, 10.0.0.2")) == "1.1.1.1"
    # shorter chain than configured: the leftmost entry
    assert two.client_ip(scope("203.0.113.1", x_forwarded_for="1.1.1.1")) == "1.1.1.1"
    assert two.client_ip(scope("203.0.113.1", x_forwarded_for="1.1.1.1, junk")) == "203.0.113.1"
    assert TrustedProxies(0).client_ip(scope("203.0.113.1", x_forwarded_for="1.1.1.1")) == "203.0.113.1"


def test_ipv4_mapped_and_ports_and_zone_ids_normalised() -> None:
    proxies = TrustedProxies(["10.0.0.0/8"])
    assert proxies.is_trusted("::ffff:10.0.0.1")
    assert proxies.client_ip(scope("::ffff:10.0.0.1", x_forwarded_for="1.2.3.4:5678")) == "1.2.3.4"
    assert parse_x_forwarded_for(["fe80::1%eth0, , [2001:db8::1]:80"]) == ["fe80::1", "2001:db8::1"]


def test_is_trusted_cache_is_bounded() -> None:
    proxies = TrustedProxies(["10.0.0.0/8"])
    for i in range(5000):
        proxies.is_trusted(f"11.0.{i // 256}.{i % 256}")
    assert proxies.is_trusted("10.0.0.9")
    assert len(proxies._cache) <= 4096


@pytest.mark.parametrize(
    "bad",
    ["10.0.0.0/8", ["not-a-cidr"], ["10.0.0.0/33"], -1, True],
)
def test_bad_configuration(bad: object) -> None:
    with pytest.raises(ConfigurationError, match="trusted_proxies"):
        TrustedProxies(bad)  # type: ignore[arg-type]


def test_bad_header_choice() -> None:
    with pytest.raises(ConfigurationError, match="header"):
        TrustedProxies(header="x-real-ip")  # type: ignore[arg-type]


def test_repr() -> None:
    assert repr(TrustedProxies(2)) == "TrustedProxies(2)"
    assert "10.0.0.0/8" in repr(TrustedProxies(["10.0.0.0/8"]))


def test_network_key() -> None:
    # a /56 by default: the /64s a subscriber rotates through share one key
    assert network_key("2001:db8::1") == network_key("2001:db8:0:ff::1") == "2001:db8::/56"
    assert network_key("2001:db8:0:100::1") != network_key("2001:db8::1")
    assert network_key("2001:db8:0:1::1", ipv6_prefix=64) != network_key("2001:db8::1", ipv6_prefix=64)
    assert network_key("2001:db8::1", ipv6_prefix=128) == "2001:db8::1"
    assert network_key("192.0.2.1") == "192.0.2.1"
    assert network_key("192.0.2.1", ipv4_prefix=24) == "192.0.2.0/24"
    assert network_key("::ffff:192.0.2.1") == "192.0.2.1"
    assert network_key("testclient") == "testclient"
