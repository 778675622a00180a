"""``gatewise analytics ...``, ``gatewise history``, ``gatewise dashboard`` and
``gatewise report``. Registered by ``register(app)``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from gatewise.cli import ConfigOpt, _console, _fail, _settings

if TYPE_CHECKING:
    import pandas as pd

    from analytics.source import Filters, Source
    from config.settings import Settings

__all__ = ["register", "source_for"]

analytics_app = typer.Typer(
    help="Usage, SLO and cohort analytics over the telemetry (DuckDB).", no_args_is_help=True
)

DatasetOpt = Annotated[
    str,
    typer.Option(
        "--dataset",
        help="gateway (the gateway's telemetry store) or history (`gatewise history`)",
    ),
]
StoreOpt = Annotated[
    list[Path] | None,
    typer.Option("--store", help="telemetry store folder(s) instead of a dataset"),
]
SinceOpt = Annotated[str | None, typer.Option(help="ISO start (inclusive)")]
UntilOpt = Annotated[str | None, typer.Option(help="ISO end (exclusive)")]
PeriodOpt = Annotated[
    str | None, typer.Option(help="the last N of the data: 24h, 7d, 4w (instead of --since)")
]
TierOpt = Annotated[list[str] | None, typer.Option("--tier", help="only these tiers")]
RegionOpt = Annotated[list[str] | None, typer.Option("--region", help="only these regions")]
RouteOpt = Annotated[list[str] | None, typer.Option("--route", help="only these route templates")]
JsonOpt = Annotated[bool, typer.Option("--json", help="print JSON rows instead of a table")]


def source_for(s: Settings, dataset: str = "gateway", stores: list[Path] | None = None) -> Source:
    from analytics.source import Source

    if stores:
        missing = [str(p) for p in stores if not Path(p).is_dir()]
        if missing:
            _fail(f"--store {', '.join(missing)}: no such folder")
        return Source(list(stores))
    roots = {"gateway": s.telemetry_dir, "history": s.history_dir / "telemetry"}
    if dataset not in roots:
        _fail(f"--dataset {dataset!r}: expected one of {sorted(roots)}")
    return Source([roots[dataset]])


def _filters(
    src: Source,
    since: str | None,
    until: str | None,
    period: str | None,
    tier: list[str] | None,
    region: list[str] | None,
    route: list[str] | None,
) -> Filters:
    from analytics.report import period_filters
    from analytics.source import Filters

    try:
        if period:
            if since:
                _fail("give --period or --since, not both")
            base = period_filters(src, period, until)
        else:
            base = Filters(start=since, end=until)  # type: ignore[arg-type]
        return base.with_(
            tiers=tuple(tier or ()), regions=tuple(region or ()), routes=tuple(route or ())
        )
    except ValueError as exc:
        _fail(str(exc))
        raise


def _show(df: pd.DataFrame, title: str, as_json: bool, limit: int = 60) -> None:
    import numpy as np
    import pandas as pd

    if as_json:
        typer.echo(df.to_json(orient="records", date_format="iso", default_handler=str))
        return
    from rich.table import Table

    t = Table(title=title)
    for i, c in enumerate(df.columns):
        t.add_column(
            str(c),
            justify="right" if df[c].dtype.kind in "iuf" else "left",
            no_wrap=i == 0,  # the row's key stays readable when the table is wide
        )
    for row in df.head(limit).itertuples(index=False):
        cells = []
        for v in row:
            if isinstance(v, float | np.floating):
                cells.append("" if pd.isna(v) else f"{v:,.4g}")
            else:
                cells.append(str(v))
        t.add_row(*cells)
    _console().print(t)
    if len(df) > limit:
        _console().print(f"... {len(df) - limit} more rows (use --json for all)")


def _run(fn: Any) -> Any:
    try:
        return fn()
    except ValueError as exc:
        _fail(str(exc))


@analytics_app.command("usage")
def usage_cmd(
    by: Annotated[
        str,
        typer.Option(
            help="route|consumer|service|tier|region|device|method|status|decision|policy"
        ),
    ] = "route",
    config: ConfigOpt = None,
    dataset: DatasetOpt = "gateway",
    store: StoreOpt = None,
    since: SinceOpt = None,
    until: UntilOpt = None,
    period: PeriodOpt = None,
    tier: TierOpt = None,
    region: RegionOpt = None,
    route: RouteOpt = None,
    top: Annotated[int, typer.Option(help="rows")] = 30,
    as_json: JsonOpt = False,
) -> None:
    """Requests, errors, throughput and latency percentiles per value of --by."""
    from analytics.usage import breakdown

    s = _settings(config)
    src = source_for(s, dataset, store)
    f = _filters(src, since, until, period, tier, region, route)
    _show(_run(lambda: breakdown(src, f, by, top)), f"usage by {by}", as_json)


@analytics_app.command("traffic")
def traffic_cmd(
    granularity: Annotated[str, typer.Option(help="auto|minute|5min|hour|day|week")] = "auto",
    by: Annotated[str | None, typer.Option(help="split by a dimension")] = None,
    config: ConfigOpt = None,
    dataset: DatasetOpt = "gateway",
    store: StoreOpt = None,
    since: SinceOpt = None,
    until: UntilOpt = None,
    period: PeriodOpt = None,
    tier: TierOpt = None,
    region: RegionOpt = None,
    route: RouteOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Requests, errors, refusals, throughput and latency per time bucket."""
    from analytics.usage import traffic

    s = _settings(config)
    src = source_for(s, dataset, store)
    f = _filters(src, since, until, period, tier, region, route)
    _show(_run(lambda: traffic(src, f, granularity, by)), "traffic", as_json, limit=200)


@analytics_app.command("slo")
def slo_cmd(
    config: ConfigOpt = None,
    dataset: DatasetOpt = "gateway",
    store: StoreOpt = None,
    since: SinceOpt = None,
    until: UntilOpt = None,
    period: PeriodOpt = None,
    tier: TierOpt = None,
    region: RegionOpt = None,
    route: RouteOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """SLO compliance and error-budget burn per route (targets: analytics.slo)."""
    from analytics.usage import SLO_COLUMNS, slo

    s = _settings(config)
    src = source_for(s, dataset, store)
    f = _filters(src, since, until, period, tier, region, route)
    df = _run(lambda: slo(src, f, s.analytics.slo))
    cols = SLO_COLUMNS
    _show(df[[c for c in cols if c in df]] if not as_json else df, "SLOs", as_json)


@analytics_app.command("consumers")
def consumers_cmd(
    n: Annotated[int, typer.Option(help="how many")] = 20,
    config: ConfigOpt = None,
    dataset: DatasetOpt = "gateway",
    store: StoreOpt = None,
    since: SinceOpt = None,
    until: UntilOpt = None,
    period: PeriodOpt = None,
    tier: TierOpt = None,
    region: RegionOpt = None,
    route: RouteOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Top consumers by requests, with their attributes and experience."""
    from analytics.usage import top_consumers

    s = _settings(config)
    src = source_for(s, dataset, store)
    f = _filters(src, since, until, period, tier, region, route)
    _show(_run(lambda: top_consumers(src, f, n)), "top consumers", as_json)


@analytics_app.command("adoption")
def adoption_cmd(
    config: ConfigOpt = None,
    dataset: DatasetOpt = "gateway",
    store: StoreOpt = None,
    since: SinceOpt = None,
    until: UntilOpt = None,
    period: PeriodOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Route adoption: launch, consumers, share of active consumers, days to first call."""
    from analytics.usage import adoption

    s = _settings(config)
    src = source_for(s, dataset, store)
    f = _filters(src, since, until, period, None, None, None)
    _show(_run(lambda: adoption(src, f)), "route adoption", as_json)


@analytics_app.command("forecast")
def forecast_cmd(
    by: Annotated[str, typer.Option(help="route|consumer|tier|... or 'all'")] = "route",
    config: ConfigOpt = None,
    dataset: DatasetOpt = "gateway",
    store: StoreOpt = None,
    top: Annotated[int, typer.Option(help="busiest keys")] = 10,
    as_json: JsonOpt = False,
) -> None:
    """Usage forecast per key at the configured horizons (7/30/90 days), 80 % bands."""
    from analytics.series import forecast
    from analytics.source import Filters

    s = _settings(config)
    src = source_for(s, dataset, store)
    key = None if by == "all" else by
    df = _run(lambda: forecast(src, Filters(), key, s.analytics.forecast_horizons, top))
    _show(df, "usage forecast", as_json)


@analytics_app.command("anomalies")
def anomalies_cmd(
    metric: Annotated[str, typer.Option(help="requests|error_rate|p95_ms")] = "requests",
    by: Annotated[str, typer.Option(help="a dimension or 'all'")] = "route",
    config: ConfigOpt = None,
    dataset: DatasetOpt = "gateway",
    store: StoreOpt = None,
    since: SinceOpt = None,
    until: UntilOpt = None,
    period: PeriodOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Hourly points far from their own seasonal baseline (robust z-score)."""
    from analytics.series import anomalies

    s = _settings(config)
    src = source_for(s, dataset, store)
    f = _filters(src, since, until, period, None, None, None)
    key = None if by == "all" else by
    df = _run(lambda: anomalies(src, f, metric, key, s.analytics.anomaly_threshold))
    _show(df, f"anomalies in {metric}", as_json)


@analytics_app.command("revenue")
def revenue_cmd(
    config: ConfigOpt = None,
    dataset: DatasetOpt = "gateway",
    store: StoreOpt = None,
    since: SinceOpt = None,
    until: UntilOpt = None,
    period: PeriodOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Revenue, cost and margin per tier from analytics.tiers prices and analytics.cost."""
    from analytics.usage import revenue

    s = _settings(config)
    src = source_for(s, dataset, store)
    f = _filters(src, since, until, period, None, None, None)
    _show(_run(lambda: revenue(src, f, s.analytics.tiers, s.analytics.cost)), "revenue", as_json)


@analytics_app.command("cohorts")
def cohorts_cmd(
    by: Annotated[
        str, typer.Option(help="first_week|first_tier|tier|region|device_type")
    ] = "first_week",
    config: ConfigOpt = None,
    dataset: DatasetOpt = "gateway",
    store: StoreOpt = None,
    tier: TierOpt = None,
    region: RegionOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Retention table (share active k weeks after the first week), milestones,
    Kaplan–Meier survival and Cox hazard ratios."""
    import pandas as pd

    from analytics.cohorts import consumers, cox, kaplan_meier, retention
    from analytics.source import Filters

    s = _settings(config)
    src = source_for(s, dataset, store)
    f = Filters(tiers=tuple(tier or ()), regions=tuple(region or ()))
    people = _run(lambda: consumers(src, f, s.analytics.churn_after_days))
    if people is None or people.empty:
        _fail("no consumers in the store")
    r = _run(lambda: retention(src, f, by, s.analytics.churn_after_days, people))
    km = kaplan_meier(people, "first_tier")
    cx = cox(people)
    if as_json:
        typer.echo(
            json.dumps(
                {
                    "retention": r["table"].to_dict(),
                    "sizes": r["sizes"].to_dict(),
                    "milestones": r["milestones"],
                    "survival": {
                        k: {
                            m: v
                            for m, v in g.items()
                            if m not in ("timeline", "survival", "lower", "upper")
                        }
                        for k, g in km["groups"].items()
                    },
                    "logrank": km.get("logrank"),
                    "cox": cx["table"].to_dict("records"),
                    "concordance": cx["concordance"],
                },
                default=str,
            )
        )
        return
    table = r["table"].iloc[:, :14].copy()
    table.insert(0, "size", r["sizes"])
    table.columns = [str(c) if c == "size" else f"w{c}" for c in table.columns]
    _show(table.reset_index(names=by), f"retention by {by} (share active in week k)", False)
    ms = pd.DataFrame([{"milestone": k, "retention": v["all"]} for k, v in r["milestones"].items()])
    _show(ms, "retention milestones (cohorts old enough)", False)
    km_rows = pd.DataFrame(
        [
            {
                "first tier": k,
                **{
                    m: v
                    for m, v in g.items()
                    if m not in ("timeline", "survival", "lower", "upper")
                },
            }
            for k, g in km["groups"].items()
        ]
    )
    _show(
        km_rows,
        f"Kaplan–Meier (log-rank p={km.get('logrank', {}).get('p_value', float('nan')):.3g})",
        False,
    )
    _show(cx["table"], f"Cox regression of churn (concordance {cx['concordance']:.3f})", False)


@analytics_app.command("funnel")
def funnel_cmd(
    config: ConfigOpt = None,
    dataset: DatasetOpt = "gateway",
    store: StoreOpt = None,
    since: SinceOpt = None,
    until: UntilOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Conversion through analytics.funnel's ordered steps (consumers starting in range)."""
    from analytics.cohorts import funnel

    s = _settings(config)
    src = source_for(s, dataset, store)
    f = _filters(src, since, until, None, None, None, None)
    _show(_run(lambda: funnel(src, f, s.analytics.funnel)), "funnel", as_json)


@analytics_app.command("compare")
def compare_cmd(
    by: Annotated[str, typer.Option(help="consumer attribute to group by")] = "first_tier",
    correction: Annotated[str, typer.Option(help="holm or bh")] = "holm",
    config: ConfigOpt = None,
    dataset: DatasetOpt = "gateway",
    store: StoreOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Every pair of groups on churn (chi-square), requests per active day and active
    days (Welch t or Mann–Whitney), effect sizes, CIs, corrected p-values."""
    from analytics.cohorts import consumers
    from analytics.source import Filters
    from analytics.stats import compare

    s = _settings(config)
    src = source_for(s, dataset, store)
    people = consumers(src, Filters(), s.analytics.churn_after_days)
    if by not in people:
        _fail(f"--by {by!r}: not a consumer attribute ({', '.join(people.columns)})")
    df = _run(lambda: compare(people, by, correction=correction))
    cols = [
        "metric",
        "a",
        "b",
        "n_a",
        "n_b",
        "test",
        "estimate_a",
        "estimate_b",
        "difference",
        "ci_low",
        "ci_high",
        "effect",
        "effect_size",
        "p_value",
        "p_adjusted",
        "significant",
    ]
    _show(df[cols] if not as_json else df, f"cohort comparisons by {by} ({correction})", as_json)


@analytics_app.command("policy-effect")
def policy_effect_cmd(
    policy: Annotated[str | None, typer.Option(help="policy_version whose start to study")] = None,
    config: ConfigOpt = None,
    dataset: DatasetOpt = "gateway",
    store: StoreOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Propensity-matched effect of being throttled after a policy change on retention
    6-8 weeks later, with balance diagnostics."""
    from analytics.report import default_policy_change
    from analytics.stats import policy_change_time, policy_cohort, propensity_match

    s = _settings(config)
    src = source_for(s, dataset, store)
    if policy:
        at = _run(lambda: policy_change_time(src, policy))
        version = policy
    else:
        found = default_policy_change(src)
        if found is None:
            _fail("fewer than two policy versions in the telemetry: no change to study")
            return
        version, at = found
    res = _run(lambda: propensity_match(policy_cohort(src, at)))
    head = {k: v for k, v in res.items() if k not in ("balance", "scores", "matched")}
    if as_json:
        typer.echo(
            json.dumps(
                {
                    "policy_version": version,
                    "at": str(at),
                    **head,
                    "balance": res["balance"].to_dict("records"),
                },
                default=str,
            )
        )
        return
    c = _console()
    c.print(
        f"policy [bold]{version}[/] from {at:%Y-%m-%d}: throttled in its first 14 days "
        f"{res['n_treated']} consumers, not {res['n_control']}; matched {res['n_matched']} pairs"
    )
    c.print(
        f"retained 6-8 weeks later: {res['retained_treated']:.1%} throttled vs "
        f"{res['retained_matched_controls']:.1%} matched controls -> ATT [bold]{res['att']:+.3f}[/] "
        f"(95% CI {res['ci_low']:+.3f} to {res['ci_high']:+.3f}, McNemar p={res['p_value']:.3g}); "
        f"naive difference {res['naive_difference']:+.3f}"
    )
    _show(res["balance"], "balance (standardised mean differences; |SMD| < 0.1 is balanced)", False)


@analytics_app.command("answers")
def answers_cmd(
    config: ConfigOpt = None,
    dataset: DatasetOpt = "gateway",
    store: StoreOpt = None,
    period: Annotated[str, typer.Option(help="SLO window: the last N of the data")] = "7d",
) -> None:
    """Which routes break SLO, which consumers we lost, and whether the policy did it."""
    from analytics.report import answers, period_filters

    s = _settings(config)
    src = source_for(s, dataset, store)
    f = _run(lambda: period_filters(src, period))
    typer.echo(json.dumps(_run(lambda: answers(src, s.analytics, f)), default=str, indent=2))


def history(
    consumers: Annotated[int | None, typer.Option(help="consumers to simulate")] = None,
    weeks: Annotated[int | None, typer.Option(help="weeks of history")] = None,
    seed: Annotated[int | None, typer.Option(help="random seed")] = None,
    config: ConfigOpt = None,
) -> None:
    """Simulate months of consumer lifecycles (signups, upgrades, a policy change,
    churn) into their own store: the cohort analytics' data set."""
    from telemetry.simulator.lifecycle import write_lifecycle

    s = _settings(config)
    from pydantic import ValidationError

    from config.simulator import LifecycleSettings

    given = {"consumers": consumers, "weeks": weeks, "seed": seed}
    upd = {k: v for k, v in given.items() if v is not None}  # --seed 0 is a seed
    try:
        cfg = LifecycleSettings.model_validate({**s.history.model_dump(), **upd})
    except ValidationError as exc:
        _fail("; ".join(f"history: {e['msg']}" for e in exc.errors()))
        return
    with _console().status("simulating consumer history ..."):
        res = write_lifecycle(cfg, s.history_dir)
    t = res.truth
    _console().print(
        f"{res.events.num_rows:,} events of {res.consumers.num_rows:,} consumers "
        f"({t['start'][:10]} to {t['end'][:10]}) -> {s.history_dir}; "
        f"policy change {t['policy_start'][:10]}; analyse with --dataset history"
    )


def dashboard(
    host: Annotated[str | None, typer.Option(help="bind address")] = None,
    port: Annotated[int | None, typer.Option(help="port")] = None,
    config: ConfigOpt = None,
) -> None:
    """Serve the analytics dashboard (traffic, SLOs, security, models and policies,
    cohorts) at http://host:port, refreshing from live telemetry."""
    from analytics.dashboard import serve

    s = _settings(config)
    h = host or s.analytics.dashboard.host
    p = port or s.analytics.dashboard.port
    _console().print(f"gatewise dashboard on http://{h}:{p}  (Ctrl-C stops)")
    serve(s, h, p)


def report(
    period: Annotated[str, typer.Option(help="the review window: the last N of the data")] = "7d",
    until: UntilOpt = None,
    out: Annotated[Path | None, typer.Option(help="HTML file to write")] = None,
    mlflow: Annotated[bool, typer.Option(help="log the report to MLflow")] = True,
    config: ConfigOpt = None,
    dataset: DatasetOpt = "gateway",
    store: StoreOpt = None,
) -> None:
    """Write the weekly review (self-contained HTML) and log it to MLflow."""
    from analytics.report import log_report, write_report

    s = _settings(config)
    src = source_for(s, dataset, store)
    path = out or s.data_dir / "reports" / f"review-{dataset}-{period}.html"
    with _console().status("computing the review ..."):
        summary = _run(lambda: write_report(src, s.analytics, path, period, until))
    run = log_report(s, summary) if mlflow else None
    ans = summary["answers"]
    c = _console()
    c.print(f"report: {path}" + (f"  (MLflow run {run})" if run else ""))
    c.print(f"routes breaking SLO: {', '.join(r['route'] for r in ans['slo_breaching']) or 'none'}")
    c.print(f"consumers lost: {ans['lost']:,} of {ans['consumers']:,}")
    pe = ans["policy_effect"]
    if "att" in pe:
        c.print(
            f"policy {pe['policy_version']}: ATT on retention {pe['att']:+.3f} "
            f"(95% CI {pe['ci_low']:+.3f} to {pe['ci_high']:+.3f})"
        )


def register(app: typer.Typer) -> None:
    app.add_typer(analytics_app, name="analytics")
    app.command("history")(history)
    app.command("dashboard")(dashboard)
    app.command("report")(report)
