"""The SSRF guard: every server-side fetch of a user-given location goes through here.

Servers that fetch URLs for their users have been turned against the networks they live in
(TorchServe's model registration, cloud metadata at 169.254.169.254). The rules:

- Only ``https`` (``http`` when the operator sets ``MODELPORT_FETCH_ALLOW_HTTP``), on every hop:
  a redirect is a new request and is checked like the first.
- The host is resolved once per connection, *every* address it resolves to must be public, and the
  socket connects to that checked address (pinned), so a DNS answer that changes between the check
  and the connect (rebinding) cannot reach anything else. TLS still verifies the host name.
- Refused: loopback, private, shared (CGNAT), link-local, unique-local, site-local, multicast,
  unspecified, reserved and documentation ranges, and the IPv6 forms that carry an IPv4 address
  (IPv4-mapped ``::ffff:a.b.c.d``, IPv4-translated ``::ffff:0:a.b.c.d``, IPv4-compatible, NAT64,
  6to4, Teredo's client and server, an ISATAP interface id ``…:0:5efe:a.b.c.d``) when a carried
  address is refused. Python's ``is_global`` calls several of these global, so they are decoded
  here rather than trusted to it. Odd spellings (``127.1``, ``2130706433``, ``0x7f000001``,
  ``0177.0.0.1``) are what the resolver reads them as, so they are caught by the same check.
- A URL that cannot be read as an HTTP client reads it (a broken IPv6 literal such as ``[::1`` or
  ``[zz::]``, anything after ``]`` but a port, a port that is not a number) is refused as malformed,
  never handed to a library to fail in its own way.
- ``MODELPORT_FETCH_ALLOW`` (hosts, ``.suffix`` domains, addresses and CIDRs) lets an operator reach a
  private S3-compatible store or a local hub on purpose.
- Proxies from the environment are ignored: through a proxy the checked address would be the proxy's.

It also keeps decompression where we ask for it. httpx decodes ``Content-Encoding`` by itself (a 1 MB
gzip body becomes 1 GiB in memory), so every request asks for ``identity`` and a response that is
encoded anyway is refused before its body is read, unless the caller reads raw bytes (``read_raw``:
``http.py`` hands an archive's stored bytes to the archive reader, which inflates under its own
limits). Redirect bodies, which httpx reads itself, must be unencoded and small.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from types import ModuleType
from typing import Any
from urllib.parse import ParseResult, urlparse

from modelport.errors import FetchRefused, SourceUnavailable
from modelport.settings import Settings

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_N = ipaddress.ip_network
# Checked in order; the first match names the reason. Anything else not globally routable is
# refused as "reserved" by the catch-all in ``refusal``.
_REFUSED: list[tuple[IPNetwork, str]] = [
    (_N("0.0.0.0/8"), "an unspecified address"),
    (_N("127.0.0.0/8"), "a loopback address"),
    (_N("169.254.0.0/16"), "a link-local address (where cloud metadata services live)"),
    (_N("10.0.0.0/8"), "a private address"),
    (_N("172.16.0.0/12"), "a private address"),
    (_N("192.168.0.0/16"), "a private address"),
    (_N("100.64.0.0/10"), "a shared (carrier-grade NAT) address"),
    (_N("224.0.0.0/4"), "a multicast address"),
    (_N("240.0.0.0/4"), "a reserved address"),
    (_N("::/128"), "an unspecified address"),
    (_N("::1/128"), "a loopback address"),
    (_N("fe80::/10"), "a link-local address"),
    (_N("fec0::/10"), "a site-local address"),
    (_N("fc00::/7"), "a unique-local (private) address"),
    (_N("ff00::/8"), "a multicast address"),
    (_N("64:ff9b:1::/48"), "a local-use NAT64 address"),
]
_NAT64 = _N("64:ff9b::/96")  # RFC 6052 well-known prefix
_IPV4_COMPATIBLE = _N("::/96")  # RFC 4291, deprecated
_IPV4_TRANSLATED = _N("::ffff:0:0:0/96")  # RFC 2765 (SIIT): is_global is True for all of it
_ISATAP_ID, _ISATAP_ID_MASK = 0x00005EFE, 0xFCFFFFFF  # RFC 5214: 0000:5efe or 0200:5efe, then the IPv4
_BRACKETED_HOST = re.compile(r"\[([^\[\]]*)\](?::[0-9]*)?")  # [v6 literal], then a port at most


def parse_ip(host: str) -> IPAddress | None:
    """The address a host literal stands for, in any spelling a resolver accepts; None for names."""
    host = host.strip("[]")
    try:
        return ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        pass
    # inet_aton reads the historic forms: 127.1, 2130706433, 0x7f000001, 0177.0.0.1.
    if host and all(c in "0123456789abcdefxABCDEFX." for c in host) and host[0].isdigit():
        try:
            return ipaddress.IPv4Address(socket.inet_aton(host))
        except OSError:
            return None
    return None


def translated_ipv4(ip: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """IPv4 addresses carried under a prefix that only translates to IPv4 (mapped, translated,
    compatible, NAT64, 6to4, Teredo's client and server): where the packet really goes."""
    low32 = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    if ip.ipv4_mapped is not None:
        return [ip.ipv4_mapped]
    if ip in _IPV4_TRANSLATED or ip in _NAT64 or (ip in _IPV4_COMPATIBLE and int(ip) > 1):
        return [low32]
    if ip.sixtofour is not None:
        return [ip.sixtofour]
    if ip.teredo is not None:
        return [ip.teredo[1], ip.teredo[0]]  # the client, then the server
    return []


def isatap_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address in an ISATAP interface id, under any prefix (which is checked on its own)."""
    if (int(ip) >> 32) & _ISATAP_ID_MASK == _ISATAP_ID:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def refusal(ip: IPAddress) -> str | None:
    """Why ``ip`` may not be fetched from, or None when it is a public address."""
    if isinstance(ip, ipaddress.IPv6Address):
        translated = translated_ipv4(ip)
        isatap = isatap_ipv4(ip)
        for carried in [*translated, *([isatap] if isatap else [])]:
            if inner := refusal(carried):
                return f"{inner}, written as IPv6"
        if translated:  # the prefix reaches nothing itself: the carried address decides
            return None
    for network, reason in _REFUSED:
        if ip.version == network.version and ip in network:
            return reason
    if not ip.is_global:
        return "a reserved address (not globally routable)"
    return None


def parse_url(url: str) -> ParseResult:
    """``url`` split as an HTTP client would split it, or ``FetchRefused`` saying what is malformed."""
    try:
        parts = urlparse(url)
        _ = parts.port  # raises for a port that is not a number from 0 to 65535
    except ValueError as e:
        if "port" in str(e).lower():
            raise FetchRefused("the URL is malformed: its port must be a number from 1 to 65535") from None
        raise FetchRefused(_MALFORMED_IPV6) from None
    authority = parts.netloc.rpartition("@")[2]
    if "[" in authority or "]" in authority:
        literal = _BRACKETED_HOST.fullmatch(authority)
        try:
            ipaddress.IPv6Address((literal[1] if literal else "").split("%", 1)[0])
        except ValueError:
            raise FetchRefused(_MALFORMED_IPV6) from None
    return parts


_MALFORMED_IPV6 = (
    "the URL is malformed: a host in brackets must be a whole IPv6 address, optionally followed by :port, "
    "as in https://[2001:db8::1]:443/"
)


@dataclass(frozen=True)
class FetchPolicy:
    allow_http: bool = False
    hosts: frozenset[str] = frozenset()  # exact names, or ".example.com" for a domain and its subdomains
    networks: tuple[IPNetwork, ...] = ()

    @classmethod
    def from_settings(cls, settings: Settings) -> FetchPolicy:
        return cls.parse(settings.fetch_allow.split(","), allow_http=settings.fetch_allow_http)

    @classmethod
    def parse(cls, allow: Iterable[str], *, allow_http: bool = False) -> FetchPolicy:
        hosts, networks = set(), []
        for raw in allow:
            entry = raw.strip().lower()
            if not entry:
                continue
            try:
                networks.append(ipaddress.ip_network(entry.strip("[]"), strict=False))
            except ValueError:
                hosts.add(entry.removeprefix("*"))
        return cls(allow_http, frozenset(hosts), tuple(networks))

    def host_allowed(self, host: str) -> bool:
        host = host.lower().rstrip(".")
        return host in self.hosts or any(h.startswith(".") and host.endswith(h) for h in self.hosts)

    def address_refusal(self, host: str, ip: IPAddress) -> str | None:
        if self.host_allowed(host) or any(ip.version == n.version and ip in n for n in self.networks):
            return None
        reason = refusal(ip)
        if reason is None:
            return None
        shown = host if host == str(ip) else f"{host} ({ip})"
        return (
            f"refused to fetch from {shown}: it is {reason}. Sources must be public https URLs; an operator "
            "can allow a private store with MODELPORT_FETCH_ALLOW"
        )

    def check_scheme(self, scheme: str, where: str) -> None:
        if scheme == "https" or (scheme == "http" and self.allow_http):
            return
        if scheme == "http":
            raise FetchRefused(
                f"refused to fetch {where} over plain http://; use https://, or allow http for an on-prem store "
                "with MODELPORT_FETCH_ALLOW_HTTP=true"
            )
        raise FetchRefused(f"refused to fetch {where}: unsupported scheme {scheme!r}")

    def check_url(self, url: str) -> None:
        """What can be decided without DNS: the URL's form, the scheme, literal addresses in any spelling,
        localhost."""
        parts = parse_url(url)
        host = (parts.hostname or "").rstrip(".")
        if not host:
            raise FetchRefused("the URL has no host")
        self.check_scheme(parts.scheme, host)
        ip = parse_ip(host)
        if ip is None and (host == "localhost" or host.endswith(".localhost")):
            ip = ipaddress.IPv4Address("127.0.0.1")  # RFC 6761: always loopback
        if ip is not None and (reason := self.address_refusal(host, ip)):
            raise FetchRefused(reason)

    def resolve(self, host: str, port: int) -> list[str]:
        """Resolve once and check every answer; the addresses to connect to, in resolver order."""
        try:
            answers = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except socket.gaierror:
            raise FetchRefused(f"could not resolve host {host}") from None
        addresses: list[str] = []
        for *_, sockaddr in answers:
            ip = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])
            if reason := self.address_refusal(host, ip):
                raise FetchRefused(reason)  # one bad answer refuses the host: no mixing public and private
            if str(sockaddr[0]) not in addresses:
                addresses.append(str(sockaddr[0]))
        if not addresses:
            raise FetchRefused(f"could not resolve host {host}")
        return addresses


class _PinnedBackend:
    """An httpcore network backend that connects only to checked addresses (see the module doc)."""

    def __init__(self, inner: Any, policy: FetchPolicy, connect_error: type[Exception]) -> None:
        self.inner, self.policy, self.connect_error = inner, policy, connect_error

    def connect_tcp(self, host: str, port: int, timeout: float | None = None, **kwargs: Any) -> Any:
        last: Exception | None = None
        for address in self.policy.resolve(host, port):
            try:
                return self.inner.connect_tcp(address, port, timeout, **kwargs)
            except self.connect_error as e:  # try the next checked address, as create_connection would
                last = e
        assert last is not None
        raise last

    def __getattr__(self, name: str) -> Any:  # sleep, connect_unix_socket…
        return getattr(self.inner, name)


MAX_REDIRECT_BODY = 64 * 2**10


def content_encoding(response: Any) -> str | None:
    """The Content-Encoding a response declares, or None for identity (none at all)."""
    value = str(response.headers.get("content-encoding", "")).strip().lower()
    return None if value in ("", "identity") else value


def refuse_encoded(response: Any) -> None:
    """Refuse a response encoded although we asked for identity, before a byte of it is decoded."""
    if (encoding := content_encoding(response)) is not None:
        raise SourceUnavailable(
            f"{response.request.url.host} answered with Content-Encoding: {encoding} although only identity was "
            "asked for; encoded responses are refused (a small compressed body can expand without bound)"
        )


def _response_check(http: ModuleType, read_raw: bool) -> Any:
    class CappedBody(http.SyncByteStream):  # type: ignore[name-defined,misc]
        def __init__(self, inner: Any, host: str) -> None:
            self.inner, self.host = inner, host

        def __iter__(self) -> Any:
            seen = 0
            for chunk in self.inner:
                seen += len(chunk)
                if seen > MAX_REDIRECT_BODY:
                    raise SourceUnavailable(f"{self.host} sent a redirect with a body over {MAX_REDIRECT_BODY} bytes")
                yield chunk

        def close(self) -> None:
            self.inner.close()

    def check(response: Any) -> None:
        if response.has_redirect_location:  # httpx reads a redirect's body itself before following it
            refuse_encoded(response)
            response.stream = CappedBody(response.stream, response.request.url.host)
        elif not read_raw:
            refuse_encoded(response)

    return check


TIMEOUTS = ("connect", "read", "write", "pool")


def _capped_timeouts(ceiling_s: float) -> Any:
    """A request hook that bounds each of a request's timeouts by ``ceiling_s``, whatever it asked for:
    huggingface_hub passes ``timeout=None`` (wait forever) on some calls, which overrides a client's default."""

    def cap(request: Any) -> None:
        asked = request.extensions.get("timeout") or {}
        request.extensions["timeout"] = {
            k: ceiling_s if asked.get(k) is None else min(asked[k], ceiling_s) for k in TIMEOUTS
        }

    return cap


def guarded_client(
    policy: FetchPolicy,
    *,
    flavor: ModuleType | None = None,
    read_raw: bool = False,
    max_timeout_s: float | None = None,
    **kwargs: Any,
) -> Any:
    """An ``httpx.Client`` (or ``httpx2.Client`` for huggingface_hub) that obeys ``policy`` on every hop.

    Requests ask for ``Accept-Encoding: identity``; encoded responses are refused unless ``read_raw``
    (the caller reads bodies with ``iter_raw`` and decodes nothing). ``max_timeout_s``: no request waits
    longer than this to connect or between two reads, even one that asked for no timeout. ``kwargs``
    go to the client; extra hooks are kept, the guard's own run first.
    """
    import httpx

    http = flavor or httpx
    core = __import__("httpcore2" if http.__name__ == "httpx2" else "httpcore")
    transport = http.HTTPTransport()
    pool = transport._pool
    pool._network_backend = _PinnedBackend(pool._network_backend, policy, core.ConnectError)

    def check_hop(request: Any) -> None:
        policy.check_url(str(request.url))

    def check_location(response: Any) -> None:
        # httpx parses a redirect's Location before the next hop's check_hop, and fails on a malformed
        # one with an error of its own (retried as a network fault): refuse it here, as the guard would.
        if response.has_redirect_location:
            try:
                response.request.url.join(response.headers["location"])
            except http.InvalidURL:
                raise FetchRefused(f"{response.request.url.host} redirected to a malformed URL") from None

    hooks = dict(kwargs.pop("event_hooks", {}) or {})
    capped = [_capped_timeouts(max_timeout_s)] if max_timeout_s is not None else []
    hooks["request"] = [check_hop, *capped, *hooks.get("request", [])]
    hooks["response"] = [check_location, _response_check(http, read_raw), *hooks.get("response", [])]
    headers = {**(kwargs.pop("headers", None) or {}), "Accept-Encoding": "identity"}
    client: Any = http.Client(transport=transport, trust_env=False, event_hooks=hooks, headers=headers, **kwargs)
    return client
