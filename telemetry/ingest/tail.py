"""Follow growing access logs across rotation, with a checkpoint (``gatewise ingest --follow``).

The file mechanics of a tail input (as in Filebeat or Fluent Bit): ``Tailer`` reads the new
complete lines of each followed file and hands them to the caller in ``Chunk`` s; the caller
parses them and, once a chunk is handled, the tailer records how far it got. Parsing is not
done here.

    tailer = Tailer([Path("/var/log/nginx/access.log")], Path(".gatewise/tail.json"))
    tailer.run(handle, stop)  # poll, handle(chunk), commit(chunk), ... until stop is set

Lines
    Only complete lines (ending in ``\\n``) are delivered, without their ``\\n`` or ``\\r\\n``;
    a partial last line waits for its newline. Blank lines are skipped but counted in the
    byte offsets. Every line comes with the byte offset of its start in its file, so that
    (file, inode, offset) names it. A chunk covers the bytes ``[start, end)`` of one file: the
    chunks of a file tile it, and ``start`` is the previous chunk's ``end`` (the first line's
    offset unless the chunk begins with blank lines; a chunk of blank lines only has no lines
    but still moves the checkpoint). A poll reads at most ``max_lines`` lines per followed path.

Checkpoint
    A JSON object, one entry per followed path (the path as given)::

        {"/var/log/nginx/access.log": {"inode": 1234, "offset": 56789,
                                        "fingerprint": "3132372e...", "updated": "2025-..."}}

    ``offset`` is the end of the last committed chunk of the file with that inode;
    ``fingerprint`` is the hex of its first (up to) 256 bytes; ``updated`` the UTC time of the
    commit. ``"done": true`` is added once the file is fully read and has been left for its
    successor at the path (so a restart need not look for it). ``commit`` writes the file
    atomically: a temporary file, fsync, ``os.replace``, fsync of the directory.

    On start, a path whose file has the checkpoint's inode and fingerprint (the first bytes
    still begin with it) resumes at the offset. A file with no entry starts at the beginning
    (``start_at="end"``: after its last complete line; only for files present when the tailer
    is created, a file that appears later is new and read from its start). A file with another
    inode is new and read from 0, after the checkpointed inode has been looked for beside it
    (see rotation below); if that is not found but the file has the same fingerprint and is long
    enough (the same content under a new inode, as after a copy or a move across file systems),
    it resumes at the offset instead.

Delivery
    At least once, per chunk: ``run`` commits a chunk after ``handle`` returns, so only a crash
    between the two delivers that one chunk again (the caller deduplicates on ids made from
    content and offset). Nothing else is delivered twice. Chunks must be committed in the order
    ``poll`` returned them (``run`` does so).

Rotation by rename and create (logrotate's default)
    When the path names another file (or none), the old file is kept open and read to its end
    before the new one is read from offset 0, so lines of each file arrive in order and the old
    file's late lines are not lost. The old file is left ``rotate_wait_s`` seconds after it last
    grew (a writer keeps writing to it until it reopens the log); its last line is then
    delivered even without a newline, since nothing will complete it. The new file's lines wait
    meanwhile. A deleted path is handled the same way: its open file is drained, then the path
    is waited for.

    If the rotation happened while the tailer was stopped (the path has another inode than the
    checkpoint), the old inode is looked for beside the path: ``<name>.1`` first, then
    ``<name>-*`` and ``<name>.*`` (newest first; compressed files skipped), and must still
    begin with the fingerprint. It is drained from the checkpoint offset, then the new file is
    read from 0. If it cannot be found (compressed, deleted), a warning is logged and counted in
    ``stats[path].lost_rotations``: the lines after the offset are lost to the tailer. Only one
    rotation is recovered this way: a file rotated twice while the tailer was stopped has its
    intermediate file skipped.

Rotation by copytruncate
    The file keeps its inode and becomes shorter than the offset (or its first bytes change):
    it is read again from 0, so the lines written to it after the truncation are not lost.
    logrotate copies the file to ``<name>.1`` and then truncates it, which opens two windows:

    * lines the tailer had not read when the file was truncated exist only in the copy. If a
      sibling (``<name>.1`` first) begins with our fingerprint and is longer than our offset,
      its tail from our offset is read first, which closes this window. Without such a copy
      (compressed at once, no ``delaycompress``) the unread lines are lost to the tailer and a
      warning is logged and counted.
    * lines written after logrotate's copy and before its truncation are in neither file (the
      limitation logrotate documents for copytruncate); no reader can recover them. Prefer
      rename and create with a reopen signal where the writer supports it.

    A truncation that the file outgrows again before a poll, with the same first 256 bytes,
    cannot be seen.

Not followed
    gzip files (by name or content): ``ValueError`` naming the file; read them with
    ``ingest_files``. ``stats`` counts per path the lines and bytes read, rotations (the file at
    the path renamed away, deleted or found replaced on restart), truncations, and
    lost_rotations (old contents that could not be found to be read).
"""

from __future__ import annotations

import copy
import json
import logging
import os
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

__all__ = ["FINGERPRINT_BYTES", "Chunk", "PathStats", "Tailer"]

log = logging.getLogger(__name__)

FINGERPRINT_BYTES = 256
_BLOCK = 1 << 16
_GZIP_MAGIC = b"\x1f\x8b"
_COMPRESSED = (".gz", ".bz2", ".xz", ".zst", ".lz4", ".Z", ".zip")

_Kind = Literal["live", "rotated", "copy"]


@dataclass(frozen=True)
class Chunk:
    """Consecutive complete lines of one file, read in one poll."""

    path: str  # the followed path as given (the name, not the rotated name)
    inode: int
    start: int  # byte offset where this chunk begins (the previous chunk's end)
    lines: list[tuple[int, bytes]]  # (offset of the line start, line without its newline)
    end: int  # byte offset just after the last complete line consumed


@dataclass
class PathStats:
    lines: int = 0
    bytes: int = 0
    rotations: int = 0
    truncations: int = 0
    lost_rotations: int = 0


@dataclass(eq=False)
class _Source:
    """An open file read for a followed path: the file at the path, or one it replaced."""

    fh: Any  # io.FileIO: closed on garbage collection if the tailer is dropped
    inode: int
    offset: int  # next unread byte: the end of the last complete line consumed
    kind: _Kind
    size: int = 0  # as of the last fstat
    fingerprint: bytes = b""
    quiet_since: float = 0.0  # rotated: when it was left or last grew
    delivered: bool = False

    @property
    def fd(self) -> int:
        return int(self.fh.fileno())


@dataclass(eq=False)
class _Followed:
    name: str
    path: Path
    queue: list[_Source]  # read in order; only the last may be the file at the path ("live")
    entry: dict[str, Any] | None  # checkpoint entry not yet matched with a file


class Tailer:
    """Follow ``paths`` (plain text files), checkpointing into ``checkpoint``."""

    def __init__(
        self,
        paths: list[Path],
        checkpoint: Path,
        *,
        poll_s: float = 0.25,
        max_lines: int = 50_000,
        start_at: Literal["beginning", "end"] = "beginning",
        rotate_wait_s: float = 5.0,
    ) -> None:
        if max_lines < 1:
            raise ValueError("max_lines must be at least 1")
        if start_at not in ("beginning", "end"):
            raise ValueError(f"start_at must be 'beginning' or 'end', not {start_at!r}")
        self.checkpoint = Path(checkpoint)
        self.poll_s = poll_s
        self.max_lines = max_lines
        self.start_at = start_at
        self.rotate_wait_s = rotate_wait_s
        self._clock: Callable[[], float] = time.monotonic
        self._lock = threading.Lock()
        self._state = self._load()
        self._fps: dict[tuple[str, int], bytes] = {}
        self._final: dict[tuple[str, int], int] = {}
        self._pending: list[Chunk] = []
        self._files: list[_Followed] = []
        for p in dict.fromkeys(Path(p) for p in paths):
            if p.name.endswith(_COMPRESSED):
                raise ValueError(f"{p}: a compressed file cannot be followed; ingest it instead")
            self._files.append(_Followed(str(p), p, [], self._state.get(str(p))))
        self.stats: dict[str, PathStats] = {f.name: PathStats() for f in self._files}
        try:
            for f in self._files:
                self._discover(f, initial=True)
        except BaseException:
            self.close()
            raise

    # -- the public loop -------------------------------------------------------------------

    def poll(self) -> list[Chunk]:
        """One pass: the new complete lines of every followed file, at most max_lines each."""
        chunks, self._pending = self._pending, []
        try:
            for f in self._files:
                chunks.extend(self._poll_file(f))
        except BaseException:
            self._pending = chunks  # read already: returned by the next poll
            raise
        return chunks

    def commit(self, chunk: Chunk) -> None:
        """Record that ``chunk`` is handled: its end becomes the path's checkpoint offset."""
        key = (chunk.path, chunk.inode)
        with self._lock:
            prev = self._state.get(chunk.path)
            fp = self._fps.get(key)
            if fp is None:
                same = prev is not None and prev.get("inode") == chunk.inode
                fp = bytes.fromhex(prev["fingerprint"]) if same and prev else b""
            entry: dict[str, Any] = {
                "inode": chunk.inode,
                "offset": chunk.end,
                "fingerprint": fp.hex(),
                "updated": _now(),
            }
            if self._final.get(key) == chunk.end:
                entry["done"] = True
                del self._final[key]
                self._fps.pop(key, None)
            self._state[chunk.path] = entry
            self._write()

    def run(self, handle: Callable[[Chunk], None], stop: threading.Event) -> None:
        """Poll, handle and commit each chunk, sleeping ``poll_s`` when idle, until ``stop``.

        Returns once ``stop`` is set, after the chunk being handled is committed; chunks read
        but not handled yet (or whose handling raised) are returned first by the next poll.
        """
        while not stop.is_set():
            chunks = self.poll()
            for i, chunk in enumerate(chunks):
                try:
                    handle(chunk)
                    self.commit(chunk)
                except BaseException:
                    self._pending = chunks[i:]
                    raise
                if stop.is_set():
                    self._pending = chunks[i + 1 :]
                    return
            if not chunks:
                stop.wait(self.poll_s)

    def first_line(self, chunk: Chunk, limit: int = 4096) -> bytes | None:
        """The first line (with its newline, at most ``limit`` bytes) of the file a chunk came
        from, read through the open file: what ``readers.file_fingerprint`` gives for it, so
        ids derived while following match those of a later batch ingest of the same file."""
        for f in self._files:
            for src in f.queue:
                if src.inode == chunk.inode and f.name == chunk.path:
                    head = os.pread(src.fd, limit, 0)
                    cut = head.find(b"\n")
                    return head if cut < 0 else head[: cut + 1]
        return None

    def positions(self) -> dict[str, dict[str, Any]]:
        """What the checkpoint holds: {path: {inode, offset, fingerprint, updated[, done]}}."""
        with self._lock:
            return copy.deepcopy(self._state)

    def close(self) -> None:
        """Close the open files (the checkpoint is already on disk)."""
        for f in self._files:
            for src in f.queue:
                src.fh.close()
            f.queue.clear()

    def __enter__(self) -> Tailer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- one followed path -----------------------------------------------------------------

    def _poll_file(self, f: _Followed) -> list[Chunk]:
        self._discover(f)
        chunks: list[Chunk] = []
        budget = self.max_lines
        while f.queue and budget > 0:
            src = f.queue[0]
            self._refresh(f, src)
            final = self._leaving(src)
            chunk, at_eof = self._read(f, src, budget, final=final)
            if chunk is not None:
                chunks.append(chunk)
                budget -= len(chunk.lines)
            if not (final and at_eof):
                break
            self._close_out(f, src)
            f.queue.pop(0)
        return chunks

    def _discover(self, f: _Followed, *, initial: bool = False) -> None:
        """Match the file now at the path with what is open: rotation, truncation, new file."""
        st = _stat(f.path)
        last = f.queue[-1] if f.queue else None
        if last is not None and st is not None and (st.st_ino, st.st_dev) == _ident(last):
            if last.kind == "rotated":  # moved back
                last.kind = "live"
            if last.kind == "live":
                self._check_truncation(f, last)
            return
        if last is not None and last.kind == "live":
            self._leave(f, last)
        if st is None:
            if initial and f.entry is not None:
                self._resume_missing(f)
            return
        src = self._open(f.path)
        if src is None:
            return
        if f.entry is not None:
            self._resume(f, src)
        elif initial and self.start_at == "end":
            src.offset = _last_line_end(src)
        f.queue.append(src)

    def _leave(self, f: _Followed, src: _Source) -> None:
        log.info("%s: rotated or deleted (inode %d); draining it", f.name, src.inode)
        src.kind = "rotated"
        src.quiet_since = self._clock()
        self.stats[f.name].rotations += 1

    def _leaving(self, src: _Source) -> bool:
        """Whether ``src`` is read for the last time (then its last partial line counts)."""
        if src.kind == "copy":
            return True
        return src.kind == "rotated" and self._clock() - src.quiet_since >= self.rotate_wait_s

    def _close_out(self, f: _Followed, src: _Source) -> None:
        src.fh.close()
        key = (f.name, src.inode)
        with self._lock:
            entry = self._state.get(f.name)
            if entry and entry.get("inode") == src.inode and entry.get("offset") == src.offset:
                entry["done"] = True
                self._fps.pop(key, None)
                self._write()
            elif src.delivered:
                self._final[key] = src.offset  # its last chunk's commit marks it done
        log.info("%s: finished inode %d at offset %d", f.name, src.inode, src.offset)

    # -- truncation and restart ------------------------------------------------------------

    def _check_truncation(self, f: _Followed, live: _Source) -> None:
        if live.offset == 0 and not live.fingerprint:
            return
        head = os.pread(live.fd, FINGERPRINT_BYTES, 0)
        size = os.fstat(live.fd).st_size
        fp = live.fingerprint
        if size >= live.offset and size >= len(fp) and head.startswith(fp):
            return
        log.info(
            "%s: truncated (copytruncate?) at offset %d; reading it from 0", f.name, live.offset
        )
        stats = self.stats[f.name]
        stats.truncations += 1
        unread = live.size > live.offset
        self._recover_copy(f, fp, live.offset, exclude=live.inode, unread=unread)
        live.offset = 0
        live.size = size
        live.fingerprint = head

    def _recover_copy(
        self, f: _Followed, fp: bytes, offset: int, *, exclude: int, unread: bool
    ) -> None:
        """Queue the tail (from ``offset``) of the copy a copytruncate left beside the path."""
        copy_src = self._find_sibling(f, fingerprint=fp, min_size=offset, exclude=exclude)
        if copy_src is None:
            if unread:
                self._lost(f, f"truncated at offset {offset} and no copy beginning like it found")
            return
        if copy_src.size == offset:
            copy_src.fh.close()  # nothing in the copy we had not read
            return
        copy_src.kind = "copy"
        copy_src.offset = offset
        log.info("%s: reading the copy (inode %d) from offset %d", f.name, copy_src.inode, offset)
        at = len(f.queue) - 1 if f.queue and f.queue[-1].kind == "live" else len(f.queue)
        f.queue.insert(at, copy_src)

    def _resume(self, f: _Followed, src: _Source) -> None:
        """First sight of the path's file since a checkpoint entry: where to start, what first."""
        entry, f.entry = f.entry, None
        assert entry is not None
        inode, offset, fp = int(entry["inode"]), int(entry["offset"]), _fp(entry)
        same_content = src.size >= offset and src.fingerprint.startswith(fp)
        if src.inode == inode:
            if same_content:
                src.offset = offset
                return
            log.info("%s: truncated while stopped (inode %d); reading it from 0", f.name, inode)
            self.stats[f.name].truncations += 1
            self._recover_copy(f, fp, offset, exclude=inode, unread=True)
            return
        if entry.get("done"):
            return  # the old file was read to its end: this one is its successor
        if self._queue_old(f, inode, offset, fp):
            return
        if fp and same_content:
            src.offset = offset  # the same file under a new inode (copied or moved)
            return
        self.stats[f.name].rotations += 1
        self._lost(f, f"rotated while stopped and its old inode {inode} was not found")

    def _resume_missing(self, f: _Followed) -> None:
        """The path is missing at start: drain its checkpointed file if it was renamed."""
        entry = f.entry
        assert entry is not None
        if entry.get("done"):
            return
        if self._queue_old(f, int(entry["inode"]), int(entry["offset"]), _fp(entry)):
            f.entry = None

    def _queue_old(self, f: _Followed, inode: int, offset: int, fp: bytes) -> bool:
        old = self._find_sibling(f, inode=inode, fingerprint=fp, min_size=offset)
        if old is None:
            return False
        log.info("%s: draining its rotated file (inode %d) from offset %d", f.name, inode, offset)
        self.stats[f.name].rotations += 1
        old.kind = "rotated"
        old.offset = offset
        # left while stopped: its writer has had since its last write to move to the new file
        age = max(0.0, time.time() - os.fstat(old.fd).st_mtime)
        old.quiet_since = self._clock() - age
        f.queue.append(old)
        return True

    def _lost(self, f: _Followed, why: str) -> None:
        log.warning("%s: %s; lines it had after the checkpoint may be lost", f.name, why)
        self.stats[f.name].lost_rotations += 1

    def _find_sibling(
        self,
        f: _Followed,
        *,
        fingerprint: bytes,
        min_size: int,
        inode: int | None = None,
        exclude: int | None = None,
    ) -> _Source | None:
        """The first sibling (see ``_siblings``) with that inode, fingerprint and size."""
        if not fingerprint:
            return None
        for cand in self._siblings(f.path):
            st = _stat(cand)
            if st is None or st.st_size < min_size or st.st_ino == exclude:
                continue
            if inode is not None and st.st_ino != inode:
                continue
            try:
                fh = open(cand, "rb", buffering=0)  # noqa: SIM115 -- kept open by the _Source
            except OSError:
                continue
            fst = os.fstat(fh.fileno())
            head = os.pread(fh.fileno(), FINGERPRINT_BYTES, 0)
            same = inode is None or fst.st_ino == inode
            if not same or head.startswith(_GZIP_MAGIC) or not head.startswith(fingerprint):
                fh.close()
                continue
            return _Source(fh, fst.st_ino, 0, "rotated", fst.st_size, head)
        return None

    def _siblings(self, path: Path) -> list[Path]:
        """Where rotation puts a file: ``<name>.1``, then ``<name>-*``, ``<name>.*`` by mtime."""
        name, parent = path.name, path.parent
        try:
            entries = os.listdir(parent)
        except OSError:
            return []
        ours = {os.path.abspath(self.checkpoint), os.path.abspath(self._tmp)}
        first = [parent / f"{name}.1"] if f"{name}.1" in entries else []
        others: list[tuple[float, Path]] = []
        for e in entries:
            if e in (name, f"{name}.1") or e.endswith(_COMPRESSED):
                continue
            if os.path.abspath(parent / e) in ours:
                continue
            if e.startswith((f"{name}.", f"{name}-")):
                st = _stat(parent / e)
                if st is not None and stat.S_ISREG(st.st_mode):
                    others.append((st.st_mtime, parent / e))
        others.sort(key=lambda t: t[0], reverse=True)
        return first + [p for _, p in others]

    # -- reading ---------------------------------------------------------------------------

    def _open(self, path: Path) -> _Source | None:
        try:
            fh = open(path, "rb", buffering=0)  # noqa: SIM115 -- kept open by the _Source
        except FileNotFoundError:
            return None
        st = os.fstat(fh.fileno())
        if not stat.S_ISREG(st.st_mode):
            fh.close()
            raise ValueError(f"{path}: not a regular file; only plain log files can be followed")
        src = _Source(fh, st.st_ino, 0, "live", st.st_size)
        try:
            self._refresh_fingerprint(path, src)
        except BaseException:
            fh.close()
            raise
        return src

    def _refresh(self, f: _Followed, src: _Source) -> None:
        size = os.fstat(src.fd).st_size
        if size > src.size and src.kind == "rotated":
            src.quiet_since = self._clock()
        src.size = size
        if src.kind == "live":
            self._refresh_fingerprint(f.path, src)

    def _refresh_fingerprint(self, path: Path, src: _Source) -> None:
        if len(src.fingerprint) >= FINGERPRINT_BYTES:
            return
        head = os.pread(src.fd, FINGERPRINT_BYTES, 0)
        if head.startswith(src.fingerprint):
            src.fingerprint = head
        if src.fingerprint.startswith(_GZIP_MAGIC):
            raise ValueError(
                f"{path}: is gzip-compressed; follow mode reads plain files only (ingest it instead)"
            )

    def _read(
        self, f: _Followed, src: _Source, budget: int, *, final: bool
    ) -> tuple[Chunk | None, bool]:
        """Up to ``budget`` lines from ``src.offset``, and whether its end was reached.

        ``final``: the file will not grow, so a last line without a newline counts.
        """
        lines: list[tuple[int, bytes]] = []
        start = pos = src.offset
        buf = b""
        at_eof = False
        while len(lines) < budget:
            block = os.pread(src.fd, _BLOCK, pos + len(buf))
            if not block:
                at_eof = True
                break
            buf += block
            i = 0
            while len(lines) < budget:
                nl = buf.find(b"\n", i)
                if nl < 0:
                    break
                _take(lines, pos + i, buf[i:nl])
                i = nl + 1
            buf, pos = buf[i:], pos + i
        if at_eof and final and buf:
            if len(lines) < budget:
                _take(lines, pos, buf)
                pos += len(buf)
            else:
                at_eof = False
        if pos == start:
            return None, at_eof
        src.offset = pos
        src.delivered = True
        if len(src.fingerprint) < FINGERPRINT_BYTES and src.kind == "live":
            self._refresh_fingerprint(f.path, src)
        self._fps[(f.name, src.inode)] = src.fingerprint
        stats = self.stats[f.name]
        stats.lines += len(lines)
        stats.bytes += pos - start
        return Chunk(f.name, src.inode, start, lines, pos), at_eof

    # -- the checkpoint file ---------------------------------------------------------------

    @property
    def _tmp(self) -> Path:
        return self.checkpoint.with_name(self.checkpoint.name + ".tmp")

    def _load(self) -> dict[str, dict[str, Any]]:
        try:
            text = self.checkpoint.read_text()
        except FileNotFoundError:
            return {}
        try:
            state = json.loads(text)
            ok = isinstance(state, dict) and all(_valid_entry(e) for e in state.values())
        except ValueError:
            ok = False
        if not ok:
            raise ValueError(f"{self.checkpoint}: not a tail checkpoint (JSON of path entries)")
        return dict(state)

    def _write(self) -> None:
        """Replace the checkpoint file atomically and durably (call with the lock held)."""
        parent = self.checkpoint.parent
        parent.mkdir(parents=True, exist_ok=True)
        tmp = self._tmp
        data = json.dumps(self._state, indent=1, sort_keys=True).encode()
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.checkpoint)
        _fsync_dir(parent)


def _take(lines: list[tuple[int, bytes]], offset: int, raw: bytes) -> None:
    if raw.endswith(b"\r"):
        raw = raw[:-1]
    if raw.strip():
        lines.append((offset, raw))


def _last_line_end(src: _Source) -> int:
    """The offset just after the last newline of ``src`` (0 if it has none)."""
    pos = src.size
    while pos > 0:
        n = min(_BLOCK, pos)
        block = os.pread(src.fd, n, pos - n)
        i = block.rfind(b"\n")
        if i >= 0:
            return pos - n + i + 1
        pos -= n
    return 0


def _stat(path: Path) -> os.stat_result | None:
    try:
        return os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None


def _ident(src: _Source) -> tuple[int, int]:
    st = os.fstat(src.fd)
    return st.st_ino, st.st_dev


def _fp(entry: dict[str, Any]) -> bytes:
    return bytes.fromhex(str(entry.get("fingerprint", "")))


def _valid_entry(entry: Any) -> bool:
    if not isinstance(entry, dict):
        return False
    try:
        int(entry["inode"]), int(entry["offset"]), _fp(entry)
    except (KeyError, TypeError, ValueError):
        return False
    return True


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
