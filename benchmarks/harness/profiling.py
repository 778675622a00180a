"""Sampling a server under load with py-spy: finding it (on PATH, or pip-installed into
/tmp/gatewise-pyspy, never into the project's venv), recording a process for the length of a
``with`` block, and reading its raw (flamegraph) stacks.

    with pyspy_record(find_pyspy(), p.pid, raw, rate=100, seconds=10): run_wrk(...)
    for frames, n in read_stacks(raw): ...
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path


def find_pyspy(install: bool = False) -> str | None:
    """py-spy on PATH or in /tmp/gatewise-pyspy; with ``install``, pip-installed there when
    absent. None when there is none."""
    target = Path(tempfile.gettempdir()) / "gatewise-pyspy"
    for cand in (shutil.which("py-spy"), str(target / "bin" / "py-spy")):
        if cand and Path(cand).exists():
            return cand
    pip = shutil.which("pip3") or shutil.which("pip")
    if not install or pip is None:
        return None
    r = subprocess.run(
        [pip, "install", "-q", "--target", str(target), "py-spy"], capture_output=True, text=True
    )
    exe = target / "bin" / "py-spy"
    return str(exe) if r.returncode == 0 and exe.exists() else None


@contextlib.contextmanager
def pyspy_record(
    pyspy: str,
    pid: int,
    out: Path,
    rate: int = 100,
    seconds: float = 600.0,
    subprocesses: bool = False,
    nonblocking: bool = False,
    interrupt: bool = False,
) -> Iterator[subprocess.Popen[bytes]]:
    """``py-spy record`` of ``pid`` (raw stacks to ``out``) while the block runs.

    Args:
        seconds: py-spy's own duration; on leaving the block it is waited for (up to
            ``seconds`` + 30 s), unless ``interrupt``: then it is stopped at once (SIGINT, on
            which py-spy writes what it has).
        subprocesses: sample ``pid``'s child processes too.
        nonblocking: do not pause the process per sample.
    """
    cmd = [pyspy, "record", "-p", str(pid), "-r", str(rate), "-d", str(round(seconds))]
    cmd += ["--subprocesses"] * subprocesses + ["--nonblocking"] * nonblocking
    spy = subprocess.Popen(
        [*cmd, "--format", "raw", "-o", str(out)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        yield spy
    finally:
        if interrupt:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(spy.pid, signal.SIGINT)
        try:
            spy.wait(30 if interrupt else seconds + 30)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(spy.pid, signal.SIGKILL)
            spy.wait()


def read_stacks(raw: Path) -> Iterator[tuple[list[str], int]]:
    """(frames, root first; samples) per line of py-spy's raw output, each frame
    ``func (pkg/file.py)`` without its line number, so a function is one entry."""
    for line in raw.read_text().splitlines():
        if not line.strip():
            continue
        stack, n = line.rsplit(" ", 1)
        yield [re.sub(r":\d+\)$", ")", f) for f in stack.split(";") if f], int(n)
