"""The demo API: the routes and upstream services that the simulator's clients call, the
demo upstreams (``gatewise upstreams``) serve and the default gateway config routes.

It sits on the ground floor because three rooms share it (the simulator in ``telemetry/``,
the demo upstreams in ``gateway/``, the default ``gateway:`` settings here) and none of them
may import another for it. Route rows carry the simulator's popularity and response sizes.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ROUTES", "SERVICES", "SERVICE_NAMES", "Route", "route_id"]


@dataclass(frozen=True)
class Route:
    method: str
    template: str  # OTel http.route
    service: str
    weight: float  # Zipf-like popularity weight (before per-client preference)
    id_space: int = 0  # >0: the template has one {id} in 1..id_space
    query: str = ""  # "search" | "list" | ""
    resp_median: float = 2_000.0  # response bytes
    cacheable: bool = False
    sensitive: bool = False


# A plausible REST surface. Weights fall off roughly as 1/rank (Zipf, s≈1).
ROUTES: tuple[Route, ...] = (
    Route("GET", "/v1/products/{id}", "catalog", 1 / 1, 200_000, resp_median=3_500, cacheable=True),
    Route("GET", "/v1/search", "search", 1 / 2, query="search", resp_median=12_000),
    Route(
        "GET", "/v1/products", "catalog", 1 / 3, query="list", resp_median=25_000, cacheable=True
    ),
    Route("GET", "/v1/orders/{id}", "orders", 1 / 4, 5_000_000, resp_median=2_500),
    Route("GET", "/v1/orders", "orders", 1 / 5, query="list", resp_median=18_000),
    Route("POST", "/v1/auth/token", "auth", 1 / 6, resp_median=900),
    Route("GET", "/v1/inventory/{id}", "catalog", 1 / 7, 200_000, resp_median=600, cacheable=True),
    Route("POST", "/v1/orders", "orders", 1 / 8, resp_median=1_800),
    Route("GET", "/v1/users/{id}", "accounts", 1 / 9, 2_000_000, resp_median=1_500),
    Route("POST", "/v1/auth/login", "auth", 1 / 10, resp_median=700, sensitive=True),
    Route("PUT", "/v1/orders/{id}", "orders", 1 / 11, 5_000_000, resp_median=1_800),
    Route("POST", "/v1/payments", "payments", 1 / 12, resp_median=1_200),
    Route("GET", "/v1/reports/export", "reports", 1 / 14, resp_median=2_500_000, sensitive=True),
    Route("DELETE", "/v1/orders/{id}", "orders", 1 / 16, 5_000_000, resp_median=200),
    Route("POST", "/v1/auth/password-reset", "auth", 1 / 30, resp_median=400, sensitive=True),
    Route("GET", "/v1/health", "edge", 1 / 20, resp_median=60),
    # appears only with the drift knob ``new_route``
    Route("GET", "/v2/recommendations/{id}", "search", 0.0, 2_000_000, resp_median=4_000),
)


def route_id(method: str, template: str) -> int:
    for i, r in enumerate(ROUTES):
        if r.method == method and r.template == template:
            return i
    raise KeyError(f"{method} {template}")


# service -> (median upstream latency ms, lognormal sigma)
SERVICES: dict[str, tuple[float, float]] = {
    "catalog": (22.0, 0.45),
    "search": (85.0, 0.55),
    "orders": (55.0, 0.5),
    "auth": (45.0, 0.35),
    "accounts": (30.0, 0.4),
    "payments": (160.0, 0.5),
    "reports": (950.0, 0.7),
    "edge": (1.0, 0.3),
}
SERVICE_NAMES = tuple(SERVICES)
