"""The follow-mode tailer: growing files, partial lines, rotation (rename and create,
copytruncate, while running and while stopped), checkpoints, and a real kill -9."""

from __future__ import annotations

import gzip
import itertools
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from telemetry.ingest.tail import FINGERPRINT_BYTES, Chunk, Tailer

ROOT = Path(__file__).resolve().parents[2]


def _append(path: Path, *lines: str) -> None:
    with open(path, "ab") as fh:
        fh.write(b"".join(line.encode() + b"\n" for line in lines))


def _texts(chunks: list[Chunk]) -> list[str]:
    return [line.decode() for c in chunks for _, line in c.lines]


def _drain(tailer: Tailer, *, commit: bool = True) -> list[Chunk]:
    """Poll (committing each chunk) until a poll brings nothing."""
    got: list[Chunk] = []
    for _ in range(10_000):
        chunks = tailer.poll()
        if not chunks:
            return got
        for c in chunks:
            if commit:
                tailer.commit(c)
        got += chunks
    raise AssertionError("the tailer never ran dry")


def _tailer(log: Path, tmp_path: Path, **kw) -> Tailer:
    kw.setdefault("rotate_wait_s", 0)
    return Tailer([log], tmp_path / "state" / "tail.json", **kw)


@pytest.fixture()
def log(tmp_path: Path) -> Path:
    return tmp_path / "access.log"


# -- growing files and lines ---------------------------------------------------------------


def test_growing_file_delivers_new_lines_once_with_their_offsets(tmp_path, log):
    log.write_bytes(b"a 1\n\n  \nb 2\r\n")
    with _tailer(log, tmp_path) as t:
        (c,) = t.poll()
        assert c.path == str(log)
        assert c.inode == log.stat().st_ino
        assert (c.start, c.end) == (0, 13)
        assert c.lines == [(0, b"a 1"), (8, b"b 2")]
        t.commit(c)
        assert t.poll() == []

        _append(log, "c 3", "d 4")
        (c2,) = t.poll()
        assert (c2.start, c2.end) == (13, 21)
        assert c2.lines == [(13, b"c 3"), (17, b"d 4")]
        data = log.read_bytes()
        for off, line in c.lines + c2.lines:
            assert data[off : off + len(line)] == line
        assert t.poll() == []
        assert (t.stats[str(log)].lines, t.stats[str(log)].bytes) == (4, 21)


def test_a_partial_line_waits_for_its_newline(tmp_path, log):
    log.write_bytes(b"first\nhal")
    with _tailer(log, tmp_path) as t:
        assert _texts(t.poll()) == ["first"]
        assert t.poll() == []
        with open(log, "ab") as fh:
            fh.write(b"f a line")
        assert t.poll() == []
        with open(log, "ab") as fh:
            fh.write(b"\n")
        (c,) = t.poll()
        assert c.lines == [(6, b"half a line")]
        assert t.poll() == []


def test_max_lines_bounds_each_poll_and_chunks_tile_the_file(tmp_path, log):
    _append(log, *(f"line {i}" for i in range(10)))
    with _tailer(log, tmp_path, max_lines=3) as t:
        chunks = [t.poll() for _ in range(5)]
    assert [len(c[0].lines) if c else 0 for c in chunks] == [3, 3, 3, 1, 0]
    flat = [c[0] for c in chunks if c]
    assert flat[0].start == 0
    assert all(a.end == b.start for a, b in itertools.pairwise(flat))
    assert flat[-1].end == log.stat().st_size


def test_blank_lines_only_still_move_the_checkpoint(tmp_path, log):
    log.write_bytes(b"\n\n\r\n")
    with _tailer(log, tmp_path) as t:
        (c,) = t.poll()
        assert (c.lines, c.end) == ([], 4)
        t.commit(c)
        assert t.positions()[str(log)]["offset"] == 4


# -- rotation by rename and create -----------------------------------------------------------


def test_rename_and_create_drains_the_old_file_first(tmp_path, log):
    _append(log, *(f"old {i}" for i in range(10)))
    old_inode = log.stat().st_ino
    with _tailer(log, tmp_path, max_lines=4) as t:
        got = t.poll()
        for c in got:
            t.commit(c)
        _append(log, "old 10", "old 11")  # still unread when the file is renamed
        log.rename(tmp_path / "access.log.1")
        _append(log, *(f"new {i}" for i in range(6)))
        new_inode = log.stat().st_ino
        got += _drain(t)
        assert _texts(got) == [f"old {i}" for i in range(12)] + [f"new {i}" for i in range(6)]
        inodes = [c.inode for c in got]
        assert inodes == sorted(inodes, key=[old_inode, new_inode].index)
        assert {c.path for c in got} == {str(log)}
        assert t.stats[str(log)].rotations == 1
        assert t.stats[str(log)].lost_rotations == 0
        assert t.positions()[str(log)]["inode"] == new_inode


def test_rotate_wait_keeps_reading_the_old_file_its_writer_still_holds(tmp_path, log):
    now = [0.0]
    with open(log, "ab", buffering=0) as writer, _tailer(log, tmp_path, rotate_wait_s=5) as t:
        t._clock = lambda: now[0]
        writer.write(b"before\n")
        assert _texts(_drain(t)) == ["before"]
        log.rename(tmp_path / "access.log.1")
        _append(log, "new 1")
        assert _drain(t) == []  # the new file waits while the old one may still grow
        writer.write(b"late\n")  # the writer has not reopened yet
        now[0] = 4.0
        assert _texts(_drain(t)) == ["late"]
        now[0] = 8.0  # 4 s since it last grew
        assert _drain(t) == []
        writer.write(b"no newline")
        now[0] = 8.5
        assert _drain(t) == []
        now[0] = 20.0  # left: its unterminated last line is delivered, then the new file
        assert _texts(_drain(t)) == ["no newline", "new 1"]


def test_a_missing_path_is_waited_for(tmp_path, log):
    with _tailer(log, tmp_path) as t:
        assert t.poll() == []
        _append(log, "hello")
        assert _texts(_drain(t)) == ["hello"]


def test_a_deleted_path_is_drained_then_waited_for(tmp_path, log):
    with open(log, "ab", buffering=0) as writer, _tailer(log, tmp_path) as t:
        writer.write(b"a\n")
        assert _texts(_drain(t)) == ["a"]
        writer.write(b"b\n")
        log.unlink()
        writer.write(b"c\n")  # written to the deleted file
        assert _texts(_drain(t)) == ["b", "c"]
        assert t.poll() == []
    with _tailer(log, tmp_path) as t:
        assert t.poll() == []
        _append(log, "reborn")
        assert _texts(_drain(t)) == ["reborn"]


# -- rotation by copytruncate ----------------------------------------------------------------


def _copytruncate(log: Path) -> None:
    shutil.copyfile(log, log.with_name(log.name + ".1"))
    with open(log, "r+b") as fh:
        fh.truncate(0)


def test_copytruncate_reads_the_unread_tail_from_the_copy_then_the_file_from_0(tmp_path, log):
    _append(log, *(f"old {i}" for i in range(8)))
    with _tailer(log, tmp_path, max_lines=3) as t:
        first = t.poll()
        t.commit(first[0])
        _copytruncate(log)
        _append(log, "new 0", "new 1")
        rest = _drain(t)
        assert _texts(first + rest) == [f"old {i}" for i in range(8)] + ["new 0", "new 1"]
        copy_inode = (tmp_path / "access.log.1").stat().st_ino
        assert {c.inode for c in rest if c.lines[0][1].startswith(b"old")} == {copy_inode}
        assert rest[0].start == first[0].end  # the copy is read from our offset
        s = t.stats[str(log)]
        assert (s.truncations, s.lost_rotations) == (1, 0)
        assert t.positions()[str(log)]["inode"] == log.stat().st_ino


def test_copytruncate_without_a_copy_when_caught_up_loses_nothing(tmp_path, log, caplog):
    _append(log, "a", "b")
    with _tailer(log, tmp_path) as t:
        assert _texts(_drain(t)) == ["a", "b"]
        with open(log, "r+b") as fh:
            fh.truncate(0)
        assert t.poll() == []
        _append(log, "c")
        assert _texts(_drain(t)) == ["c"]
        s = t.stats[str(log)]
        assert (s.truncations, s.lost_rotations) == (1, 0)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_copytruncate_with_unread_lines_and_no_copy_warns(tmp_path, log, caplog):
    _append(log, *(f"old {i}" for i in range(6)))
    with _tailer(log, tmp_path, max_lines=2) as t:
        t.commit(t.poll()[0])
        with open(log, "r+b") as fh:  # copied and compressed at once: no plain copy
            fh.truncate(0)
        _append(log, "new 0")
        assert _texts(_drain(t)) == ["new 0"]
        assert t.stats[str(log)].lost_rotations == 1
    assert any("truncated" in r.getMessage() for r in caplog.records if r.levelname == "WARNING")


# -- checkpoints and restarts ----------------------------------------------------------------


def test_the_checkpoint_file(tmp_path, log):
    body = "".join(f"GET /items/{i} 200\n" for i in range(40)).encode()
    log.write_bytes(body)
    ck = tmp_path / "state" / "tail.json"
    with Tailer([log], ck) as t:
        (c,) = t.poll()
        t.commit(c)
        entry = json.loads(ck.read_text())[str(log)]
        assert t.positions() == {str(log): entry}
    assert set(entry) == {"inode", "offset", "fingerprint", "updated"}
    assert entry["inode"] == log.stat().st_ino
    assert entry["offset"] == len(body)
    assert entry["fingerprint"] == body[:FINGERPRINT_BYTES].hex()
    assert entry["updated"].endswith("+00:00")
    assert sorted(p.name for p in ck.parent.iterdir()) == ["tail.json"]  # no temporary left


def test_a_broken_checkpoint_is_refused(tmp_path, log):
    ck = tmp_path / "tail.json"
    ck.write_text('{"x": 1}')
    with pytest.raises(ValueError, match="not a tail checkpoint"):
        Tailer([log], ck)


def test_restart_continues_from_the_checkpoint(tmp_path, log):
    lines = [f"line {i}" for i in range(20)]
    _append(log, *lines[:12])
    with _tailer(log, tmp_path, max_lines=5) as t1:
        got = []
        for _ in range(2):
            (c,) = t1.poll()
            got += _texts([c])
            t1.commit(c)
    _append(log, *lines[12:])
    with _tailer(log, tmp_path, max_lines=5) as t2:
        got += _texts(_drain(t2))
    assert got == lines


def test_a_chunk_handled_but_not_committed_is_delivered_again(tmp_path, log):
    _append(log, *(f"line {i}" for i in range(6)))
    with _tailer(log, tmp_path, max_lines=4) as t1:
        t1.commit(t1.poll()[0])
        uncommitted = t1.poll()  # the process dies before committing this one
    with _tailer(log, tmp_path, max_lines=4) as t2:
        assert _drain(t2) == uncommitted


def test_restart_after_a_rotation_while_stopped_drains_the_rotated_file(tmp_path, log, caplog):
    old = [f"old {i}" for i in range(10)]
    _append(log, *old[:8])
    with _tailer(log, tmp_path, max_lines=4) as t1:
        got = _texts([c := t1.poll()[0]])
        t1.commit(c)
    _append(log, *old[8:])
    log.rename(tmp_path / "access.log.1")
    _append(log, "new 0", "new 1")
    past = time.time() - 60
    os.utime(tmp_path / "access.log.1", (past, past))
    with _tailer(log, tmp_path, max_lines=4, rotate_wait_s=5) as t2:
        got += _texts(_drain(t2))  # left long ago: no rotate wait
        s = t2.stats[str(log)]
        assert (s.rotations, s.lost_rotations) == (1, 0)
    assert got == [*old, "new 0", "new 1"]
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_restart_finds_a_dateext_rotated_file(tmp_path, log):
    _append(log, "a", "b")
    with _tailer(log, tmp_path, max_lines=1) as t1:
        t1.commit(t1.poll()[0])
    log.rename(tmp_path / "access.log-20250101")
    (tmp_path / "access.log.2.gz").write_bytes(gzip.compress(b"zzz\n"))
    _append(log, "c")
    with _tailer(log, tmp_path) as t2:
        assert _texts(_drain(t2)) == ["b", "c"]


def test_restart_with_the_rotated_file_gone_warns_and_reads_the_new_file(tmp_path, log, caplog):
    _append(log, "a", "b")
    with _tailer(log, tmp_path, max_lines=1) as t1:
        t1.commit(t1.poll()[0])
    log.rename(tmp_path / "access.log.1.gz")  # compressed: not looked into
    _append(log, "c")
    with _tailer(log, tmp_path) as t2:
        assert _texts(_drain(t2)) == ["c"]
        assert t2.stats[str(log)].lost_rotations == 1
    assert any("not found" in r.getMessage() for r in caplog.records if r.levelname == "WARNING")


def test_a_file_read_to_its_end_and_left_needs_no_search_on_restart(tmp_path, log, caplog):
    _append(log, "a")
    with _tailer(log, tmp_path) as t1:
        _drain(t1)
        log.rename(tmp_path / "access.log.1")
        log.touch()
        _drain(t1)
        assert t1.positions()[str(log)]["done"] is True
    (tmp_path / "access.log.1").unlink()
    _append(log, "b")
    with _tailer(log, tmp_path) as t2:
        assert _texts(_drain(t2)) == ["b"]
        assert t2.stats[str(log)].lost_rotations == 0
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_restart_after_copytruncate_while_stopped_reads_the_copy_tail(tmp_path, log):
    _append(log, *(f"old {i}" for i in range(6)))
    with _tailer(log, tmp_path, max_lines=2) as t1:
        t1.commit(t1.poll()[0])
    _copytruncate(log)
    _append(log, "new 0")
    with _tailer(log, tmp_path) as t2:
        assert _texts(_drain(t2)) == [f"old {i}" for i in range(2, 6)] + ["new 0"]
        assert t2.stats[str(log)].truncations == 1


def test_a_new_file_under_the_path_is_read_from_the_start(tmp_path, log, caplog):
    _append(log, "a", "b")
    with _tailer(log, tmp_path) as t1:
        _drain(t1)
    log.unlink()
    _append(log, "x", "y", "z")  # another inode, another fingerprint
    with _tailer(log, tmp_path) as t2:
        assert _texts(_drain(t2)) == ["x", "y", "z"]


def test_the_same_content_under_a_new_inode_resumes(tmp_path, log):
    _append(log, "a", "b")
    with _tailer(log, tmp_path) as t1:
        _drain(t1)
    _append(log, "c")
    shutil.copyfile(log, tmp_path / "copy")
    (tmp_path / "copy").replace(log)
    with _tailer(log, tmp_path) as t2:
        assert _texts(_drain(t2)) == ["c"]


def test_start_at_end_skips_what_is_there_unless_checkpointed(tmp_path, log):
    log.write_bytes(b"a\nb\npart")
    other = tmp_path / "other.log"
    with Tailer([log, other], tmp_path / "tail.json", start_at="end") as t:
        assert t.poll() == []
        with open(log, "ab") as fh:
            fh.write(b"ial\nc\n")
        _append(other, "appeared later")  # new since we started: read from its start
        assert _texts(_drain(t)) == ["partial", "c", "appeared later"]
    _append(log, "d")
    with Tailer([log, other], tmp_path / "tail.json", start_at="end") as t:
        assert _texts(_drain(t)) == ["d"]


# -- what is refused --------------------------------------------------------------------------


def test_gzip_files_are_refused(tmp_path, log):
    log.write_bytes(gzip.compress(b"a\n"))
    with pytest.raises(ValueError, match=re.escape(str(log))):
        _tailer(log, tmp_path)
    with pytest.raises(ValueError, match=re.escape("access.log.gz")):
        _tailer(tmp_path / "access.log.gz", tmp_path)
    later = tmp_path / "later.log"
    with _tailer(later, tmp_path) as t:
        later.write_bytes(gzip.compress(b"a\n"))
        with pytest.raises(ValueError, match="gzip"):
            t.poll()


# -- run ----------------------------------------------------------------------------------------


def test_run_handles_then_commits_and_stops(tmp_path, log):
    _append(log, *(f"line {i}" for i in range(10)))
    t = _tailer(log, tmp_path, max_lines=3, poll_s=0.01)
    stop = threading.Event()
    seen: list[str] = []

    def handle(chunk: Chunk) -> None:
        before = t.positions().get(str(log), {}).get("offset", 0)
        assert before == chunk.start  # the previous chunk was committed first
        seen.extend(_texts([chunk]))
        if len(seen) == 10:
            stop.set()

    runner = threading.Thread(target=t.run, args=(handle, stop))
    runner.start()
    runner.join(timeout=30)
    assert not runner.is_alive()
    assert seen == [f"line {i}" for i in range(10)]
    assert t.positions()[str(log)]["offset"] == log.stat().st_size
    t.close()


def test_run_returns_after_the_current_chunk_and_keeps_the_rest(tmp_path, log):
    other = tmp_path / "other.log"
    _append(log, "a")
    _append(other, "b")
    with Tailer([log, other], tmp_path / "tail.json") as t:
        stop = threading.Event()
        seen: list[Chunk] = []
        t.run(lambda c: (seen.append(c), stop.set()), stop)
        assert _texts(seen) == ["a"]
        assert set(t.positions()) == {str(log)}
        assert _texts(t.poll()) == ["b"]


def test_a_chunk_whose_handling_fails_is_not_committed_and_comes_again(tmp_path, log):
    _append(log, "a")
    with _tailer(log, tmp_path) as t:

        def fail(chunk: Chunk) -> None:
            raise RuntimeError("parser down")

        with pytest.raises(RuntimeError):
            t.run(fail, threading.Event())
        assert t.positions() == {}
        assert _texts(t.poll()) == ["a"]


# -- a real crash -------------------------------------------------------------------------------

MAX_LINES = 7
CHILD = r"""
import os, signal, sys, threading
from pathlib import Path

sys.path.insert(0, sys.argv[1])
from telemetry.ingest.tail import Tailer

log, ckpt, out = (Path(a) for a in sys.argv[2:5])
mode, n = sys.argv[5], int(sys.argv[6])
tailer = Tailer([log], ckpt, poll_s=0.005, max_lines=int(sys.argv[7]), rotate_wait_s=0)
fd = os.open(out, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
handled, inodes = 0, set()


def handle(chunk):
    global handled
    os.write(fd, b"".join(line + b"\n" for _, line in chunk.lines))
    os.fsync(fd)  # the lines are out before the chunk is committed
    handled += 1
    inodes.add(chunk.inode)
    if (mode == "after" and handled == n) or (mode == "switch" and len(inodes) > 1):
        os.kill(os.getpid(), signal.SIGKILL)  # between handle and commit: the worst moment


tailer.run(handle, threading.Event())
"""


class _Child:
    def __init__(self, tmp_path: Path, log: Path, mode: str = "run", n: int = 0) -> None:
        self.err = tmp_path / "child.err"
        self.out = tmp_path / "out.txt"
        args = [str(ROOT), str(log), str(tmp_path / "tail.json"), str(self.out), mode, str(n)]
        with open(self.err, "ab") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", CHILD, *args, str(MAX_LINES)], stderr=err
            )

    def killed(self, timeout: float = 60) -> None:
        """Wait for the child to kill itself."""
        rc = self.proc.wait(timeout=timeout)
        assert rc == -signal.SIGKILL, self.err.read_text()

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)

    def lines(self) -> list[bytes]:
        return self.out.read_bytes().splitlines() if self.out.exists() else []

    def wait_for(self, line: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while line.encode() not in set(self.lines()):
            assert self.proc.poll() is None, self.err.read_text()
            assert time.monotonic() < deadline, f"{line!r} never came out"
            time.sleep(0.01)


def test_kill_9_mid_file_and_during_rotations_loses_nothing(tmp_path, log):
    expected: list[str] = []

    def write(path: Path, n: int) -> None:
        lines = [
            f"{len(expected) + i:06d} GET /items/{i % 97} 200 {'x' * (i % 23)}" for i in range(n)
        ]
        _append(path, *lines)
        expected.extend(lines)

    def rotate() -> None:
        one = tmp_path / "access.log.1"
        if one.exists():
            one.rename(tmp_path / "access.log.2")
        log.rename(one)

    write(log, 1000)
    _Child(tmp_path, log, "after", 20).killed()  # mid-file, chunk 20 handled, not committed

    write(log, 500)  # while stopped: more lines, then rename and create
    rotate()
    write(log, 500)
    _Child(tmp_path, log, "after", 30).killed()  # mid-way through draining access.log.1
    _Child(tmp_path, log, "switch").killed()  # on the first chunk of the new file

    child = _Child(tmp_path, log)
    child.wait_for(expected[-1])
    for _ in range(5):  # while it runs: batches, a line written in two halves
        write(log, 60)
        time.sleep(0.01)
    with open(log, "ab") as fh:
        fh.write(b"999999 written in two")
    time.sleep(0.02)
    with open(log, "ab") as fh:
        fh.write(b" halves\n")
    expected.append("999999 written in two halves")
    write(log, 200)
    rotate()  # lines of the old file probably unread, and kill -9 right away
    write(log, 300)
    child.kill()

    child = _Child(tmp_path, log)
    write(log, 100)
    child.wait_for(expected[-1])
    child.kill()

    out = [line.decode() for line in child.lines()]
    counts = Counter(out)
    assert set(out) == set(expected)
    assert list(dict.fromkeys(out)) == expected  # in order, every line once at least
    assert max(counts.values()) == 2
    dups = sum(n - 1 for n in counts.values())
    # The three self-inflicted kills redeliver their chunk: 7 lines, 7 lines, and the first
    # chunk of the new file (5 lines: the old file's last chunk had 2). The outside kill
    # may add one more chunk.
    assert 19 <= dups <= 19 + MAX_LINES
