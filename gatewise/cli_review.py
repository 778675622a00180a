"""``gatewise review`` (the review queue as a file) and ``gatewise harm`` (may a shadow
target enforce?)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from gatewise.cli import ConfigOpt, _console, _fail, _settings

__all__ = ["register"]

review_app = typer.Typer(
    help="The review queue: the clients whose label would change the most.",
    no_args_is_help=True,
)
harm_app = typer.Typer(
    help="Enforce only under a bounded harm estimate: judge a shadow target on recent traffic.",
    no_args_is_help=True,
)


def _harm(s: Any, target: str, since: Any, until: Any, publish: bool) -> Any:
    """The validation of ``target``, or None with the reason printed when it cannot run."""
    from monitoring.validation import validate

    try:
        return validate(s, target=target, since=since, until=until, publish=publish, author="cli")
    except (LookupError, ValueError) as exc:
        typer.echo(f"harm bound: not judged: {exc}", err=True)
        return None


@review_app.command("export")
def export(
    n: Annotated[int, typer.Option("--n", min=1, help="clients to ask about")] = 50,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="CSV (default: stdout)")] = None,
    since: Annotated[str | None, typer.Option(help="ISO time (default: the last 24 h)")] = None,
    until: Annotated[str | None, typer.Option(help="ISO time")] = None,
    target: Annotated[str, typer.Option(help="the target whose harm bound asks first")] = "abuse",
    config: ConfigOpt = None,
) -> None:
    """Write the queue as CSV: fill in `label` (abusive / legitimate), then
    `gatewise labels import --source review --by YOU queue.csv`."""
    from labeling.review import build_queue, queue_csv, save_queue
    from monitoring.validation import period

    s = _settings(config)
    try:
        start, end = period(s, since, until)
    except (LookupError, ValueError) as exc:
        _fail(str(exc))
    v = _harm(s, target, start, end, publish=False) if target in s.targets else None
    would = None
    if v is not None:
        would = dict(
            zip(
                v.harm.clients["client_id"].astype(str),
                v.harm.clients["would_stop"].astype(int),
                strict=True,
            )
        )
    try:
        items = build_queue(
            s,
            start,
            end,
            n=n,
            harm_reviews=None if v is None else v.harm.next_reviews,
            would_stop=would,
        )
    except (LookupError, ValueError) as exc:
        _fail(str(exc))
    save_queue(
        s,
        items,
        {"since": start.isoformat(), "until": end.isoformat(), "target": target,
         "harm": None if v is None else v.record()},
    )  # fmt: skip
    df = queue_csv(items)
    if out is None:
        sys.stdout.write(df.to_csv(index=False))
    else:
        df.to_csv(out, index=False)
    harm_n = 0 if v is None else len([i for i in items if i.client_id in v.harm.next_reviews])
    typer.echo(
        f"{len(items)} client(s) to review ({harm_n} for the {target} harm bound)"
        + (f" -> {out}" if out else "")
        + "; answers: `gatewise labels import --source review --by NAME FILE`",
        err=True,
    )


@harm_app.command("check")
def check(
    target: Annotated[str, typer.Option(help="target of the policy")] = "abuse",
    since: Annotated[str | None, typer.Option(help="ISO time (default: the last 24 h)")] = None,
    until: Annotated[str | None, typer.Option(help="ISO time")] = None,
    publish: Annotated[
        bool,
        typer.Option(
            help="act on it: a shadow target that clears goes to enforce (and an enforcing one "
            "that does not, back to shadow) in a new policy version"
        ),
    ] = False,
    config: ConfigOpt = None,
) -> None:
    """The one-sided upper bound of the legitimate requests the target's rules would harm,
    from the reviews given so far, with its arithmetic; exit 1 while it does not clear."""
    s = _settings(config)
    v = _harm(s, target, since, until, publish)
    if v is None:
        raise typer.Exit(2)
    c = _console()
    h = v.harm
    c.print(
        f"{target}: model v{v.model_version or '?'} in {v.mode_before} (policy "
        f"v{v.policy_version}), {v.since[:16]} .. {v.until[:16]}"
    )
    for line in h.arithmetic:
        c.print(f"  {line}")
    c.print(("[green]" if h.cleared else "[yellow]") + h.reason + "[/]")
    if h.next_reviews:
        c.print(
            f"reviews that would settle it ({len(h.next_reviews)}): "
            + ", ".join(h.next_reviews[:15])
            + (" …" if len(h.next_reviews) > 15 else "")
            + " (`gatewise review export` puts them first)"
        )
    if v.published:
        c.print(f"published policy v{v.published}")
    if not h.cleared:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.add_typer(review_app, name="review")
    app.add_typer(harm_app, name="harm")
