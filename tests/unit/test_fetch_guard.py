"""The SSRF guard's table: which addresses, spellings and schemes a fetch may reach."""

from __future__ import annotations

import http.server
import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from modelport.errors import FetchRefused, InvalidSource
from modelport.ingest.sources import parse_source
from modelport.ingest.sources.guard import FetchPolicy, guarded_client, parse_ip
from modelport.settings import Settings

pytestmark = pytest.mark.db_agnostic

STRICT = FetchPolicy()

REFUSED_URLS = [
    ("https://127.0.0.1/m.tar.gz", "loopback"),
    ("https://127.1/m.tar.gz", "loopback"),
    ("https://2130706433/m.tar.gz", "loopback"),
    ("https://0x7f000001/m.tar.gz", "loopback"),
    ("https://0177.0.0.1/m.tar.gz", "loopback"),
    ("https://0x7f.1/m.tar.gz", "loopback"),
    ("https://localhost/m.tar.gz", "loopback"),
    ("https://api.localhost/m.tar.gz", "loopback"),
    ("https://[::1]/m.tar.gz", "loopback"),
    ("https://169.254.169.254/latest/meta-data/", "link-local"),
    ("https://2852039166/latest/meta-data/", "link-local"),  # 169.254.169.254 as one number
    ("https://[fe80::1]/x", "link-local"),
    ("https://10.0.0.5/x", "private"),
    ("https://172.16.3.4/x", "private"),
    ("https://192.168.1.1/x", "private"),
    ("https://100.64.0.1/x", "carrier-grade NAT"),
    ("https://[fd00::1]/x", "unique-local"),
    ("https://[fec0::1]/x", "site-local"),
    ("https://224.0.0.1/x", "multicast"),
    ("https://[ff02::1]/x", "multicast"),
    ("https://0.0.0.0/x", "unspecified"),
    ("https://0/x", "unspecified"),
    ("https://[::]/x", "unspecified"),
    ("https://240.0.0.1/x", "reserved"),
    ("https://[::ffff:127.0.0.1]/x", "loopback address, written as IPv6"),
    ("https://[::ffff:a9fe:a9fe]/x", "link-local"),  # mapped 169.254.169.254 in hex
    ("https://[::127.0.0.1]/x", "loopback address, written as IPv6"),  # IPv4-compatible
    ("https://[64:ff9b::a9fe:a9fe]/x", "link-local"),  # NAT64
    ("https://[64:ff9b:1::1]/x", "NAT64"),
    ("https://[2002:7f00:1::]/x", "loopback address, written as IPv6"),  # 6to4
    ("https://[2002:a00:1::]/x", "private address, written as IPv6"),
    ("https://192.0.2.10/x", "not globally routable"),  # documentation range
    # IPv4-translated (RFC 2765 SIIT, ::ffff:0:a.b.c.d): Python's is_global says True for all of them.
    ("https://[::ffff:0:7f00:1]/x", "loopback address, written as IPv6"),
    ("https://[::ffff:0:a9fe:a9fe]/x", "link-local"),
    ("https://[::ffff:0:10.1.2.3]/x", "private address, written as IPv6"),
    ("https://[::ffff:0:0.0.0.0]/x", "unspecified address, written as IPv6"),
    # Teredo: the client (bit-inverted) and the server are both checked.
    ("https://[2001:0:808:808::80ff:fefe]/x", "loopback address, written as IPv6"),  # client 127.0.1.1
    ("https://[2001:0:a9fe:a9fe::f7f7:f7f7]/x", "link-local"),  # server 169.254.169.254, client 8.8.8.8
    # ISATAP interface ids (0000:5efe / 0200:5efe + IPv4) under any prefix, global ones included.
    ("https://[2600::5efe:7f00:1]/x", "loopback address, written as IPv6"),
    ("https://[2600::200:5efe:a9fe:a9fe]/x", "link-local"),
    ("https://[2002:808:808::5efe:a00:1]/x", "private address, written as IPv6"),  # inside a public 6to4
    ("https://[fe80::5efe:808:808]/x", "link-local address"),  # a public IPv4 under a refused prefix
    ("https://[::ffff:0:7f00:1%25eth0]/x", "loopback"),  # a zone id changes nothing
]


@pytest.mark.parametrize(("url", "reason"), REFUSED_URLS)
def test_refused_before_any_connection(url: str, reason: str) -> None:
    with pytest.raises(FetchRefused, match=reason) as caught:
        STRICT.check_url(url)
    assert "MODELPORT_FETCH_ALLOW" in caught.value.message


@pytest.mark.parametrize(
    "url",
    [
        "https://8.8.8.8/x",
        "https://[2606:4700:4700::1111]/x",
        "https://bucket.s3.amazonaws.com/k?X-Amz-Signature=s",
        "https://[::ffff:0:808:808]/x",  # forms that carry a public address stay reachable
        "https://[2600::5efe:808:808]/x",
        "https://[2606:4700:4700::1111]:8443/x",
    ],
)
def test_public_addresses_and_names_pass_the_static_check(url: str) -> None:
    STRICT.check_url(url)  # names are checked again after resolution, on every connection


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://8.8.8.8/x", "plain http://"),
        ("ftp://8.8.8.8/x", "unsupported scheme 'ftp'"),
        ("file:///etc/passwd", "no host"),
        ("gopher://8.8.8.8/x", "unsupported scheme"),
    ],
)
def test_schemes_other_than_https_are_refused(url: str, message: str) -> None:
    with pytest.raises(FetchRefused, match=message):
        STRICT.check_url(url)
    if url.startswith("http:"):
        FetchPolicy(allow_http=True).check_url(url)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("https://[::1/m.tar.gz", "host in brackets must be a whole IPv6 address"),
        ("https://[zz::]/m.tar.gz", "host in brackets must be a whole IPv6 address"),
        ("https://[::1]x/m.tar.gz", "host in brackets must be a whole IPv6 address"),
        ("https://[v1.fe]/m.tar.gz", "host in brackets must be a whole IPv6 address"),  # IPvFuture
        ("https://8.8.8.8]/m.tar.gz", "host in brackets must be a whole IPv6 address"),
        ("https://h.example:abc/m.tar.gz", "port must be a number"),
        ("https://h.example:99999/m.tar.gz", "port must be a number"),
    ],
)
def test_malformed_urls_are_refused_at_submission_and_at_fetch(url: str, message: str) -> None:
    with pytest.raises(FetchRefused, match=message):
        STRICT.check_url(url)
    settings = Settings(data_dir="/nonexistent", fetch_allow="h.example")
    with pytest.raises(InvalidSource, match=message) as submitted:
        parse_source(url, settings)
    assert submitted.value.status_code == 400 and submitted.value.code == "invalid_source"
    with pytest.raises(FetchRefused, match=message):  # a job's stored source fails its job, no crash
        parse_source(url, settings, submission=False)


def test_odd_spellings_read_as_the_resolver_reads_them() -> None:
    for spelling in ("127.1", "2130706433", "0x7f000001", "0177.0.0.1", "0x7f.0.0.1", "127.0.1"):
        assert str(parse_ip(spelling)) == socket.gethostbyname(spelling)  # glibc: numeric, no DNS
    assert parse_ip("example.com") is None and parse_ip("deadbeef.example") is None


def test_allowlist_admits_hosts_domains_and_networks() -> None:
    policy = FetchPolicy.parse(["minio.internal", ".corp.example", "10.1.0.0/16", "::1", " "])
    policy.check_url("https://minio.internal/x")
    policy.check_url("https://s3.eu.corp.example/x")
    policy.check_url("https://10.1.2.3/x")
    policy.check_url("https://[::1]/x")
    for url in ("https://10.2.0.1/x", "https://127.0.0.1/x"):
        with pytest.raises(FetchRefused):
            policy.check_url(url)
    assert not policy.host_allowed("corp.example.evil") and not policy.host_allowed("xcorp.example")


def test_one_private_answer_refuses_the_whole_name(monkeypatch: pytest.MonkeyPatch) -> None:
    # DNS itself is the one thing substituted: no resolver on this machine answers with a mix.
    answers = [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (ip, 443)) for ip in ("93.184.216.34", "10.0.0.7")]
    monkeypatch.setattr(socket, "getaddrinfo", lambda *a, **k: answers)
    with pytest.raises(FetchRefused, match=r"rebind.example \(10.0.0.7\): it is a private address"):
        STRICT.resolve("rebind.example", 443)


class _Redirector(http.server.BaseHTTPRequestHandler):
    target = ""

    def do_GET(self) -> None:
        if self.path == "/ok":
            body = b"fetched"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        self.send_response(302)
        self.send_header("Location", self.target)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def redirector() -> Iterator[tuple[int, type[_Redirector]]]:
    handler = type("Handler", (_Redirector,), {})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1], handler
    server.shutdown()
    server.server_close()


def test_guarded_client_connects_only_where_allowed(redirector: tuple[int, type[_Redirector]]) -> None:
    port, _ = redirector
    with guarded_client(FetchPolicy(allow_http=True)) as client, pytest.raises(FetchRefused, match="loopback"):
        client.get(f"http://127.0.0.1:{port}/ok")
    # A name is resolved by the guard, not by the socket: localhost is refused after resolution too.
    with guarded_client(FetchPolicy(allow_http=True)) as client, pytest.raises(FetchRefused, match="loopback"):
        client.get(f"http://localhost.:{port}/ok")
    allowed = FetchPolicy.parse(["127.0.0.1"], allow_http=True)
    with guarded_client(allowed) as client:
        assert client.get(f"http://127.0.0.1:{port}/ok").content == b"fetched"


@pytest.mark.parametrize(
    ("target", "reason"),
    [
        ("http://127.0.0.2:{port}/ok", "loopback"),  # a loopback address the operator did not allow
        ("http://169.254.169.254/latest/meta-data/", "link-local"),
        ("http://[::ffff:169.254.169.254]/latest/", "link-local"),
        ("http://2852039166/latest/", "link-local"),
        ("ftp://8.8.8.8/x", "unsupported scheme"),
        ("http://[::ffff:0:a9fe:a9fe]/latest/", "link-local"),
        ("https://[::1/x", "redirected to a malformed URL"),  # httpx cannot even parse it: still a refusal
        ("http://[zz::]:{port}/ok", "redirected to a malformed URL"),
    ],
)
def test_every_redirect_hop_is_checked(redirector: tuple[int, type[_Redirector]], target: str, reason: str) -> None:
    port, handler = redirector
    handler.target = target.format(port=port)
    allowed = FetchPolicy.parse(["127.0.0.1"], allow_http=True)
    with guarded_client(allowed, follow_redirects=True) as client, pytest.raises(FetchRefused, match=reason):
        client.get(f"http://127.0.0.1:{port}/go")
