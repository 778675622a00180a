"""Serving commands: ``serve``, ``deploy``, ``score``. Registered by ``register(app)``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Annotated

import typer

from gatewise.cli import ConfigOpt, _console, _fail, _settings

__all__ = ["register"]


def serve(
    port: Annotated[int | None, typer.Option(help="listen port (default serving.port)")] = None,
    config: ConfigOpt = None,
) -> None:
    """Run the BentoML prediction service in the foreground (Ctrl-C stops it)."""
    from serving.process import service_env

    s = _settings(config)
    exe = Path(sys.executable).with_name("bentoml")
    cmd = [str(exe), "serve", "serving.service:Scorer", "--host", s.serving.host]
    cmd += ["--port", str(port or s.serving.port)]
    repo = Path(__file__).resolve().parents[1]
    raise typer.Exit(subprocess.call(cmd, cwd=repo, env=service_env(s, config)))


def deploy(
    target: Annotated[str, typer.Option(help="target to deploy")] = "abuse",
    version: Annotated[str | None, typer.Option(help="version (default: the challenger)")] = None,
    force: Annotated[bool, typer.Option(help="deploy even if the gate said no")] = False,
    fail_at: Annotated[
        str | None, typer.Option(help="make a step fail on purpose (a drill of the compensations)")
    ] = None,
    config: ConfigOpt = None,
) -> None:
    """Run the Prefect flow deploy: challenger → live service → champion → policy, or undo."""
    from flows.deploy import DeployError, deploy_flow

    s = _settings(config)
    try:
        out = deploy_flow(
            target=target,
            version=version,
            force=force,
            fail_at=fail_at,
            config_path=str(config) if config else None,
            data_dir=str(s.data_dir.resolve()),
        )
    except DeployError as exc:
        r = exc.result
        if r is not None and r.compensated:
            typer.echo(f"compensated: {', '.join(reversed(r.compensated))}", err=True)
        _fail(str(exc))
    typer.echo(
        f"{s.registered_model(target)} v{out['version']} is champion (was {out['previous'] or 'none'}), "
        f"served at {out['url']}; policy v{out['policy_version']} names it"
    )


def score(
    target: Annotated[str, typer.Option(help="target")] = "abuse",
    model: Annotated[str, typer.Option(help="version number or alias")] = "champion",
    since: Annotated[str | None, typer.Option(help="start of the telemetry range (ISO)")] = None,
    until: Annotated[str | None, typer.Option(help="end of the range (ISO)")] = None,
    out: Annotated[Path, typer.Option(help="Parquet of scored windows")] = Path("scores.parquet"),
    config: ConfigOpt = None,
) -> None:
    """Batch scoring: point-in-time features for every window of a range, scored by one model."""
    from serving.batch import score_windows

    s = _settings(config)
    try:
        df, version = score_windows(s, target, model, since=since, until=until)
    except (LookupError, ValueError) as exc:
        _fail(str(exc))
    df.to_parquet(out)
    unscored = int(df["score"].isna().sum())
    _console().print(
        f"{len(df) - unscored:,} windows of {df.iloc[:, 0].nunique():,} entities scored by "
        f"{s.registered_model(target)} v{version} → {out}"
        + (f"; {unscored:,} window(s) had no features (score empty)" if unscored else "")
    )


def register(app: typer.Typer) -> None:
    app.command()(serve)
    app.command()(deploy)
    app.command()(score)
