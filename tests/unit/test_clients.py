"""Who a client is for the per-client limits, and how a log line names it."""

from __future__ import annotations

import pytest

from resolver.clients import charge_key, charge_text, client_key, client_text

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("host", "text"),
    [
        ("192.0.2.7", "192.0.2.7"),
        ("::ffff:192.0.2.7", "192.0.2.7"),  # an IPv4-mapped peer is its IPv4 address
        ("2001:db8:1:2::53", "2001:db8:1:2::/64"),
        ("2001:db8:1:2:ffff::1%eth0", "2001:db8:1:2::/64"),  # a scope is not a client
    ],
)
def test_a_client_is_an_ipv4_address_or_an_ipv6_64(host: str, text: str) -> None:
    key = client_key(host)
    assert key is not None and client_text(key) == text
    assert charge_key(host) == key and charge_text(charge_key(host)) == text


@pytest.mark.parametrize(
    ("host", "text"),
    [
        ("/run/x\n.sock", "/run/x\\n.sock"),  # one line in a log
        ("/run/\xe9", "/run/\\xc3\\xa9"),  # its UTF-8 bytes, escaped
        ("abcd", "abcd"),  # as long as an IPv4 key, and not 97.98.99.100's
        ("/tmp/x\n1", "/tmp/x\\n1"),  # as long as an IPv6 /64 key
        ("a\x00b", "a\\x00b"),  # a NUL: no address (inet_pton raises ValueError)
    ],
)
def test_a_peer_that_is_no_address_is_charged_and_named_by_its_own_text(
    host: str, text: str
) -> None:
    assert client_key(host) is None
    assert charge_text(charge_key(host)) == text
    assert charge_key(host) not in {charge_key("97.98.99.100"), charge_key("2f74:6d70:2f78:a31::")}
