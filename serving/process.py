"""Start, find and stop the local BentoML service (``bentoml serve serving.service:Scorer``).

The deploy flow starts it when nothing answers at ``serving.url``; its pid
and log live under ``<data_dir>/serving/``.

    url = ensure_service(settings)     # starts it if needed, waits for /readyz
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from config.settings import Settings

__all__ = ["ensure_service", "service_env", "start_service", "stop_service", "wait_ready"]


def service_env(settings: Settings, config: Path | None = None) -> dict[str, str]:
    env = {
        **os.environ,
        "GATEWISE_DATA_DIR": str(settings.data_dir.resolve()),
        "GATEWISE_SERVE_REFRESH_S": str(settings.serving.refresh_s),
        "GATEWISE_SERVE_TARGETS": ",".join(settings.serving.targets),
        "GATEWISE_SERVE_WORKERS": str(settings.serving.workers),
        "BENTOML_DO_NOT_TRACK": "true",
        "BENTOML_HOME": str((settings.data_dir / "bentoml").resolve()),
    }
    if config is not None:
        env["GATEWISE_CONFIG"] = str(config.resolve())
    return env


def _bentoml() -> str:
    exe = Path(sys.executable).with_name("bentoml")
    return str(exe) if exe.exists() else "bentoml"


def wait_ready(url: str, timeout: float = 180.0, proc: Any = None, path: str = "/readyz") -> bool:
    """Poll ``path`` until it answers 200 (``/livez``: the process is up; ``/readyz``: every
    configured target has a champion loaded)."""
    import httpx

    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc is not None and proc.poll() is not None:
            return False
        try:
            if httpx.get(url + path, timeout=1.0).status_code == 200:
                return True
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    return False


def start_service(settings: Settings, config: Path | None = None, port: int | None = None) -> int:
    """A detached ``bentoml serve`` (survives this process); returns its pid."""
    d = settings.data_dir / "serving"
    d.mkdir(parents=True, exist_ok=True)
    repo = Path(__file__).resolve().parents[1]
    log = open(d / "service.log", "ab")  # noqa: SIM115 (handed to the child)
    p = subprocess.Popen(
        [
            _bentoml(),
            "serve",
            "serving.service:Scorer",
            "--host",
            settings.serving.host,
            "--port",
            str(port or settings.serving.port),
        ],
        cwd=repo,
        env=service_env(settings, config),
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    (d / "service.pid").write_text(str(p.pid))
    # live, not ready: the first deploy starts the service before any champion exists
    url = settings.serving.url if port is None else f"http://{settings.serving.host}:{port}"
    if not wait_ready(url, proc=p, path="/livez"):
        tail = (d / "service.log").read_bytes()[-2000:].decode(errors="replace")
        raise RuntimeError(f"the BentoML service did not become ready; log tail:\n{tail}")
    return p.pid


def ensure_service(settings: Settings, config: Path | None = None) -> tuple[str, bool]:
    """(url, started): the running service, started here if nothing answers."""
    import httpx

    url = settings.serving.url
    try:
        httpx.get(url + "/livez", timeout=1.0)
        return url, False
    except httpx.HTTPError:
        start_service(settings, config)
        return url, True


def stop_service(settings: Settings) -> bool:
    pid_file = settings.data_dir / "serving" / "service.pid"
    if not pid_file.exists():
        return False
    pid = int(pid_file.read_text())
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        pid_file.unlink(missing_ok=True)
        return False
    for _ in range(100):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        os.killpg(pid, signal.SIGKILL)
    pid_file.unlink(missing_ok=True)
    return True
