"""``gatewise dataplane``: NGINX enforcing gatewise's live policy (gateway/dataplane/).

    gatewise dataplane nginx            # render, start NGINX, keep it on the live policy and
                                        # scores, follow its access log into the store
    gatewise dataplane sync --dir DIR   # only the sync, for an NGINX you run yourself
    gatewise dataplane status --dir DIR

Registered on the main ``gatewise`` command by ``register(app)``.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Annotated, Any

import typer

from gatewise.cli import ConfigOpt, _console, _fail, _settings

__all__ = ["register", "render_nginx_lua"]

dataplane_app = typer.Typer(
    help="NGINX as a gatewise data plane: the live policy and scores, enforced by Lua.",
    no_args_is_help=True,
)

DirOpt = Annotated[
    Path | None,
    typer.Option("--dir", help="the NGINX prefix directory (default <data_dir>/dataplane/nginx)"),
]


def _root(s: Any, d: Path | None) -> Path:
    return d or s.data_dir / "dataplane" / "nginx"


def _admin(s: Any, root: Path, admin_url: str | None) -> tuple[Any, str]:
    """The admin client of the data plane rendered in ``root``, and its URL."""
    from gateway.dataplane.nginx import DataPlaneAdmin

    token_file = root / "admin.token"
    if not token_file.exists():
        _fail(
            f"no {token_file}: render the configuration first "
            f"(gatewise policy export --to nginx-lua -o {root})"
        )
    url = admin_url or f"http://127.0.0.1:{s.gateway.port + 1}"
    return DataPlaneAdmin(url, token_file.read_text().strip()), url


def render_nginx_lua(
    s: Any,
    out: Path,
    port: int | None = None,
    admin_port: int | None = None,
    workers: int | None = None,
) -> Any:
    """The prefix directory for the active policy (``policy export --to nginx-lua``)."""
    from gateway.dataplane.nginx import render
    from gateway.dataplane.sync import compile_active

    text = compile_active(s)
    return render(
        s.gateway,
        out,
        port=port,
        admin_port=admin_port or (port or s.gateway.port) + 1,
        workers=workers,
        bundle=text,
    )


@dataplane_app.command("nginx")
def nginx(
    port: Annotated[int | None, typer.Option(help="public port (default gateway.port)")] = None,
    admin_port: Annotated[
        int | None, typer.Option(help="admin port on 127.0.0.1 (default port + 1)")
    ] = None,
    workers: Annotated[int | None, typer.Option(help="NGINX worker processes")] = None,
    dir: DirOpt = None,
    follow: Annotated[
        bool, typer.Option(help="ingest the access log into the telemetry store, live")
    ] = True,
    with_stream: Annotated[
        bool, typer.Option(help="also run the stream processor on the followed events")
    ] = False,
    config: ConfigOpt = None,
) -> None:
    """Run NGINX in front of the configured services, enforcing the live policy."""
    from gateway.dataplane.nginx import DataPlaneAdmin, DataPlaneError, NginxProcess
    from gateway.dataplane.sync import DataPlaneSync
    from gateway.policy import PolicyError
    from telemetry.ingest.formats import resolve

    s = _settings(config)
    console = _console()
    try:
        r = render_nginx_lua(s, _root(s, dir), port, admin_port, workers)
    except (PolicyError, ValueError) as exc:
        _fail(str(exc))
    proc = NginxProcess(r)
    try:
        with console.status(f"starting NGINX ({r.conf})"):
            proc.start()
    except DataPlaneError as exc:
        _fail(str(exc))
    admin = DataPlaneAdmin(r.admin_url, r.token)
    sync = DataPlaneSync(s, admin, r.root)
    sync.sync_once(force=True)
    sync.refresh_scores()
    console.print(
        f"NGINX data plane on {r.url} (admin {r.admin_url}, token in {r.root / 'admin.token'}); "
        f"policy v{sync.status.enforced} enforced; access log {r.access_log}"
    )
    stop = threading.Event()
    worker = threading.Thread(target=sync.run, args=(stop,), name="dataplane-sync", daemon=True)
    worker.start()

    def caption() -> str:
        st = sync.status
        err = f" [red]{st.error}[/red]" if st.error else ""
        return (
            f"policy v{st.enforced} enforced by NGINX ({st.pushes} pushes, last "
            f"{st.lag_s or 0:.2f}s after publish); scores pushed {st.scores_pushed:,}{err}"
        )

    try:
        if follow:
            from gatewise.cli_ingest import _follow

            _follow(
                s,
                [r.access_log],
                resolve("nginx-json"),
                None,
                with_stream,
                None,
                checkpoint=r.root / "follow-checkpoint.json",
                caption=caption,
            )
        else:
            import signal

            for sig in (signal.SIGINT, signal.SIGTERM):
                signal.signal(sig, lambda *_: stop.set())
            while not stop.wait(5):
                console.print(caption())
    finally:
        stop.set()
        worker.join(timeout=10)
        proc.stop()
        admin.close()
    console.print("NGINX stopped")


@dataplane_app.command("sync")
def sync_cmd(
    dir: DirOpt = None,
    admin_url: Annotated[
        str | None, typer.Option(help="default http://127.0.0.1:<gateway.port + 1>")
    ] = None,
    once: Annotated[bool, typer.Option(help="push once and exit")] = False,
    config: ConfigOpt = None,
) -> None:
    """Keep an NGINX data plane you run yourself on the live policy and scores."""
    import signal

    from gateway.dataplane.sync import DataPlaneSync

    s = _settings(config)
    root = _root(s, dir)
    admin, url = _admin(s, root, admin_url)
    sync = DataPlaneSync(s, admin, root)
    sync.sync_once(force=True)
    if sync.status.error:
        _fail(sync.status.error)
    n = sync.refresh_scores()
    typer.echo(f"policy v{sync.status.enforced} enforced at {url}; {n} scores pushed")
    if once:
        return
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    sync.run(stop)


@dataplane_app.command("status")
def status(
    dir: DirOpt = None,
    admin_url: Annotated[str | None, typer.Option()] = None,
    config: ConfigOpt = None,
) -> None:
    """What the data plane enforces: policy version, decisions, scores."""
    import json

    s = _settings(config)
    admin, url = _admin(s, _root(s, dir), admin_url)
    try:
        st = admin.status()
    except Exception as exc:
        _fail(f"the data plane at {url} did not answer: {exc}")
    typer.echo(json.dumps(st, indent=2, sort_keys=True))


def register(app: typer.Typer) -> None:
    app.add_typer(dataplane_app, name="dataplane")
