"""A check's findings as HTML at the top of Evidently's drift report, so one file holds both.

Evidently's report shows drift column by column; the bias tables, the columns left out of drift
and the threshold a check used live nowhere in it. ``summary_html`` renders them (drift verdict,
left-out columns, per-column drift, per-group bias with the groups over the bound) as one
``<section>`` with plain tables, no scripts and no outside resources; ``add_to_report`` puts it
right after the report's ``<body>`` tag and its stylesheet into ``<head>``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from html import escape
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from monitoring.bias import BiasFinding, Breach
    from monitoring.drift import DriftResult

__all__ = ["CheckSummary", "add_to_report", "summary_html"]

_BODY = re.compile(r"<body\b[^>]*>", re.IGNORECASE)
_HEAD_END = re.compile(r"</head\s*>", re.IGNORECASE)
_STYLE = """<style>
#gatewise-check { font-family: system-ui, sans-serif; margin: 16px 24px; color: #222; }
#gatewise-check table { border-collapse: collapse; margin: 6px 0 16px; font-size: 14px; }
#gatewise-check th, #gatewise-check td { border: 1px solid #ccc; padding: 3px 8px; }
#gatewise-check th { background: #f2f2f2; text-align: left; }
#gatewise-check tr.flag td { background: #fde8e8; }
#gatewise-check caption { text-align: left; font-weight: 600; padding: 4px 0; }
</style>
"""


@dataclass
class CheckSummary:
    """What ``gatewise monitor check`` found, as the HTML summary shows it."""

    drift: DriftResult
    drift_share_from: str  # where the threshold came from, in words
    left_out: dict[str, str] = field(default_factory=dict)  # column -> reason
    bias: list[BiasFinding] = field(default_factory=list)
    breaches: list[Breach] = field(default_factory=list)
    max_fpr_ratio: float = 1.25


def _table(caption: str, head: list[str], rows: list[tuple[list[str], bool]]) -> str:
    th = "".join(f"<th>{escape(h)}</th>" for h in head)
    body = "".join(
        ('<tr class="flag">' if flag else "<tr>")
        + "".join(f"<td>{escape(c)}</td>" for c in cells)
        + "</tr>"
        for cells, flag in rows
    )
    return (
        f"<table><caption>{escape(caption)}</caption><thead><tr>{th}</tr></thead>"
        f"<tbody>{body}</tbody></table>"
    )


def _rate(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


def _bias(s: CheckSummary) -> str:
    if not s.bias:
        return "<p>No bias check: no sensitive columns were given.</p>"
    flagged = {(b.feature, b.group) for b in s.breaches}
    parts = []
    for f in s.bias:
        ratio = "n/a" if f.fpr_ratio is None else f"{f.fpr_ratio:.2f} ({f.worst_fpr_group})"
        rows = [
            (
                [
                    g.group,
                    str(g.n),
                    f"{g.selection_rate:.3f}",
                    _rate(g.fpr),
                    _rate(g.fnr),
                    "yes" if g.judgeable else "no",
                    "yes" if (f.feature, g.group) in flagged else "",
                ],
                (f.feature, g.group) in flagged,
            )
            for g in f.groups
        ]
        parts.append(
            _table(
                f"bias by {f.feature}: FPR worst/best {ratio}; overall FPR {_rate(f.overall_fpr)}",
                ["group", "n", "selection rate", "FPR", "FNR", "judgeable", "over the bound"],
                rows,
            )
        )
    if s.breaches:
        items = "".join(f"<li>{escape(b.sentence())}</li>" for b in s.breaches)
        parts.append(f"<p>Groups over the bound:</p><ul>{items}</ul>")
    else:
        parts.append(
            f"<p>No judgeable group's false-positive rate is over {s.max_fpr_ratio:g}x the "
            "lowest.</p>"
        )
    return "".join(parts)


def summary_html(s: CheckSummary) -> str:
    """The ``<section id="gatewise-check">`` fragment (escaped, self-contained)."""
    d = s.drift
    verdict = (
        f"{len(d.drifted)} of {len(d.columns)} columns drifted ({d.share:.0%}); dataset drift: "
        f"{'yes' if d.dataset_drift else 'no'} at the drift share threshold {d.drift_share:g} "
        f"({s.drift_share_from})."
    )
    if s.left_out:
        left = _table(
            "left out of drift (identifier and time columns)",
            ["column", "reason"],
            [([c, why], False) for c, why in s.left_out.items()],
        )
    else:
        left = "<p>No column was left out of drift.</p>"
    drift_rows = [
        (
            [c.column, c.method, f"{c.value:.4g}", f"{c.threshold:g}", "yes" if c.drifted else ""],
            c.drifted,
        )
        for c in sorted(d.columns, key=lambda c: not c.drifted)
    ]
    return (
        '<section id="gatewise-check"><h1>gatewise monitor check</h1>'
        f"<h2>Drift</h2><p>{escape(verdict)}</p>{left}"
        + _table(
            "drift per column", ["column", "method", "value", "threshold", "drifted"], drift_rows
        )
        + f"<h2>Bias</h2>{_bias(s)}"
        + "<p>Evidently's drift report, column by column, follows.</p></section>"
    )


def add_to_report(html_path: Path, fragment: str) -> None:
    """Insert ``fragment`` right after the ``<body>`` tag of the report at ``html_path`` (and
    its stylesheet before ``</head>``); raises ValueError if the file has no ``<body>``."""
    doc = html_path.read_text(encoding="utf-8")
    body = _BODY.search(doc)
    if body is None:
        raise ValueError(f"{html_path} has no <body> tag to put the check summary in")
    doc = doc[: body.end()] + "\n" + fragment + "\n" + doc[body.end() :]
    head = _HEAD_END.search(doc, 0, body.start())
    if head is not None:
        doc = doc[: head.start()] + _STYLE + doc[head.start() :]
    html_path.write_text(doc, encoding="utf-8")
