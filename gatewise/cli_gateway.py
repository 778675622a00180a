"""Gateway commands: ``gateway``, ``upstreams``, ``consumers``, ``policy``, ``backtest``.

Registered on the main ``gatewise`` command by ``register(app)``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

import typer

from gatewise.cli import ConfigOpt, _console, _fail, _settings

__all__ = ["register"]

policy_app = typer.Typer(
    help="Show, push, roll back and export gateway policies.", no_args_is_help=True
)
consumers_app = typer.Typer(help="API consumers and their keys.", no_args_is_help=True)


def gateway(
    host: Annotated[str | None, typer.Option(help="listen address")] = None,
    port: Annotated[int | None, typer.Option(help="listen port")] = None,
    workers: Annotated[int | None, typer.Option(help="worker processes")] = None,
    config: ConfigOpt = None,
) -> None:
    """Serve the gateway in front of the configured upstream services."""
    import uvicorn

    s = _settings(config)
    g = s.gateway
    host, port, workers = host or g.host, port or g.port, workers or g.workers
    if s.gateway_consumers_path.exists() is False:
        typer.echo(
            f"note: no consumers at {s.gateway_consumers_path}; add one with `gatewise consumers add`",
            err=True,
        )
    serve: dict[str, Any] = {
        "host": host,
        "port": port,
        "log_level": "warning",
        "access_log": False,
        "proxy_headers": False,  # gateway.trusted_proxies decides (gateway/addresses.py)
        **_fast_server(),
    }
    if workers > 1:
        os.environ["GATEWISE_CONFIG"] = str(
            config or os.environ.get("GATEWISE_CONFIG", "gatewise.yaml")
        )
        uvicorn.run("gateway.app:app_from_env", factory=True, workers=workers, **serve)
        return
    from gateway.app import create_app

    uvicorn.run(create_app(s), **serve)


def _fast_server() -> dict[str, str]:
    """uvloop and httptools where installed (both are dependencies; uvloop is not on Windows).
    Measured in the gateway (docs/benchmarks.md, issue 24): h11 in place of httptools costs
    ~50% more CPU per request, the asyncio loop in place of uvloop ~7% more."""
    import importlib.util

    return {
        "http": "httptools" if importlib.util.find_spec("httptools") else "h11",
        "loop": "uvloop" if importlib.util.find_spec("uvloop") else "asyncio",
    }


def upstreams(
    port: Annotated[int, typer.Option(help="first port")] = 9101,
    instances: Annotated[int, typer.Option(help="instances on consecutive ports")] = 1,
    latency_scale: Annotated[
        float, typer.Option(help="1.0 = each service's simulated latency")
    ] = 0.0,
    host: str = "127.0.0.1",
) -> None:
    """Serve the demo upstream services (the simulated API surface)."""
    import multiprocessing as mp

    procs = []
    for i in range(instances):
        p = mp.get_context("spawn").Process(
            target=_serve_upstream, args=(host, port + i, latency_scale, f"demo-{i}"), daemon=True
        )
        p.start()
        procs.append(p)
        typer.echo(f"upstream demo-{i} on http://{host}:{port + i}")
    for p in procs:
        p.join()


def _serve_upstream(host: str, port: int, latency_scale: float, name: str) -> None:
    import uvicorn

    from gateway.upstreams import upstream_app

    uvicorn.run(
        upstream_app(latency_scale, name=name),
        host=host,
        port=port,
        log_level="warning",
        access_log=False,
    )


@consumers_app.command("add")
def consumers_add(
    client_id: Annotated[str, typer.Argument(help="the consumer's id")],
    tier: Annotated[str, typer.Option(help="free | pro | enterprise")] = "free",
    roles: Annotated[str, typer.Option(help="comma-separated roles")] = "consumer",
    region: Annotated[str | None, typer.Option()] = None,
    device_type: Annotated[str | None, typer.Option()] = None,
    config: ConfigOpt = None,
) -> None:
    """Create a consumer (or a new key for one); the key is printed once, only its hash is kept."""
    from gateway.auth import ApiKey, Consumer, ConsumersFile, new_api_key

    s = _settings(config)
    path = s.gateway_consumers_path
    cf = ConsumersFile.load(path)
    kid, key, digest = new_api_key()
    found = next((c for c in cf.consumers if c.client_id == client_id), None)
    if found is None:
        found = Consumer(
            client_id=client_id,
            tier=tier,
            roles=[r.strip() for r in roles.split(",") if r.strip()],
            region=region,
            device_type=device_type,
        )
        cf.consumers.append(found)
    found.api_keys.append(ApiKey(id=kid, sha256=digest))
    cf.save(path)
    typer.echo(key)


@consumers_app.command("revoke")
def consumers_revoke(
    key_id: Annotated[str, typer.Argument(help="key id (the part after gw_)")],
    config: ConfigOpt = None,
) -> None:
    """Revoke one API key."""
    from gateway.auth import ConsumersFile

    s = _settings(config)
    cf = ConsumersFile.load(s.gateway_consumers_path)
    for c in cf.consumers:
        for k in c.api_keys:
            if k.id == key_id:
                k.revoked = True
                cf.save(s.gateway_consumers_path)
                typer.echo(f"revoked {key_id} of {c.client_id}")
                return
    _fail(f"no key with id {key_id!r}")


def _store(config: Path | None) -> Any:
    from gateway.policy_store import PolicyStore

    return PolicyStore(_settings(config).policy_dir)


def _initial(config: Path | None) -> Any:
    from gateway.policy import initial_policy

    return initial_policy(_settings(config))


@policy_app.command("init")
def policy_init(config: ConfigOpt = None) -> None:
    """Write the initial policy (static tier limits, abuse target in shadow) if there is none."""
    p = _store(config).publish_if_absent(
        _initial(config), author="cli", reason="initial policy from gatewise.yaml"
    )
    typer.echo(f"policy v{p.version} in {_store(config).active_path}")


@policy_app.command("show")
def policy_show(
    version: Annotated[int | None, typer.Option(help="a past version")] = None,
    config: ConfigOpt = None,
) -> None:
    """Print the active (or a past) policy document."""
    from gateway.policy import PolicyError

    store = _store(config)
    if version is None and not store.exists():
        typer.echo(_initial(config).model_dump_json(indent=2))
        typer.echo(
            f"note: this is the initial policy from gatewise.yaml; it is not yet published "
            f"(no {store.active_path}). `gatewise policy init` publishes it, and so does the "
            "gateway's first start.",
            err=True,
        )
        return
    try:
        p = store.get(version) if version else store.load()
    except PolicyError as exc:
        _fail(str(exc))
    typer.echo(p.model_dump_json(indent=2))


@policy_app.command("history")
def policy_history(config: ConfigOpt = None) -> None:
    """Every published version: who, when, why."""
    from rich.table import Table

    t = Table("version", "created", "author", "reason", "overrides", "modes")
    for h in _store(config).history():
        if "error" in h:
            t.add_row(h["file"], "", "", f"[red]{h['error']}[/red]", "", "")
            continue
        t.add_row(
            str(h["version"]),
            str(h["created_at"])[:19],
            h["author"],
            h["reason"],
            str(h["overrides"]),
            ", ".join(f"{k}={v}" for k, v in h["targets"].items()),
        )
    _console().print(t)


@policy_app.command("push")
def policy_push(
    file: Annotated[Path, typer.Argument(help="policy JSON to publish as the next version")],
    reason: Annotated[str, typer.Option(help="why (kept in the history)")] = "",
    author: Annotated[str, typer.Option()] = "cli",
    config: ConfigOpt = None,
) -> None:
    """Validate and publish a policy; running gateways pick it up within a second."""
    from gateway.policy import PolicyError, parse_policy

    try:
        doc = parse_policy(file.read_bytes(), str(file))
        p = _store(config).publish(doc, author=author, reason=reason)
    except (PolicyError, OSError) as exc:
        _fail(str(exc))
    typer.echo(f"published policy v{p.version}")


@policy_app.command("rollback")
def policy_rollback(
    version: Annotated[int, typer.Argument(help="the version to restore")],
    config: ConfigOpt = None,
) -> None:
    """Publish a copy of an earlier version as the next one."""
    from gateway.policy import PolicyError

    try:
        p = _store(config).rollback(version, author="cli")
    except PolicyError as exc:
        _fail(str(exc))
    typer.echo(f"published policy v{p.version} (copy of v{version})")


@policy_app.command("export")
def policy_export(
    to: Annotated[str, typer.Option("--to", help="kong | envoy | nginx | nginx-lua")],
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="a file; for nginx-lua the NGINX prefix directory"),
    ] = None,
    config: ConfigOpt = None,
) -> None:
    """Render the active policy for Kong, envoyproxy/ratelimit or NGINX; ``nginx-lua``: a
    whole NGINX data plane enforcing it (docs/dataplane.md)."""
    from gateway.exporters import export
    from gateway.policy import PolicyError

    if to == "nginx-lua":
        from gatewise.cli_dataplane import render_nginx_lua

        s = _settings(config)
        out = output or s.data_dir / "dataplane" / "nginx"
        try:
            r = render_nginx_lua(s, out)
        except (PolicyError, ValueError) as exc:
            _fail(str(exc))
        typer.echo(
            f"wrote {r.conf} (+ lua/, bundle.json, admin.token); run: nginx -p {r.root} -c "
            f"{r.conf}, then `gatewise dataplane sync --dir {r.root}` keeps it live"
        )
        return
    try:
        text = export(_store(config).load(), to)
    except (PolicyError, ValueError) as exc:
        _fail(str(exc))
    if output:
        output.write_text(text)
        typer.echo(f"wrote {output}")
    else:
        typer.echo(text)


def backtest(
    policy: Annotated[
        str | None, typer.Option(help="policy JSON file or version number (default: active)")
    ] = None,
    telemetry: Annotated[
        Path | None, typer.Option(help="telemetry store dir or Parquet/JSONL file")
    ] = None,
    labels: Annotated[Path | None, typer.Option(help="labels dir or file")] = None,
    model: Annotated[str | None, typer.Option(help="re-score with a model version")] = None,
    start: Annotated[str | None, typer.Option(help="ISO time")] = None,
    end: Annotated[str | None, typer.Option(help="ISO time")] = None,
    out: Annotated[Path | None, typer.Option(help="write per-request decisions (Parquet)")] = None,
    config: ConfigOpt = None,
) -> None:
    """What a policy would have done to recorded traffic, replayed in event time."""
    from gateway.backtest import backtest as run
    from gateway.policy import PolicyError, parse_policy

    s = _settings(config)
    scores = None
    if model:
        from serving.batch import score_windows

        try:
            scored, used = score_windows(s, "abuse", model, since=start, until=end)
        except (LookupError, ValueError) as exc:
            _fail(f"--model {model}: {exc}")
        unscored = int(scored["score"].isna().sum())
        typer.echo(
            f"re-scored {len(scored) - unscored:,} client windows with model v{used} "
            "(point-in-time features)"
            + (f"; {unscored:,} window(s) without features are judged unscored" if unscored else "")
        )
        scores = scored
    store = _store(config)
    try:
        if policy is None and not store.exists():
            pol = _initial(config)
            typer.echo(
                "judging the initial policy from gatewise.yaml (not yet published: "
                "`gatewise policy init`)"
            )
        elif policy is None:
            pol = store.load()
        elif policy.isdigit():
            pol = store.get(int(policy))
        else:
            pol = parse_policy(Path(policy).read_bytes(), policy)
    except (PolicyError, OSError) as exc:
        _fail(str(exc))
    tel = telemetry or s.telemetry_dir
    if not tel.exists():
        _fail(f"no telemetry at {tel}")
    lab = labels if labels is not None else (s.labels_dir if s.labels_dir.exists() else None)
    try:
        r = run(
            pol,
            tel,
            labels=lab,
            label_window_minutes=s.simulator.label_window_minutes,
            start=start,
            end=end,
            scores=scores,
        )
    except ValueError as exc:  # a bad --start/--end names itself
        _fail(str(exc))
    from demo.steps import backtest_report

    backtest_report(_console(), r)
    if out:
        r.decisions.to_parquet(out)
        typer.echo(
            f"wrote {out} (per request: model_score, action, decision, band; would_*: "
            "with shadow rules enforced; static_*: without model action)"
        )


def register(app: typer.Typer) -> None:
    app.command()(gateway)
    app.command()(upstreams)
    app.command()(backtest)
    app.add_typer(policy_app, name="policy")
    app.add_typer(consumers_app, name="consumers")
