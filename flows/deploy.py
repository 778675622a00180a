"""Prefect flow ``deploy``: an eligible challenger to champion, as a saga.

Steps, each with its compensation (run in reverse when a later step fails):

1. ``check``      the challenger's gate verdict (refused unless ``force``)   —
2. ``prepare``    load and smoke-test it in this process (artifact, deps)    —
3. ``service``    start the BentoML service if nothing answers               stop it if started here
4. ``stage``      load the challenger beside the champion on the live service —
5. ``smoke``      score real entities through the live endpoint (alias challenger) —
6. ``promote``    move ``champion`` to it                                     move it back
7. ``swap``       wait until the live service answers with the new version    (served by 6's undo)
8. ``record``     tag the version (deployed_at, previous champion, policy)     remove the tags
9. ``policy``     publish the model version in the gateway policy            roll the policy back

``fail_at`` makes a step fail on purpose (drills and tests of the compensations).

    deploy_flow(target="abuse")      # gatewise deploy --target abuse
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NONE

from config.settings import Settings, settings_for_flow

__all__ = ["DeployError", "DeployResult", "deploy", "deploy_flow"]


class DeployError(RuntimeError):
    """A deploy that failed or was refused; ``step`` says where."""

    def __init__(self, step: str, msg: str, result: DeployResult | None = None) -> None:
        super().__init__(f"deploy failed at {step}: {msg}")
        self.step = step
        self.msg = msg
        self.result = result


@dataclass
class DeployResult:
    target: str
    version: str
    previous: str | None
    steps: list[str] = field(default_factory=list)
    compensated: list[str] = field(default_factory=list)
    failed_step: str | None = None
    error: str | None = None
    policy_version: int | None = None
    url: str = ""


def _log(msg: str) -> None:
    try:
        get_run_logger().info(msg)
    except Exception:  # outside a flow run (plain call)
        print(msg)


def _smoke_ids(settings: Settings, target: str, n: int) -> list[str]:
    from labeling.store import LabelStore

    if settings.target(target).entity == "client":
        ids = LabelStore(settings.labels_dir).read().column("client_id").to_pylist()
        return list(dict.fromkeys(reversed(ids)))[:n]
    from config.demo_api import ROUTES

    return [f"{r.method} {r.template}" for r in ROUTES][:n]


@task(name="deploy-step", cache_policy=NONE)
def _step(name: str, fn: Any) -> Any:
    return fn()


def deploy(
    settings: Settings,
    target: str,
    version: str | None = None,
    *,
    force: bool = False,
    fail_at: str | None = None,
    config: Path | None = None,
    wait_s: float = 60.0,
) -> DeployResult:
    """Run the saga (plain function; ``deploy_flow`` runs it as a Prefect flow)."""
    import httpx

    from gateway.policy import initial_policy
    from gateway.policy_store import PolicyStore, active_or_initial
    from models.registry import champion_moved
    from models.tracking import CHALLENGER, CHAMPION, client, version_by_alias
    from serving.process import ensure_service, stop_service
    from serving.runtime import Runtime

    c = client(settings)
    name = settings.registered_model(target)
    mv = c.get_model_version(name, version) if version else version_by_alias(c, name, CHALLENGER)
    if mv is None:
        raise DeployError("check", f"{name} has no challenger; train first")
    cur = version_by_alias(c, name, CHAMPION)
    res = DeployResult(target, str(mv.version), str(cur.version) if cur else None)
    undo: list[tuple[str, Any]] = []
    policies = PolicyStore(settings.policy_dir)

    def run(step: str, fn: Any, compensate: Any = None) -> Any:
        if fail_at == step:
            raise DeployError(step, "failure injected (--fail-at)")
        from prefect.context import FlowRunContext

        # a task per step inside the flow (visible in the UI); a plain call otherwise
        out = _step.with_options(name=f"deploy-{step}")(step, fn) if FlowRunContext.get() else fn()
        res.steps.append(step)
        if compensate is not None:
            undo.append((step, compensate))
        _log(f"deploy {name} v{mv.version}: {step} ok")
        return out

    def check() -> None:
        ok = mv.tags.get("gate.eligible") == "true"
        if not ok and not force:
            raise DeployError(
                "check",
                f"v{mv.version} is not eligible: {mv.tags.get('gate.reason', 'no verdict')}",
            )
        if cur is not None and str(cur.version) == str(mv.version):
            raise DeployError("check", f"v{mv.version} is already the champion")

    def stage() -> None:
        # the live service loads whatever carries the challenger alias: make that this version
        c.set_registered_model_alias(name, CHALLENGER, mv.version)
        end = time.monotonic() + wait_s
        body: dict[str, Any] = {}
        while time.monotonic() < end:
            r = httpx.post(
                res.url + "/metadata", json={"target": target, "alias": CHALLENGER}, timeout=120
            )
            body = (
                r.json()
                if r.status_code == 200
                else {"status": r.status_code, "text": r.text[:300]}
            )
            if body.get("version") == str(mv.version):
                return
            err = (body.get("errors") or {}).get(f"{target}@{CHALLENGER}")
            if err and f"v{mv.version}" in err:
                raise DeployError("stage", err)
            time.sleep(0.3)
        raise DeployError("stage", f"the service did not load v{mv.version} as challenger: {body}")

    def smoke() -> None:
        if settings.target(target).label_source == "payloads":
            probe = ["1' or '1'='1", "<script>alert(1)</script>", "O'Brien", "42"]
            r = httpx.post(
                res.url + "/scan",
                json={"target": target, "values": probe, "alias": CHALLENGER},
                timeout=30,
            )
            if r.status_code != 200:
                raise DeployError("smoke", f"/scan answered {r.status_code}: {r.text[:300]}")
            rows = r.json()["results"]
            if r.json().get("model_version") != str(mv.version) or len(rows) != len(probe):
                raise DeployError("smoke", f"/scan did not answer from v{mv.version}: {rows}")
            return
        ids = _smoke_ids(settings, target, settings.serving.smoke_ids)
        r = httpx.post(
            res.url + "/score", json={"target": target, "ids": ids, "alias": CHALLENGER}, timeout=30
        )
        if r.status_code != 200:
            raise DeployError("smoke", f"/score answered {r.status_code}: {r.text[:300]}")
        body = r.json()
        scores = [x["score"] for x in body["results"] if x.get("known")]
        if body.get("model_version") != str(mv.version) or not scores:
            raise DeployError(
                "smoke", f"no scores from v{mv.version} for {len(ids)} known entities"
            )

    def promote() -> None:
        c.set_registered_model_alias(name, CHAMPION, mv.version)
        champion_moved(settings, target)

    def unpromote() -> None:
        if cur is not None:
            c.set_registered_model_alias(name, CHAMPION, cur.version)
        else:
            c.delete_registered_model_alias(name, CHAMPION)
        champion_moved(settings, target)

    def swap() -> None:
        end = time.monotonic() + wait_s
        while time.monotonic() < end:
            meta = httpx.post(res.url + "/metadata", json={"target": target}, timeout=30).json()
            if meta.get("version") == str(mv.version):
                return
            err = (meta.get("errors") or {}).get(f"{target}@{CHAMPION}")
            if err and f"v{mv.version}" in err:
                raise DeployError("swap", err)
            time.sleep(0.3)
        raise DeployError(
            "swap", f"the service still serves v{meta.get('version')} after {wait_s:.0f}s"
        )

    def record() -> None:
        tags = {
            "deploy.at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "deploy.previous": res.previous or "none",
            "deploy.url": res.url,
            "deploy.forced": str(force and mv.tags.get("gate.eligible") != "true").lower(),
        }
        for k, v in tags.items():
            c.set_model_version_tag(name, mv.version, k, v)

    def unrecord() -> None:
        for k in ("deploy.at", "deploy.previous", "deploy.url", "deploy.forced"):
            c.delete_model_version_tag(name, mv.version, k)

    before = policies.latest_version()

    def policy() -> int:
        base = active_or_initial(settings)
        targets = dict(base.targets)
        t = targets.get(target)
        if t is not None:
            up: dict[str, Any] = {"model_version": str(mv.version)}
            if t.raised:  # bands raised after drift return to the configured ones
                up.update(bands=initial_policy(settings).targets.get(target, t).bands, raised=False)
            targets[target] = t.model_copy(update=up)
        doc = policies.publish(
            base.model_copy(update={"targets": targets}),
            author="deploy flow",
            reason=f"{name} v{mv.version} deployed as champion (was v{res.previous or 'none'})",
        )
        res.policy_version = doc.version
        return doc.version

    def unpolicy() -> None:
        if res.policy_version is not None and before:
            policies.rollback(before, author="deploy flow (compensation)")

    try:
        run("check", check)
        run("prepare", lambda: Runtime(settings).load_version(target, CHALLENGER, str(mv.version)))

        def service() -> bool:
            res.url, started = ensure_service(settings, config)
            return started

        started = run("service", service)
        if started:
            undo.append(("service", lambda: stop_service(settings)))
        run("stage", stage)
        run("smoke", smoke)
        run("promote", promote, unpromote)
        run("swap", swap)
        run("record", record, unrecord)
        run("policy", policy, unpolicy)
    except Exception as exc:
        res.failed_step = (
            exc.step
            if isinstance(exc, DeployError)
            else (
                [
                    "check",
                    "prepare",
                    "service",
                    "stage",
                    "smoke",
                    "promote",
                    "swap",
                    "record",
                    "policy",
                ][len(res.steps)]
            )
        )
        res.error = exc.msg if isinstance(exc, DeployError) else f"{type(exc).__name__}: {exc}"
        for step, comp in reversed(undo):
            if step == "service" and res.failed_step not in ("stage", "smoke"):
                continue  # keep a service we started serving the (restored) champion
            try:
                comp()
                res.compensated.append(step)
                _log(f"deploy {name} v{mv.version}: compensated {step}")
            except Exception as cexc:
                res.compensated.append(f"{step} (failed: {cexc})")
        raise DeployError(res.failed_step, res.error, res) from None
    return res


@flow(name="deploy", log_prints=True)
def deploy_flow(
    target: str = "abuse",
    version: str | None = None,
    force: bool = False,
    fail_at: str | None = None,
    config_path: str | None = None,
    data_dir: str | None = None,
) -> dict[str, Any]:
    """Move an eligible challenger to champion behind the live service, or undo every step."""
    settings = settings_for_flow(config_path, data_dir)
    settings.target(target)
    return asdict(
        deploy(
            settings,
            target,
            version,
            force=force,
            fail_at=fail_at,
            config=Path(config_path) if config_path else None,
        )
    )
