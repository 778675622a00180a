"""NGINX as a gatewise data plane: the configuration, the process, and its admin API.

``render`` writes a self-contained NGINX prefix directory:

    nginx.conf        the services as ``upstream {}`` blocks, one public server whose
                      ``access_by_lua`` runs gatewise's decision core (``gatewise.lua``) on the
                      policy bundle, and an admin server on loopback that takes pushes
    lua/gatewise.lua  the decision core (a copy of this package's file)
    admin.token       the admin server's token (0600)
    bundle.json       the last pushed bundle: a restarted NGINX enforces it before any push
    logs/access.json  one JSON line per request in the variables ``ingest --format
                      nginx-json`` reads (decision, policy version, score, client, request id)

It needs Debian's ``nginx`` (or ``nginx-light``) with ``libnginx-mod-http-lua`` and
``lua-cjson`` (``lua-resty-core`` comes with it); ``check()`` says what is missing.

    conf = render(settings, Path("dp"), port=8080, admin_port=8081)
    with NginxProcess(conf) as nginx:
        admin = DataPlaneAdmin("http://127.0.0.1:8081", token)
        admin.push_bundle(text)
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from config.gateway import GatewaySettings
from gateway.dataplane.bundle import upstream_name

__all__ = [
    "LOG_FORMAT",
    "LOG_VARS",
    "DataPlaneAdmin",
    "DataPlaneError",
    "NginxProcess",
    "check",
    "find_modules",
    "render",
]

LUA_SOURCE = Path(__file__).with_name("gatewise.lua")
MODULE_DIRS = ("/usr/lib/nginx/modules", "/usr/share/nginx/modules", "/etc/nginx/modules")
# the per-request variables the Lua sets and the access log writes
GW_VARS = (
    "gw_request_id",
    "gw_decision",
    "gw_auth",
    "gw_policy_version",
    "gw_client_id",
    "gw_api_key_id",
    "gw_tier",
    "gw_region",
    "gw_device_type",
    "gw_route",
    "gw_service",
    "gw_score",
    "gw_model_version",
    "gw_rl_limit",
    "gw_rl_remaining",
    "gw_rl_reset",
    "gw_upstream",
)
# variables written to the access log (keys = variable names: the nginx-json format)
LOG_VARS = (
    "msec",
    "remote_addr",
    "request_method",
    "request_uri",
    "status",
    "body_bytes_sent",
    "request_length",
    "request_time",
    "upstream_response_time",
    "http_user_agent",
    *(v for v in GW_VARS if not v.startswith(("gw_rl_", "gw_upstream"))),
)
LOG_FORMAT = "{" + ",".join(f'"{v}":"${v}"' for v in LOG_VARS) + "}"


class DataPlaneError(RuntimeError):
    """The data plane cannot be set up or refused a push; the message says what to do."""


def find_modules() -> dict[str, Path] | None:
    """The dynamic modules to load (Debian's packages), or None when NGINX has Lua built in
    (OpenResty) or the modules are missing (``check`` tells which)."""
    for d in MODULE_DIRS:
        lua = Path(d) / "ngx_http_lua_module.so"
        ndk = Path(d) / "ndk_http_module.so"
        if lua.exists():
            return {"ndk": ndk, "lua": lua} if ndk.exists() else {"lua": lua}
    return None


def nginx_binary() -> str | None:
    return shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/openresty/bin/openresty") if Path(p).exists()),
        None,
    )


def check() -> list[str]:
    """What is missing to run the data plane on this machine (empty: nothing)."""
    missing = []
    if nginx_binary() is None:
        missing.append("nginx (apt-get install nginx-light)")
    if find_modules() is None:
        missing.append("the NGINX Lua module (apt-get install libnginx-mod-http-lua)")
    if not any(
        Path(d, "cjson.so").exists()
        for d in (
            "/usr/lib/x86_64-linux-gnu/lua/5.1",
            "/usr/lib/aarch64-linux-gnu/lua/5.1",
            "/usr/local/lib/lua/5.1",
        )
    ):
        missing.append("lua-cjson (apt-get install lua-cjson)")
    return missing


@dataclass(frozen=True)
class Rendered:
    root: Path
    conf: Path
    token: str
    port: int
    admin_port: int
    access_log: Path

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def _upstreams(g: GatewaySettings) -> list[str]:
    out = []
    for name, s in g.services.items():
        lines = [f"  upstream {upstream_name(name)} {{"]
        for url in s.instances:
            hostport = url.split("://", 1)[1]
            # passive health: the breaker's threshold and reset, per instance
            lines.append(
                f"    server {hostport} max_fails={s.breaker.failure_threshold}"
                f" fail_timeout={max(1, int(s.breaker.reset_timeout_s))}s;"
            )
        lines += ["    keepalive 64;", "  }"]
        out.append("\n".join(lines))
    return out


def render(
    g: GatewaySettings,
    root: Path,
    *,
    port: int | None = None,
    admin_port: int = 8081,
    host: str | None = None,
    workers: int | None = None,
    access_log: Path | None = None,
    bundle: str | None = None,
    policy_dict: str = "64m",
    scores_dict: str = "64m",
    limits_dict: str = "64m",
    log_buffer: bool = True,
    reuseport: bool = True,
) -> Rendered:
    """Write the prefix directory; returns where things are. ``bundle`` (text) is written as
    ``bundle.json``, loaded when NGINX starts. ``reuseport`` spreads connections over the
    workers in the kernel (it also lets another process of the same user bind the port:
    tests turn it off)."""
    root = root.resolve()
    for d in ("logs", "tmp", "lua"):
        (root / d).mkdir(parents=True, exist_ok=True)
    shutil.copyfile(LUA_SOURCE, root / "lua" / "gatewise.lua")
    token_path = root / "admin.token"
    if token_path.exists():
        token = token_path.read_text().strip()
    else:
        token = secrets.token_urlsafe(24)
        token_path.write_text(token + "\n")
        token_path.chmod(0o600)
    if bundle is not None:
        write_bundle(root, bundle)
    port = port or g.port
    host = host or g.host
    workers = workers or g.workers
    log_path = (access_log or root / "logs" / "access.json").resolve()
    mods = find_modules() or {}
    timeout = int(max(s.timeout_s for s in g.services.values()) * 1000)
    connect = int(max(s.connect_timeout_s for s in g.services.values()) * 1000)
    retries = max(s.retries for s in g.services.values())
    realip = "".join(f"  set_real_ip_from {c};\n" for c in g.trusted_proxies)
    sets = "".join(f'      set ${v} "";\n' for v in GW_VARS)
    tmp = _temp_dir(root)
    text = f"""# generated by gatewise (gateway/dataplane/nginx.py); re-render instead of editing:
#   gatewise policy export --to nginx-lua -o {root}
# run: nginx -p {root} -c {root / "nginx.conf"}
{"".join(f"load_module {p};{chr(10)}" for p in mods.values())}worker_processes {workers};
daemon off;
pid {root}/nginx.pid;
error_log {root}/logs/error.log warn;
events {{ worker_connections 4096; }}
http {{
  lua_package_path "{root}/lua/?.lua;;";
  lua_shared_dict gw_policy {policy_dict};
  lua_shared_dict gw_scores {scores_dict};
  lua_shared_dict gw_limits {limits_dict};
  lua_shared_dict gw_stats 1m;
  init_by_lua_block {{
    require("gatewise").init({{ token = "{token}", bundle_file = "{root}/bundle.json" }})
  }}
  init_worker_by_lua_block {{ require("gatewise").init_worker() }}
  log_format gatewise escape=json '{LOG_FORMAT}';
  access_log off;
  client_body_temp_path {tmp}/body;
  proxy_temp_path {tmp}/proxy;
  fastcgi_temp_path {tmp}/fastcgi;
  uwsgi_temp_path {tmp}/uwsgi;
  scgi_temp_path {tmp}/scgi;
  keepalive_timeout 65;
  keepalive_requests 100000;
  server_tokens off;
{realip}  real_ip_header X-Forwarded-For;
  real_ip_recursive on;
  gzip on;
  gzip_types application/json text/plain application/xml application/javascript;
  gzip_min_length {g.compression_min_bytes};
  gzip_proxied any;
{chr(10).join(_upstreams(g))}
  server {{
    listen {host}:{port}{" reuseport" if reuseport else ""} backlog=4096;
    access_log {log_path} gatewise{" buffer=64k flush=1s" if log_buffer else ""};
    # on every answer, NGINX's own error pages included (empty values are left out)
    add_header X-Request-Id $gw_request_id always;
    add_header RateLimit-Limit $gw_rl_limit always;
    add_header RateLimit-Remaining $gw_rl_remaining always;
    add_header RateLimit-Reset $gw_rl_reset always;
    location = /healthz {{
      access_log off;
      default_type application/json;
      return 200 '{{"status":"ok"}}';
    }}
    location = /readyz {{
      access_log off;
      content_by_lua_block {{ require("gatewise").ready() }}
    }}
    # NGINX's own upstream failures answer in JSON, with the Python gateway's reasons
    error_page 502 = @gw_502;
    error_page 504 = @gw_504;
    location @gw_502 {{
      default_type application/json;
      return 502 '{{"error":"upstream_unreachable"}}';
    }}
    location @gw_504 {{
      default_type application/json;
      return 504 '{{"error":"upstream_timeout"}}';
    }}
    location / {{
{sets}      access_by_lua_block {{ require("gatewise").access() }}
      proxy_pass http://$gw_upstream;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header X-Api-Key "";
      proxy_set_header X-Request-Id $gw_request_id;
      proxy_set_header X-Consumer-Id $gw_client_id;
      proxy_set_header X-Consumer-Tier $gw_tier;
      proxy_set_header X-Forwarded-For $remote_addr;
      proxy_connect_timeout {connect}ms;
      proxy_read_timeout {timeout}ms;
      proxy_send_timeout {timeout}ms;
      proxy_next_upstream error timeout http_502 http_503 http_504;
      proxy_next_upstream_tries {retries + 1};
    }}
  }}
  server {{
    listen 127.0.0.1:{admin_port};
    client_max_body_size 256m;
    client_body_buffer_size 256m;  # bundles are read in memory, never from a temp file
    location /admin/ {{ content_by_lua_block {{ require("gatewise").admin() }} }}
  }}
}}
"""
    conf = root / "nginx.conf"
    conf.write_text(text)
    return Rendered(root, conf, token, port, admin_port, log_path)


def _temp_dir(root: Path) -> Path:
    """Where NGINX buffers large bodies. Started as root, its workers run as ``nobody`` and
    must reach the directory: under a private (0700) parent such as a test's or
    ``mkdtemp``'s, a world-traversable directory in the system temp dir is used instead."""
    tmp = root / "tmp"
    if os.geteuid() != 0 or all(p.stat().st_mode & 0o001 for p in [root, *root.parents]):
        return tmp
    import hashlib
    import tempfile

    alt = Path(tempfile.gettempdir()) / (
        "gatewise-nginx-" + hashlib.sha256(str(root).encode()).hexdigest()[:12]
    )
    alt.mkdir(mode=0o755, exist_ok=True)
    return alt


def write_bundle(root: Path, text: str) -> None:
    """``bundle.json``, replaced atomically (NGINX reads it when it starts)."""
    tmp = root / "bundle.json.tmp"
    tmp.write_text(text)
    os.replace(tmp, root / "bundle.json")


class NginxProcess:
    """``nginx -p root -c nginx.conf`` in the foreground (``daemon off``), as a child process.

    ``start`` runs ``nginx -t`` first and raises ``DataPlaneError`` with NGINX's own message;
    ``stop`` quits gracefully (SIGQUIT: in-flight requests finish, the log is flushed)."""

    def __init__(self, rendered: Rendered) -> None:
        self.r = rendered
        self.proc: subprocess.Popen[bytes] | None = None

    def _cmd(self, *extra: str) -> list[str]:
        exe = nginx_binary()
        if exe is None:
            raise DataPlaneError("nginx is not installed (apt-get install nginx-light)")
        return [exe, "-p", str(self.r.root), "-c", str(self.r.conf), *extra]

    def test(self) -> None:
        out = subprocess.run(self._cmd("-t"), capture_output=True, text=True)
        if out.returncode != 0:
            raise DataPlaneError(f"nginx -t refused {self.r.conf}:\n{out.stderr.strip()}")

    def start(self, timeout_s: float = 10.0) -> None:
        missing = check()
        if missing:
            raise DataPlaneError("the NGINX data plane needs: " + "; ".join(missing))
        self.test()
        # its own session: a benchmark reads its CPU by process group; a stop reaches every worker
        self.proc = subprocess.Popen(self._cmd(), stdout=subprocess.DEVNULL, start_new_session=True)
        admin = DataPlaneAdmin(self.r.admin_url, self.r.token)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                err = (self.r.root / "logs" / "error.log").read_text()[-2000:]
                raise DataPlaneError(f"nginx exited with {self.proc.returncode}:\n{err}")
            try:
                admin.status()
                return
            except Exception:
                time.sleep(0.05)
        raise DataPlaneError(f"nginx did not answer on {self.r.admin_url} in {timeout_s:.0f}s")

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGQUIT)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)

    def reopen_logs(self) -> None:
        """After the access log was rotated (SIGUSR1, as logrotate does)."""
        if self.proc is not None:
            self.proc.send_signal(signal.SIGUSR1)

    def __enter__(self) -> NginxProcess:
        self.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()


class DataPlaneAdmin:
    """The admin server's client: push a bundle or scores, read the status."""

    def __init__(self, url: str, token: str, timeout_s: float = 5.0) -> None:
        import httpx

        self.url = url.rstrip("/")
        self.http = httpx.Client(
            base_url=self.url,
            timeout=timeout_s,
            headers={"x-gatewise-admin-token": token},
        )

    def status(self) -> dict[str, Any]:
        r = self.http.get("/admin/status")
        r.raise_for_status()
        return dict(r.json())

    def push_bundle(self, text: str) -> int:
        """Send a bundle; returns the version now enforced. DataPlaneError names the field."""
        r = self.http.put(
            "/admin/bundle", content=text, headers={"content-type": "application/json"}
        )
        if r.status_code != 201:
            raise DataPlaneError(f"the data plane refused the bundle ({r.status_code}): {r.text}")
        return int(r.json()["policy_version"])

    def clear_scores(self) -> None:
        """Drop every score (a retired model): until the next push, scoring is unavailable."""
        self.http.delete("/admin/scores").raise_for_status()

    def push_scores(self, results: list[dict[str, Any]], model_version: str | None = None) -> int:
        r = self.http.post(
            "/admin/scores",
            json={"model_version": model_version, "results": results},
        )
        if r.status_code != 200:
            raise DataPlaneError(f"the data plane refused the scores ({r.status_code}): {r.text}")
        return int(r.json()["accepted"])

    def close(self) -> None:
        self.http.close()
