"""How every benchmark summarises its samples: a p99 only from enough of them.

A p99 of fewer than :data:`MIN_FOR_P99` samples is the largest one or the one below it: an
outlier, not a percentile. Below that count a summary has no p99 (``None``) and the tables show
the maximum, labelled "max of N". Ratios are taken of medians only, never of two maxima.
"""

from __future__ import annotations

import statistics
from typing import Any

# At least two samples above the 99th percentile.
MIN_FOR_P99 = 200
# The same for p99.9.
MIN_FOR_P999 = 2000


def percentile(values: list[float], q: float) -> float:
    """The sample at nearest rank ``q`` percent of the way from the smallest (``q`` = 0) to the
    largest (``q`` = 100), rounding half to even; the one percentile of every benchmark."""
    if not values:
        raise ValueError("percentile of no samples")
    if not 0 <= q <= 100:
        raise ValueError(f"percentile q must be 0-100 (a percent), got {q!r}")
    ordered = sorted(values)
    return ordered[round(q / 100 * (len(ordered) - 1))]


def summarize(values: list[float], *, digits: int = 2, suffix: str = "") -> dict[str, Any]:
    """n, p50, p90, p99 (``None`` under :data:`MIN_FOR_P99` samples) and max; keys end in
    ``suffix`` (``"_ms"`` for the tables that name their unit in the key)."""
    n = len(values)
    return {
        "n": n,
        f"p50{suffix}": round(statistics.median(values), digits),
        f"p90{suffix}": round(percentile(values, 90), digits),
        f"p99{suffix}": round(percentile(values, 99), digits) if n >= MIN_FOR_P99 else None,
        f"max{suffix}": round(max(values), digits),
    }


def tail_name(n: int) -> str:
    """The column's name for the tail of ``n`` samples: "p99", or "max of N"."""
    return "p99" if n >= MIN_FOR_P99 else f"max of {n}"


def tail(summary: dict[str, Any]) -> Any:
    """The p99 of a summary, or its max when there were too few samples for a p99."""
    for key in ("p99_ms", "p99"):
        if summary.get(key) is not None:
            return summary[key]
    return summary.get("max_ms", summary.get("max"))


def tails_name(summaries: list[dict[str, Any]]) -> str:
    """One column name for several rows: "p99" when every row has one, else "max of N" (the
    smallest N), or "p99 or max of N" when they differ."""
    counts = {int(s.get("n", 0)) for s in summaries}
    if not counts:
        return "p99"
    if all(c >= MIN_FOR_P99 for c in counts):
        return "p99"
    low = min(counts)
    if len(counts) == 1:
        return f"max of {low}"
    return f"p99 (N >= {MIN_FOR_P99}) or max (N < {MIN_FOR_P99})"
