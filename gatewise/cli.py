"""The ``gatewise`` command. Commands are thin: parse options, call a function
of a room, print. Heavy imports happen inside the commands."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
    from config.settings import Settings

app = typer.Typer(
    name="gatewise",
    help="gatewise: an MLOps platform that learns from API-gateway traffic.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
telemetry_app = typer.Typer(help="Inspect the telemetry store.", no_args_is_help=True)
config_app = typer.Typer(help="Show or check the project config.", no_args_is_help=True)
features_app = typer.Typer(help="Build and look up Feast feature sets.", no_args_is_help=True)
automl_app = typer.Typer(help="AutoML on any table a data scientist brings.", no_args_is_help=True)
app.add_typer(automl_app, name="automl")
app.add_typer(telemetry_app, name="telemetry")
app.add_typer(features_app, name="features")
app.add_typer(config_app, name="config")

ConfigOpt = Annotated[
    Path | None,
    typer.Option(
        "--config", "-c", help="gatewise.yaml to use (default: ./gatewise.yaml or $GATEWISE_CONFIG)"
    ),
]
# formats ``simulate --emit`` writes (telemetry/ingest/emit.py EMITTERS)
FORMATS = (
    "combined",
    "nginx:main",
    "nginx:gatewise",
    "apache:common",
    "apache:vhost_combined",
    "haproxy",
    "envoy:default",
    "alb",
    "nginx-json",
    "kong",
    "envoy",
)


def _console() -> Any:
    from rich.console import Console

    return Console()


def _settings(config: Path | None, **overrides: Any) -> Settings:
    from config.settings import ConfigError, load_settings

    try:
        return load_settings(config, **overrides)
    except ConfigError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None


def _fail(msg: str) -> None:
    typer.echo(f"error: {msg}", err=True)
    raise typer.Exit(2)


@config_app.command("show")
def config_show(config: ConfigOpt = None) -> None:
    """Print the effective config (file + GATEWISE_* overrides) as YAML."""
    import yaml

    s = _settings(config)
    typer.echo(yaml.safe_dump(s.model_dump(mode="json"), sort_keys=False))


@config_app.command("check")
def config_check(config: ConfigOpt = None) -> None:
    """Validate the config; exit 2 naming each invalid field."""
    _settings(config)
    typer.echo("config ok")


@app.command()
def simulate(
    clients: Annotated[int | None, typer.Option(help="number of API clients")] = None,
    days: Annotated[float | None, typer.Option(help="days of traffic")] = None,
    seed: Annotated[int | None, typer.Option(help="random seed: same seed, same output")] = None,
    emit: Annotated[
        str | None,
        typer.Option(help=f"also write the traffic as a gateway log: {', '.join(FORMATS)}"),
    ] = None,
    emit_path: Annotated[
        Path | None, typer.Option("--emit-path", help="where to write the emitted log")
    ] = None,
    config: ConfigOpt = None,
) -> None:
    """Simulate labelled API traffic into the telemetry store."""
    if emit is not None and emit not in FORMATS:
        _fail(f"--emit: unknown format {emit!r}; choose one of {', '.join(FORMATS)}")
    s = _settings(config)
    sim = s.simulator.model_copy(
        update={
            k: v
            for k, v in {"clients": clients, "days": days, "seed": seed}.items()
            if v is not None
        }
    )
    try:
        from config.simulator import SimulatorSettings

        sim = SimulatorSettings.model_validate(sim.model_dump())
    except Exception as exc:
        _fail(f"invalid simulator option: {exc}")
    s = s.model_copy(update={"simulator": sim})
    from demo.steps import simulation

    simulation(_console(), s, emit)


@telemetry_app.command("summary")
def telemetry_summary(
    since: Annotated[str | None, typer.Option(help="ISO time, inclusive")] = None,
    until: Annotated[str | None, typer.Option(help="ISO time, exclusive")] = None,
    config: ConfigOpt = None,
) -> None:
    """Summary table of the telemetry store."""
    from demo.steps import summary
    from gatewise.report import parse_range

    s = _settings(config)
    try:
        start, end = parse_range(since, until)
    except ValueError as exc:
        _fail(str(exc))
    summary(_console(), s, start, end)


@features_app.command("build")
def features_build(
    since: Annotated[
        str | None,
        typer.Option(help="first UTC day to build (YYYY-MM-DD); default: every day with telemetry"),
    ] = None,
    until: Annotated[
        str | None, typer.Option(help="day after the last one to build (exclusive)")
    ] = None,
    force: Annotated[
        bool, typer.Option(help="rebuild days whose telemetry did not change")
    ] = False,
    config: ConfigOpt = None,
) -> None:
    """Run the Prefect flow build_features: telemetry → windows → feast apply → materialize."""
    from demo.steps import features_build
    from gatewise.report import parse_days

    s = _settings(config)
    try:
        start, end = parse_days(since, until)
    except ValueError as exc:
        _fail(str(exc))
    features_build(_console(), s, config, start, end, force)


@features_app.command("online")
def features_online(
    entity_ids: Annotated[
        list[str],
        typer.Argument(
            help="client ids (abuse_v1) or route ids such as 'GET /v1/search' (load_v1)"
        ),
    ],
    service: Annotated[str, typer.Option(help="feature service")] = "abuse_v1",
    config: ConfigOpt = None,
) -> None:
    """Look up the latest features of entities in the online store."""
    from demo.steps import features_online

    features_online(_console(), _settings(config), entity_ids, service)


@app.command()
def train(
    target: Annotated[
        str, typer.Option(help="a target of gatewise.yaml (abuse, load, ...)")
    ] = "abuse",
    budget: Annotated[
        float | None, typer.Option(help="search time budget in seconds (default: the target's)")
    ] = None,
    trials: Annotated[int | None, typer.Option(help="stop after this many trials")] = None,
    workers: Annotated[
        int,
        typer.Option(
            min=1, help="search processes sharing one Optuna study (PostgreSQL storage for N>1)"
        ),
    ] = 1,
    seed: Annotated[int, typer.Option()] = 0,
    labels: Annotated[
        str,
        typer.Option(
            help="which labels train it: all (a person's label wins), weak (the label model's),"
            " reviewed (people's and imported)"
        ),
    ] = "all",
    serve: Annotated[
        bool,
        typer.Option(
            help="serve the flow as Prefect deployment 'train/<target>' instead of one run"
        ),
    ] = False,
    config: ConfigOpt = None,
) -> None:
    """Run the Prefect flow train: AutoML → MLflow → challenger with a gate verdict."""
    s = _settings(config)
    if target not in s.targets:
        _fail(
            f"--target: unknown target {target!r}; gatewise.yaml defines {', '.join(sorted(s.targets))}"
        )
    if labels not in ("all", "weak", "reviewed"):
        _fail(f"--labels: {labels!r} is not all, weak or reviewed")
    if not serve:  # a scheduled deployment may run once the data is there
        from models.data import DataQualityError, check_ready

        try:
            check_ready(s, target, labels)
        except DataQualityError as exc:
            _fail(str(exc))
    if serve:
        from flows.train import serve_train

        serve_train(s, config, target, budget, workers)
        return
    from demo.steps import train as run_train

    run_train(_console(), s, config, target, budget, trials, workers, seed, labels)


@automl_app.command("fit")
def automl_fit(
    table: Annotated[Path, typer.Option("--table", help="the table: CSV, Parquet, JSON, ...")],
    label: Annotated[str, typer.Option(help="label column")],
    budget: Annotated[
        float,
        typer.Option(help="wall-clock seconds from reading the table to the registered model"),
    ] = 60.0,
    sensitive: Annotated[
        str | None,
        typer.Option(help="comma-separated sensitive columns (fairness checks, not inputs)"),
    ] = None,
    time_col: Annotated[
        str | None, typer.Option("--time-col", help="train on the past, validate on the future")
    ] = None,
    group_col: Annotated[
        str | None, typer.Option("--group-col", help="keep each group on one side of a split")
    ] = None,
    metric: Annotated[
        str | None, typer.Option(help="roc_auc, average_precision, f1, log_loss, mae, rmse, r2")
    ] = None,
    name: Annotated[
        str | None, typer.Option(help="registered model gatewise-<name> (default: the file name)")
    ] = None,
    task: Annotated[
        str | None,
        typer.Option(
            help="binary, multiclass or regression (default: from the label, said on screen)"
        ),
    ] = None,
    positive: Annotated[
        str | None,
        typer.Option(
            help="binary: the class the score is the probability of (default: the true/yes/1"
            " value, else the rarer class, said on screen)"
        ),
    ] = None,
    workers: Annotated[int, typer.Option(min=1)] = 1,
    seed: Annotated[int, typer.Option()] = 0,
    config: ConfigOpt = None,
) -> None:
    """AutoML on a table (CSV, TSV, Parquet, JSON, compressed or not: read by content),
    inside the budget's wall clock; tracked in MLflow and registered like a target."""
    if not table.is_file():
        _fail(f"--table: no such file {table}")
    from gatewise import report

    s = _settings(config)
    report.automl_fit(
        _console(),
        s,
        table,
        label,
        budget,
        [c.strip() for c in sensitive.split(",")] if sensitive else None,
        time_col,
        group_col,
        metric,
        name,
        workers,
        seed,
        task,
        positive,
    )


@app.command()
def promote(
    target: Annotated[
        str, typer.Option(help="target (registered model gatewise-<target>)")
    ] = "abuse",
    version: Annotated[
        str | None, typer.Option(help="version to promote (default: the challenger)")
    ] = None,
    force: Annotated[bool, typer.Option(help="promote even if the gate said no")] = False,
    config: ConfigOpt = None,
) -> None:
    """Move the champion alias to an eligible version."""
    from models.registry import PromotionError
    from models.registry import promote as do

    s = _settings(config)
    try:
        out = do(s, target, version, force=force)
    except PromotionError as exc:
        _fail(str(exc))
    typer.echo(
        f"{out['model']}: champion is now version {out['champion']}"
        + (f" (was {out['previous']})" if out["previous"] else "")
    )
    sc = out.get("scanner")
    if sc:
        typer.echo(
            f"payload scanner for the gateway: {sc['path']}"
            if "path" in sc
            else f"payload scanner: {sc.get('remote') or sc.get('none')} (gateway: scanning.mode remote)"
        )


@app.command()
def rollback(
    target: Annotated[
        str, typer.Option(help="target (registered model gatewise-<target>)")
    ] = "abuse",
    config: ConfigOpt = None,
) -> None:
    """Restore the previous champion."""
    from models.registry import PromotionError
    from models.registry import rollback as do

    s = _settings(config)
    try:
        out = do(s, target)
    except PromotionError as exc:
        _fail(str(exc))
    typer.echo(
        f"{out['model']}: champion is back to version {out['champion']} (replacing {out['replaced']})"
    )


@app.command()
def demo(
    dataplane: Annotated[
        str,
        typer.Option(
            help="what enforces the live gateway act: python (the embedded gateway) or nginx "
            "(NGINX + Lua enforcing the same policy; needs nginx-light, "
            "libnginx-mod-http-lua, lua-cjson)"
        ),
    ] = "python",
    config: ConfigOpt = None,
) -> None:
    """Run everything built so far end to end on embedded defaults."""
    from demo.main import run_demo

    if dataplane not in ("python", "nginx"):
        _fail(f"--dataplane {dataplane!r}: choose python or nginx")
    if dataplane == "nginx":
        from gateway.dataplane.nginx import check

        missing = check()
        if missing:
            _fail("--dataplane nginx needs: " + "; ".join(missing))
    s = _settings(config)
    run_demo(_console(), s, config, dataplane)


@app.command()
def loop(
    minutes: Annotated[float, typer.Option(help="length of each replay phase")] = 2.0,
    max_rps: Annotated[
        float, typer.Option(help="average request rate the chosen span may have")
    ] = 60.0,
    scoring_url: Annotated[
        str | None,
        typer.Option(
            help="the champion's scoring service (e.g. `gatewise serve`'s URL): the replay's "
            "gateway scores every client live; without it only monitor overrides act"
        ),
    ] = None,
    retrain_budget: Annotated[
        float,
        typer.Option(
            help="when drift asks for a new model (live scoring only): the search budget in "
            "seconds, warm-started from the champion"
        ),
    ] = 30.0,
    config: ConfigOpt = None,
) -> None:
    """The closed loop, live: replay fresh traffic through the real gateway, monitor, publish
    the gated policy (retrain, gate and deploy when drift asks), replay again; a table and an
    HTML report against static limits."""
    from demo.closed_loop import run_closed_loop

    s = _settings(config)
    try:
        run_closed_loop(
            _console(),
            s,
            config,
            minutes=minutes,
            max_rps=max_rps,
            scoring_url=scoring_url,
            retrain_budget_s=retrain_budget,
        )
    except ValueError as exc:
        _fail(str(exc))


from gatewise import cli_gateway  # noqa: E402  (registers on ``app``; imports this module)

cli_gateway.register(app)

from gatewise import cli_serving  # noqa: E402

cli_serving.register(app)

from gatewise import cli_stream  # noqa: E402

cli_stream.register(app)

from gatewise import cli_ingest  # noqa: E402

cli_ingest.register(app)

from gatewise import cli_monitor  # noqa: E402

cli_monitor.register(app)

from gatewise import cli_analytics  # noqa: E402

cli_analytics.register(app)


from gatewise import cli_scan  # noqa: E402

cli_scan.register(app)

from gatewise import cli_labels  # noqa: E402

cli_labels.register(app)

from gatewise import cli_review  # noqa: E402

cli_review.register(app)

from gatewise import cli_dataplane  # noqa: E402

cli_dataplane.register(app)


def main() -> None:  # pragma: no cover
    app()
