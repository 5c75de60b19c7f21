"""vitrt.Client's arguments, refused before anything is sent (the TLS gateway itself is probed in
tests/test_serve.py, test_the_client_reaches_a_tls_gateway_...)."""

from __future__ import annotations

import pytest

pytest.importorskip("tritonclient.http")

from vitrt import Client, InputError  # noqa: E402
from vitrt.serving.client import _parse_url  # noqa: E402


@pytest.mark.parametrize("url, parsed", [
    ("localhost:8000", ("http", "localhost", 8000, "localhost:8000")),
    ("http://10.0.0.5:8000/", ("http", "10.0.0.5", 8000, "10.0.0.5:8000")),
    ("https://gw.example.com", ("https", "gw.example.com", 443, "gw.example.com:443")),
    ("https://gw.example.com:8443/vitrt/", ("https", "gw.example.com", 8443, "gw.example.com:8443/vitrt")),
    ("[::1]:8000", ("http", "::1", 8000, "[::1]:8000")),
])
def test_urls_with_and_without_a_scheme(url, parsed):
    assert _parse_url(url) == parsed


@pytest.mark.parametrize("url, kw, match", [
    ("grpc://localhost:8001", {}, "expected host:port"),
    ("https://user:pw@gw.example.com", {}, "carries credentials; expected basic_auth"),
    ("localhost:port", {}, "expected host:port"),
    ("http://gw.example.com", {"basic_auth": ("u", "p")}, "password in the clear; expected an https:// url"),
    ("https://gw.example.com", {"basic_auth": ("u",)}, "expected a .user, password. pair"),
    ("http://gw.example.com", {"ca_file": "ca.pem"}, "ca_file given for an http:// url"),
    ("https://gw.example.com", {"key_file": "k.pem"}, "key_file without cert_file"),
    ("https://gw.example.com", {"ca_file": "/no/such/ca.pem"}, "is not a file; expected a PEM file"),
    ("https://gw.example.com", {"headers": {"X-Key": "a\r\nInjected: 1"}}, "without line breaks"),
    ("https://gw.example.com", {"headers": {"vitrt-admin-key": "t"}}, "expected admin_token="),
    ("http://gw.example.com", {"admin_token": "t" * 20}, r"admin token \(admin_token\) over http:// .* in the clear"),
])
def test_bad_arguments_are_refused_before_anything_is_sent(url, kw, match):
    with pytest.raises(InputError, match=match):
        Client(url, **kw)


def test_a_file_that_is_no_certificate_is_refused_at_once(tmp_path):
    bad = tmp_path / "ca.pem"
    bad.write_text("not a certificate")
    with pytest.raises(InputError, match="cannot be used .*expected PEM certificates"):
        Client("https://gw.example.com", ca_file=bad)


def test_basic_auth_over_plain_http_to_loopback_is_allowed_and_then_reaches_nothing():
    """Loopback is this host: no password crosses a network. The port was free a moment ago."""
    import socket

    from vitrt import BackendError

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(BackendError, match="no vitrt model"):
        Client(f"127.0.0.1:{port}", basic_auth=("u", "p"), timeout=5)


def test_the_tokens_from_the_environment_go_in_the_clear_to_loopback_only(monkeypatch):
    """$VITRT_ADMIN_TOKEN (a Kubernetes secret) is sent by statistics() over https://, or plain http:// to
    loopback; to another host over http:// it is refused and nothing is sent. The Client is made without
    a server (its connection replaced by a recorder): what is checked is what statistics() would send."""
    monkeypatch.setenv("VITRT_ADMIN_TOKEN", "from-a-kubernetes-secret-0123")
    sent = []

    class Recorder:
        def get_inference_statistics(self, model, headers):
            sent.append(headers)
            return {"model_stats": []}

    client = Client.__new__(Client)
    client.model, client._admin_token, client._headers, client.url = "vitrt", None, {}, "x"
    monkeypatch.setattr(Client, "client", Recorder())
    for scheme, host, ok in (("http", "10.0.0.7", False), ("http", "gw.example.com", False), ("http", "127.0.0.1", True),
                             ("http", "::1", True), ("https", "gw.example.com", True)):
        client.scheme, client.host, client.port = scheme, host, 8000
        if ok:
            client.statistics()
            assert sent.pop()["vitrt-admin-key"] == "from-a-kubernetes-secret-0123"
        else:
            with pytest.raises(InputError, match=r"\$VITRT_ADMIN_TOKEN\) over http:// to .* in the clear"):
                client.statistics()
            assert not sent
