"""The simulated clients' world: regions, devices, user agents, address space (the API
they call, routes and upstream services, is ``config/demo_api.py``)."""

from __future__ import annotations

import numpy as np

__all__ = ["DEVICE_TYPES", "REGIONS", "REGION_NAMES", "USER_AGENTS", "region_blocks"]


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
