"""The demo's live gateway act with ``--dataplane nginx``: the demo's roles through NGINX
enforcing the policy, and NGINX's access log in the telemetry store afterwards."""

from __future__ import annotations

import pytest
from rich.console import Console

from tests.conftest import free_port

pytestmark = pytest.mark.integration


def test_nginx_dataplane_drive(settings):
    from tests.gateway.test_dataplane_parity import _require_dataplane

    _require_dataplane()  # skips on a machine without it; fails under CI
    from demo.gateway_act import _consumers, _nginx_drive
    from telemetry.store import TelemetryStore

    up_port = free_port()
    g = settings.gateway
    services = {
        n: sv.model_copy(update={"instances": [f"http://127.0.0.1:{up_port}"]})
        for n, sv in g.services.items()
    }
    # a free tier of 20/min: the scraper (40 requests/s nominal) crosses it even on a loaded
    # CI machine that manages a third of that rate; steady (2/s) stays under it
    live = settings.model_copy(
        update={
            "gateway": g.model_copy(update={"services": services}),
            "static_limits_per_minute": {**settings.static_limits_per_minute, "free": 20},
        }
    )
    keys = _consumers(live, {})
    counts, status = _nginx_drive(
        Console(record=True), live, free_port(), up_port, keys, 2.0, {}, None
    )
    by = {(who.split(" (")[0], code): n for (who, code), n in counts.items()}
    assert by.get(("steady", 200), 0) > 0
    assert by.get(("scraper", 429), 0) > 0  # 40 requests/s against 20/min
    assert by.get(("former", 401), 0) > 0 and by.get(("anonymous probe", 401), 0) > 0
    ev = TelemetryStore(settings.telemetry_dir).read().to_pandas()
    assert len(ev) == sum(counts.values()) == status["telemetry"]["written"]
    scraper = ev[ev["client_id"] == keys["scraper"][0]]
    assert set(scraper["ratelimit_decision"]) == {"allow", "throttle"}
    assert (ev["auth_result"] == "revoked_key").sum() == by[("former", 401)]
    assert status["decisions"]["throttle"] == (scraper["ratelimit_decision"] == "throttle").sum()
