"""Who is the client: the peer, or what trusted proxies say it is.

An ``X-Forwarded-For`` or RFC 7239 ``Forwarded`` header is believed only when it arrives
from a trusted proxy (``gateway.trusted_proxies``, CIDRs): the chain is read from the right,
skipping every hop that is itself a trusted proxy, and the first one that is not is the
client. From any other peer the headers are ignored (anyone can write them) and the peer is
the client. A malformed entry ends the walk at the last good hop.

    ClientAddress(["10.0.0.0/8"]).resolve("10.0.0.5", headers)   # -> "198.51.100.7"
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping

__all__ = ["ClientAddress"]

_FOR = re.compile(r'for\s*=\s*("?)(\[[^\]]+\]|[^;,"\s]+)\1', re.IGNORECASE)


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    t = text.strip().strip('"')
    if t.startswith("["):  # [2001:db8::1]:443
        t = t[1 : t.find("]")] if "]" in t else t[1:]
    elif t.count(":") == 1:  # 198.51.100.7:443
        t = t.split(":", 1)[0]
    try:
        return ipaddress.ip_address(t)
    except ValueError:
        return None


class ClientAddress:
    def __init__(self, trusted: Iterable[str]) -> None:
        self.trusted = [ipaddress.ip_network(c, strict=False) for c in trusted]
        self._cache: dict[str, bool] = {}

    def is_trusted(self, addr: str) -> bool:
        hit = self._cache.get(addr)
        if hit is None:
            ip = _ip(addr)
            hit = ip is not None and any(ip in n for n in self.trusted)
            if len(self._cache) < 100_000:
                self._cache[addr] = hit
        return hit

    def chain(self, headers: Mapping[str, str]) -> list[str]:
        """The forwarded hops, nearest the client first (RFC 7239 ``Forwarded`` wins over
        ``X-Forwarded-For`` when both are present)."""
        fwd = headers.get("forwarded")
        if fwd:
            return [m.group(2) for m in _FOR.finditer(fwd)]
        xff = headers.get("x-forwarded-for")
        return [h.strip() for h in xff.split(",")] if xff else []

    def resolve(self, peer: str | None, headers: Mapping[str, str]) -> str | None:
        if peer is None or not self.trusted or not self.is_trusted(peer):
            return peer
        client = peer
        for hop in reversed(self.chain(headers)):
            ip = _ip(hop)
            if ip is None:
                break
            client = str(ip)
            if not self.is_trusted(client):
                break
        return client
