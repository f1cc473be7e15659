"""Requests to URLs our users choose (subscriptions, rule webhooks), guarded against server-side
request forgery.

Whoever can create a subscription or edit rules should still not be able to make the hub reach
its own admin API, a cloud metadata service (169.254.169.254) or the office LAN. So:

- only `http` and `https`, and no credentials in the URL;
- the host is resolved *here*, and every address it resolves to must be public (globally
  routable, not loopback, private, link-local, multicast, reserved or shared address space);
  one internal address refuses the whole name;
- the connection then goes to an address that was checked: the sender's HTTP client resolves
  through `GuardedResolver`, which answers only checked addresses, so a DNS answer that changes
  between a check and a connection (DNS rebinding) cannot redirect it. The `Host` header, the
  TLS server name (SNI) and the certificate check keep the name;
- redirects are never followed (a 3xx is an answer, not a hop), and proxies from the
  environment are ignored, so nothing routes around the check.

`allow` lists networks (CIDR) or host names that are exempt, for a receiver on the LAN or a test
server on 127.0.0.1 (`[webhooks] allow_hosts`); it is empty by default.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import re
import socket
from collections.abc import Iterable
from urllib.parse import urlsplit

from aiohttp.abc import AbstractResolver, ResolveResult

from hub.exceptions import HubError

logger = logging.getLogger("callhub.egress")

__all__ = ["EgressPolicy", "EgressRefused", "GuardedResolver", "IPAddress", "IPNetwork", "is_public", "embedded_ipv4"]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class EgressRefused(HubError):
    """The URL may not be called: wrong scheme, an internal address, or a name that does not resolve."""

    status_code = 422
    code = "url_refused"


#: IPv6 ranges refused whatever Python's tables say: local-use NAT64 (RFC 8215), whose IPv4
#: address sits at no fixed place; deprecated site-local (RFC 3879); documentation.
_NEVER_PUBLIC_V6 = tuple(ipaddress.IPv6Network(n) for n in ("64:ff9b:1::/48", "fec0::/10", "2001:db8::/32"))
#: IETF protocol assignments (192.0.0.0/24): anycast services, never a customer's receiver,
#: though Python counts some of them global.
_NEVER_PUBLIC_V4 = (ipaddress.IPv4Network("192.0.0.0/24"),)
#: IPv4-translated addresses (RFC 2765, SIIT): the IPv4 address is the last 32 bits.
_TRANSLATED = ipaddress.IPv6Network("::ffff:0:0:0/96")
#: Well-known NAT64 (RFC 6052): the IPv4 address is the last 32 bits.
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


def embedded_ipv4(address: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """The IPv4 addresses an IPv6 address carries, in each form that routes to them: IPv4-mapped
    (`::ffff:a.b.c.d`), IPv4-compatible (`::a.b.c.d`, deprecated), IPv4-translated
    (`::ffff:0:a.b.c.d`), 6to4 (`2002:AABB:CCDD::/48`), Teredo (server and client) and well-known
    NAT64 (`64:ff9b::a.b.c.d`)."""
    found: list[ipaddress.IPv4Address] = []
    if address.ipv4_mapped is not None:
        found.append(address.ipv4_mapped)
    value = int(address)
    if 1 < value < 2**32:  # ::a.b.c.d (`::` and `::1` are unspecified and loopback as they are)
        found.append(ipaddress.IPv4Address(value))
    if address.sixtofour is not None:
        found.append(address.sixtofour)
    if address.teredo is not None:
        found.extend(address.teredo)
    if address in _NAT64 or address in _TRANSLATED:
        found.append(ipaddress.IPv4Address(value & 0xFFFFFFFF))
    return found


def is_public(address: IPAddress) -> bool:
    """Globally routable unicast: what a customer's webhook receiver on the internet has.

    An IPv6 address that carries an IPv4 address is as public as every IPv4 address it carries:
    `::ffff:127.0.0.1`, `::127.0.0.1`, `2002:7f00:1::` and `64:ff9b::7f00:1` all reach loopback.
    """
    if isinstance(address, ipaddress.IPv6Address):
        if any(address in network for network in _NEVER_PUBLIC_V6):
            return False
        embedded = embedded_ipv4(address)
        if embedded:
            return all(is_public(v4) for v4 in embedded)
    elif any(address in network for network in _NEVER_PUBLIC_V4):
        return False
    return address.is_global and not address.is_multicast


#: A host name made only of numeric or hex labels: never a name, and not a canonical address either.
_NUMERIC_HOST = re.compile(r"(?:(?:0x[0-9a-f]*|[0-9]+)\.?)+")


class EgressPolicy:
    """Which URLs the hub may call on its users' behalf (see the module's docstring)."""

    def __init__(self, allow: Iterable[str] = ()) -> None:
        self._networks: list[IPNetwork] = []
        self._hosts: set[str] = set()
        for entry in allow:
            try:
                self._networks.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                self._hosts.add(entry.lower().rstrip("."))

    def _allowed(self, host: str, address: IPAddress) -> bool:
        if host in self._hosts or any(address in network for network in self._networks):
            return True
        return is_public(address)

    def check_url(self, url: str) -> tuple[str, str, int]:
        """Scheme, host and port of `url`, or `EgressRefused` if it is not an http(s) URL with a host."""
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError as exc:
            raise EgressRefused(f"not a valid URL: {exc}") from None
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise EgressRefused(f"only http:// and https:// URLs with a host can be called, not {url[:200]!r}")
        if parts.username or parts.password:
            raise EgressRefused("credentials in the URL are not allowed; use headers")
        host = parts.hostname.lower().rstrip(".")
        try:
            ipaddress.ip_address(host)
        except ValueError:
            if _NUMERIC_HOST.fullmatch(host):  # 127.1, 2130706433, 0x7f.1: resolvers read these as addresses
                raise EgressRefused(f"{host!r} is a numeric host name that is not a plain IP address; "
                                    "write the address in full") from None
            try:
                host.encode("idna")
            except UnicodeError:
                raise EgressRefused(f"{host[:80]!r} is not a valid host name") from None
        return parts.scheme, host, port or (443 if parts.scheme == "https" else 80)

    def check_literal(self, host: str) -> None:
        """For a host that is an IP address: refuse it unless allowed (no DNS involved)."""
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return
        if not self._allowed(host, address):
            raise EgressRefused(f"{host} is an internal address; list it in [webhooks] allow_hosts to call it")

    async def check(self, url: str) -> None:
        """Whether `url` may be called now: its shape, and every address its host resolves to."""
        _, host, port = self.check_url(url)
        await self.addresses(host, port)

    async def addresses(self, host: str, port: int) -> list[IPAddress]:
        """Resolve `host` now and check every address; all of them, or `EgressRefused`."""
        host = host.lower().rstrip(".")
        addresses = await self._resolve(host, port)
        refused = [a for a in addresses if not self._allowed(host, a)]
        if refused:
            # The address goes to the log only: the message reaches subscribers (action.failed), and
            # what an internal name resolves to is the operator's business, not theirs.
            logger.warning("refused to call %s: it resolves to the internal address %s", host, refused[0])
            raise EgressRefused(f"{host} resolves to an internal address; "
                                "list it in [webhooks] allow_hosts to call it")
        return addresses

    @staticmethod
    async def _resolve(host: str, port: int) -> list[IPAddress]:
        try:
            return [ipaddress.ip_address(host)]
        except ValueError:
            pass
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError as exc:
            raise EgressRefused(f"cannot resolve {host}: {exc.strerror or exc}") from None
        except UnicodeError:  # an empty label (a..b), a label past 63 characters
            raise EgressRefused(f"{host[:80]!r} is not a valid host name") from None
        # A scoped IPv6 address (fe80::1%eth0) is checked without its zone; it is link-local either way.
        addresses = list(dict.fromkeys(ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos))
        if not addresses:
            raise EgressRefused(f"{host} resolves to no address")
        return addresses


class GuardedResolver(AbstractResolver):
    """aiohttp's resolver for the sender: it answers only addresses the policy checked, so the
    connection goes where the check said it may, whatever DNS says later (aiohttp caches the
    answer for its `ttl_dns_cache`). aiohttp connects to IP literals without asking a resolver:
    the sender checks those itself (`EgressPolicy.check_literal`)."""

    def __init__(self, policy: EgressPolicy) -> None:
        self.policy = policy

    async def resolve(self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
                      ) -> list[ResolveResult]:
        return [ResolveResult(hostname=host, host=str(a), port=port,
                              family=socket.AF_INET6 if a.version == 6 else socket.AF_INET,
                              proto=0, flags=socket.AI_NUMERICHOST)
                for a in await self.policy.addresses(host, port)]

    async def close(self) -> None:
        pass
