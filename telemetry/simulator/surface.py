"""The simulated API: routes, upstream services, user agents, address space."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["REGIONS", "ROUTES", "SERVICES", "USER_AGENTS", "Route", "region_blocks"]


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

# region -> (share of clients, UTC offset hours)
REGIONS: dict[str, tuple[float, float]] = {
    "us-east": (0.25, -5),
    "us-west": (0.15, -8),
    "eu-west": (0.18, 0),
    "eu-central": (0.12, 1),
    "ap-south": (0.12, 5.5),
    "ap-east": (0.12, 8),
    "sa-east": (0.06, -3),
}
REGION_NAMES = tuple(REGIONS)

DEVICE_TYPES = ("server", "browser", "mobile", "iot")

USER_AGENTS: dict[str, tuple[str, ...]] = {
    "server": (
        "python-requests/2.32.3",
        "Go-http-client/1.1",
        "curl/8.5.0",
        "Java/17.0.9",
        "node-fetch/1.0 (+https://github.com/bitinn/node-fetch)",
        "axios/1.7.2",
        "okhttp/4.12.0",
    ),
    "browser": (
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/130.0.0.0 Safari/537.36",
        "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.6 Safari/605.1.15",
        "Mozilla/5.0 (X11; Linux x86_64; rv:132.0) Gecko/20100101 Firefox/132.0",
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:132.0) Gecko/20100101 Firefox/132.0",
        "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/130.0.0.0 Safari/537.36 Edg/130.0.0.0",
    ),
    "mobile": (
        "ShopApp/5.4.1 (iPhone; iOS 18.1; Scale/3.00)",
        "ShopApp/5.4.0 (Android 14; Pixel 8)",
        "okhttp/4.12.0",
        "Mozilla/5.0 (iPhone; CPU iPhone OS 18_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/18.1 Mobile/15E148 Safari/604.1",
        "Dalvik/2.1.0 (Linux; U; Android 14; SM-S918B Build/UP1A.231005.007)",
    ),
    "iot": (
        "ESP32HTTPClient/2.0",
        "esp-idf/5.1 esp32",
        "Zephyr-HTTP/3.5",
        "Mbed-TLS-client/1.0",
    ),
}


def region_blocks(region_idx: np.ndarray, kind: np.ndarray) -> np.ndarray:
    """Base IPv4 address (uint32) of a /16 for (region, kind).

    kind 0 = datacenter, 1 = residential ISP, 2 = mobile carrier. Distinct
    blocks per region make address geography meaningful to features.
    """
    first_octets = np.array([23, 34, 51, 62, 103, 110, 177], dtype=np.uint32)
    return (first_octets[region_idx] << 24) | ((kind.astype(np.uint32) * 40 + 16) << 16)
