"""What the closed loop prints and keeps: its table on screen, a JSON record and a
self-contained HTML report (Plotly), logged to the champion's MLflow run.

``print_loop(console, result); paths = save_loop_report(settings, result)``
"""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd

from config.settings import Settings
from demo.steps import table

__all__ = ["day_comparison", "log_to_mlflow", "print_loop", "save_loop_report", "verdicts"]


def day_comparison(mon: dict[str, Any]) -> dict[str, Any] | None:
    """The long span, in event time: the monitor's gate replayed the last recorded day under
    the policy in force before it (in the demo: the static limits, the model having acted on
    nothing yet) and under what it published; both outcomes, per request."""
    stages = ((mon or {}).get("policy") or {}).get("stages") or []
    if not stages or not stages[0].get("current"):
        return None
    last = stages[-1]
    final = last["candidate"] if last["accepted"] else last["current"]
    keep = (
        "abusive_requests",
        "abusive_stopped_share",
        "legitimate_requests",
        "legitimate_harmed_share",
    )
    return {
        "before": {k: stages[0]["current"].get(k) for k in keep},
        "after": {k: final.get(k) for k in keep},
    }


def diff_summary(diff: list[dict[str, Any]]) -> list[str]:
    """The policy diff by kind: counts, and the non-per-client lines themselves."""
    from collections import Counter

    kinds = Counter(d["path"].split("[")[0].split(".")[0] for d in diff)
    lines = [", ".join(f"{n} {k}" for k, n in kinds.most_common())] if diff else []
    for d in diff:
        head = d["path"].split("[")[0].split(".")[0]
        if head in ("overrides", "allowances") or d["path"].endswith(".cost"):
            continue
        lines.append(f"{d['path']}: {d['old']} → {d['new']}")
    return lines


TARGETS = {"abusive_stopped_share": 0.95, "legitimate_harmed_share": 0.001, "fpr_ratio": 1.25}


def verdicts(out: dict[str, Any]) -> list[dict[str, Any]]:
    """Phase B (after the first detection window) against the issue's targets, next to static."""
    g, st = out["B_gatewise"], out["B_static"]
    rows = []
    for key, goal, better in (
        ("abusive_stopped_share", TARGETS["abusive_stopped_share"], "higher"),
        ("legitimate_harmed_share", TARGETS["legitimate_harmed_share"], "lower"),
        ("fpr_ratio", TARGETS["fpr_ratio"], "lower"),
    ):
        a, b = g.get(key), st.get(key)
        met = a is not None and (a >= goal if better == "higher" else a <= goal)
        beats = (
            a is not None
            and b is not None
            and (a > b if better == "higher" else a < b or (a == b == 0))
        )
        rows.append(
            {
                "measure": key,
                "gatewise": a,
                "static": b,
                "target": goal,
                "met": met,
                "beats_static": beats,
            }
        )
    return rows


def print_loop(console: Any, r: dict[str, Any]) -> None:
    o = r["outcome"]
    rows = []
    names = {"static": "static per-tier"}
    for ph in ("A", "B"):
        v = r["policy_a" if ph == "A" else "policy_b"]
        names["gatewise"] = f"gatewise v{v}"
        names["with_shadow"] = f"v{v} had its shadow rules enforced"
        for system in ("gatewise", "static", "with_shadow"):
            x = o.get(f"{ph}_{system}")
            if x is None or (
                system == "with_shadow"
                and x["abusive_stopped"] + x["legitimate_harmed"]
                == o[f"{ph}_gatewise"]["abusive_stopped"] + o[f"{ph}_gatewise"]["legitimate_harmed"]
            ):
                continue  # no shadow rule fired beyond what was enforced
            rows.append(
                {
                    "phase": ph,
                    "policy": names[system],
                    "abusive": x["abusive"],
                    "stopped": _pct(x["abusive_stopped_share"]),
                    "legitimate": x["legitimate"],
                    "harmed": _pct(x["legitimate_harmed_share"], 3),
                    "FPR worst/best": "-" if x["fpr_ratio"] is None else f"{x['fpr_ratio']:.2f}",
                }
            )
    console.print(
        table(
            "closed loop: per request, same traffic (phase B = after the first detection window)",
            rows,
        )
    )
    if o["unrecorded"] or o["no_response"]:
        console.print(
            f"[yellow]{o['unrecorded']} sent request(s) missing from the gateway's telemetry, "
            f"{o['no_response']} without a response: both count as not stopped above[/]"
        )
    det = o["detection_median_s"]
    console.print(
        "detection: "
        + (
            "no abusive client was stopped"
            if det is None
            else f"median {det:.0f}s from a client's first abusive request to its first stopped one"
        )
        + f"; {sum(1 for c in o['clients'] if c['detected_after_s'] is not None)} of {len(o['clients'])} abusive clients stopped"
    )
    v = verdicts(o)
    console.print(
        table(
            "targets (phase B)",
            [
                {
                    "measure": x["measure"],
                    "gatewise": _num(x["gatewise"]),
                    "static": _num(x["static"]),
                    "target": x["target"],
                    "met": "yes" if x["met"] else "NO",
                    "better than static": "yes" if x["beats_static"] else "no",
                }
                for x in v
            ],
        )
    )
    day = r.get("day")
    if day:
        b, a = day["before"], day["after"]
        console.print(
            f"the last recorded day, backtest in event time ({b['abusive_requests']:,} abusive, "
            f"{b['legitimate_requests']:,} legitimate requests): "
            f"{r.get('before_label', 'before')} stops "
            f"{_pct(b['abusive_stopped_share'])} of abuse and harms "
            f"{_pct(b['legitimate_harmed_share'], 3)} of legitimate requests; gatewise "
            f"v{r['policy_b']}: {_pct(a['abusive_stopped_share'])} and "
            f"{_pct(a['legitimate_harmed_share'], 3)}"
        )
    lines = diff_summary(r["policy_diff"])
    if lines:
        console.print(f"policy v{r['policy_a']} → v{r['policy_b']}: {lines[0]}")
        for line in lines[1:13]:
            console.print(f"  {line}")
        if len(lines) > 13:
            console.print(f"  … {len(lines) - 13} more")


def _pct(x: float | None, digits: int = 1) -> str:
    return "-" if x is None else f"{x:.{digits}%}"


def _num(x: float | None) -> str:
    if x is None:
        return "-"
    return "inf" if math.isinf(x) else f"{x:.4g}"


def save_loop_report(s: Settings, r: dict[str, Any]) -> dict[str, Path]:
    """JSON record + a self-contained HTML report (Plotly inline) under ``<data_dir>/reports``."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    out_dir = s.data_dir / "reports"
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    jpath = out_dir / f"closed-loop-{stamp}.json"
    jpath.write_text(json.dumps(r, indent=1, default=str))
    o = r["outcome"]
    fig = make_subplots(
        rows=1, cols=2, subplot_titles=("abusive requests stopped", "legitimate requests harmed")
    )
    systems = [("gatewise", "#2a9d8f"), ("static", "#e76f51")]
    if "A_with_shadow" in o:  # what the shadow rules (the live model's bands) would have done
        systems.append(("with_shadow", "#a8dadc"))
    for system, color in systems:
        xs = ["phase A", "phase B"]
        fig.add_bar(
            x=xs,
            y=[o[f"{p}_{system}"]["abusive_stopped_share"] or 0 for p in "AB"],
            name=f"{system}",
            marker_color=color,
            row=1,
            col=1,
        )
        fig.add_bar(
            x=xs,
            y=[o[f"{p}_{system}"]["legitimate_harmed_share"] or 0 for p in "AB"],
            name=f"{system}",
            marker_color=color,
            showlegend=False,
            row=1,
            col=2,
        )
    fig.update_yaxes(tickformat=".1%")
    fig.update_layout(barmode="group", height=380, margin={"t": 40})
    grp = pd.DataFrame(
        [
            {**g, "system": system}
            for system in ("gatewise", "static")
            for g in o[f"B_{system}"]["groups"]
        ]
    )
    gfig = go.Figure()
    if len(grp):
        grp["group"] = grp["attribute"] + "=" + grp["value"]
        for system, color in (("gatewise", "#2a9d8f"), ("static", "#e76f51")):
            x = grp[grp["system"] == system]
            gfig.add_bar(x=x["group"], y=x["harmed"], name=system, marker_color=color)
    gfig.update_layout(
        title="phase B: legitimate requests harmed, per group", barmode="group", height=380
    )
    gfig.update_yaxes(tickformat=".2%")
    det = pd.DataFrame(o["clients"])
    dfig = go.Figure()
    if len(det) and det["detected_after_s"].notna().any():
        d = det.dropna(subset=["detected_after_s"])
        dfig.add_histogram(x=d["detected_after_s"], nbinsx=20, marker_color="#264653")
    dfig.update_layout(
        title="seconds from a client's first abusive request to its first stopped one",
        height=320,
    )

    def html_table(rows: list[dict[str, Any]]) -> str:
        if not rows:
            return "<p>(none)</p>"
        return pd.DataFrame(rows).to_html(index=False, border=0, classes="t", na_rep="-")

    group_rows: list[dict[str, Any]] = (
        grp.drop(columns=["group"], errors="ignore").to_dict("records") if len(grp) else []  # type: ignore[assignment]
    )
    day = r.get("day") or {}
    day_rows = [
        {
            "policy": r.get("before_label", "before")
            if k == "before"
            else f"gatewise v{r['policy_b']}",
            **v,
        }
        for k, v in day.items()
    ]
    mon = r["monitor"] or {}
    pol = (mon.get("policy") or {}) if mon else {}
    html = f"""<!doctype html><html><head><meta charset="utf-8"><title>gatewise closed loop {r["run"]}</title>
<style>body{{font-family:system-ui,sans-serif;margin:2em;max-width:1200px}} table.t{{border-collapse:collapse;font-size:13px}}
table.t td,table.t th{{padding:3px 8px;border-bottom:1px solid #ddd;text-align:left}} .no{{color:#b00}} .yes{{color:#070}}</style></head><body>
<h1>gatewise closed loop</h1>
<p>{r["at"]} · run {r["run"]} · {r["minutes_per_phase"]:g} min per phase · policy v{r["policy_a"]} (phase A) → v{r["policy_b"]} (phase B)</p>
<h2>Traffic</h2><p>{r["span"]["rule"]}: {r["span"]["requests"]:,} requests, {r["span"]["abusive_requests"]:,} abusive
from {r["span"]["abusive_clients"]} clients {r["span"]["scenarios"]}. Drift: {r["span"]["drift"]}. Skew: {r["span"]["skew"]}.</p>
<h2>Targets (phase B, after the first detection window)</h2>{html_table(verdicts(o))}
<h2>The last recorded day, backtest in event time</h2>{html_table(day_rows)}
{fig.to_html(full_html=False, include_plotlyjs=True)}
{gfig.to_html(full_html=False, include_plotlyjs=False)}
{dfig.to_html(full_html=False, include_plotlyjs=False)}
<h2>Monitor findings</h2><p>drift share {mon.get("drift_share")}; drifted {mon.get("drifted")}; score drift {mon.get("score_drift")}; bias {mon.get("bias")}</p>
<p>reports: {mon.get("reports")}</p>
<h2>Policy changes</h2>{html_table(pol.get("changes") or [])}
<p>gate: {(pol.get("verdict") or {}).get("reason")}</p>
<h2>Policy diff v{r["policy_a"]} → v{r["policy_b"]}</h2>{html_table(r["policy_diff"])}
<h2>Abusive clients</h2>{html_table(o["clients"])}
<h2>Phase B per group</h2>{html_table(group_rows)}
</body></html>"""
    hpath = out_dir / f"closed-loop-{stamp}.html"
    hpath.write_text(html)
    return {"json": jpath, "html": hpath}


def log_to_mlflow(s: Settings, paths: dict[str, Path], out: dict[str, Any]) -> None:
    from models.tracking import champion_run_id

    run_id = champion_run_id(s, "abuse")
    if run_id is None:
        return
    from models.tracking import client as registry_client

    client = registry_client(s)
    for p in paths.values():
        client.log_artifact(run_id, str(p), "closed_loop")
    for key in ("abusive_stopped_share", "legitimate_harmed_share"):
        v = out["B_gatewise"][key]
        if v is not None:
            client.log_metric(run_id, f"loop_{key}", v)
    ratio = out["B_gatewise"]["fpr_ratio"]
    if ratio is not None and not math.isinf(ratio):
        client.log_metric(run_id, "loop_fpr_ratio", ratio)
