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
  (IPv4-mapped, IPv4-compatible, NAT64, 6to4, Teredo) when the carried address is refused. Odd
  spellings (``127.1``, ``2130706433``, ``0x7f000001``, ``0177.0.0.1``) are what the resolver reads
  them as, so they are caught by the same check.
- ``MODELPORT_FETCH_ALLOW`` (hosts, ``.suffix`` domains, addresses and CIDRs) lets an operator reach a
  private S3-compatible store or a local hub on purpose.
- Proxies from the environment are ignored: through a proxy the checked address would be the proxy's.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from types import ModuleType
from typing import Any
from urllib.parse import urlparse

from modelport.errors import FetchRefused
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
_NAT64 = _N("64:ff9b::/96")
_IPV4_COMPATIBLE = _N("::/96")


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


def embedded_ipv4(ip: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address carries (mapped, compatible, NAT64, 6to4, Teredo), if any."""
    if not isinstance(ip, ipaddress.IPv6Address):
        return None
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip.teredo is not None:
        return ip.teredo[1]  # the client; the server part is checked by the caller's second look
    if ip in _NAT64 or (ip in _IPV4_COMPATIBLE and int(ip) > 1):
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def refusal(ip: IPAddress) -> str | None:
    """Why ``ip`` may not be fetched from, or None when it is a public address."""
    carried = embedded_ipv4(ip)
    if carried is not None:
        inner = refusal(carried)
        if inner is None and isinstance(ip, ipaddress.IPv6Address) and ip.teredo is not None:
            inner = refusal(ip.teredo[0])
        return f"{inner}, written as IPv6" if inner else None
    for network, reason in _REFUSED:
        if ip.version == network.version and ip in network:
            return reason
    if not ip.is_global:
        return "a reserved address (not globally routable)"
    return None


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
        """What can be decided without DNS: the scheme, literal addresses in any spelling, localhost."""
        parts = urlparse(url)
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


def guarded_client(policy: FetchPolicy, *, flavor: ModuleType | None = None, **kwargs: Any) -> Any:
    """An ``httpx.Client`` (or ``httpx2.Client`` for huggingface_hub) that obeys ``policy`` on every hop.

    ``kwargs`` go to the client; extra request hooks are kept, the policy's own runs first.
    """
    import httpx

    http = flavor or httpx
    core = __import__("httpcore2" if http.__name__ == "httpx2" else "httpcore")
    transport = http.HTTPTransport()
    pool = transport._pool
    pool._network_backend = _PinnedBackend(pool._network_backend, policy, core.ConnectError)

    def check_hop(request: Any) -> None:
        policy.check_url(str(request.url))

    hooks = dict(kwargs.pop("event_hooks", {}) or {})
    hooks["request"] = [check_hop, *hooks.get("request", [])]
    client: Any = http.Client(transport=transport, trust_env=False, event_hooks=hooks, **kwargs)
    return client
