"""The servers a benchmark starts as processes: free loopback ports, process groups started with
a log file and killed whole, readiness waits that fail fast with the log when a server died,
and the CPU time of a process tree or group (Linux ``/proc``).

    with Procs() as procs:
        p = procs.start([...], log)
        wait_http(f"http://127.0.0.1:{port}/healthz", proc=p, log=log)
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

_TICK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def exit_on_signals() -> None:
    """Make SIGTERM (and SIGINT, which a non-interactive shell's background job ignores)
    unwind through ``finally`` blocks and context managers, so every server is stopped."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    signal.signal(signal.SIGINT, signal.default_int_handler)


# CPU accounting ---------------------------------------------------------------------------
def _stat(pid: str | int) -> list[str] | None:
    """The fields of ``/proc/<pid>/stat`` after the command name: state(0) ppid(1) pgrp(2)
    ... utime(11) stime(12)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()
    except OSError:
        return None


def _ppids() -> dict[int, int]:
    """Every live (not zombie) process: pid -> parent pid."""
    out = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            f = _stat(d)
            if f is not None and f[0] != "Z":
                out[int(d)] = int(f[1])
    return out


def tree_pids(root: int) -> list[int]:
    """``root`` and its live descendants, whatever group or session they moved to (BentoML's
    worker runs in a session of its own)."""
    pp = _ppids()
    kids: dict[int, list[int]] = {}
    for pid, ppid in pp.items():
        kids.setdefault(ppid, []).append(pid)
    out, todo = [], [root] if root in pp else []
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo += kids.get(pid, [])
    return out


def tree_cpu(root: int) -> float:
    """CPU seconds (user + system) of ``root`` and its live descendants."""
    total = 0
    for pid in tree_pids(root):
        f = _stat(pid)
        if f is not None:
            total += int(f[11]) + int(f[12])
    return total / _TICK


def group_cpu(pgid: int) -> float:
    """CPU seconds (user + system) of every live process in process group ``pgid``."""
    total = 0
    for d in os.listdir("/proc"):
        if d.isdigit():
            f = _stat(d)
            if f is not None and int(f[2]) == pgid:
                total += int(f[11]) + int(f[12])
    return total / _TICK


def children_cpu() -> float:
    """CPU seconds of this process's finished children (e.g. the wrk runs so far)."""
    import resource

    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def cpu_busy() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot, from ``/proc/stat``."""
    with open("/proc/stat") as fh:
        v = [int(x) for x in fh.readline().split()[1:]]
    idle = v[3] + (v[4] if len(v) > 4 else 0)
    return (sum(v) - idle) / _TICK, sum(v) / _TICK


# process groups ---------------------------------------------------------------------------
class Procs:
    """Every server a benchmark starts, each the leader of its own session with its output in a
    log file. ``stop`` sends SIGTERM to the group, then SIGKILL to the group and to every
    descendant seen (killed even if it moved to another group or session); leaving the
    ``with`` block stops them all, newest first.

        with Procs() as procs: p = procs.start(["nginx", ...], root / "nginx.log")
    """

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []
        self.seen: dict[int, set[int]] = {}

    def __enter__(self) -> Procs:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop_all()

    def start(self, cmd: list[str], log: Path, **kw: Any) -> subprocess.Popen[bytes]:
        """Run ``cmd`` in a new session, stdout and stderr appended to ``log``.

        ``kw`` goes to ``subprocess.Popen`` (``cwd``, ``env``).
        """
        with open(log, "ab") as fh:
            p = subprocess.Popen(
                cmd, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True, **kw
            )
        self.procs.append(p)
        self.seen[p.pid] = {p.pid}
        return p

    def note(self, p: subprocess.Popen[bytes]) -> None:
        """Remember ``p``'s current descendants (killed on stop even if orphaned by then)."""
        self.seen.setdefault(p.pid, set()).update(tree_pids(p.pid))

    def stop(self, p: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
        """SIGTERM to ``p``'s group, up to ``timeout`` s for it to exit, then SIGKILL to the
        group and to every descendant noted."""
        self.note(p)
        pids = self.seen.pop(p.pid, {p.pid})
        if p.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(timeout)
        for _ in range(50):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGKILL)
            live = _ppids()
            left = [pid for pid in pids if pid in live and pid != os.getpid()]
            for pid in left:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
            if not left:
                break
            time.sleep(0.1)
        with contextlib.suppress(subprocess.TimeoutExpired):
            p.wait(5)
        if p in self.procs:
            self.procs.remove(p)

    def stop_all(self, timeout: float = 15.0) -> None:
        """``stop`` every server still running, newest first."""
        for p in list(reversed(self.procs)):
            self.stop(p, timeout)


# readiness --------------------------------------------------------------------------------
def log_tail(path: Path | None, n: int = 3000) -> str:
    """The last ``n`` bytes of a log file ('' when there is none)."""
    if path is None or not path.exists():
        return ""
    return path.read_bytes()[-n:].decode(errors="replace")


def wait_http(
    url: str,
    proc: subprocess.Popen[bytes] | None = None,
    log: Path | None = None,
    timeout: float = 60.0,
    headers: dict[str, str] | None = None,
) -> bytes:
    """Poll ``url`` until it answers 200; returns the body.

    Args:
        proc: the server's process: when it exits, fail at once instead of at ``timeout``.
        log: the server's log, whose tail the error carries.
        headers: sent with every poll (e.g. an API key).

    Raises:
        RuntimeError: not ready in ``timeout`` s, or ``proc`` exited.
    """
    # loopback never goes through a proxy, whatever the environment says
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            break
        try:
            req = urllib.request.Request(url, headers=headers or {})
            with opener.open(req, timeout=2) as r:
                if r.status == 200:
                    return bytes(r.read())
        except Exception as exc:
            last = exc
        time.sleep(0.2)
    why = (
        f"exited with {proc.returncode}"
        if proc is not None and proc.poll() is not None
        else f"not ready after {timeout:.0f} s: {last}"
    )
    tail = log_tail(log)
    raise RuntimeError(f"{url} {why}" + (f"; log tail:\n{tail}" if tail else ""))
