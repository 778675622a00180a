"""Servers a benchmark runs inside its own process (uvicorn on a daemon thread) or in a child
process of its own (``serve``), and the native tools it drives (wrk, NGINX), installed with
apt-get when absent.

    with ThreadedServer(app, free_port()) as srv: httpx.get(srv.url + "/healthz")
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any


def _config(app: Any, port: int, **config: Any) -> Any:
    import uvicorn

    opts: dict[str, Any] = {"host": "127.0.0.1", "log_level": "warning", "access_log": False}
    return uvicorn.Config(app, port=port, **(opts | config))


def serve(app: Any, port: int, **config: Any) -> None:
    """uvicorn in the foreground, until the process is signalled (a benchmark's child that
    runs one server, e.g. ``gateway.py --serve-scorer PORT``)."""
    import uvicorn

    uvicorn.Server(_config(app, port, **config)).run()


class ThreadedServer:
    """uvicorn on a daemon thread of this process, on 127.0.0.1. ``config``: more
    ``uvicorn.Config`` options (e.g. ``proxy_headers=True``).

        with ThreadedServer(app, free_port(), proxy_headers=True) as srv: ...
    """

    def __init__(self, app: Any, port: int, timeout: float = 30.0, **config: Any) -> None:
        import uvicorn

        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.timeout = timeout
        self.server = uvicorn.Server(_config(app, port, **config))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def start(self) -> ThreadedServer:
        """Start serving; raises RuntimeError if the server is not up in ``timeout`` s."""
        self.thread.start()
        deadline = time.monotonic() + self.timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"server on {self.url} did not start")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        if self.thread.is_alive():
            self.thread.join(timeout=15)

    def __enter__(self) -> ThreadedServer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


# native tools -------------------------------------------------------------------------------
def apt_install(*candidates: str) -> None:
    """Install the first of ``candidates`` apt-get can install (after one update if needed)."""
    sudo = [] if os.geteuid() == 0 else ["sudo", "-n"]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for update in (False, True):
        if update:
            subprocess.run([*sudo, "apt-get", "update", "-qq"], env=env, check=False)
        for pkg in candidates:
            r = subprocess.run(
                [*sudo, "apt-get", "install", "-y", "-qq", "--no-install-recommends", pkg],
                env=env,
                capture_output=True,
                text=True,
            )
            if r.returncode == 0:
                print(f"installed {pkg}", file=sys.stderr)
                return
    raise SystemExit(f"could not install any of {candidates} with apt-get")


def ensure_wrk() -> str:
    """wrk's path, installed with apt-get when it is not on PATH."""
    if shutil.which("wrk") is None:
        apt_install("wrk")
    wrk = shutil.which("wrk")
    if wrk is None:
        raise SystemExit("wrk installed but not on PATH")
    return wrk


def ensure_nginx() -> str:
    """nginx's path (on PATH or /usr/sbin), installed with apt-get when absent."""
    sbin = "/usr/sbin/nginx"
    nginx = shutil.which("nginx") or (sbin if Path(sbin).exists() else None)
    if nginx is None:
        apt_install("nginx-light", "nginx")
        nginx = shutil.which("nginx") or sbin
    return nginx
