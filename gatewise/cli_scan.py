"""``gatewise scan``: score a file of raw requests or bare values offline."""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path
from typing import Annotated, Any

import typer

from gatewise.cli import ConfigOpt, _console, _fail, _settings

__all__ = ["register"]


def scan(
    input: Annotated[
        Path,
        typer.Option(
            "--input",
            "-i",
            help="JSON lines of requests {method, url, headers, body}, or one bare value per line",
        ),
    ],
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="JSON lines out (default: stdout)")
    ] = None,
    target: Annotated[str, typer.Option(help="a payload target of gatewise.yaml")] = "payload",
    alias: Annotated[str, typer.Option(help="model alias to scan with")] = "champion",
    config: ConfigOpt = None,
) -> None:
    """One verdict per input row: label (benign, the attack class, or unscanned when a
    budget ran out), score, the most suspicious value and where in the request it was.
    Malformed request objects get an ``error`` naming the problem; none is skipped; any
    line that is not a request object is scanned as one bare value."""
    from features.payload import split_context
    from gateway.scan import parse_record, verdict
    from models.payload import load_scanner

    s = _settings(config)
    if target not in s.targets or s.targets[target].label_source != "payloads":
        _fail(f"--target: {target!r} is not a payload target of gatewise.yaml")
    if not input.exists():
        _fail(f"--input: {input} does not exist")
    try:
        scanner = load_scanner(s, target, alias)
    except LookupError as exc:
        _fail(str(exc))
    cfg = s.gateway.scanning
    counts: Counter[str] = Counter()
    out = output.open("w") if output else sys.stdout
    con = _console()
    try:
        with input.open(encoding="utf-8", errors="replace") as fh:
            for i, line in enumerate(fh, start=1):
                row: dict[str, Any] = {"row": i}
                try:
                    values, gaps, kind = parse_record(line, cfg)
                except ValueError as exc:
                    row["error"] = str(exc)
                    counts["error"] += 1
                    out.write(json.dumps(row) + "\n")
                    continue
                row["kind"] = kind
                best: tuple[str, float] | None = None
                j = 0
                if values:
                    verdicts = scanner.scan(values)
                    j = max(range(len(verdicts)), key=lambda k: verdicts[k][1])
                    best = (str(verdicts[j][0]), float(verdicts[j][1]))
                res = verdict(best, gaps, str(scanner.version), len(values))
                if res.label is None:
                    row.update(label=None, score=None, values=0)
                    counts["nothing to scan"] += 1
                else:
                    row.update(
                        label=res.label,
                        score=None if res.score is None else round(res.score, 6),
                        values=len(values),
                    )
                    if values:
                        ctx, raw = split_context(values[j])
                        row.update(value=raw[:200], context=ctx)
                    if res.gap:
                        row["unscanned"] = res.gap
                    counts[res.label] += 1
                out.write(json.dumps(row) + "\n")
    finally:
        if output:
            out.close()
    from rich.table import Table

    t = Table(title=f"{input}: {sum(counts.values())} rows, {target} v{scanner.version}")
    t.add_column("verdict")
    t.add_column("rows", justify="right")
    for k, n in counts.most_common():
        t.add_row(k, str(n))
    con.stderr = True
    con.print(t)


def register(app: typer.Typer) -> None:
    app.command("scan")(scan)
