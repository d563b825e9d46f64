"""The table printed at the end of a run: what was made, and base vs fine-tuned scores."""

from __future__ import annotations

from typing import Any


def _scores(metrics: dict[str, Any] | None) -> dict[str, float]:
    """eval.json-style metrics -> {"benchmark/metric": value}."""
    out: dict[str, float] = {}
    for bench, res in ((metrics or {}).get("benchmarks") or {}).items():
        for name, value in (res.get("metrics") or {}).items():
            if isinstance(value, int | float):
                out[f"{bench}/{name}"] = value
    return out


def format_summary(summary: dict[str, Any]) -> str:
    stages = summary.get("stages", {})
    lines = ["", "== treesynth run summary =="]
    for name, metrics in stages.items():
        shown = {k: v for k, v in metrics.items() if isinstance(v, int | float | str) and k != "benchmarks"}
        first = dict(list(shown.items())[:10])
        if "cost_usd" in shown:  # dollars are worth a place in the line whatever else the stage reports
            first["cost_usd"] = f"${float(shown['cost_usd']):.4f}"
        lines.append(f"[{name}] " + ", ".join(f"{k}={v}" for k, v in first.items()))
    base, tuned = _scores(stages.get("evaluate_base")), _scores(stages.get("evaluate"))
    if base or tuned:
        lines += ["", f"| {'benchmark/metric':<34} | {'base':>8} | {'fine-tuned':>10} |", f"|{'-' * 36}|{'-' * 10}|{'-' * 12}|"]
        for key in sorted(set(base) | set(tuned)):
            b = f"{base[key]:.4f}" if key in base else "-"
            t = f"{tuned[key]:.4f}" if key in tuned else "-"
            lines.append(f"| {key:<34} | {b:>8} | {t:>10} |")
    return "\n".join(lines)


def print_summary(summary: dict[str, Any]) -> None:
    print(format_summary(summary), flush=True)
