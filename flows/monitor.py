"""The Prefect flow ``monitor``: drift and bias on the latest traffic → the next policy.

1. **drift** — the abuse feature rows (``client_windows``) of the last ``hours`` against the
   rows before them (the data the champion learned from), plus prediction drift: the recorded
   ``model_score`` distribution over the same two periods.
2. **bias** — the model's decisions on the last ``hours`` of recorded traffic (score at or
   above the target's first acting band; the champion's replayed scores when there is one,
   else the recorded ``model_score``), joined with labels only for windows that ended at least
   ``label_delay_minutes`` before ``as_of`` (monitoring never reads a label before it would
   have arrived), judged by every sensitive column of ``monitoring:``.
3. **record** — reports under ``<data_dir>/monitoring/checks/<check_id>/``, rows in the history
   table, and, when the target has a champion, artifacts and metrics on its MLflow run.
4. **policy** — ``monitoring.policy.propose`` on the findings, plus per-client overrides from
   the champion's scores of the period (``overrides_from_scores``, expiring after the period's
   length); a changed candidate is backtested against the
   active policy on the last day and published only if it harms no more legitimate traffic.
   ``retrain`` in the result says the drift rule asked for a new model.

Times are event time: ``as_of`` defaults to the newest recorded event (replayed or simulated
traffic has its own clock).
"""

from __future__ import annotations

import contextlib
import json
import logging
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, cast

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NONE

from config.settings import Settings, settings_for_flow

__all__ = ["monitor_flow"]


def _features(settings: Settings, target: str) -> list[str]:
    from features.windows import CLIENT_FEATURES

    del target  # one feature set today: the abuse service's client features
    return list(CLIENT_FEATURES)


@task(name="monitor-drift", cache_policy=NONE)
def drift_task(settings: Settings, target: str, as_of: datetime, hours: float) -> dict[str, Any]:
    import duckdb

    from monitoring.drift import check_drift

    src = settings.features_dir / "client_windows"
    cols = _features(settings, target)
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    rows = f"read_parquet('{src}/*/*.parquet', hive_partitioning = false)"
    cut = f"TIMESTAMPTZ '{(as_of - timedelta(hours=hours)).isoformat()}'"
    end = f"TIMESTAMPTZ '{as_of.isoformat()}'"
    sel = ", ".join(cols)
    n = settings.monitoring.drift_max_rows
    ref = con.sql(
        f"SELECT {sel} FROM {rows} WHERE event_timestamp <= {cut} USING SAMPLE {n} ROWS"
    ).df()
    cur = con.sql(
        f"SELECT {sel} FROM {rows} WHERE event_timestamp > {cut} AND event_timestamp <= {end} "
        f"USING SAMPLE {n} ROWS"
    ).df()
    out: dict[str, Any] = {"features": None, "scores": None}
    if len(ref) and len(cur):
        out["features"] = check_drift(ref, cur, cols, max_rows=n)
    from telemetry.store import TelemetryStore

    store = TelemetryStore(settings.telemetry_dir)
    tcut = as_of - timedelta(hours=hours)
    sc_ref = store.read(as_of - timedelta(hours=hours + 24), tcut).select(["model_score"])
    sc_cur = store.read(tcut, as_of + timedelta(microseconds=1)).select(["model_score"])
    sr, sc = sc_ref.to_pandas().dropna(), sc_cur.to_pandas().dropna()
    if len(sr) >= 30 and len(sc) >= 30:
        out["scores"] = check_drift(sr, sc, ["model_score"], max_rows=n)
    return out


@task(name="monitor-bias", cache_policy=NONE)
def bias_task(
    settings: Settings,
    target: str,
    as_of: datetime,
    hours: float,
    label_delay_minutes: float,
    scores: Any = None,
) -> dict[str, Any]:
    """The MODEL's decisions by group: a request counts as acted on when its score (the
    champion's replayed ``scores`` if given, else the recorded ``model_score``) reaches the
    target's first acting band, whatever the mode (in shadow these are the would-be actions).
    Static limits are judged elsewhere (the backtest's per-group outcome): exempting a group
    from model action is no remedy for what static limits do to it."""
    from gateway.backtest import backtest
    from gateway.policy_store import active_or_initial
    from monitoring.bias import check_bias

    policy = active_or_initial(settings)
    released = as_of - timedelta(minutes=label_delay_minutes)
    start = as_of - timedelta(hours=hours)
    if released <= start:
        return {"findings": [], "requests": 0, "note": "no labels have arrived for the period"}
    rep = backtest(
        policy,
        settings.telemetry_dir,
        labels=settings.labels_dir,
        label_window_minutes=settings.simulator.label_window_minutes,
        start=start,
        end=released,
        target=target,
        scores=scores,
        counterfactuals=False,  # the bias check reads scores and labels only
    )
    df = rep.decisions
    if rep.events == 0 or "abusive" not in df or df.empty:
        return {"findings": [], "requests": 0, "note": "no labelled requests in the period"}
    tp = policy.targets.get(target)
    cuts = [b.min_score for b in (tp.bands if tp else []) if b.action != "allow"]
    if not cuts:
        return {"findings": [], "requests": 0, "note": f"{target} has no acting band"}
    df = df[df["abusive"].notna() & df["action"].ne("refused") & df["model_score"].notna()]
    if df.empty:
        return {"findings": [], "requests": 0, "note": "no scored, labelled requests"}
    df = df.copy()
    df["stopped"] = (df["model_score"].astype(float) >= min(cuts)).astype(int)
    df["label"] = df["abusive"].astype(int)
    for c in settings.monitoring.sensitive:
        df[c] = df[c].fillna("(none)")
    findings = check_bias(
        df,
        "stopped",
        list(settings.monitoring.sensitive),
        "label",
        min_group_size=settings.monitoring.min_group_size,
    )
    return {"findings": findings, "requests": len(df), "labels_until": released.isoformat()}


@task(name="monitor-score", cache_policy=NONE)
def score_task(
    settings: Settings, target: str, as_of: datetime, hours: float
) -> tuple[Any, str | None]:
    """The champion's scores of every client window of the period (none without a champion)."""
    from models.tracking import champion_run_id
    from serving.batch import score_windows

    if champion_run_id(settings, target) is None:
        return None, None
    try:
        return score_windows(
            settings, target, "champion", since=as_of - timedelta(hours=hours), until=as_of
        )
    except LookupError:  # no traffic in the period, or no features for it
        return None, None


@task(name="monitor-score-now", cache_policy=NONE)
def score_now_task(settings: Settings, target: str, as_of: datetime, windows: Any) -> Any:
    """The champion's score of every client of the period for the window starting at
    ``as_of`` (from the features of the windows closed by then): what overrides act on.
    ``windows`` (the per-window scores) only names the clients."""
    from serving.batch import score_entities_at

    if windows is None or not len(windows):
        return None
    key = "client_id" if "client_id" in windows.columns else "entity"
    ids = sorted(set(windows[key].astype(str)))
    try:
        scores, _ = score_entities_at(settings, target, ids, as_of)
    except LookupError:  # no features at as_of for any of them: nothing to act on
        return None
    return scores


@task(name="monitor-validation", cache_policy=NONE)
def validation_task(
    settings: Settings,
    target: str,
    at: datetime,
    hours: float,
    version: str | None,
    drift: Any,
    scores: Any,
    publish: bool,
) -> dict[str, Any]:
    """Enforce only under a bounded harm estimate (``monitoring.validation``): an enforcing
    target whose clearance no longer holds (another model version, drifted inputs) goes back
    to shadow; a shadow target is judged on the period and, when its bound clears, enforced."""
    from gateway.policy_store import PolicyStore, active_or_initial
    from monitoring.validation import reopened, validate

    policy = active_or_initial(settings)
    t = policy.targets.get(target)
    if t is None or t.mode == "off":
        return {"status": "off"}
    why = reopened(settings, target, version, None if drift is None else drift.share)
    if why and t.mode == "enforce":
        published = None
        if publish:
            new = policy.model_copy(
                update={
                    "targets": {**policy.targets, target: t.model_copy(update={"mode": "shadow"})}
                }
            )
            published = (
                PolicyStore(settings.policy_dir)
                .publish(new, author="monitor", reason=f"back to shadow: {why}")
                .version
            )
        return {"status": "reopened", "reason": why, "published": published}
    if t.mode != "shadow":
        return {"status": "enforcing"}
    try:
        v = validate(
            settings,
            target=target,
            policy=policy,
            since=at - timedelta(hours=hours),
            until=at,
            scores=scores,
            publish=publish,
            author="monitor",
        )
    except LookupError as exc:
        return {"status": "not judged", "reason": str(exc)}
    return {
        "status": "cleared" if v.harm.cleared else "shadow",
        "reason": v.harm.reason,
        "bound": v.harm.bound,
        "next_reviews": v.harm.next_reviews[:20],
        "published": v.published,
    }


def _retrain(
    settings: Settings,
    target: str,
    config_path: str | None,
    data_dir: str | None,
    cooldown_h: float,
    budget: float | None = None,
) -> dict[str, Any] | str:
    """Start a retraining (see ``monitor_flow``); what was done, or why not."""
    import time as _time

    import mlflow

    log = logging.getLogger("gatewise.monitor")
    from models.tracking import client as registry_client

    client = registry_client(settings)
    name = settings.registered_model(target)
    versions: list[Any] = []
    with contextlib.suppress(mlflow.exceptions.MlflowException):
        versions = list(client.search_model_versions(f"name = '{name}'"))
    newest = max((int(v.creation_timestamp) for v in versions), default=0) / 1000
    if newest and _time.time() - newest < cooldown_h * 3600:
        return f"skipped: {name} has a version from the last {cooldown_h:g} h"
    try:
        from prefect.deployments import run_deployment

        params: dict[str, Any] = {"target": target, "warm_start": True}
        if budget is not None:
            params["budget"] = budget
        fr: Any = run_deployment("train/nightly", parameters=params, timeout=0)
        log.info("drift asks for a new model: started deployment train/nightly (%s)", fr.id)
        return f"started deployment train/nightly, flow run {fr.id}"
    except Exception as exc:  # no server, or no such deployment: train here
        log.info("drift asks for a new model: training as a subflow (%s)", type(exc).__name__)
    from flows.train import train_flow

    t = cast(
        dict[str, Any],
        train_flow(
            target=target,
            budget=budget,
            config_path=config_path,
            data_dir=data_dir,
            warm_start=True,
        ),
    )
    return {
        k: t.get(k)
        for k in ("version", "eligible", "reasons", "holdout_score", "champion_score", "run_id")
    }


def _scored_clients(settings: Settings, start: datetime, end: datetime) -> set[str]:
    from telemetry.store import TelemetryStore

    store = TelemetryStore(settings.telemetry_dir)
    if store.is_empty():
        return set()
    rows = (
        store.connect()
        .execute(
            "SELECT DISTINCT client_id FROM events WHERE model_score IS NOT NULL "
            "AND timestamp >= ? AND timestamp < ?",
            [start, end],
        )
        .fetchall()
    )
    return {r[0] for r in rows}


@task(name="monitor-policy", cache_policy=NONE)
def policy_task(
    settings: Settings,
    target: str,
    as_of: datetime,
    drift: Any,
    findings: list[Any],
    publish_policy: bool,
    scores: Any = None,
    model_version: str | None = None,
    override_minutes: float = 60.0,
    period_hours: float = 1.0,
    window_scores: Any = None,
) -> dict[str, Any]:
    """Three stages, each gated on its own against what the stages before it left (so an
    override list that would harm legitimate clients does not also sink a sound limits change):
    1. findings (drift → conservative mode or raised bands; bias → exemptions), 2. limits
    adapted to normal traffic, 3. per-client overrides from the champion's ``scores``. The
    accepted stages are published as one version whose reason names every verdict."""
    from gateway.policy_store import PolicyStore, active_or_initial
    from monitoring.policy import Proposal, adapt_limits, gate, overrides_from_scores, propose

    store = PolicyStore(settings.policy_dir)
    current = active_or_initial(settings)
    rules = settings.monitoring.policy
    found = propose(current, drift, findings, rules, target=target)
    out: dict[str, Any] = {
        "changes": [],
        "retrain": found.retrain,
        "alerts": found.alerts,
        "published": None,
        "verdict": None,
        "stages": [],
    }

    kw: dict[str, Any] = {
        "label_window_minutes": settings.simulator.label_window_minutes,
        "start": as_of - timedelta(days=1),
        "end": as_of,
        "target": target,
    }
    outcome: dict[str, Any] = {}  # the last accepted policy's backtest outcome over everyone

    def judge(stage: str, prop: Proposal, base: Any, clients: set[str] | None = None) -> Any:
        """``prop.policy`` if the gate accepts it against ``base``, else ``base``. ``clients``:
        the only clients the stage can change decisions for (only they are replayed)."""
        from gateway.backtest import backtest

        if not prop.changed:
            return base
        if not outcome:
            outcome.update(
                backtest(
                    base,
                    settings.telemetry_dir,
                    labels=settings.labels_dir,
                    counterfactuals=False,
                    **kw,
                ).outcome
            )
        v = gate(
            prop.policy,
            base,
            settings.telemetry_dir,
            settings.labels_dir,
            rules=rules,
            clients=clients,
            current_outcome=dict(outcome) or None,
            **kw,
        )
        outcome.clear()
        outcome.update(v.candidate if v.accepted else v.current)
        out["stages"].append(
            {
                "stage": stage,
                "accepted": v.accepted,
                "reason": v.reason,
                "current": v.current,
                "candidate": v.candidate,
            }
        )
        out["changes"] += [
            {**c.__dict__, "stage": stage, "accepted": v.accepted} for c in prop.changes
        ]
        return prop.policy if v.accepted else base

    # findings change model-based action only: clients with a recorded score
    scored = _scored_clients(settings, as_of - timedelta(days=1), as_of)
    accepted = judge("findings", found, current, scored)
    if rules.choose_bands and window_scores is not None and len(window_scores):
        from monitoring.bands import choose_bands

        prop, table = choose_bands(
            accepted,
            settings.telemetry_dir,
            settings.labels_dir,
            window_scores,
            target=target,
            rules=rules,
            start=kw["start"],
            end=kw["end"],
            label_window_minutes=kw["label_window_minutes"],
        )
        if len(table):
            out["band_search"] = table.to_dict("records")
        key = "client_id" if "client_id" in window_scores.columns else "entity"
        accepted = judge("bands", prop, accepted, set(window_scores[key].astype(str)))
    if rules.adapt_limits:
        # limits follow normal traffic: without labelled-abusive and flagged clients
        flagged = {o.client_id for o in current.overrides}
        tp = current.targets.get(target)
        cuts = [b.min_score for b in (tp.bands if tp else []) if b.action != "allow"]
        if scores is not None and len(scores) and cuts:
            key = "client_id" if "client_id" in scores.columns else "entity"
            flagged |= set(scores.loc[scores["score"] >= min(cuts), key].astype(str))
        lim = adapt_limits(
            accepted,
            settings.telemetry_dir,
            settings.labels_dir,
            before=as_of - timedelta(hours=period_hours),
            floor=settings.static_limits_per_minute,
            flagged=flagged,
            rules=rules,
        )
        accepted = judge("limits", lim, accepted)
    if scores is not None and len(scores):
        # the champion's scores -> per-client overrides (in the accepted policy's bands/mode)
        ov = overrides_from_scores(
            accepted,
            scores,
            target=target,
            model_version=model_version,
            ttl_minutes=override_minutes,
            now=as_of,
        )
        touched = {o.client_id for o in ov.policy.overrides} | {
            o.client_id for o in accepted.overrides
        }
        accepted = judge("overrides", ov, accepted, touched)
    if out["stages"]:
        out["verdict"] = {
            "accepted": any(x["accepted"] for x in out["stages"]),
            "reason": "; ".join(f"{x['stage']}: {x['reason']}" for x in out["stages"]),
        }
    if publish_policy and accepted is not current:
        if not store.exists():
            store.publish(current, author="gatewise monitor", reason="initial policy")
        kept = [c for c in out["changes"] if c["accepted"]]
        reason = "; ".join(c["reason"] for c in kept[:6]) + (
            f"; … {len(kept) - 6} more" if len(kept) > 6 else ""
        )
        new = store.publish(
            accepted, author="gatewise monitor", reason=f"{reason} [{out['verdict']['reason']}]"
        )
        out["published"] = new.version
    return out


@flow(name="monitor", log_prints=True)
def monitor_flow(
    target: str = "abuse",
    hours: float = 1.0,
    label_delay_minutes: float = 30.0,
    as_of: str | None = None,
    publish_policy: bool = True,
    override_minutes: float | None = None,
    adapt_limits: bool | None = None,
    retrain: bool = False,
    retrain_cooldown_h: float = 6.0,
    retrain_budget_s: float | None = None,
    config_path: str | None = None,
    data_dir: str | None = None,
) -> dict[str, Any]:
    """Drift + bias on the last ``hours`` → history, MLflow, and (gated) the next policy.

    ``override_minutes``: how long score overrides last (default: the period's length);
    ``adapt_limits``: tier and route limits follow normal traffic (default:
    ``monitoring.policy.adapt_limits``); ``retrain``: when drift asks for a new model, run the
    ``train`` flow now: the ``train/nightly`` deployment when this runs on a Prefect server
    that serves it (``gatewise schedule``; not waited for), else as a subflow — unless a model
    version of the target was registered in the last ``retrain_cooldown_h`` hours (drift
    persists over several checks; one retraining answers it). A retraining here is warm-started
    from the champion's configuration, with ``retrain_budget_s`` (default: the target's)."""
    from models.tracking import champion_run_id
    from monitoring.drift import save_report
    from monitoring.record import append_history, log_to_run, new_check_id
    from telemetry.store import TelemetryStore, as_utc

    settings = settings_for_flow(config_path, data_dir)
    if adapt_limits is not None:
        pol_rules = settings.monitoring.policy.model_copy(update={"adapt_limits": adapt_limits})
        settings = settings.model_copy(
            update={"monitoring": settings.monitoring.model_copy(update={"policy": pol_rules})}
        )
    settings.target(target)
    log = get_run_logger()
    at = as_utc(as_of, "as_of") if as_of else None
    if at is None:
        store = TelemetryStore(settings.telemetry_dir)
        if store.is_empty():
            raise ValueError("monitor: the telemetry store is empty")
        at = store.connect().sql("SELECT max(timestamp) FROM events").fetchall()[0][0]
    drift = drift_task(settings, target, at, hours)
    scores, version = score_task(settings, target, at, hours)
    bias = bias_task(settings, target, at, hours, label_delay_minutes, scores)
    now_scores: Any = score_now_task(settings, target, at, scores)
    check_id = new_check_id(at)
    out_dir = settings.data_dir / "monitoring" / "checks" / check_id
    files: list[Path] = []
    feat = drift["features"]
    if feat is not None:
        files += list(save_report(feat.snapshot, out_dir, "drift").values())
    if drift["scores"] is not None:
        files += list(save_report(drift["scores"].snapshot, out_dir, "score_drift").values())
    findings = {
        "as_of": at.isoformat(),
        "drift": None if feat is None else feat.to_dict(),
        "score_drift": None if drift["scores"] is None else drift["scores"].to_dict(),
        "bias": [b.to_dict() for b in bias["findings"]],
        "bias_requests": bias["requests"],
    }
    pol = policy_task(
        settings,
        target,
        at,
        feat,
        bias["findings"],
        publish_policy,
        now_scores,
        version,
        hours * 60 if override_minutes is None else override_minutes,
        hours,
        scores,
    )
    pol["validation"] = validation_task(
        settings, target, at, hours, version, feat, scores, publish_policy
    )
    if retrain and pol["retrain"]:
        pol["retrain_run"] = _retrain(
            settings, target, config_path, data_dir, retrain_cooldown_h, retrain_budget_s
        )
        if isinstance(pol["retrain_run"], dict):
            pol["trained"] = pol.pop("retrain_run")
    pol["scored_clients"] = 0 if now_scores is None else int(now_scores["client_id"].nunique())
    findings["policy"] = pol
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "findings.json").write_text(json.dumps(findings, indent=1, default=str))
    files.append(out_dir / "findings.json")
    append_history(
        settings.data_dir / "monitoring" / "history",
        check_id,
        at,
        f"monitor {target}: last {hours:g} h vs before",
        feat,
        bias["findings"],
        settings.monitoring.policy.max_fpr_ratio,
    )
    run_id = champion_run_id(settings, target)
    if run_id is not None:
        log_to_run(settings, run_id, check_id, at, files, feat, bias["findings"])
    log.info(
        "monitor %s as of %s: drift %s, bias findings %d, policy changes %d (published: %s)",
        target,
        at.isoformat(),
        "n/a" if feat is None else f"{len(feat.drifted)}/{len(feat.columns)}",
        len(bias["findings"]),
        len(pol["changes"]),
        pol["published"],
    )
    return {
        "check_id": check_id,
        "as_of": at.isoformat(),
        "reports": str(out_dir),
        "drifted": [] if feat is None else feat.drifted,
        "drift_share": None if feat is None else feat.share,
        "score_drift": None if drift["scores"] is None else drift["scores"].share,
        "bias": {
            b.feature: {"fpr_ratio": b.fpr_ratio, "worst": b.worst_fpr_group}
            for b in bias["findings"]
        },
        "bias_requests": bias["requests"],
        "policy": pol,
        "mlflow_run": run_id,
    }
