"""The terminal leaderboard: the top trials, the best setup and where its model is."""
from __future__ import annotations

from typing import Any, Mapping

from ..fmt import fmt_value, text_table
from .sections import fixed_text, gap_text, param_cell, param_columns


def format_leaderboard(facts: Mapping[str, Any], top: int = 10) -> str:
    """The ``top`` best completed trials and a line on the best one, from a report's facts.

    Like the report, it shows only the params that differ between the completed trials, and
    names the shared ones once above the table.
    """
    h = facts["header"]
    metric, counts = h["metric"], h["trials"]
    running = f", {counts['running']} running" if counts.get("running") else ""
    lines = [f"Leaderboard ({metric} on val; {counts['complete']} complete, {counts['pruned']} pruned, "
             f"{counts['fail']} failed{running})"]
    names = param_columns(facts["leaderboard_columns"])
    rows = [[r["rank"], r["trial"], r["value"], *[param_cell(r, n) for n in names], r["epochs_run"],
             f"{r['seconds']:.1f}"] for r in facts["leaderboard"][:max(0, top)]]
    if rows:
        if facts["leaderboard_fixed"]:
            lines.append(fixed_text(facts["leaderboard_fixed"]))
        lines.append(text_table(rows, ["rank", "trial", metric, *names, "epochs", "seconds"]))
    if len(facts["leaderboard"]) > len(rows):
        lines.append(f"... {len(facts['leaderboard']) - len(rows)} more in the report")
    best = facts.get("best")
    if best:
        lines.append(f"\nBest: trial {best['trial']} ({best['backbone']}), {gap_text(best['val_test_gap'])}")
        if best.get("selection"):
            lines.append(f"Selection rule: {best['selection']['rule']}")
        if best.get("model_dir"):
            lines.append(f"Model: {best['model_dir']}")
        refit = best.get("refit")
        if refit:
            scores = ", ".join(f"test {k} {fmt_value(v)}" for k, v in (refit.get("test") or {}).items()
                               if not isinstance(v, (list, dict)))
            lines.append(f"Refit on train + val ({refit['epochs']} epochs): {scores or 'no test split'}; "
                         f"model {refit['model_dir']}")
    return "\n".join(lines)
