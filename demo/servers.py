"""Servers the demo runs inside its own process: uvicorn on a background thread, on a free
loopback port, stopped by a flag (no signal handlers).

    with ThreadedServer(app, free_port()) as srv: ...
"""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

__all__ = ["ThreadedServer", "free_port"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ThreadedServer:
    """uvicorn in a background thread. ``config``: more ``uvicorn.Config`` options (e.g.
    ``proxy_headers``)."""

    def __init__(self, app: Any, port: int, **config: Any) -> None:
        import uvicorn

        cfg = uvicorn.Config(
            app, host="127.0.0.1", port=port, log_level="warning", access_log=False, **config
        )
        self.port = port
        self.server = uvicorn.Server(cfg)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> ThreadedServer:
        self.thread.start()
        while not self.server.started:
            if not self.thread.is_alive():
                raise RuntimeError(f"server on 127.0.0.1:{self.port} did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=15)
