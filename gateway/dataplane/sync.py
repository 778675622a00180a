"""Keeps a data plane on the live policy and scores: the loop between gatewise and NGINX.

Every ``poll_s`` the syncer looks at the active policy and the consumers file (their size
and mtime; nothing is read when neither changed). When either changed, it compiles a new
bundle and pushes it to the data plane's admin server, then reads back which version the
data plane enforces (``SyncStatus.enforced``); an invalid document is not pushed and the
data plane keeps the last good one (``SyncStatus.error`` says why). The bundle is also
written to the data plane's directory, so a restarted NGINX starts on it.

Scores: every ``scores_every_s`` it asks serving's ``/score`` for every consumer (batches of
``gateway.scoring.max_batch``) and pushes the answers; the push is also the data plane's
heartbeat: with no push for ``gateway.scoring.max_stale_s`` the data plane treats scoring as
unavailable (``failure_mode``). The stream processor's score push (``stream.score_push``) can
send moved scores to the same admin URL between two refreshes.

    sync = DataPlaneSync(settings, admin, root)
    sync.run(stop)                  # or sync.sync_once() / sync.refresh_scores()
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.auth import ConsumersFile
from gateway.dataplane.bundle import bundle_digest, bundle_text, compile_bundle
from gateway.dataplane.nginx import DataPlaneAdmin, write_bundle
from gateway.policy import PolicyError, initial_policy
from gateway.policy_store import PolicyStore

__all__ = ["DataPlaneSync", "SyncStatus", "compile_active"]

log = logging.getLogger("gatewise.dataplane")


@dataclass
class SyncStatus:
    pushed: int | None = None  # policy version last pushed
    enforced: int | None = None  # the version the data plane reports
    pushes: int = 0
    lag_s: float | None = None  # last push: publish (file mtime) -> enforced
    error: str | None = None
    score_pushes: int = 0
    scores_pushed: int = 0
    score_failures: int = 0
    score_error: str | None = None
    history: list[dict[str, Any]] = field(default_factory=list)


def compile_active(settings: Any, consumers: ConsumersFile | None = None) -> str:
    """The bundle text of the active policy (the initial one is published if there is none)
    and the consumers (default: the file); PolicyError/ValueError name what is wrong."""
    policy = PolicyStore(settings.policy_dir).publish_if_absent(
        initial_policy(settings),
        author="gatewise dataplane",
        reason="initial policy from gatewise.yaml (static tier limits, abuse target in shadow)",
    )
    if consumers is None:
        consumers = ConsumersFile.load(settings.gateway_consumers_path)
    return bundle_text(compile_bundle(policy, consumers, settings.gateway))


class DataPlaneSync:
    def __init__(
        self,
        settings: Any,
        admin: DataPlaneAdmin,
        root: Path | None = None,
        *,
        scoring_client: Any = None,
    ) -> None:
        self.s = settings
        self.admin = admin
        self.root = root
        self.store = PolicyStore(settings.policy_dir)
        self.status = SyncStatus()
        self._stamp: tuple[Any, ...] | None = None
        self._digest: str | None = None
        self._scoring = scoring_client
        self._consumers: tuple[Any, ConsumersFile] | None = None

    def _files(self) -> tuple[Path, Path]:
        return self.store.active_path, self.s.gateway_consumers_path

    def _stamps(self) -> tuple[Any, ...]:
        out: list[Any] = []
        for p in self._files():
            try:
                st = p.stat()
                out.append((st.st_mtime_ns, st.st_size))
            except FileNotFoundError:
                out.append(None)
        return tuple(out)

    def compile(self) -> str:
        """The bundle now; the consumers file is parsed again only when it changed (the
        policy changes far more often than the consumers)."""
        stamp = self._stamps()[1]
        if self._consumers is None or self._consumers[0] != stamp:
            self._consumers = (stamp, ConsumersFile.load(self.s.gateway_consumers_path))
        return compile_active(self.s, self._consumers[1])

    def sync_once(self, force: bool = False) -> bool:
        """Push when the policy or consumers changed; True when a new bundle went out."""
        stamp = self._stamps()
        if stamp == self._stamp and not force:
            return False
        self._stamp = stamp
        try:
            text = self.compile()
        except (PolicyError, ValueError) as exc:
            self.status.error = str(exc)
            log.error("data plane keeps v%s: %s", self.status.enforced, exc)
            return False
        digest = bundle_digest(text)
        if digest == self._digest and not force:
            return False
        if self.root is not None:
            write_bundle(self.root, text)
        try:
            pushed = self.admin.push_bundle(text)
            enforced = self.admin.status().get("policy_version")
        except Exception as exc:  # refused (DataPlaneError), or down/restarting (httpx errors)
            self.status.error = f"push failed: {exc}"
            self._stamp = None  # try again on the next poll
            log.error("data plane push failed: %s", exc)
            return False
        self._digest = digest
        mtime = stamp[0][0] / 1e9 if stamp[0] else None
        st = self.status
        st.pushed, st.enforced, st.error = pushed, enforced, None
        st.pushes += 1
        st.lag_s = None if mtime is None else max(0.0, time.time() - mtime)
        st.history = [*st.history[-19:], {"version": pushed, "at": time.time(), "lag_s": st.lag_s}]
        log.info("data plane enforces policy v%s (%.2fs after publish)", enforced, st.lag_s or 0)
        return True

    # scores -----------------------------------------------------------------------------
    def _client(self) -> Any:
        if self._scoring is None:
            import httpx

            cfg = self.s.gateway.scoring
            self._scoring = httpx.Client(base_url=cfg.url, timeout=max(1.0, cfg.timeout_ms / 100))
        return self._scoring

    def refresh_scores(self) -> int:
        """Ask serving for every consumer's score and push them; 0 when scoring is off."""
        cfg = self.s.gateway.scoring
        if not cfg.enabled:
            return 0
        ids = [c.client_id for c in ConsumersFile.load(self.s.gateway_consumers_path).consumers]
        n = 0
        try:
            for i in range(0, max(1, len(ids)), cfg.max_batch):
                batch = ids[i : i + cfg.max_batch]
                r = self._client().post(
                    "/score", json={"target": cfg.target, "ids": batch, "alias": cfg.alias}
                )
                r.raise_for_status()
                body = r.json()
                mv = body.get("model_version")
                rows = [{"id": str(x["id"]), "score": x.get("score")} for x in body["results"]]
                n += self.admin.push_scores(rows, None if mv is None else str(mv))
        except Exception as exc:  # serving down: the data plane's heartbeat lapses, by design
            self.status.score_failures += 1
            self.status.score_error = str(exc)[:300]
            log.warning("score refresh failed: %s", exc)
            return n
        self.status.score_pushes += 1
        self.status.scores_pushed += n
        self.status.score_error = None
        return n

    def run(
        self,
        stop: threading.Event,
        poll_s: float = 0.5,
        scores_every_s: float | None = None,
    ) -> None:
        """Until ``stop``: push on change every ``poll_s``; scores every ``scores_every_s``
        (default: a third of ``max_stale_s``, so one failed refresh does not lapse them)."""
        every = scores_every_s or max(1.0, self.s.gateway.scoring.max_stale_s / 3)
        next_scores = 0.0
        while not stop.is_set():
            self.sync_once()
            if time.monotonic() >= next_scores:
                self.refresh_scores()
                next_scores = time.monotonic() + every
            stop.wait(poll_s)
