"""``gatewise schedule``: the flows on their schedules, on a real Prefect server.

Prefect schedules nothing on its ephemeral API, so this connects to the server named by
``PREFECT_API_URL`` when one answers, or starts ``prefect server start`` (SQLite under
``<data_dir>/prefect``) and points the process at it. Then it serves three deployments until
interrupted (``prefect.serve``), visible in the Prefect UI:

- ``build_features/hourly`` — telemetry → features → online store, every hour;
- ``monitor/every-15-min`` — drift and bias → the (gated) next policy, every 15 minutes;
- ``train/nightly`` — AutoML for the abuse target at 02:00 UTC (and whenever it is run from
  the UI or ``prefect deployment run train/nightly``, e.g. after monitoring asked for it).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

from config.settings import Settings

__all__ = ["deployments", "ensure_server", "serve_all"]


def deployments(settings: Settings, config_path: Path | None, target: str = "abuse") -> list[Any]:
    from flows.build_features import build_features_flow
    from flows.monitor import monitor_flow
    from flows.train import train_flow

    common = {
        "config_path": str(config_path.resolve()) if config_path else None,
        "data_dir": str(settings.data_dir.resolve()),
    }
    return [
        build_features_flow.to_deployment(
            name="hourly",
            interval=timedelta(hours=1),
            parameters=common,
            description="telemetry → window features → Feast online store",
            tags=["gatewise", "features"],
        ),
        monitor_flow.to_deployment(
            name="every-15-min",
            interval=timedelta(minutes=15),
            parameters={**common, "target": target, "retrain": True},
            description="drift and bias of the latest traffic → the gated next policy; "
            "drift starts train/nightly (at most every 6 h)",
            tags=["gatewise", "monitor", target],
        ),
        train_flow.to_deployment(
            name="nightly",
            cron="0 2 * * *",
            parameters={**common, "target": target},
            description=f"AutoML for {target!r}: a challenger with a gate verdict",
            tags=["gatewise", "train", target],
        ),
    ]


def _healthy(url: str) -> bool:
    import httpx

    try:
        return httpx.get(url.rstrip("/") + "/health", timeout=2.0).status_code == 200
    except httpx.HTTPError:
        return False


def ensure_server(
    settings: Settings, port: int = 4200
) -> tuple[str, subprocess.Popen[bytes] | None]:
    """The API URL of a running Prefect server, started here if none answers."""
    from prefect.settings import PREFECT_API_URL

    configured = PREFECT_API_URL.value()  # the environment, a profile or a settings context
    url = configured or f"http://127.0.0.1:{port}/api"
    if _healthy(url):
        return url, None
    if configured:
        raise RuntimeError(f"PREFECT_API_URL={configured} does not answer")
    home = (settings.data_dir / "prefect").resolve()
    home.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PREFECT_HOME": str(home)}
    env.pop("PREFECT_API_URL", None)
    exe = Path(sys.executable).with_name("prefect")
    log = open(home / "server.log", "ab")  # noqa: SIM115 (outlives this function)
    proc = subprocess.Popen(
        [str(exe), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(
                f"prefect server exited ({proc.returncode}); see {home / 'server.log'}"
            )
        if _healthy(url):
            os.environ["PREFECT_API_URL"] = url
            return url, proc
        time.sleep(1.0)
    proc.terminate()
    raise RuntimeError(f"prefect server did not answer at {url} within 180 s")


def serve_all(settings: Settings, config_path: Path | None, target: str = "abuse") -> None:
    """Serve the deployments until interrupted (blocks)."""
    from prefect import serve

    serve(*deployments(settings, config_path, target))
