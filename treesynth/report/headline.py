"""The headline number of one benchmark result: which metric and filter the report shows."""

from __future__ import annotations

import math
from typing import Any

# Headline metric of a benchmark result, when it names no "primary": the metric whose base name comes
# first here, ties broken by the filter. Filters appear as lm-eval writes them ("exact_match,strict-match")
# or as evaluation/harness.py flattens them ("exact_match_strict_match"; filter `none` dropped: "exact_match").
# strict-match first because fine-tuned completions end in the exact answer format the evaluation extracts;
# flexible-extract is the fallback. Never a `*stderr*` entry, and a sub-task's "sub/metric" only when the
# benchmark has no aggregate.
METRIC_PREFERENCE = ("exact_match", "pass@1", "pass_at_1", "acc", "acc_norm", "math_verify")
FILTER_PREFERENCE = ("strict-match", "none", "create_test", "flexible-extract")


def _split_metric(name: str) -> tuple[str, str]:
    """(base metric, filter) from "metric,filter", "metric_filter_with_underscores" or "metric"."""
    if "," in name:
        base, flt = name.split(",", 1)
        return base, flt
    for flt in FILTER_PREFERENCE:
        suffix = "_" + flt.replace("-", "_")
        if name.endswith(suffix) and name[: -len(suffix)] in METRIC_PREFERENCE:
            return name[: -len(suffix)], flt
    return name, "none"


def headline_metric(result: dict[str, Any]) -> tuple[str, float] | None:
    """(metric name, value) to report for one benchmark result of an `eval.json`/summary, or None."""
    metrics = {k: v for k, v in (result.get("metrics") or {}).items() if is_number(v) and "stderr" not in k}
    primary = result.get("primary")
    if primary in metrics:
        return primary, float(metrics[primary])
    if primary:  # a bare "exact_match" names the metric under every filter
        metrics = {k: v for k, v in metrics.items() if _split_metric(k)[0] == primary} or metrics

    def rank(name: str) -> tuple[int, int, int] | None:
        base, flt = _split_metric(name.rpartition("/")[2])
        if base not in METRIC_PREFERENCE:
            return None
        f = FILTER_PREFERENCE.index(flt) if flt in FILTER_PREFERENCE else len(FILTER_PREFERENCE)
        return int("/" in name), METRIC_PREFERENCE.index(base), f

    ranked = sorted((r, k) for k in metrics if (r := rank(k)) is not None)
    if not ranked:
        return None
    name = ranked[0][1]
    return name, float(metrics[name])


def as_percent(value: float) -> float:
    """Scores in [0, 1] are fractions: shown as percentages like the paper; others are kept."""
    return value * 100 if 0 <= value <= 1 else value


def is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)

