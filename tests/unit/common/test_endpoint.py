"""Addresses users type for the control channel, what counts as loopback, and who may listen where."""

import socket

import pytest

from common.endpoint import (
    KEEPALIVE_COUNT,
    KEEPALIVE_IDLE_S,
    USER_TIMEOUT_S,
    Endpoint,
    EndpointError,
    check_transport,
    is_loopback,
    is_wildcard,
    parse_endpoint,
    tune_tcp,
)


@pytest.mark.parametrize("text, expected", [
    ("tzero.ctl", Endpoint(path="tzero.ctl")),
    ("/run/s1.ctl", Endpoint(path="/run/s1.ctl")),
    ("./odd:name", Endpoint(path="./odd:name")),
    ("storage1:7000", Endpoint(host="storage1", port=7000)),
    ("10.0.0.5:7000", Endpoint(host="10.0.0.5", port=7000)),
    ("[fd00::5]:7000", Endpoint(host="fd00::5", port=7000)),
    ("[::1]:1", Endpoint(host="::1", port=1)),
])
def test_endpoint_parse_reads_paths_hosts_and_bracketed_ipv6(text, expected):
    assert parse_endpoint(text, "--control") == expected


@pytest.mark.parametrize("text, fragment", [
    ("host:0", "not a TCP port"),
    ("host:65536", "not a TCP port"),
    ("host:", "expected HOST:PORT"),
    ("host:http", "expected HOST:PORT"),
    ("[::1]", "expected HOST:PORT"),
    ("::1:7000", "expected HOST:PORT"),
    ("[nothex]:7000", "not an IPv6 address"),
    ("", "empty"),
])
def test_endpoint_parse_refuses_malformed_addresses_naming_the_option(text, fragment):
    with pytest.raises(EndpointError, match=fragment) as e:
        parse_endpoint(text, "--control")
    assert str(e.value).startswith("--control")


def test_endpoint_prints_as_it_is_typed():
    assert str(Endpoint(host="fd00::5", port=7)) == "[fd00::5]:7"
    assert str(Endpoint(host="h", port=7)) == "h:7"
    assert str(Endpoint(path="/x")) == "/x"


@pytest.mark.parametrize("host, loopback", [
    ("127.0.0.1", True), ("127.3.2.1", True), ("::1", True), ("localhost", True),
    ("10.0.0.1", False), ("0.0.0.0", False), ("::", False), ("192.0.2.7", False), ("fd00::5", False),
])
def test_endpoint_loopback_means_every_address_is_loopback(host, loopback):
    assert is_loopback(host) is loopback


def test_endpoint_wildcards_are_the_unspecified_addresses():
    assert is_wildcard("0.0.0.0") and is_wildcard("::") and is_wildcard("")
    assert not is_wildcard("127.0.0.1") and not is_wildcard("storage1")


def test_endpoint_transport_rules_tls_anywhere_plaintext_only_on_loopback_when_asked():
    remote, local = Endpoint(host="10.0.0.5", port=7), Endpoint(host="127.0.0.1", port=7)
    for e in (remote, local, Endpoint(path="/run/x")):
        check_transport(e, tls=True, insecure_plaintext=False, what="control")
    check_transport(Endpoint(path="/run/x"), tls=False, insecure_plaintext=False, what="control")
    check_transport(local, tls=False, insecure_plaintext=True, what="control")
    with pytest.raises(EndpointError, match="--insecure-plaintext-tcp"):
        check_transport(local, tls=False, insecure_plaintext=False, what="control")
    for insecure in (False, True):
        with pytest.raises(EndpointError, match="not a loopback address.*--tls-certificates"):
            check_transport(remote, tls=False, insecure_plaintext=insecure, what="control")
    with pytest.raises(EndpointError, match="not a loopback"):
        check_transport(Endpoint(host="0.0.0.0", port=7), tls=False, insecure_plaintext=True, what="NBD")


def test_endpoint_tcp_sockets_get_keepalive_and_a_user_timeout_unix_ones_are_left_alone():
    listener = socket.create_server(("127.0.0.1", 0))
    with listener, socket.create_connection(listener.getsockname()) as s:
        tune_tcp(s)
        assert s.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
        assert s.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == KEEPALIVE_IDLE_S
        assert s.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT) == KEEPALIVE_COUNT
        assert s.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT) == USER_TIMEOUT_S * 1000
    a, b = socket.socketpair()
    with a, b:
        tune_tcp(a)
        assert a.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 0
