"""``ingest --follow``: growing and rotated files into the store and the stream, with the
same request ids a batch ingest gives, and no loss or duplicates across kill -9."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pyarrow as pa
import pytest

from telemetry.ingest import ingest_files, resolve
from telemetry.ingest.follow import Follower
from telemetry.store import TelemetryStore

ROOT = Path(__file__).resolve().parents[2]
MAIN = ROOT / "tests" / "fixtures" / "logs" / "nginx" / "main.log"


def _lines(n: int, start: int = 0) -> list[str]:
    """Distinct main-format lines (a client per line group, a second per line)."""
    out = []
    for i in range(start, start + n):
        s, m = i % 60, (i // 60) % 60
        out.append(
            f"10.0.{i % 7}.{i % 250 + 1} - - [05/Dec/2026:07:{m:02d}:{s:02d} +0000] "
            f'"GET /v1/items/{i} HTTP/1.1" 200 {100 + i % 900} "-" "curl/8.5.0" "-"'
        )
    return out


def _append(path: Path, lines: list[str]) -> None:
    with open(path, "a") as fh:
        fh.write("".join(x + "\n" for x in lines))


def _follower(
    tmp_path: Path, log: Path, fmt: str = "nginx:main", **kw
) -> tuple[TelemetryStore, Follower]:
    store = TelemetryStore(tmp_path / "t")
    f = Follower(
        [log],
        resolve(fmt),
        store,
        checkpoint=tmp_path / "cp.json",
        rejects_dir=tmp_path / "r",
        **kw,
    )
    return store, f


def _drain(f: Follower, idle_polls: int = 3) -> None:
    quiet = 0
    while quiet < idle_polls:
        quiet = 0 if f.step() else quiet + 1
    f.flush()


def test_follow_rotation_ids_match_a_batch_ingest(tmp_path):
    log = tmp_path / "access.log"
    _append(log, _lines(50))
    published: list[pa.Table] = []
    store, f = _follower(
        tmp_path,
        log,
        publish=published.append,
        poll_s=0.01,
        store_every_s=0.0,
        rotate_wait_s=0.0,
    )
    _drain(f)
    _append(log, [*_lines(30, 50), "this is not a log line"])
    f.step()
    os.rename(log, tmp_path / "access.log.1")  # logrotate: rename + create
    _append(tmp_path / "access.log.1", _lines(5, 80))  # the writer had not reopened yet
    _append(log, _lines(40, 85))
    _drain(f)
    f.close()
    assert f.stats.read == 126 and f.stats.rejected == 1
    assert store.count() == 125 and f.stats.accepted == 125 and f.stats.duplicate == 0
    ids = set(store.read().column("request_id").to_pylist())
    assert {i for t in published for i in t.column("request_id").to_pylist()} == ids
    # a batch ingest of the same two files derives the same ids: re-ingesting adds nothing
    batch = TelemetryStore(tmp_path / "batch")
    ingest_files([tmp_path / "access.log.1", log], "nginx:main", batch, rejects_dir=tmp_path / "r")
    assert set(batch.read().column("request_id").to_pylist()) == ids
    again = ingest_files(
        [tmp_path / "access.log.1", log], "auto", store, rejects_dir=tmp_path / "r"
    )
    assert again.accepted == 0 and again.duplicate == 125


def test_follow_nginx_json_lines(tmp_path):
    import json

    log = tmp_path / "access.json"
    recs = [
        {
            "msec": f"{1796450000 + i}.250",
            "remote_addr": f"10.0.0.{i % 9 + 1}",
            "request": f"GET /v1/items/{i} HTTP/1.1",
            "status": "200",
            "http_user_agent": "curl/8.5.0",
        }
        for i in range(40)
    ]
    _append(log, [json.dumps(r) for r in recs[:30]])
    store, f = _follower(tmp_path, log, "nginx-json", store_every_s=0.0)
    _drain(f)
    _append(log, [json.dumps(r) for r in recs[30:]] + ['{"msec": "cut'])
    _drain(f)
    f.close()
    assert (f.stats.read, f.stats.accepted, f.stats.rejected) == (41, 40, 1)
    batch = TelemetryStore(tmp_path / "batch")
    ingest_files([log], "nginx-json", batch, rejects_dir=tmp_path / "r")
    ids = set(store.read().column("request_id").to_pylist())
    assert set(batch.read().column("request_id").to_pylist()) == ids and len(ids) == 40
    with pytest.raises(ValueError, match="nested"):
        Follower(
            [log],
            resolve("kong"),
            store,
            checkpoint=tmp_path / "cp2.json",
            rejects_dir=tmp_path / "r",
        )


def test_publish_failure_keeps_the_store_whole(tmp_path):
    log = tmp_path / "access.log"
    _append(log, _lines(20))

    def broken(_t: pa.Table) -> None:
        raise ConnectionError("broker down")

    store, f = _follower(
        tmp_path,
        log,
        publish=broken,
        store_every_s=0.0,
    )
    _drain(f)
    f.close()
    assert store.count() == 20 and f.stats.publish_failures >= 1 and f.stats.published == 0


_CHILD = textwrap.dedent(
    """
    import sys, threading
    from pathlib import Path
    sys.path.insert(0, {root!r})
    from telemetry.ingest import resolve
    from telemetry.ingest.follow import Follower
    from telemetry.store import TelemetryStore
    d = Path({tmp!r})
    f = Follower([d / "access.log"], resolve("nginx:main"), TelemetryStore(d / "t"),
                 checkpoint=d / "cp.json", rejects_dir=d / "r", poll_s=0.01,
                 store_every_s=0.05, store_rows=40, rotate_wait_s=0.3)
    print("ready", flush=True)
    f.run(threading.Event())
    """
)


def _offset(cp: Path) -> tuple[int, int]:
    import json

    try:
        (entry,) = json.loads(cp.read_text()).values()
    except (FileNotFoundError, ValueError):
        return 0, 0
    return entry["inode"], entry["offset"]


def _wait(cond, timeout: float = 30.0) -> None:
    end = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < end, "the follower made no progress"
        time.sleep(0.005)


@pytest.mark.timeout(180)
def test_kill_9_mid_file_and_during_rotation_loses_and_duplicates_nothing(tmp_path):
    log = tmp_path / "access.log"
    cp = tmp_path / "cp.json"
    code = _CHILD.format(root=str(ROOT), tmp=str(tmp_path))
    total = 0

    def write(n: int) -> None:
        nonlocal total
        _append(log, _lines(n, total))
        total += n

    def start() -> subprocess.Popen:
        p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
        assert p.stdout is not None and p.stdout.readline().strip() == "ready"
        return p

    write(3000)
    p = start()
    _wait(lambda: _offset(cp)[1] > 0)  # some chunks stored and committed...
    os.kill(p.pid, signal.SIGKILL)  # ...kill -9 mid-file
    p.wait()
    _inode, killed_at = _offset(cp)
    assert killed_at < log.stat().st_size, "the follower finished before the kill"
    write(500)  # written while it is down
    p = start()
    _wait(lambda: _offset(cp)[1] > killed_at)
    write(300)
    os.rename(log, tmp_path / "access.log.1")  # logrotate: rename + create...
    write(200)  # ...the new file
    time.sleep(0.1)
    os.kill(p.pid, signal.SIGKILL)  # during the rotation (the old file is waited on 0.3 s)
    p.wait()
    _append(tmp_path / "access.log.1", _lines(10, total))  # a late line to the old file
    total += 10
    p = start()
    write(100)
    store = TelemetryStore(tmp_path / "t")
    _wait(lambda: store.count() >= total, timeout=60)
    time.sleep(0.3)  # anything more would be a duplicate or a stray: give it the chance
    os.kill(p.pid, signal.SIGTERM)
    p.wait()
    paths = store.read().column("url_path").to_pylist()
    assert len(paths) == len(set(paths)), "an event was stored twice"
    assert sorted(int(x.rsplit("/", 1)[1]) for x in paths) == list(range(total)), "lost lines"
