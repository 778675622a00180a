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
    """One verdict per input row: label (benign or the attack class), score, the most
    suspicious value. Malformed rows get an ``error`` naming the problem; none is skipped."""
    from gateway.scan import parse_record
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
                    values, kind = parse_record(line, cfg)
                except ValueError as exc:
                    row["error"] = str(exc)
                    counts["error"] += 1
                    out.write(json.dumps(row) + "\n")
                    continue
                row["kind"] = kind
                if not values:
                    row.update(label=None, score=None, values=0)
                    counts["nothing to scan"] += 1
                else:
                    verdicts = scanner.scan(values)
                    j = max(range(len(verdicts)), key=lambda k: verdicts[k][1])
                    row.update(
                        label=verdicts[j][0],
                        score=round(float(verdicts[j][1]), 6),
                        value=values[j][:200],
                        values=len(values),
                    )
                    counts[verdicts[j][0]] += 1
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
