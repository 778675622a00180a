"""Client addresses: forwarded headers believed from trusted proxies only."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from gateway.addresses import ClientAddress

TRUSTED = ["127.0.0.1/32", "10.0.0.0/8", "2001:db8:ffff::/48"]


@pytest.mark.parametrize(
    ("peer", "headers", "client"),
    [
        # a trusted proxy says who the client is
        ("10.0.0.5", {"x-forwarded-for": "198.51.100.7"}, "198.51.100.7"),
        # a chain: the first hop from the right that is not a trusted proxy
        ("10.0.0.5", {"x-forwarded-for": "203.0.113.9, 198.51.100.7, 10.1.2.3"}, "198.51.100.7"),
        # the client wrote its own header before our proxy appended the real address
        ("127.0.0.1", {"x-forwarded-for": "1.2.3.4, 198.51.100.7"}, "198.51.100.7"),
        # from an untrusted peer the headers are ignored: anyone can write them
        ("203.0.113.50", {"x-forwarded-for": "10.0.0.1"}, "203.0.113.50"),
        ("203.0.113.50", {"forwarded": "for=198.51.100.7"}, "203.0.113.50"),
        # RFC 7239 Forwarded, IPv6 in brackets with a port, quoted
        ("10.0.0.5", {"forwarded": 'for="[2001:db8::7]:4711";proto=https'}, "2001:db8::7"),
        ("10.0.0.5", {"forwarded": "for=192.0.2.60;proto=http, for=10.9.9.9"}, "192.0.2.60"),
        # Forwarded wins over X-Forwarded-For
        (
            "10.0.0.5",
            {"forwarded": "for=192.0.2.60", "x-forwarded-for": "198.51.100.7"},
            "192.0.2.60",
        ),
        # a port on an IPv4 hop; garbage ends the walk at the last good hop
        ("10.0.0.5", {"x-forwarded-for": "198.51.100.7:5555"}, "198.51.100.7"),
        ("10.0.0.5", {"x-forwarded-for": "not-an-ip"}, "10.0.0.5"),
        ("10.0.0.5", {"x-forwarded-for": "garbage, 10.3.3.3"}, "10.3.3.3"),
        # every hop trusted: the farthest one is the client
        ("10.0.0.5", {"x-forwarded-for": "10.7.7.7"}, "10.7.7.7"),
        ("10.0.0.5", {}, "10.0.0.5"),
    ],
)
def test_resolve(peer, headers, client):
    assert ClientAddress(TRUSTED).resolve(peer, headers) == client


def test_no_trusted_proxies_means_the_peer_always():
    assert ClientAddress([]).resolve("127.0.0.1", {"x-forwarded-for": "1.2.3.4"}) == "127.0.0.1"


def test_the_gateway_records_the_resolved_address(gw_settings):
    """Through the real ASGI app: a spoofed header from an untrusted peer is not believed; the
    same header from the trusted proxy is."""
    from gateway.app import create_app
    from telemetry.store import TelemetryStore
    from tests.gateway.conftest import key_headers

    s, keys = gw_settings
    s = s.model_copy(
        update={"gateway": s.gateway.model_copy(update={"trusted_proxies": ["10.0.0.0/8"]})}
    )
    app = create_app(s)

    async def call(peer: str, xff: str) -> None:
        t = httpx.ASGITransport(app=app, client=(peer, 40000))
        async with httpx.AsyncClient(transport=t, base_url="http://gw") as c:
            await c.get("/v1/health", headers={"x-forwarded-for": xff})
            await c.get(
                "/v1/orders/1", headers={**key_headers(keys["alice"]), "x-forwarded-for": xff}
            )

    async def main() -> None:
        async with app.router.lifespan_context(app):
            await call("203.0.113.50", "10.0.0.1")  # spoof from the internet
            await call("10.0.0.5", "198.51.100.7")  # our load balancer

    asyncio.run(main())
    ev = TelemetryStore(s.telemetry_dir).read().to_pandas()
    assert sorted(set(ev["client_address"])) == ["198.51.100.7", "203.0.113.50"]
    anon = ev[ev["http_route"] == "/v1/health"]
    assert sorted(anon["client_id"]) == ["198.51.100.7", "203.0.113.50"]


def test_invalid_trusted_proxies_name_the_entry():
    from pydantic import ValidationError

    from config.gateway import GatewaySettings

    with pytest.raises(ValidationError, match=r"trusted_proxies\[1\]: 'nope'"):
        GatewaySettings(trusted_proxies=["10.0.0.0/8", "nope"])
