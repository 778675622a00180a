"""Which shared columns a drift check should judge: identifiers and time columns are left out.

A data scientist's table carries row ids, customer ids and dates beside its features. Between a
reference period and a current one these always "drift" (new ids, later dates), so judging
them buries the real findings: on a census table the only drifted columns were ``id`` and
``year``. ``leave_out_id_time(reference, current, columns)`` returns the columns worth judging
and, for each one left out, the reason in words:

- named like an identifier (``id``, ``ID``, ``customer_id``, ``customerId``, ``uuid``, ``*_key``);
- of a datetime dtype, or strings that parse as dates for nearly all of a sample;
- named like a time (``timestamp``, ``event_time``, ``created_at``, ``date``, ``year``, ``month``,
  ``day``) with values to match: dates, epoch numbers, years 1900-2100, months 1-12, days
  1-31 (a float ``response_time`` is a duration, a feature, and stays);
- integers or strings that are (almost) all distinct over the rows of either side
  (``unique_share``, 95 %): identifiers whatever their name.

``keep`` names columns that are never left out (the CLI's ``--keep-columns``, and the
sensitive, label and prediction columns).
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["leave_out_id_time", "name_tokens"]

_ID_WORDS = {"id", "uuid", "guid"}
_TIME_WORDS = {"timestamp", "time", "date", "datetime", "ts", "dt", "year", "month", "day"}
_MONTHS = "jan|feb|mar|apr|may|jun|jul|aug|sep|oct|nov|dec"
# a value must look like a date before pandas is asked to parse it: pandas reads "12" or
# "3.5" as dates too
_DATE_SHAPE = re.compile(
    rf"\d{{4}}[-/.]\d{{1,2}}|\d{{1,2}}[-/.]\d{{1,2}}[-/.]\d{{2,4}}|\b(?:{_MONTHS})[a-z]*\.?\s+\d"
    rf"|\d{{1,2}}\s+(?:{_MONTHS})",
    re.IGNORECASE,
)
_EPOCH_MIN = 1e8  # 1973-03-03 in seconds; milliseconds and nanoseconds are larger still


def name_tokens(name: str) -> list[str]:
    """``"customerID"`` -> ``["customer", "id"]``; ``"event_time"`` -> ``["event", "time"]``."""
    spaced = re.sub(r"([a-z0-9])([A-Z])", r"\1 \2", str(name))
    return [t.lower() for t in re.split(r"[^A-Za-z0-9]+", spaced) if t]


def _id_named(tokens: list[str]) -> bool:
    if not tokens:
        return False
    ends = {tokens[0], tokens[-1]}
    return bool(ends & _ID_WORDS) or tokens[-1] == "key"


def _time_word(tokens: list[str]) -> str | None:
    for t in tokens:
        if t in _TIME_WORDS:
            return t
    if len(tokens) > 1 and tokens[-1] == "at":  # created_at, updated_at
        return "at"
    return None


def _is_text(s: pd.Series) -> bool:
    import pandas as pd

    return bool(
        pd.api.types.is_object_dtype(s)
        or pd.api.types.is_string_dtype(s)
        or isinstance(s.dtype, pd.CategoricalDtype)
    )


def _date_share(s: pd.Series, sample: int) -> float:
    """Share of a seeded sample of ``s``'s values that look like and parse as dates."""
    import pandas as pd

    vals = s.dropna().astype(str)
    if vals.empty:
        return 0.0
    vals = vals.sample(n=min(sample, len(vals)), random_state=0)
    shaped = vals[vals.str.contains(_DATE_SHAPE)]
    if shaped.empty:
        return 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        parsed = pd.to_datetime(shaped, errors="coerce", format="mixed", utc=True)
    return float(parsed.notna().sum() / len(vals))


def _time_by_name(s: pd.Series, word: str, sample: int) -> str | None:
    """Why a column named like a time (``word``) holds times, or None when its values say
    it is something else (a duration, a count)."""
    import pandas as pd

    if _is_text(s):
        if _date_share(s, sample) >= 0.9:
            return f"time: named like one ({word}), values parse as dates"
        if word in ("year", "month", "day"):
            return f"time: named {word}"
        return None
    if not pd.api.types.is_numeric_dtype(s) or pd.api.types.is_bool_dtype(s):
        return None
    v = s.dropna()
    if v.empty:
        return None
    lo, hi = float(v.min()), float(v.max())
    integral = bool((v == v.round()).all())
    if lo >= _EPOCH_MIN:
        return f"time: named like one ({word}), values like epoch times"
    if not integral:
        return None  # e.g. response_time in seconds: a measurement
    if lo >= 1900 and hi <= 2100:
        return f"time: named like one ({word}), values are years {lo:.0f}-{hi:.0f}"
    if word == "month" and lo >= 1 and hi <= 12:
        return "time: named month, values 1-12"
    if word == "day" and lo >= 1 and hi <= 31:
        return "time: named day, values 1-31"
    return None


def _distinct(s: pd.Series, min_rows: int) -> float | None:
    """Distinct share of an integer or text column's values (None: not such a column, or too
    few values to tell an identifier from a small table)."""
    import pandas as pd

    if pd.api.types.is_bool_dtype(s):
        return None
    if not (pd.api.types.is_integer_dtype(s) or _is_text(s)):
        return None
    v = s.dropna()
    if len(v) < min_rows:
        return None
    return float(v.nunique() / len(v))


def _reason(
    name: str, sides: list[pd.Series], unique_share: float, min_rows: int, sample: int
) -> str | None:
    import pandas as pd

    if any(pd.api.types.is_datetime64_any_dtype(s) for s in sides):
        return "time: datetime values"
    tokens = name_tokens(name)
    if _id_named(tokens):
        return "identifier: named like one"
    word = _time_word(tokens)
    if word is not None:
        for s in sides:
            why = _time_by_name(s, word, sample)
            if why:
                return why
    for s in sides:
        if _is_text(s) and (share := _date_share(s, sample)) >= 0.95:
            return f"time: {share:.0%} of sampled values parse as dates"
    for s in sides:
        distinct = _distinct(s, min_rows)
        if distinct is not None and distinct >= unique_share:
            return f"identifier: {distinct:.0%} of {s.notna().sum()} values are distinct"
    return None


def leave_out_id_time(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    columns: Iterable[str],
    *,
    keep: Iterable[str] = (),
    unique_share: float = 0.95,
    min_rows: int = 50,
    sample: int = 500,
) -> tuple[list[str], dict[str, str]]:
    """Split ``columns`` into those a drift check should judge and the identifier and time
    columns it should not (see the module doc).

    Args:
        reference, current: the two tables; a column is judged on both sides.
        columns: candidate columns (present in both tables).
        keep: columns never left out.
        unique_share: distinct share at which an integer or text column is an identifier.
        min_rows: fewer non-null values than this are never called an identifier by
            distinctness alone (every value of a tiny table is distinct).
        sample: values sampled per side to test whether strings parse as dates.

    Returns:
        (kept columns in their order, {left-out column: reason}).
    """
    keep = set(keep)
    kept: list[str] = []
    left_out: dict[str, str] = {}
    for c in columns:
        why = None
        if c not in keep:
            sides = [df[c] for df in (reference, current) if c in df.columns]
            why = _reason(c, sides, unique_share, min_rows, sample)
        if why is None:
            kept.append(c)
        else:
            left_out[c] = why
    return kept, left_out
