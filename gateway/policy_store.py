"""The policy store: the source of truth is ``<data_dir>/policy/active.json``; every
published version is also kept as ``history/v<N>.json``. Writes are atomic and serialised by
a file lock, so N gateway replicas and the monitor can share one directory.

    store = PolicyStore(settings.policy_dir)
    policy = store.load()                      # PolicyError names the bad field
    store.publish(policy.model_copy(update={...}), author="alice", reason="...")

``read_history(root)`` is the reader for those who only look (analytics, the dashboard).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from gateway.policy import Policy, PolicyError, initial_policy, parse_policy

__all__ = ["PolicyStore", "active_or_initial", "read_history"]


def active_or_initial(settings: Any) -> Policy:
    """The active policy, or the initial one when none was published yet."""
    store = PolicyStore(settings.policy_dir)
    return store.load() if store.exists() else initial_policy(settings)


class PolicyStore:
    """``active.json`` plus one file per published version, written atomically."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)
        self.active_path = self.root / "active.json"
        self.history_dir = self.root / "history"

    def exists(self) -> bool:
        return self.active_path.exists()

    def load(self) -> Policy:
        if not self.active_path.exists():
            raise PolicyError(f"no policy at {self.active_path}: run `gatewise policy init`")
        return parse_policy(self.active_path.read_bytes(), str(self.active_path))

    def get(self, version: int) -> Policy:
        path = self.history_dir / f"v{version:06d}.json"
        if not path.exists():
            raise PolicyError(f"policy version {version} does not exist")
        return parse_policy(path.read_bytes(), str(path))

    def history(self) -> list[dict[str, Any]]:
        out = []
        for p in sorted(self.history_dir.glob("v*.json")):
            try:
                out.append(parse_policy(p.read_bytes(), str(p)).summary())
            except PolicyError as exc:
                out.append({"file": p.name, "error": str(exc)})
        return out

    def latest_version(self) -> int:
        files = sorted(self.history_dir.glob("v*.json"))
        return int(files[-1].stem[1:]) if files else 0

    def publish(
        self, policy: Policy | dict[str, Any], *, author: str = "gatewise", reason: str = ""
    ) -> Policy:
        """Validate, number (latest + 1) and write; the active file is replaced atomically."""
        doc = policy if isinstance(policy, Policy) else parse_policy(policy)
        self.history_dir.mkdir(parents=True, exist_ok=True)
        with _locked(self.root / ".lock"):
            return self._publish(doc, author, reason)

    def publish_if_absent(self, policy: Policy, *, author: str, reason: str) -> Policy:
        """The first policy, written once even when N replicas start together."""
        self.history_dir.mkdir(parents=True, exist_ok=True)
        with _locked(self.root / ".lock"):
            if self.active_path.exists():
                return self.load()
            return self._publish(policy, author, reason)

    def _publish(self, doc: Policy, author: str, reason: str) -> Policy:
        latest = self.latest_version()
        doc = parse_policy(
            {
                **doc.model_dump(mode="json"),
                "version": latest + 1,
                "parent_version": latest or None,
                "created_at": datetime.now(UTC).isoformat(),
                "author": author or doc.author,
                "reason": reason or doc.reason,
            }
        )
        text = doc.model_dump_json(indent=2)
        _atomic_write(self.history_dir / f"v{doc.version:06d}.json", text)
        _atomic_write(self.active_path, text)
        return doc

    def rollback(self, version: int, *, author: str = "gatewise") -> Policy:
        """Publish a copy of an earlier version as the next version."""
        old = self.get(version)
        return self.publish(old, author=author, reason=f"rollback to v{version}")


def read_history(root: Path | str) -> list[dict[str, Any]]:
    """Every published version's summary, oldest first (an unreadable file: its error)."""
    return PolicyStore(root).history()


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    import fcntl

    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
