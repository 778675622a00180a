"""``gatewise demo``: everything built so far, end to end, on embedded defaults.

Simulate → store → summarise; why static limits are not enough; features (Prefect flow
``build_features`` → Feast); AutoML (flow ``train`` → MLflow → challenger); the payload
scanner; deploy (flow ``deploy`` → BentoML → champion → policy); the gateway (backtest,
then real HTTP); the closed loop; a gateway with no labels (cold start); analytics. Each act is a module of this room.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from rich.console import Console

from config.settings import Settings
from demo.steps import features_build, features_online, simulation, summary, table, train

__all__ = ["deploy_demo", "run_demo", "static_baseline"]


def static_baseline(console: Console, s: Settings, run: Any) -> dict[str, dict[str, float]]:
    """How the naive static per-tier limit fares on the labelled simulation."""
    from telemetry.simulator.checks import (
        client_aggregates,
        single_aggregate_aucs,
        static_limit_outcomes,
    )

    agg = client_aggregates(run.result.events, run.result.clients)
    outcomes = static_limit_outcomes(agg, s.static_limits_per_minute)
    rows = [
        {
            "role": k,
            "abusive": k in _abusive_roles(),
            "clients": int(v["clients"]),
            "limited": int(v["limited"]),
            "share_limited": v["share_limited"],
        }
        for k, v in sorted(outcomes.items())
    ]
    limits = ", ".join(f"{k} {v}/min" for k, v in s.static_limits_per_minute.items())
    console.print(table(f"naive static limits ({limits}) vs. the truth", rows))
    aucs = single_aggregate_aucs(agg)
    best = sorted(aucs.items(), key=lambda kv: -kv[1])[:5]
    console.print(
        "best single-aggregate ROC AUC (abusive vs legitimate clients): "
        + ", ".join(f"{k} {v:.2f}" for k, v in best)
    )
    return outcomes


def _abusive_roles() -> tuple[str, ...]:
    from telemetry.simulator.population import ABUSE_SCENARIOS

    return ABUSE_SCENARIOS


def run_demo(
    console: Console, s: Settings, config: Path | None = None, dataplane: str = "python"
) -> None:
    # the simulated history ends now, so the live replay at the end continues it (its clients'
    # 1 h and 24 h features have context) instead of arriving weeks after it
    now = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    sim = s.simulator.model_copy(update={"start": now - timedelta(days=s.simulator.days)})
    s = s.model_copy(update={"simulator": sim})
    console.rule("[bold]gatewise demo[/]: simulate → store → summarize")
    run = simulation(console, s, emit=None)
    summary(console, s)
    console.rule("your gateway's logs: NGINX, HAProxy and ALB formats, detected")
    from demo.ingest_act import ingest_demo

    ingest_demo(console, s, run)
    console.rule("why static limits are not enough")
    static_baseline(console, s, run)
    console.rule("features: Prefect flow build_features → Feast")
    features_build(console, s, config, None, None, False)
    sample = run.result.labels.column("client_id").to_pylist()[-3:]
    features_online(console, s, sample, "abuse_v1")
    console.rule("AutoML: Prefect flow train → MLflow → challenger with a gate verdict")
    r = train(console, s, config, "abuse", min(60.0, s.target("abuse").time_budget_s), None, 1, 0)
    console.print(
        "next: `.venv/bin/gatewise promote --target abuse` moves champion to an eligible challenger; "
        f"browse runs with `.venv/bin/mlflow ui --backend-store-uri {s.mlflow_uri}`"
    )
    if not r.eligible:
        console.print("the gate refused this challenger (see above): it will not be deployed")
    console.rule("payload scanning: AutoML on real attack payloads → gate → compact champion")
    from demo.payload_act import payload_demo

    payload_demo(console, s, config)
    console.rule("deploy: Prefect flow deploy → BentoML service → champion → gateway policy")
    scoring_url = deploy_demo(console, s, config, r)
    console.rule("gateway: backtest policies, then real HTTP through the gateway")
    from demo.gateway_act import gateway_demo

    try:
        gateway_demo(console, s, scoring_url=scoring_url, dataplane=dataplane)
        console.rule(
            "[bold]the closed loop[/]: fresh traffic through the gateway → monitor → policy → again"
        )
        from demo.closed_loop import run_closed_loop

        # the champion keeps serving: the loop's gateway scores every client live
        loop = run_closed_loop(console, s, config, minutes=1.5, scoring_url=scoring_url)
    finally:
        if scoring_url:
            from serving.process import stop_service

            stop_service(s)
            console.print("stopped the demo's BentoML service (`.venv/bin/gatewise serve` runs it)")
    console.rule(
        "[bold]a gateway with no labels[/]: day-one score → weak labels → reviews → harm bound"
    )
    from demo.cold_start_act import cold_start_demo

    cold_start_demo(console, s, config)
    console.rule(
        "[bold]analytics[/]: which routes break SLO, which consumers we lost, was it our policy?"
    )
    from demo.analytics_act import analytics_demo

    analytics_demo(console, s)
    console.rule("done")
    console.print(
        f"data under {s.data_dir}/ ; try `.venv/bin/gatewise telemetry summary` or `.venv/bin/gatewise ingest --help`"
    )
    console.print(
        f"where to look: the closed-loop report {loop['report']}; MLflow UI "
        f"`.venv/bin/mlflow ui --backend-store-uri {s.mlflow_uri}` (champion run: artifacts "
        "monitoring/ and closed_loop/); Prefect UI `.venv/bin/gatewise schedule` (serves the "
        "flows on a Prefect server, http://127.0.0.1:4200); policy history "
        "`.venv/bin/gatewise policy history`"
    )


def deploy_demo(console: Console, s: Settings, config: Path | None, r: Any) -> str | None:
    """Deploy the new challenger when its gate passed it; a refused one is not deployed (no
    --force): the abuse target stays in shadow without a champion, and the demo says so."""
    from flows.deploy import DeployError, deploy_flow

    if not r.eligible:
        console.print(
            f"[yellow]the gate refused v{r.version} ({'; '.join(r.reasons)[:300]}): it is not "
            "deployed; the gateway runs without a champion (the abuse target stays in shadow, "
            "static limits apply)[/]"
        )
        return None
    try:
        out = deploy_flow(
            target="abuse",
            version=r.version,
            config_path=str(config) if config else None,
            data_dir=str(s.data_dir.resolve()),
        )
    except DeployError as exc:
        console.print(f"[red]{exc}[/]; compensated: {exc.result.compensated if exc.result else []}")
        return None
    console.print(
        f"{s.registered_model('abuse')} v{out['version']} is champion behind {out['url']} "
        f"(steps: {' → '.join(out['steps'])}); gateway policy v{out['policy_version']} names it"
    )
    return str(out["url"])
