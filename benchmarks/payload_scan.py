"""Payload scanning on whole held-out requests: gatewise against OWASP CRS (paranoia levels 1
and 2, real NGINX + ModSecurity, ``benchmarks/crs.py``) and libinjection, in the same run.

The model is what the platform ships: ``run_automl`` on the ``payload`` target of gatewise.yaml
(``--budget`` seconds; ``--budget 0`` fits the search's default linear configuration instead),
in a private data dir, exported to the compact form the gateway runs. Data and split are the
training's own (``models.data.payload_dataset``): rows are grouped by template, and whole
sources are held out (the SecLists lists, the benign families training never sees, the access
log's evaluation clients). A class with fewer than 50 held-out examples is reported, not
targeted.

Every held-out row becomes one HTTP request, placed where its context says: a parameter in the
query string, a JSON body or a form body (by a stable hash of the value), a key as a query
key, a path as the path, a header under its own name (attacks under one of a few custom or
standard names), a User-Agent, a Referer, a cookie value. Every request carries the same
browser-like base headers (Host, User-Agent, Accept, Accept-Language) unless the row replaces
one. The real requests of the access log's evaluation clients (path, query, User-Agent,
Referer) are sent as they were. All three judges see the same requests:

- gatewise: ``features.request_parts.extract`` + the compact scanner through ``LocalScanner``
  (verdict cache and time budget as in the gateway); a request is flagged when the verdict
  is an attack class; ``unscanned`` verdicts are counted apart;
- CRS: blocked (anything but 200 from the protected NGINX);
- libinjection: ``is_sql_injection`` or ``is_xss`` on any value ``extract`` found (decoded),
  so it gets gatewise's parsing of the request for free.

Usage: .venv/bin/python benchmarks/payload_scan.py [--budget 60] [--no-crs] [--seed 0]
           [--no-save]
Results are appended as one JSON line to benchmarks/results/payload_scan.jsonl.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
import zlib
from collections import Counter, defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.crs import CRS, Req, available
from benchmarks.harness import free_port, machine, save_result

REPO = Path(__file__).resolve().parents[1]
BENIGN = "norm"
MIN_TARGETED = 50  # held-out examples a class needs before it is a target
BASE = {
    "Host": "api.example.com",
    "User-Agent": "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0",
    "Accept": "application/json, text/plain, */*",
    "Accept-Language": "en-US,en;q=0.9",
}
ATTACK_HEADERS = ["X-Forwarded-Host", "X-Api-Version", "X-Client-Id", "Accept-Language", "Origin"]


@dataclass
class Case:
    req: Req
    truth: str  # class, or "norm"
    source: str
    context: str
    kind: str = "value"  # value | log-request | variant:<how>
    value: str = ""


def _bucket(value: str, n: int) -> int:
    return zlib.crc32(value.encode("utf-8", "surrogatepass")) % n


def _no_breaks(v: str) -> str:
    """A header value cannot hold a raw line break: send it percent-encoded."""
    return v.replace("\r", "%0d").replace("\n", "%0a")


def request_for(value: str, context: str, field: str | None = None) -> Req:
    """One request carrying ``value`` where ``context`` says (module docstring)."""
    h = dict(BASE)
    if context == "param":
        way = _bucket(value, 3)
        name = field or "q"
        if way == 0:
            return Req("GET", f"/api/v1/search?{quote(name)}={quote(value, safe='')}", h)
        if way == 1:
            body = json.dumps({name: value, "page": 1}).encode()
            return Req("POST", "/api/v1/items", {**h, "Content-Type": "application/json"}, body)
        form = f"{quote(name)}={quote(value, safe='')}&page=1".encode()
        ct = "application/x-www-form-urlencoded"
        return Req("POST", "/api/v1/items", {**h, "Content-Type": ct}, form)
    if context == "key":
        return Req("GET", f"/api/v1/items?{quote(value, safe='')}=1", h)
    if context == "path":
        path = value if value.startswith("/") else "/" + value
        return Req("GET", quote(path, safe="/;:@&=+$,~*'()!"), h)
    if context == "body":
        form = f"{quote(field or 'comment')}={quote(value, safe='')}".encode()
        ct = "application/x-www-form-urlencoded"
        return Req("POST", "/api/v1/comments", {**h, "Content-Type": ct}, form)
    if context == "cookie":
        if field == "Cookie" and "=" in value:  # a whole Cookie header
            return Req("GET", "/api/v1/account", {**h, "Cookie": _no_breaks(value)})
        v = quote(value, safe="") if any(c in value for c in ";\r\n") else value
        return Req("GET", "/api/v1/account", {**h, "Cookie": f"session={v}"})
    fixed = {"user-agent": "User-Agent", "referer": "Referer"}.get(context)
    name = fixed or field or ATTACK_HEADERS[_bucket(value, len(ATTACK_HEADERS))]
    return Req("GET", "/api/v1/items", {**h, name: _no_breaks(value)})


def build_cases(ds: Any, hold: np.ndarray, rng: random.Random) -> list[Case]:
    from features.payload import split_context
    from models.payloads.api_values import api_benign, eval_benign, log_requests

    fields = {(v, c): f for v, c, _, f in api_benign()}
    vals = ds.X["payload"].to_numpy()[hold]
    cls = ds.detail.to_numpy()[hold]
    src = ds.source.to_numpy()[hold]
    cases = []
    for tagged, c, s in zip(vals, cls, src, strict=True):
        if s == "eval-benign":
            continue  # sent whole below
        ctx, v = split_context(str(tagged))
        field = fields.get((v, ctx)) if c == BENIGN else None
        cases.append(Case(request_for(v, ctx, field), str(c), str(s), ctx, value=v))
    # every value of the families training never saw, including the header values the
    # gateway checks by grammar instead of scoring (the training data leaves those out)
    for v, ctx, _, field in eval_benign():
        cases.append(Case(request_for(v, ctx, field), BENIGN, "eval-benign", ctx, value=v))
    for r in log_requests(part="eval"):
        h = {**BASE, "User-Agent": r["ua"]}
        if r["referer"] != "-":
            h["Referer"] = r["referer"]
        cases.append(
            Case(Req(r["method"], r["target"], h), BENIGN, "access-log-requests", "request")
        )
    # robustness: held-out attacks re-encoded, as parameters
    attacks = [(str(v), str(c)) for v, c in zip(vals, cls, strict=True) if c != BENIGN]
    for v, c in rng.sample(attacks, min(300, len(attacks))):
        ctx, raw = split_context(v)
        if ctx != "param":
            continue
        for how, var in _variants(raw, rng).items():
            cases.append(Case(request_for(var, "param"), c, "variants", "param", f"variant:{how}"))
    return cases


def _variants(value: str, rng: random.Random) -> dict[str, str]:
    return {
        "url": quote(value, safe=""),
        "double_url": quote(quote(value, safe=""), safe=""),
        "html_entities": "".join(f"&#{ord(c)};" if c in "<>'\"()" else c for c in value),
        "random_case": "".join(ch.upper() if rng.random() < 0.5 else ch for ch in value),
        "sql_comments": value.replace(" ", "/**/"),
        "tabs": value.replace(" ", "\t"),
    }


def _parts(req: Req) -> tuple[str, str, list[tuple[str, str]], bytes, str | None]:
    path, _, query = req.target.partition("?")
    headers = list(req.headers.items())
    ctype = next((v for k, v in headers if k.lower() == "content-type"), None)
    return unquote(path), query, headers, req.body, ctype


def gatewise_verdicts(scanner: Any, cases: list[Case], cfg: Any) -> tuple[list[str], float]:
    """Verdict labels and the mean seconds per request (extraction + scoring)."""
    from features.request_parts import extract

    out = []
    t0 = time.perf_counter()
    for c in cases:
        ex = extract(*_parts(c.req), cfg)
        res = scanner.scan(ex.values, ex.gaps)
        out.append(res.label or "benign")
    return out, (time.perf_counter() - t0) / max(len(cases), 1)


def libinjection_verdicts(cases: list[Case], cfg: Any) -> list[bool]:
    import libinjection

    from features.payload import split_context
    from features.request_parts import extract

    out = []
    for c in cases:
        ex = extract(*_parts(c.req), cfg)
        hit = False
        for tagged in ex.values:
            v = unquote(split_context(tagged)[1])
            if libinjection.is_sql_injection(v)["is_sqli"] or libinjection.is_xss(v)["is_xss"]:
                hit = True
                break
        out.append(hit)
    return out


def _platform_model(budget: float, data_dir: Path) -> tuple[Any, str]:
    from config.settings import load_settings
    from models import registry as reg
    from models.train import train_target

    s = load_settings(REPO / "gatewise.yaml", data_dir=data_dir)
    s = s.model_copy(
        update={
            "serving": s.serving.model_copy(update={"targets": ["payload"], "port": free_port()})
        }
    )
    if budget > 0:
        r = train_target(s, "payload", budget=budget)
        reg.promote(s, "payload", r.version, force=True)
        model, _ = reg.load_alias(s, "payload", "champion")  # type: ignore[misc]
        how = (
            f"AutoML {r.trials} trials in {budget:.0f} s: {r.best_params['family']} "
            f"(gate {'passed' if r.eligible else 'refused: ' + '; '.join(r.reasons)})"
        )
        return model, how
    from models.payload import fit_default

    return fit_default(train_on="fit"), "default config (linear, C=20, balanced)"


def _table(cases: list[Case], judges: dict[str, list[bool]], key: Any) -> dict[str, Any]:
    """Share flagged per group of ``key(case)``, per judge, with the group's size."""
    rows: dict[str, dict[str, Any]] = defaultdict(dict)
    idx: dict[str, list[int]] = defaultdict(list)
    for i, c in enumerate(cases):
        k = key(c)
        if k is not None:
            idx[k].append(i)
    for k, ii in sorted(idx.items()):
        rows[k]["n"] = len(ii)
        for name, flags in judges.items():
            rows[k][name] = float(np.mean([flags[i] for i in ii]))
    return dict(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--budget", type=float, default=60.0, help="AutoML seconds (0: default config)")
    ap.add_argument("--no-crs", action="store_true", help="skip the CRS runs")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-save", action="store_true")
    args = ap.parse_args()

    from config.gateway import ScanningSettings
    from gateway.scan import LocalScanner
    from models.data import payload_dataset
    from models.payload import compact_scanner
    from models.search import make_splits

    train_ds = payload_dataset()
    trained_on = set(train_ds.X["payload"].to_numpy()[make_splits(train_ds, 0.2).fit])
    # the requests: the same split over every value, the ones the gateway never scores
    # (plain numbers and words, grammar-conforming headers) included, minus any value the
    # model trained on
    ds = payload_dataset(scored_only=False)
    sp = make_splits(ds, 0.2)
    hold = np.array([i for i in sp.holdout if ds.X["payload"].iloc[i] not in trained_on])
    assert ds.detail is not None
    truth_all = ds.detail.to_numpy().astype(str)
    print(
        f"{len(train_ds.y):,} distinct values the gateway scores, {len(trained_on):,} trained "
        f"on; {len(hold):,} held-out values ({int((truth_all[hold] != BENIGN).sum()):,} attacks)"
    )
    data_dir = Path(tempfile.mkdtemp(prefix="gatewise-payload-bench-"))
    t0 = time.perf_counter()
    model, how = _platform_model(args.budget, data_dir)
    print(f"model: {how}; threshold {model.threshold:.4f}; {time.perf_counter() - t0:.0f} s")
    path = compact_scanner(model, "bench").save(data_dir / "payload.npz")
    cfg = ScanningSettings()
    scanner = LocalScanner(path, cfg)

    rng = random.Random(args.seed)
    cases = build_cases(ds, hold, rng)
    print(f"{len(cases):,} requests")
    labels, per_req = gatewise_verdicts(scanner, cases, cfg)
    judges: dict[str, list[bool]] = {
        "gatewise": [lab not in ("benign", "unscanned") for lab in labels]
    }
    unscanned = Counter(c.truth for c, lab in zip(cases, labels, strict=True) if lab == "unscanned")
    judges["libinjection"] = libinjection_verdicts(cases, cfg)
    crs_info: dict[str, Any] = {}
    reason = None if not args.no_crs else "--no-crs"
    reason = reason or available()
    if reason is None:
        for level in (1, 2):
            with CRS(paranoia=level) as crs:
                crs.sanity_check()
                t1 = time.perf_counter()
                judges[f"crs_pl{level}"] = crs.verdicts([c.req for c in cases])
                crs_info[f"pl{level}"] = {
                    "seconds": round(time.perf_counter() - t1, 1),
                    "nginx_400": crs.rejected_400,
                }
    else:
        print(f"CRS skipped: {reason}")

    values = [c.kind == "value" or c.kind == "log-request" for c in cases]
    attack_by_class = _table(
        cases,
        judges,
        lambda c: c.truth if c.truth != BENIGN and c.kind == "value" else None,
    )
    attack_by_source = _table(
        cases,
        judges,
        lambda c: f"{c.truth} / {c.source}" if c.truth != BENIGN and c.kind == "value" else None,
    )
    benign_by_source = _table(
        cases, judges, lambda c: c.source if c.truth == BENIGN and c.kind == "value" else None
    )
    benign_by_source.update(
        _table(cases, judges, lambda c: c.source if c.source == "access-log-requests" else None)
    )
    benign_by_context = _table(
        cases, judges, lambda c: c.context if c.truth == BENIGN and c.kind == "value" else None
    )
    variants = _table(
        cases,
        judges,
        lambda c: (
            c.kind.removeprefix("variant:") if c.kind != "value" and c.truth != BENIGN else None
        ),
    )
    names = list(judges)
    from models.evaluate import rate_upper_bound

    benign_all = [i for i, c in enumerate(cases) if c.truth == BENIGN and values[i]]
    fpr = {}
    for n in names:
        fp = int(sum(judges[n][i] for i in benign_all))
        rate, up = rate_upper_bound(fp, len(benign_all))
        fpr[n] = {"false_positives": fp, "rate": rate, "upper95": up}

    def show(title: str, table: dict[str, Any]) -> None:
        print(f"\n{title}")
        print(f"  {'':38s} {'n':>6s} " + " ".join(f"{n:>12s}" for n in names))
        for k, r in table.items():
            mark = "" if r["n"] >= MIN_TARGETED else "  (reported, not targeted)"
            cells = " ".join(f"{r.get(n, float('nan')):12.4f}" for n in names)
            print(f"  {k:38s} {r['n']:6d} {cells}{mark}")

    show("recall by class (held-out requests)", attack_by_class)
    show("recall by class and source", attack_by_source)
    show("false-positive rate by benign source", benign_by_source)
    show("false-positive rate by where the benign value was", benign_by_context)
    show("recall on re-encoded held-out attacks", variants)
    print("\nbenign requests flagged, all sources:")
    for n in names:
        f = fpr[n]
        print(
            f"  {n:14s} {f['false_positives']:5d}  {f['rate']:.4%} (95% upper {f['upper95']:.4%})"
        )
    print(f"gatewise unscanned verdicts: {dict(unscanned)}")
    print(f"gatewise: {per_req * 1e6:.0f} us per request (extraction + scoring, cache on)")
    fps = [
        (c.source, c.context, c.value[:80] or c.req.target[:80])
        for c, f in zip(cases, judges["gatewise"], strict=True)
        if f and c.truth == BENIGN
    ]
    print("benign requests gatewise flags (first 15):")
    for x in fps[:15]:
        print("  ", x)
    print(f"machine: {machine()}")
    if not args.no_save:
        save_result(
            "payload_scan",
            {
                "benchmark": "payload_scan",
                "at": datetime.now(UTC).isoformat(timespec="seconds"),
                "machine": machine(),
                "model": how,
                "threshold": model.threshold,
                "requests": len(cases),
                "recall_by_class": attack_by_class,
                "recall_by_source": attack_by_source,
                "fpr_by_source": benign_by_source,
                "fpr_by_context": benign_by_context,
                "variants": variants,
                "fpr_all": fpr,
                "unscanned": dict(unscanned),
                "crs": crs_info,
                "gatewise_us_per_request": per_req * 1e6,
            },
        )


if __name__ == "__main__":
    main()
