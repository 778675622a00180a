"""A real NGINX (Debian's package, installed by .ci/run) writes its default ``main`` log and
the ``gatewise`` format docs/ingest.md recommends, proxying to a second server; what it
wrote is ingested with ``--format auto`` and from its own config, and every request sent
comes back once, with the fields the format carries."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from telemetry.ingest import ingest_files
from telemetry.ingest.formats import NGINX_GATEWISE, NGINX_MAIN, from_nginx_conf
from telemetry.store import TelemetryStore
from tests.conftest import free_port, nginx_binary

pytestmark = pytest.mark.integration


def test_logs_written_by_a_running_nginx(tmp_path: Path) -> None:
    nginx = nginx_binary()
    port, upstream = free_port(), free_port()
    temp = " ".join(
        f"{k}_temp_path {tmp_path / k};"
        for k in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    conf = tmp_path / "nginx.conf"
    conf.write_text(
        f"pid {tmp_path / 'nginx.pid'};\nerror_log {tmp_path / 'error.log'} warn;\n"
        "events { worker_connections 64; }\n"
        f"http {{\n  {temp}\n"
        f"  log_format main '{NGINX_MAIN}';\n"
        f"  log_format gatewise '{NGINX_GATEWISE}';\n"
        f"  server {{\n    listen 127.0.0.1:{port};\n"
        f"    access_log {tmp_path / 'main.log'} main;\n"
        f"    access_log {tmp_path / 'gatewise.log'} gatewise;\n"
        f"    location /api/ {{ proxy_pass http://127.0.0.1:{upstream}; }}\n"
        "    location / { return 404; }\n  }\n"
        f"  server {{ listen 127.0.0.1:{upstream}; access_log off; return 200 ok; }}\n}}\n"
    )
    proc = subprocess.Popen(
        [
            nginx,
            "-c",
            str(conf),
            "-p",
            str(tmp_path),
            "-e",
            str(tmp_path / "error.log"),
            "-g",
            "daemon off;",
        ],
        stderr=subprocess.PIPE,
    )
    sent = 0
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, "nginx did not start"
                time.sleep(0.05)
        agents = ["curl/8.5.0", 'evil "agent"', "python-requests/2.31"]
        for i in range(30):
            path = f"/api/v1/orders/{i}?q=%27{i}" if i % 3 else f"/nothing/{i}"
            req = urllib.request.Request(
                f"http://127.0.0.1:{port}{path}",
                headers={
                    "User-Agent": agents[i % 3],
                    "X-Consumer-Id": f"consumer-{i % 4}",
                    "X-Forwarded-For": "203.0.113.7, 10.0.0.1",
                },
            )
            with contextlib.suppress(urllib.error.HTTPError):
                urllib.request.urlopen(req, timeout=5).read()
            sent += 1
    finally:
        proc.terminate()
        proc.wait(timeout=20)
    for name, fmt in (("main.log", "auto"), ("gatewise.log", from_nginx_conf(conf, "gatewise"))):
        store = TelemetryStore(tmp_path / f"store-{name}")
        rep = ingest_files([tmp_path / name], fmt, store, rejects_dir=tmp_path / "r")
        assert (rep.read, rep.accepted, rep.rejected, rep.duplicate) == (sent, sent, 0, 0), name
        events = store.read().to_pylist()
        assert {e["user_agent"] for e in events} == set(agents)
        assert sum(e["http_response_status_code"] == 404 for e in events) == 10
        assert {e["http_route"] for e in events if e["http_response_status_code"] == 200} == {
            "/api/v1/orders/{id}"
        }
    assert rep.detected == {}  # the second was given its format
    g = events
    assert {e["client_id"] for e in g} == {f"consumer-{i}" for i in range(4)}
    assert all(e["duration_ms"] is not None and len(e["request_id"]) == 32 for e in g)
    assert all(
        e["upstream_duration_ms"] is not None for e in g if e["http_response_status_code"] == 200
    )
