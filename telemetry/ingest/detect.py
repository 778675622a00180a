"""``--format auto``: which known format a log is in, and how sure.

The first records of the file are parsed with every built-in format; the one
that parses the largest share wins. Formats that turn the sample into the same
fields are one candidate (``combined`` and ``apache:combined`` are the same
format under two names), and between equal shares the format that fills more
fields wins (NGINX ``main`` over ``combined`` when both parse). When no format
parses most of the sample, ``DetectionError`` lists the best three with their
shares and a sample line.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from telemetry.ingest.formats import FormatError, LogFormat, builtins
from telemetry.ingest.normalize import RejectError
from telemetry.ingest.readers import iter_json_records, iter_lines

__all__ = ["Detection", "DetectionError", "detect_format"]

SAMPLE = 200
MIN_SHARE = 0.5


@dataclass(frozen=True)
class Candidate:
    name: str
    share: float  # of the sampled records that parse
    filled: float  # fields filled per parsed record


@dataclass(frozen=True)
class Detection:
    format: LogFormat
    share: float
    sampled: int
    ranking: list[Candidate]
    sample_line: str

    def describe(self) -> str:
        others = ", ".join(f"{c.name} {c.share:.0%}" for c in self.ranking[1:3] if c.share)
        return (
            f"format: {self.format.name} ({self.share:.0%} of {self.sampled} sampled records "
            f"parse; {'next: ' + others if others else 'no other known format parses them'})"
        )


class DetectionError(FormatError):
    def __init__(self, path: Path, ranking: list[Candidate], sample_line: str, sampled: int):
        self.ranking = ranking
        best = "; ".join(f"{c.name} {c.share:.0%}" for c in ranking[:3] if c.share) or (
            "none parses any"
        )
        super().__init__(
            f"{path}: no known format parses most of the first {sampled} records "
            f"(best: {best}). Sample line: {sample_line[:200]!r}. Give the format with "
            f"--format nginx:'<your log_format>' (or apache:/envoy:/haproxy:), or "
            f"--nginx-conf FILE --log-format NAME"
        )


def _signature(fields: dict[str, Any]) -> tuple[Any, ...]:
    return tuple(sorted((k, str(v)) for k, v in fields.items() if v is not None))


def detect_format(path: Path, sample: int = SAMPLE) -> Detection:
    """The format of ``path``, judged on its first ``sample`` records."""
    from telemetry.ingest import parse_record

    lines = [raw for _, _, raw in itertools.islice(iter_lines(path), sample)]
    if not lines:
        raise DetectionError(path, [], "", 0)
    json_records = [
        value
        for _, _, _, value, _ in itertools.islice(iter_json_records(path), sample)
        if isinstance(value, dict)
    ]
    # a JSON log is one whose sample is mostly objects; a text log may start with "[" too
    if len(json_records) > len(lines) / 2:
        records: list[Any] = json_records
        cands = [f for f in builtins().values() if f.is_json]
    else:
        records = lines
        cands = [f for f in builtins().values() if not f.is_json]
    n = max(len(records), 1)
    by_sig: dict[tuple[Any, ...], Candidate] = {}
    for fmt in cands:
        ok = 0
        filled = 0
        sig: list[tuple[Any, ...]] = []
        for rec in records:
            try:
                fields = parse_record(fmt, rec)
            except (RejectError, ValueError, TypeError, KeyError, json.JSONDecodeError):
                continue
            ok += 1
            filled += sum(v is not None for v in fields.values())
            sig.append(_signature(fields))
        cand = Candidate(fmt.name, ok / n, filled / ok if ok else 0.0)
        key = tuple(sig) if ok else (fmt.name,)
        prev = by_sig.get(key)
        if prev is None or (cand.share, cand.filled) > (prev.share, prev.filled):
            by_sig[key] = cand
    ranking = sorted(by_sig.values(), key=lambda c: (-c.share, -c.filled, c.name))
    sample_line = lines[0].decode("utf-8", errors="replace")
    if not ranking or ranking[0].share < MIN_SHARE:
        raise DetectionError(path, ranking, sample_line, len(records))
    best = ranking[0]
    return Detection(builtins()[best.name], best.share, len(records), ranking, sample_line)
