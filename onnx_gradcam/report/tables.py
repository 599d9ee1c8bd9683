"""The scan's rows as tables: in ranking order with a rank, their columns, and the CSV and JSON files."""

from __future__ import annotations

import csv
import json
import math
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from . import ScanResult

# The columns that say which map a row is, in the order the files show them; the scores follow.
IDENTITY = ("layer", "tensor", "method", "kind", "depth", "stride", "images")


def ranked_rows(result: ScanResult) -> list[dict]:
    """The rows in ranking order, each a copy with ``"rank"`` (1 = best) first and plain Python values
    (numpy scalars unwrapped)."""
    if not result.rows:
        raise ValueError("the scan has no rows to report")
    ranking = [int(index) for index in result.ranking]
    if sorted(ranking) != list(range(len(result.rows))):
        raise ValueError(f"ranking must list each of the {len(result.rows)} rows once, by index; "
                         f"got {result.ranking!r}")
    return [{"rank": rank, **{key: plain(value) for key, value in result.rows[index].items()}}
            for rank, index in enumerate(ranking, 1)]


def columns(result: ScanResult) -> list[str]:
    """rank, the identity columns present, the scores (in ``directions``' order), then any other keys."""
    present = list(dict.fromkeys(key for row in result.rows for key in row))
    scores = list(result.directions)
    missing = [name for name in scores if name not in present]
    if missing:
        raise ValueError(f"scores {missing} are in directions but in no row")
    identity = [key for key in IDENTITY if key in present]
    return ["rank", *identity, *scores, *[key for key in present if key not in identity and key not in scores]]


def plain(value: Any) -> Any:
    """numpy scalars and arrays as Python values, so the JSON module and csv take them."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value


def finite(value: Any) -> bool:
    """A number that is not NaN nor infinite (bools and strings are not numbers here)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def write_csv(result: ScanResult, path: str) -> None:
    """One line per row in ranking order; NaN (and a missing value) written as an empty field."""
    with open(path, "w", newline="", encoding="utf-8") as file:
        writer = csv.DictWriter(file, fieldnames=columns(result), restval="", lineterminator="\n")
        writer.writeheader()
        for row in ranked_rows(result):
            writer.writerow({key: _csv_field(value) for key, value in row.items()})


def _csv_field(value: Any) -> Any:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return repr(value) if isinstance(value, float) else value


def json_document(result: ScanResult) -> dict:
    """What scores.json holds: the title, recommendation, rank_by, directions, notes and the ranked rows;
    NaN and infinities become null."""
    return _nulls({"title": result.title, "recommendation": result.recommendation,
                   "rank_by": list(result.rank_by), "directions": dict(result.directions),
                   "notes": list(result.notes), "rows": ranked_rows(result)})


def write_json(result: ScanResult, path: str) -> None:
    with open(path, "w", encoding="utf-8") as file:
        json.dump(json_document(result), file, indent=1, allow_nan=False, ensure_ascii=False)
        file.write("\n")


def _nulls(value: Any) -> Any:
    value = plain(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(key): _nulls(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_nulls(item) for item in value]
    return value


def format_score(value: Any) -> str:
    """A score as the page shows it: three decimals, one past 10, none past 1000, scientific when tiny;
    "–" where there is no value."""
    if not finite(value):
        return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else str(value)
    magnitude = abs(value)
    if magnitude >= 1000:
        return f"{value:,.0f}"
    if magnitude >= 10:
        return f"{value:.1f}"
    if 0 < magnitude < 0.001:
        return f"{value:.1e}"
    return f"{value:.3f}"


def best_values(result: ScanResult) -> dict[str, float]:
    """Per score, the best finite value over the rows (the highest or the lowest, as its direction says);
    scores with no finite value are left out."""
    best = {}
    for name, higher in result.directions.items():
        values = [plain(row.get(name)) for row in result.rows]
        values = [value for value in values if finite(value)]
        if values:
            best[name] = max(values) if higher else min(values)
    return best
